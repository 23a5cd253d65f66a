"""Video + audio autoencoding with the multimodal model (Kinetics-700 autoencoder).

As in the reference colab: the clip is encoded once, then every output point (each
pixel of each frame, each audio patch, the label) is decoded in chunks of
``chunk_size`` queries, with the reference positions of subsampled points, so memory
is bounded by the chunk. The label input is replaced by the mask token inside the
model, so the decoded label is a classification of the clip.

Inputs follow the colab: frames ``[T, H, W, 3]`` RGB in ``[0, 1]`` (uint8 frames are
divided by 255) and audio ``[N, C]`` or ``[N]`` samples in ``[-1, 1]`` (int16 samples
are divided by 2**15), of exactly the sizes the model was built for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..adapters.multimodal import MultimodalInputAdapter
from ..model import Perceiver
from .classification import Prediction, check_top_k, top_predictions

MODALITIES = ("audio", "image", "label")


@dataclass
class AutoencodingResult:
    video: Tensor  # [T, H, W, C] reconstruction
    audio: Tensor  # [N, C] reconstruction
    label_logits: Tensor  # [num_classes]
    top_k: list[Prediction]  # the most likely classes (softmax of label_logits)


def video_to_float(video: np.ndarray | Tensor) -> Tensor:
    video = torch.as_tensor(video)
    return video.float() / 255.0 if video.dtype == torch.uint8 else video.float()


def audio_to_float(audio: np.ndarray | Tensor) -> Tensor:
    audio = torch.as_tensor(audio)
    audio = audio.float() / 2**15 if audio.dtype == torch.int16 else audio.float()
    return audio[:, None] if audio.dim() == 1 else audio


def _check_model(model: Perceiver) -> None:
    adapter = model.input_adapter
    if not isinstance(adapter, MultimodalInputAdapter) or sorted(adapter.names) != list(MODALITIES):
        names = adapter.names if isinstance(adapter, MultimodalInputAdapter) else type(adapter).__name__
        raise ValueError(f"video + audio autoencoding needs a multimodal model with modalities {list(MODALITIES)}, "
                         f"got {names}")


@torch.no_grad()
def autoencode(
    model: Perceiver,
    video: np.ndarray | Tensor,
    audio: np.ndarray | Tensor,
    chunk_size: int = 8192,
    top_k: int = 5,
    labels: list[str] | None = None,
) -> AutoencodingResult:
    """Reconstruct ``video [T, H, W, 3]`` and ``audio [N, C]`` and classify the clip."""
    _check_model(model)
    check_top_k(top_k)
    label_adapter = model.input_adapter.modalities["label"]
    num_classes = label_adapter.config.num_classes
    if labels is not None and len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels given for a model with {num_classes} classes")
    device = next(model.parameters()).device
    video, audio = video_to_float(video), audio_to_float(audio)
    inputs = {
        "image": video[None].to(device),
        "audio": audio[None].to(device),
        "label": torch.zeros(1, num_classes, device=device),  # masked inside the model
    }
    latents, context = model.encode(inputs)  # checks every modality's shape first
    points = model.decoder.all_points(context, device=device)
    out = model.decode_chunked(latents, context, chunk_size=chunk_size, points=points)
    image_dims = model.config.decoder.queries.modalities["image"].index_dims
    logits = out["label"][0].float().cpu()
    return AutoencodingResult(
        video=out["image"][0].reshape(*image_dims, -1).cpu(),
        audio=out["audio"][0].reshape(-1, audio.shape[-1]).cpu(),
        label_logits=logits,
        top_k=top_predictions(logits[None], top_k, labels)[0],
    )
