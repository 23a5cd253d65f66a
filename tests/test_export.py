"""``torch.compile``, ``torch.export`` and ONNX export of the published architectures at
reduced size (the presets' small versions of tests/test_presets.py), outputs equal to eager."""

from __future__ import annotations

import os

import pytest
import torch

from perceptio import create_model

from test_presets import SMALL as SMALL_PRESETS
from test_tasks_multimodal import SMALL as SMALL_MULTIMODAL


def multimodal_inputs():
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand((2, 2, 16, 16, 3), generator=g), "audio": torch.rand((2, 128, 1), generator=g) - 0.5,
            "label": torch.zeros(2, 7)}


CASES = {name: (overrides, inputs) for name, (overrides, inputs, _) in SMALL_PRESETS.items()}
CASES["multimodal-perceiver"] = (SMALL_MULTIMODAL, multimodal_inputs)
IMAGE_CLASSIFIERS = ["vision-perceiver-conv", "vision-perceiver-fourier", "vision-perceiver-learned"]


def small(name):
    torch.manual_seed(0)
    overrides, inputs = CASES[name]
    return create_model(name, **overrides).eval(), inputs()


def assert_same(out, ref):
    if isinstance(ref, dict):
        assert set(out) == set(ref)
        for k in ref:
            assert_same(out[k], ref[k])
        return
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_every_published_architecture_has_a_case():
    from perceptio import list_presets

    assert set(CASES) == set(list_presets())


@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_compile_captures_one_graph(name):
    """fullgraph=True: no graph break anywhere (input checks, masks, kernel switches)."""
    model, x = small(name)
    with torch.no_grad():
        ref = model(x).logits
        assert_same(torch.compile(model, backend="eager", fullgraph=True)(x).logits, ref)


@pytest.mark.skipif(os.environ.get("PERCEPTIO_INDUCTOR_TEST") != "1",
                    reason="inductor compiles C++ kernels: ~80 s on 2 cores; set PERCEPTIO_INDUCTOR_TEST=1")
def test_torch_compile_inductor():
    model, x = small("vision-perceiver-fourier")
    with torch.no_grad():
        assert_same(torch.compile(model)(x).logits, model(x).logits)


@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_export(name):
    model, x = small(name)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert_same(exported.module()(x).logits, model(x).logits)


def test_torch_export_with_a_mask_and_a_dynamic_batch():
    model, _ = small("language-perceiver")
    batch = torch.export.Dim("batch", min=1, max=64)
    ids, mask = torch.randint(0, 262, (3, 40)), torch.ones(3, 40, dtype=torch.bool)
    mask[1, 30:] = False
    exported = torch.export.export(model, (ids, mask), dynamic_shapes=({0: batch}, {0: batch}))
    with torch.no_grad():
        for b in (1, 3):
            assert_same(exported.module()(ids[:b], mask[:b]).logits, model(ids[:b], mask[:b]).logits)


@pytest.mark.parametrize("name", IMAGE_CLASSIFIERS)
def test_onnx_export_runs_in_onnxruntime(tmp_path, name):
    pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra: pip install 'perceptio[onnx]'")
    ort = pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'perceptio[onnx]'")
    model, x = small(name)
    path = tmp_path / "model.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(model, (x,), path, dynamo=True, input_names=["pixels"], output_names=["logits", "latents"],
                      dynamic_shapes=({0: batch},), verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for images in (x, torch.randn(3, *x.shape[1:])):
        logits, latents = session.run(None, {"pixels": images.numpy()})
        with torch.no_grad():
            ref = model(images)
        assert_same(torch.from_numpy(logits), ref.logits)
        assert_same(torch.from_numpy(latents), ref.latents)
