"""The architectures compared, built on both sides with the same weights.

``transformers`` models are built from a ``PerceiverConfig`` with the published sizes
(random weights: nothing is downloaded) and converted with ``perceptio.from_transformers``,
so both sides hold the same parameters; every suite checks their outputs agree before
timing them. Attention dropout is 0 (as in inference and in the DeepMind configs), so
training-mode passes are deterministic and comparable.
"""

from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import kernels

# Published sizes (deepmind/* configs on the Hub, also perceptio.presets).
IMAGE_FOURIER = dict(
    num_latents=512, d_latents=1024, d_model=261, num_blocks=8, num_self_attends_per_block=6,
    num_self_attention_heads=8, num_cross_attention_heads=1, num_labels=1000, image_size=224,
)
LANGUAGE = dict(
    num_latents=256, d_latents=1280, d_model=768, num_blocks=1, num_self_attends_per_block=26,
    num_self_attention_heads=8, num_cross_attention_heads=8, qk_channels=256, v_channels=1280,
    vocab_size=262, max_position_embeddings=2048,
)
# The byte MLM at a quarter of the width (same depth, latents and sequence length).
LANGUAGE_SMALL = dict(LANGUAGE, d_latents=320, d_model=192, qk_channels=64, v_channels=320)
MULTIMODAL = dict(
    num_latents=784, d_latents=512, d_model=704, num_blocks=1, num_self_attends_per_block=8,
    num_self_attention_heads=8, num_cross_attention_heads=1, num_labels=700, num_frames=16,
    image_size=224, audio_samples_per_frame=1920, samples_per_patch=16, output_shape=[1, 16, 224, 224],
    output_num_channels=512,
)


def hf_model(kind: str, **sizes: Any) -> nn.Module:
    """A ``transformers`` Perceiver of class ``kind`` with these config values."""
    import transformers

    config = transformers.PerceiverConfig(attention_probs_dropout_prob=0.0, **sizes)
    torch.manual_seed(0)
    return getattr(transformers, kind)(config).eval()


def pair(kind: str, sizes: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    """(``transformers`` model, the perceptio port with the same weights), both in eval mode."""
    from ..interop.transformers import from_transformers

    hf = hf_model(kind, **sizes)
    ours = from_transformers(hf)
    return hf, ours


def with_activation_checkpointing(model: nn.Module) -> nn.Module:
    """A copy of a perceptio port whose encoder checkpoints each latent block."""
    clone = copy.deepcopy(model)
    encoder = clone.perceiver.encoder
    encoder.config = dataclasses.replace(encoder.config, activation_checkpointing=True)
    return clone


@contextmanager
def onednn_linear(enabled: bool):
    """Temporarily switch perceptio's oneDNN linear path (``perceptio.layers.kernels``)."""
    before = kernels.use_onednn_linear()
    kernels.set_onednn_linear(enabled)
    try:
        yield
    finally:
        kernels.set_onednn_linear(before)


@contextmanager
def attention_as_written():
    """Temporarily compute every perceptio attention as written: no folded projections, no
    chunked kernel, SDPA (``PERCEPTIO_ATTENTION_KERNEL=sdpa``)."""
    before = kernels.attention_kernel()
    kernels.set_attention_kernel("sdpa")
    try:
        yield
    finally:
        kernels.set_attention_kernel(before)


def max_rel_diff(a: Any, b: Any) -> float:
    """``max |a - b| / max |b|`` over tensors or dicts of tensors."""
    if isinstance(a, dict):
        return max(max_rel_diff(a[k], b[k]) for k in b)
    a, b = a.detach().float(), b.detach().float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def scalar_loss(out: Any) -> Tensor:
    """A loss touching every output (for forward+backward passes)."""
    if isinstance(out, dict):
        return sum(v.float().square().mean() for v in out.values())
    return out.float().square().mean()
