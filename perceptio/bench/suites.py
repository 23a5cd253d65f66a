"""Suites (1) ImageNet Fourier classifier and (2) byte masked LM: perceptio vs
``transformers`` with the same weights (plus perceptio ablations)."""

from __future__ import annotations

from typing import Any

import torch

from .compare import Contender, Settings, compare
from .models import IMAGE_FOURIER, LANGUAGE, LANGUAGE_SMALL, onednn_linear, pair, with_activation_checkpointing


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
    if "checkpointing" in ablations:
        ckpt = with_activation_checkpointing(ours)
        contenders["perceptio (activation checkpointing)"] = Contender(
            ckpt, lambda: ckpt(inputs=inputs).logits, modes=("forward+backward",),
            note="encoder latent blocks recomputed in backward",
        )
    return contenders


def image_fourier(settings: Settings, quick: bool) -> list[dict[str, Any]]:
    """(1) ``PerceiverForImageClassificationFourier`` at 224x224 (50,176 input points)."""
    sizes = dict(IMAGE_FOURIER)
    if quick:  # same input size, a 2-block latent stack
        sizes.update(num_blocks=1, num_self_attends_per_block=2)
    hf, ours = pair("PerceiverForImageClassificationFourier", sizes)
    rows = []
    for batch in settings.extra.get("image_batches", (1,) if quick else (1, 2)):
        g = torch.Generator().manual_seed(batch)

        def make_inputs():
            return torch.randn(batch, 3, 224, 224, generator=g).to(settings.device, settings.dtype)

        ablations = ("linear",) if quick else ("linear", "checkpointing") if batch == 1 else ()
        contenders = _contenders(hf, ours, make_inputs, settings, ablations=ablations)
        case = "224x224 (50,176 points)" + (" [quick: 2 latent layers]" if quick else "")
        # batch 2: fewer rounds, to keep the whole run near 20 minutes on 2 cores
        batch_settings = Settings(settings.device, settings.dtype, max(1, settings.repeats - batch + 1),
                                  settings.tolerance, settings.extra, settings.phase)
        rows += compare("image_fourier", case, contenders, batch_settings, batch)
    return rows


def masked_lm(settings: Settings, quick: bool) -> list[dict[str, Any]]:
    """(2) ``PerceiverForMaskedLM`` on 2,048 bytes, full and quarter width."""
    rows = []
    for label, sizes, batch in (("full width", LANGUAGE, settings.extra.get("mlm_batch", 1)),
                                ("quarter width", LANGUAGE_SMALL, settings.extra.get("mlm_small_batch", 4))):
        sizes = dict(sizes)
        if quick:
            sizes.update(num_self_attends_per_block=2)
        hf, ours = pair("PerceiverForMaskedLM", sizes)
        g = torch.Generator().manual_seed(0)

        def make_inputs():
            return torch.randint(0, sizes["vocab_size"], (batch, 2048), generator=g).to(settings.device)

        case = f"{label}: d_latents={sizes['d_latents']}, d_model={sizes['d_model']}" + (
            " [quick: 2 latent layers]" if quick else ""
        )
        rows += compare("masked_lm", case, _contenders(hf, ours, make_inputs, settings,
                                                                ablations=("linear",) if label != "full width" else ()),
                        settings, batch)
    return rows
