"""Data-driven parity with golden outputs of the official Perceiver AR code.

Every ``*.json`` in tests/fixtures/perceiver_ar (``PERCEPTIO_PERCEIVER_AR_FIXTURES`` replaces
the directory) is one test case: forward fixtures (``outputs::logits``) in ``test_parity_ar``,
greedy decoding fixtures (``outputs::cached_tokens``) in ``test_greedy_ar``. The model is built
from the fixture's ``effective_kwargs`` and its parameters mapped from the reference's names."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from perceptio.generation import exact_steps, recompute_steps, reference_steps
from perceptio.interop.perceiver_ar import model_from_reference

from helpers import split_npz

DIRECTORY = Path(os.environ.get("PERCEPTIO_PERCEIVER_AR_FIXTURES", Path(__file__).parent / "fixtures" / "perceiver_ar"))
FIXTURES = sorted(DIRECTORY.glob("*.json"))


def load(path: Path):
    meta = json.loads(path.read_text())
    params, _, inputs, outputs = split_npz(np.load(path.with_suffix(".npz")))
    return meta, model_from_reference(meta["effective_kwargs"], params), inputs, outputs


def kind(path: Path) -> str:
    keys = np.load(path.with_suffix(".npz")).files
    return "greedy" if "outputs::cached_tokens" in keys else "forward" if "outputs::logits" in keys else "unknown"


def assert_close(ours, ref: np.ndarray, what: str) -> None:
    ours = ours.detach().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != reference {ref.shape}"
    err = float(np.abs(ours.astype(np.float64) - ref).max())
    bound = 1e-4 * (1 + float(np.abs(ref).max()))
    assert err <= bound, f"{what}: max |ours - reference| = {err:.3g} > {bound:.3g}"


def test_fixtures_are_there():
    assert FIXTURES, f"no fixtures in {DIRECTORY}"
    assert all(kind(p) != "unknown" for p in FIXTURES), [p.name for p in FIXTURES if kind(p) == "unknown"]


@pytest.mark.parametrize("path", [p for p in FIXTURES if kind(p) == "forward"], ids=lambda p: p.stem)
def test_parity_ar(path):
    meta, model, inputs, outputs = load(path)
    ids = torch.from_numpy(inputs["inputs"]).long()
    idxs = torch.from_numpy(inputs["input_idxs"]).long() if "input_idxs" in inputs else None
    z = meta["call"].get("z_index_dim") or model.config.z_index_dim
    with torch.no_grad():
        out = model(ids, idxs, num_latents=z)
        positions = model.positions(ids, idxs)
        e = model.embed(ids, positions)
        rotary = model.rotary_positions(positions)
        last = out.latent_last_steps
        key_index = torch.arange(ids.shape[1]).expand_as(ids)
        encoder_mask, processor_mask = model.masks(last, key_index, ids > 0)
        ours = {
            "logits": out.logits, "latent_last_steps": last, "valid_latents": out.valid_latents,
            "encoder_mask": encoder_mask, "processor_mask": processor_mask,
            "positions": rotary if rotary is not None else positions[..., 0],
            "latent_positions": model.latent_positions(rotary, last),
            "embedded_inputs": e, "initial_query": model.initial_query(e, last, z),
        }
    checked = []
    for name, ref in outputs.items():
        if name.startswith("block_"):  # intermediate latents, for locating a discrepancy only
            continue
        assert name in ours, f"fixture output {name!r} has no counterpart here"
        if ref.dtype.kind in "biu" or ref.dtype == bool:
            assert np.array_equal(ours[name].numpy().astype(ref.dtype), ref), name
        else:
            assert_close(ours[name], ref, name)
        checked.append(name)
    assert "logits" in checked


def teacher_forced(steps, tokens: np.ndarray) -> list[torch.Tensor]:
    """The logits of every step of a decoding loop fed the recorded ``tokens [B, T]``."""
    logits = [next(steps)]
    for t in range(tokens.shape[1] - 1):
        logits.append(steps.send(torch.from_numpy(tokens[:, t]).long()))
    return logits


@pytest.mark.parametrize("path", [p for p in FIXTURES if kind(p) == "greedy"], ids=lambda p: p.stem)
def test_greedy_ar(path):
    meta, model, inputs, outputs = load(path)
    call = meta["call"]
    memory = re.findall(r"(\w+)=(\d+)", call.get("memory", ""))
    sizes = {k: int(v) for k, v in memory}
    # the sampler's memory sizes are the notebook's defaults: the context and the model's latents
    assert sizes.get("max_context_length_memory", model.config.max_context_length) == model.config.max_context_length
    assert sizes.get("z_index_dim_memory", model.config.z_index_dim) == model.config.z_index_dim
    prompt = torch.from_numpy(inputs["prompt"]).long()
    n = call["num_tokens"]
    expected = {"reference": outputs["cached_tokens"], "none": outputs["uncached_tokens"],
                "exact": outputs["uncached_tokens"]}
    for cache, tokens in expected.items():
        assert np.array_equal(np.array(model.generate(prompt, n, greedy=True, cache=cache)), tokens), cache
    rows = prompt.tolist()
    with torch.no_grad():
        cached = teacher_forced(reference_steps(model, [list(r) for r in rows], n), outputs["cached_tokens"])
        uncached = teacher_forced(recompute_steps(model, [list(r) for r in rows]), outputs["uncached_tokens"])
        exact = teacher_forced(exact_steps(model, [list(r) for r in rows]), outputs["uncached_tokens"])
    assert_close(torch.stack(cached), outputs["cached_logits"], "cached_logits")
    assert_close(torch.stack(uncached), outputs["uncached_logits"], "uncached_logits")
    assert_close(torch.stack(exact), outputs["uncached_logits"], "uncached_logits (exact cache)")
