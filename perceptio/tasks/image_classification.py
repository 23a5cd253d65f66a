"""Top-k image classification from image files (the ImageNet classifiers).

Preprocessing follows the reference ImageNet colab: a centred square crop of
``224 / 256`` of the shorter side, a bicubic resize to the model's image size, then
ImageNet normalisation of the RGB values (mean/std of ``0..255`` pixels).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from ..adapters.heads import FirstQuery
from ..adapters.image import ImageInputAdapter, imagenet_normalize
from ..data.files import read_image, resize_image
from ..model import Perceiver
from .classification import Prediction, check_top_k, top_predictions

CROP_FRACTION = 224 / 256


def center_crop(image: np.ndarray, fraction: float = CROP_FRACTION) -> np.ndarray:
    """The centred square of side ``fraction * min(H, W)`` of ``[H, W, C]`` pixels."""
    height, width = image.shape[:2]
    side = max(int(fraction * min(height, width)), 1)
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    return image[top:top + side, left:left + side]


def preprocess_image(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """RGB ``[H, W, 3]`` uint8 -> the model input ``[h, w, 3]`` float32 (crop, resize, normalise)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected RGB pixels [H, W, 3] uint8, got {image.dtype} {image.shape}")
    pixels = resize_image(center_crop(image), *size)
    return imagenet_normalize(torch.from_numpy(pixels.astype(np.float32)))


def _check_classifier(model: Perceiver) -> tuple[int, int]:
    adapter = model.input_adapter
    if not isinstance(adapter, ImageInputAdapter) or adapter.config.is_video or not isinstance(model.output_adapter, FirstQuery):
        raise ValueError("image classification needs an image classifier (image input adapter, classification "
                         f"output adapter), got {type(adapter).__name__} / {type(model.output_adapter).__name__}")
    if adapter.config.image_shape[-1] != 3:
        raise ValueError(f"the model reads {adapter.config.image_shape[-1]}-channel images; image files give RGB")
    height, width, _ = adapter.config.image_shape
    return height, width


@torch.no_grad()
def classify_images(
    model: Perceiver,
    images: Sequence[str | os.PathLike | np.ndarray],
    top_k: int = 5,
    labels: Sequence[str] | None = None,
    batch_size: int = 8,
) -> list[list[Prediction]]:
    """The ``top_k`` classes of each image (a file path or RGB ``[H, W, 3]`` uint8 array)."""
    size = _check_classifier(model)
    check_top_k(top_k)
    device = next(model.parameters()).device
    results: list[list[Prediction]] = []
    for start in range(0, len(images), batch_size):
        batch = [img if isinstance(img, np.ndarray) else read_image(img) for img in images[start:start + batch_size]]
        inputs = torch.stack([preprocess_image(img, size) for img in batch]).to(device)
        results += top_predictions(model(inputs).logits, top_k, labels)
    return results
