"""How each kind of reference fixture is run: fixture inputs -> our outputs.

Keys follow the fixture's ``inputs::`` / ``outputs::`` names. Every runner builds
nothing itself: the model comes from the fixture's config."""

from __future__ import annotations

import numpy as np
import torch

from perceptio.model import Perceiver


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


def run_masked_language_model(model: Perceiver, inputs: dict) -> dict:
    mask = _t(inputs["mask"]).bool()
    out = model(_t(inputs["ids"]).long(), input_mask=mask, query_mask=mask)
    return {"logits": out.logits}


def run_image_classifier(model: Perceiver, inputs: dict) -> dict:
    return {"logits": model(_t(inputs["images"])).logits}


def run_optical_flow(model: Perceiver, inputs: dict) -> dict:
    return {"flow": model(_t(inputs["frames"])).logits}


RUNNERS = {
    "masked_language_model": run_masked_language_model,
    "image_classifier": run_image_classifier,
    "optical_flow": run_optical_flow,
}
