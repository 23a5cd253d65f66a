"""Data-driven parity with golden outputs of the official DeepMind implementation.

Every ``*.json`` in the fixture directory (``PERCEPTIO_DEEPMIND_FIXTURES`` overrides it)
is one test case, dispatched on its content: a model (``config``), Fourier features
(``cases`` with ``index_dims``) or the byte tokenizer (``special_tokens``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from perceptio.interop.deepmind import config_from_reference, load_reference_params
from perceptio.layers.position import fourier_features, grid_positions
from perceptio.queries import FourierQueriesConfig
from perceptio.model import Perceiver
from perceptio.tokenizer import ByteTokenizer, NUM_SPECIAL_TOKENS, VOCAB_SIZE

from helpers import FIXTURE_DIRS, split_npz
from reference_runners import RUNNERS

FIXTURES = sorted(p for d in FIXTURE_DIRS for p in d.glob("*.json"))


def assert_close_to_reference(ours, ref: np.ndarray, what: str) -> None:
    ours = ours.detach().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != reference {ref.shape}"
    err = float(np.abs(ours - ref).max()) if ref.size else 0.0
    bound = 1e-4 * (1 + float(np.abs(ref).max()) if ref.size else 1.0)
    assert err <= bound, f"{what}: max |ours - reference| = {err:.3g} > {bound:.3g}"


def check_model(meta: dict, arrays) -> None:
    cfg = meta["config"]
    if cfg["model"] not in RUNNERS:
        pytest.skip(f"reference model kind {cfg['model']!r} has no runner yet")
    params, state, inputs, outputs = split_npz(arrays)
    model = load_reference_params(Perceiver(config_from_reference(cfg)).eval(), params, state)
    with torch.no_grad():
        ours = RUNNERS[cfg["model"]](model, inputs)
    assert set(ours) == set(outputs), f"outputs {sorted(ours)} != reference {sorted(outputs)}"
    for name, ref in outputs.items():
        assert_close_to_reference(ours[name], ref, name)


def check_fourier(meta: dict, arrays) -> None:
    for case in meta["cases"]:
        ours = fourier_features(
            grid_positions(case["index_dims"]), case["num_bands"], case["max_resolution"],
            case["concat_pos"], case["sine_only"],
        )
        assert_close_to_reference(ours, arrays[f"outputs::{case['key']}"], case["key"])
    sub = meta.get("subsampled")
    if sub:
        builder = FourierQueriesConfig(
            index_dims=sub["index_dims"], num_bands=sub["num_bands"],
            max_resolution=sub["max_resolution"], concat_pos=sub["concat_pos"],
        ).build(0, None)
        points = torch.from_numpy(arrays["inputs::subsampled_points"]).long()
        assert_close_to_reference(builder(1, None, points)[0], arrays["outputs::subsampled_queries"], "subsampled")
        assert_close_to_reference(builder(1)[0], arrays["outputs::full_grid_queries"], "full grid")


def check_tokenizer(meta: dict, arrays) -> None:
    tok = ByteTokenizer()
    assert tok.vocab_size == meta["vocab_size"] == VOCAB_SIZE
    for name, idx in meta["special_tokens"].items():
        assert getattr(tok, f"{name}_id") == idx
    assert len(meta["special_tokens"]) == NUM_SPECIAL_TOKENS
    for case in meta["cases"]:
        if case["text"] is not None:
            assert tok.encode(case["text"]) == case["ids"]
        assert tok.decode(case["ids"]) == case["decoded"]


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_parity(path):
    meta = json.loads(path.read_text())
    npz = path.with_suffix(".npz")
    arrays = np.load(npz) if npz.exists() else {}
    if "config" in meta:
        check_model(meta, arrays)
    elif "special_tokens" in meta:
        check_tokenizer(meta, arrays)
    elif "cases" in meta:
        check_fourier(meta, arrays)
    else:
        pytest.fail(f"{path.name}: unrecognised fixture")


def test_fixture_directory_is_not_empty():
    assert FIXTURES, f"no fixtures found in {FIXTURE_DIRS}"
