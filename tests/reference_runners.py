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


def run_multimodal_autoencoder(model: Perceiver, inputs: dict) -> dict:
    """Encode once; decode every output point (``full/*``: the reference decodes them as
    subsampled points, here in chunks of 100 queries) and each subset of points
    (``subsetN/*``, from ``subsetN/<modality>_points``; modalities without points, e.g. the
    label, in full)."""
    names = model.input_adapter.names
    batch = {m: _t(inputs[m] if m in inputs else inputs[m + "s"]) for m in names}
    subsets: dict[str, dict] = {}
    for key, value in inputs.items():
        if key.endswith("_points") and "/" in key:
            subset, name = key.split("/", 1)
            subsets.setdefault(subset, {})[name[: -len("_points")]] = _t(value).long()
    latents, context = model.encode(batch)
    every_point = model.decoder.query_builder.all_points(context)
    decodes = {"full": model.decode_chunked(latents, context, chunk_size=100, points=every_point)}
    decodes.update({subset: model.decode(latents, context, points=points) for subset, points in subsets.items()})
    return {f"{run}/{m}": out for run, outputs in decodes.items() for m, out in outputs.items()}


RUNNERS = {
    "masked_language_model": run_masked_language_model,
    "image_classifier": run_image_classifier,
    "optical_flow": run_optical_flow,
    "multimodal_autoencoder": run_multimodal_autoencoder,
}
