"""The converted models used as ``transformers`` models: the behaviours that
``transformers``' own Perceiver test file relies on (docs/transformers.md says how that
file is run against perceptio), asserted on perceptio's wrappers."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from transformers.models.perceiver import modeling_perceiver  # noqa: E402

from perceptio import from_transformers  # noqa: E402
from perceptio.interop.transformers import WRAPPERS, TransformersOutput  # noqa: E402

from helpers import randomize  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def config(**overrides) -> transformers.PerceiverConfig:
    base = dict(
        num_latents=4, d_latents=16, d_model=16, num_blocks=2, num_self_attends_per_block=2,
        num_self_attention_heads=2, num_cross_attention_heads=1, max_position_embeddings=9, vocab_size=30,
        num_labels=3, attention_probs_dropout_prob=0.0,
    )
    return transformers.PerceiverConfig(**{**base, **overrides})


def mlm(**overrides):
    hf = randomize(modeling_perceiver.PerceiverForMaskedLM(config(**overrides))).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    return hf, {"inputs": ids, "attention_mask": mask}


def test_output_is_indexable_like_a_model_output():
    hf, kwargs = mlm()
    ours = from_transformers(hf)
    labels = torch.zeros(2, 9, dtype=torch.long)
    ref = hf(**kwargs, labels=labels, output_attentions=True)
    out = ours(**kwargs, labels=labels, output_attentions=True)
    assert isinstance(out, TransformersOutput)
    assert list(out.keys()) == list(ref.keys()) == ["loss", "logits", "attentions", "cross_attentions"]
    assert len(out) == len(ref) == 4
    torch.testing.assert_close(out[0], ref[0])
    torch.testing.assert_close(out["logits"], ref["logits"])
    torch.testing.assert_close(out[1], out.logits)
    assert len(out.to_tuple()) == len(ref.to_tuple()) and out.to_tuple()[3] is out.cross_attentions
    assert "loss" in out and "hidden_states" not in out and "latents" not in out
    with pytest.raises(KeyError):
        out["hidden_states"]
    # return_dict=False: transformers' tuple, the decoder's cross-attention as its own item
    tup = ours(**kwargs, output_attentions=True, return_dict=False)
    ref_tup = hf(**kwargs, output_attentions=True, return_dict=False)
    assert len(tup) == len(ref_tup) == 4
    assert [len(t) if isinstance(t, tuple) else "tensor" for t in tup] == [
        len(t) if isinstance(t, tuple) else "tensor" for t in ref_tup
    ]


def test_config_flags_are_read_at_every_call():
    hf, kwargs = mlm()
    ours = from_transformers(hf)
    assert ours.config is hf.config  # like transformers: the model's config object
    assert ours(**kwargs).attentions is None
    ours.config.output_attentions = True
    ours.config.output_hidden_states = True
    out, ref = ours(**kwargs), hf(**kwargs)
    assert len(out.attentions) == len(ref.attentions) == 4 and len(out.cross_attentions) == 2
    assert len(out.hidden_states) == len(ref.hidden_states)
    ours.config.return_dict = False
    assert isinstance(ours(**kwargs), tuple)
    assert isinstance(ours(**kwargs, return_dict=True), TransformersOutput)


def test_hidden_states_match_transformers():
    hf, kwargs = mlm()
    ours = from_transformers(hf)
    with torch.no_grad():
        ref = hf(**kwargs, output_hidden_states=True, output_attentions=True)
        out = ours(**kwargs, output_hidden_states=True, output_attentions=True)
    # before each of the 2 layers of each of the 2 block applications, and after each block
    assert len(out.hidden_states) == len(ref.hidden_states) == 6
    for mine, theirs in zip(out.hidden_states + out.attentions + out.cross_attentions,
                            ref.hidden_states + ref.attentions + ref.cross_attentions):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def test_hidden_states_and_attentions_carry_gradients_under_a_mask():
    hf, kwargs = mlm()
    ours = from_transformers(hf).train()
    out = ours(**kwargs, output_hidden_states=True, output_attentions=True)
    kept = [out.hidden_states[0], out.attentions[0], out.cross_attentions[0], out.cross_attentions[1]]
    for t in kept:
        t.retain_grad()
    out[0].flatten()[0].backward()
    for t in kept:
        assert t.grad is not None and t.grad.abs().sum() > 0
    # the encoder's map of a padding input is zero: no probability, but it has a gradient
    assert out.cross_attentions[0][1, ..., 5:].abs().max() == 0


def test_transformers_model_interface():
    hf, kwargs = mlm()
    ours = from_transformers(hf)
    assert type(ours).__name__ == "PerceiverForMaskedLM"
    assert ours.base_model_prefix == hf.base_model_prefix == "perceiver"
    assert ours.main_input_name == hf.main_input_name == "inputs"
    latents = ours.get_input_embeddings()
    assert isinstance(latents, torch.nn.Parameter) and latents.shape == hf.get_input_embeddings().shape
    new = torch.nn.Parameter(torch.zeros_like(latents))
    ours.set_input_embeddings(new)
    assert ours.get_input_embeddings() is new
    assert ours.perceiver.encoder.latents.pos_embs is new
    with pytest.raises(ValueError, match="expects an nn.Parameter of shape \\(4, 16\\), got \\(3, 16\\)"):
        ours.set_input_embeddings(torch.nn.Parameter(torch.zeros(3, 16)))
    # chunk_size_feed_forward changes nothing numerically (transformers chunks the MLP)
    chunked = copy.deepcopy(hf.config)
    chunked.chunk_size_feed_forward = 1
    ours.config = chunked
    ours.set_input_embeddings(latents)
    torch.testing.assert_close(ours(**kwargs).logits, hf(**kwargs).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("safe", [True, False])
def test_save_pretrained_is_read_by_transformers(tmp_path, safe):
    hf, kwargs = mlm()
    ours = from_transformers(hf)
    with torch.no_grad():
        ours.perceiver.encoder.latents.pos_embs.add_(1.0)  # a change of ours must be what is saved
        expected = ours(**kwargs).logits
    ours.save_pretrained(tmp_path, safe_serialization=safe)
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    theirs = transformers.PerceiverForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(**kwargs).logits, expected, atol=1e-5, rtol=1e-4)
    again = type(ours).from_pretrained(tmp_path)
    torch.testing.assert_close(again(**kwargs).logits, expected)
    with pytest.raises(ValueError, match="holds a PerceiverForMaskedLM, not a PerceiverModel"):
        WRAPPERS["PerceiverModel"].from_pretrained(tmp_path)


def test_converted_image_classifier_exports_to_onnx(tmp_path):
    """The converted transformers image classifier: torch.export, and ONNX run in onnxruntime."""
    hf = randomize(modeling_perceiver.PerceiverForImageClassificationConvProcessing(config(image_size=16))).eval()
    ours = from_transformers(hf)
    pixels = torch.randn(2, 3, 16, 16)
    exported = torch.export.export(ours, (pixels,))
    with torch.no_grad():
        ref = hf(pixels).logits
        torch.testing.assert_close(exported.module()(pixels).logits, ref, atol=1e-5, rtol=1e-4)
    pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra: pip install 'perceptio[onnx]'")
    ort = pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'perceptio[onnx]'")
    torch.onnx.export(ours, (pixels,), tmp_path / "m.onnx", dynamo=True, input_names=["pixel_values"], verbose=False)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"pixel_values": pixels.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(logits), ref, atol=1e-5, rtol=1e-4)


def test_loading_info_and_parameter_count(tmp_path):
    hf, _ = mlm()
    ours = from_transformers(hf)
    assert ours.num_parameters() == hf.num_parameters()
    ours.save_pretrained(tmp_path)
    again, info = WRAPPERS["PerceiverForMaskedLM"].from_pretrained(tmp_path, output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    assert again.num_parameters() == ours.num_parameters()


def test_converted_masked_lm_compiles_and_exports_with_a_mask():
    hf, kwargs = mlm()
    ours = from_transformers(hf)
    ref = hf(**kwargs).logits
    with torch.no_grad():
        compiled = torch.compile(ours, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(**kwargs).logits, ref, atol=1e-5, rtol=1e-4)
    exported = torch.export.export(ours, (kwargs["inputs"], kwargs["attention_mask"]))
    torch.testing.assert_close(exported.module()(kwargs["inputs"], kwargs["attention_mask"]).logits, ref,
                               atol=1e-5, rtol=1e-4)
