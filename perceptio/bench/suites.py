"""Suites (1) ImageNet Fourier classifier and (2) byte masked LM: perceptio vs
``transformers`` with the same weights (plus perceptio ablations)."""

from __future__ import annotations

from typing import Any

import torch

from .compare import Contender, Settings, compare
from .models import (
    IMAGE_FOURIER,
    LANGUAGE,
    LANGUAGE_SMALL,
    attention_as_written,
    onednn_linear,
    pair,
    with_activation_checkpointing,
)


def _contenders(hf, ours, make_inputs, settings: Settings, ablations: tuple[str, ...]) -> dict[str, Contender]:
    hf.to(settings.device, settings.dtype)
    ours.to(settings.device, settings.dtype)
    inputs = make_inputs()
    contenders = {
        "transformers": Contender(hf, lambda: hf(inputs=inputs).logits),
        "perceptio": Contender(ours, lambda: ours(inputs=inputs).logits),
    }
    if "linear" in ablations and settings.device.type == "cpu":
        contenders["perceptio (torch linear)"] = Contender(
            ours, lambda: ours(inputs=inputs).logits, context=lambda: onednn_linear(False),
            note="ablation: oneDNN linear path off (F.linear / MKL)",
        )
    if "as written" in ablations:
        contenders["perceptio (attention as written)"] = Contender(
            ours, lambda: ours(inputs=inputs).logits, context=attention_as_written,
            note="ablation: no folded projections, no chunked kernel (SDPA)",
        )
    if "checkpointing" in ablations:
        ckpt = with_activation_checkpointing(ours)
        contenders["perceptio (activation checkpointing)"] = Contender(
            ckpt, lambda: ckpt(inputs=inputs).logits, modes=("forward+backward",),
            note="encoder latent blocks recomputed in backward",
        )
    return contenders


def depth_sizes(sizes: dict[str, Any], depth: int, published: int) -> dict[str, Any]:
    """The published sizes with a latent stack of ``depth`` layers (one block; the published
    depth keeps its blocks and weight sharing)."""
    return dict(sizes) if depth == published else dict(sizes, num_blocks=1, num_self_attends_per_block=depth)


def image_fourier(settings: Settings, quick: bool) -> list[dict[str, Any]]:
    """(1) ``PerceiverForImageClassificationFourier`` at 224x224 (50,176 input points), at
    latent depths from 1 to the published 48 (8 blocks x 6 shared layers)."""
    published = IMAGE_FOURIER["num_blocks"] * IMAGE_FOURIER["num_self_attends_per_block"]
    rows = []
    for depth in settings.extra.get("image_depths", (2,) if quick else (1, 2, 6, 16, published)):
        hf, ours = pair("PerceiverForImageClassificationFourier", depth_sizes(IMAGE_FOURIER, depth, published))
        for batch in settings.extra.get("image_batches", (1,)):
            g = torch.Generator().manual_seed(batch)

            def make_inputs():
                return torch.randn(batch, 3, 224, 224, generator=g).to(settings.device, settings.dtype)

            ablations = ("as written",) if batch == 1 else ()
            if depth == published and batch == 1:
                ablations += ("linear", "checkpointing")
            contenders = _contenders(hf, ours, make_inputs, settings, ablations=ablations)
            case = f"224x224 (50,176 points), {depth} latent layers" + (" [quick]" if quick else "")
            # batch 2: fewer rounds, to keep the whole run near 20 minutes on 2 cores
            batch_settings = Settings(settings.device, settings.dtype, max(1, settings.repeats - batch + 1),
                                      settings.tolerance, settings.extra, settings.phase)
            rows += compare("image_fourier", case, contenders, batch_settings, batch)
    return rows


def masked_lm(settings: Settings, quick: bool) -> list[dict[str, Any]]:
    """(2) ``PerceiverForMaskedLM`` on 2,048 bytes: full width at latent depths 1 to the
    published 26, and a quarter width at full depth."""
    published = LANGUAGE["num_self_attends_per_block"]
    cases = [("full width", depth_sizes(LANGUAGE, d, published), settings.extra.get("mlm_batch", 1))
             for d in settings.extra.get("mlm_depths", (2,) if quick else (1, 4, published))]
    if not quick:
        cases.append(("quarter width", dict(LANGUAGE_SMALL), settings.extra.get("mlm_small_batch", 4)))
    rows = []
    for label, sizes, batch in cases:
        hf, ours = pair("PerceiverForMaskedLM", sizes)
        g = torch.Generator().manual_seed(0)

        def make_inputs():
            return torch.randint(0, sizes["vocab_size"], (batch, 2048), generator=g).to(settings.device)

        depth = sizes["num_blocks"] * sizes["num_self_attends_per_block"]
        case = f"{label}: d_latents={sizes['d_latents']}, d_model={sizes['d_model']}, {depth} latent layers" + (
            " [quick]" if quick else "")
        ablations = ("linear",) if label != "full width" else ("as written",) if depth == published else ()
        rows += compare("masked_lm", case, _contenders(hf, ours, make_inputs, settings, ablations=ablations),
                        settings, batch)
    return rows
