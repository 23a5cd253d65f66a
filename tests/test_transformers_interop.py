"""Parity with Hugging Face ``transformers`` Perceiver models.

For every ``transformers`` Perceiver class, a tiny randomly initialised model (all
weights re-drawn at a scale where a mis-mapped tensor shows, layer norms included) is
converted with :func:`perceptio.from_transformers` and must give the same logits, called
the ``transformers`` way."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install '.[transformers]')"
)

# transformers' own numpy call in subsampled decoding warns under numpy 2.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# Import the (slow to import) Perceiver classes once at collection, not inside a test.
from transformers.models.perceiver import modeling_perceiver  # noqa: E402

from perceptio import from_transformers  # noqa: E402
from perceptio.interop.transformers import WRAPPERS, TransformersPerceiver  # noqa: E402
from perceptio.model import Perceiver  # noqa: E402

from helpers import randomize  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models are tiny: a second thread only adds synchronisation (seconds on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides) -> transformers.PerceiverConfig:
    base = dict(
        num_latents=4, d_latents=32, d_model=24, num_blocks=2, num_self_attends_per_block=2,
        num_self_attention_heads=2, num_cross_attention_heads=1, max_position_embeddings=12,
        num_labels=3, attention_probs_dropout_prob=0.0,
    )
    return transformers.PerceiverConfig(**{**base, **overrides})


def text_case(cls_name: str, **overrides):
    model = randomize(getattr(transformers, cls_name)(tiny_config(**overrides)))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 262, (2, 10), generator=g)
    mask = torch.ones(2, 10)
    mask[1, 6:] = 0  # padding: the encoder must ignore it
    return model, {"inputs": ids, "attention_mask": mask}


def image_case(cls_name: str, image_size: int, shape: tuple[int, int], masked: bool = False):
    model = randomize(getattr(transformers, cls_name)(tiny_config(image_size=image_size)))
    pixels = torch.randn((2, 3, *shape), generator=torch.Generator().manual_seed(1))
    kwargs = {"inputs": pixels}
    if masked:
        mask = torch.ones(2, shape[0] * shape[1])
        mask[0, ::3] = 0
        kwargs["attention_mask"] = mask
    return model, kwargs


def flow_case(**overrides):
    model = randomize(transformers.PerceiverForOpticalFlow(tiny_config(train_size=[6, 8], **overrides)))
    patches = torch.randn((2, 2, 27, 6, 8), generator=torch.Generator().manual_seed(1))
    return model, {"inputs": patches}


def multimodal_config(**overrides) -> transformers.PerceiverConfig:
    return tiny_config(
        num_frames=2, image_size=8, audio_samples_per_frame=16, samples_per_patch=8, output_shape=[1, 2, 8, 8],
        output_num_channels=12, _label_trainable_num_channels=16, num_labels=5, **overrides,
    )


def multimodal_case():
    model = randomize(transformers.PerceiverForMultimodalAutoencoding(multimodal_config()))
    g = torch.Generator().manual_seed(1)
    inputs = {
        "audio": torch.randn((2, 32, 1), generator=g),
        "image": torch.randn((2, 2, 3, 8, 8), generator=g),
        "label": torch.zeros(2, 5),
    }
    points = {"audio": torch.tensor([3, 0, 2]), "image": torch.randperm(128, generator=g)[:20], "label": None}
    return model, {"inputs": inputs, "subsampled_output_points": points}


CASES = {
    "PerceiverForMaskedLM": lambda: text_case("PerceiverForMaskedLM"),
    "PerceiverForSequenceClassification": lambda: text_case("PerceiverForSequenceClassification"),
    "PerceiverForImageClassificationLearned": lambda: image_case("PerceiverForImageClassificationLearned", 8, (8, 8)),
    "PerceiverForImageClassificationFourier": lambda: image_case(
        "PerceiverForImageClassificationFourier", 8, (8, 8), masked=True
    ),
    "PerceiverForImageClassificationConvProcessing": lambda: image_case(
        "PerceiverForImageClassificationConvProcessing", 16, (16, 16)
    ),
    "PerceiverForOpticalFlow": flow_case,
    "PerceiverForMultimodalAutoencoding": multimodal_case,
}


def assert_close(ours, ref, what: str = "logits") -> None:
    if isinstance(ref, dict):
        assert set(ours) == set(ref), f"{what}: keys {sorted(ours)} != {sorted(ref)}"
        for k in ref:
            assert_close(ours[k], ref[k], f"{what}[{k}]")
        return
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != transformers {tuple(ref.shape)}"
    err = (ours - ref).abs().max().item()
    bound = 1e-4 * (1 + ref.abs().max().item())
    assert err <= bound, f"{what}: max |ours - transformers| = {err:.3g} > {bound:.3g}"


def run(model, kwargs):
    with torch.no_grad():
        return model(**kwargs)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_transformers(name):
    hf, kwargs = CASES[name]()
    ours = from_transformers(hf)
    assert isinstance(ours, TransformersPerceiver) and isinstance(ours, WRAPPERS[name])
    ref = run(hf, kwargs)
    out = run(ours, kwargs)
    assert_close(out.logits, ref.logits)
    assert_close(out.latents, run(hf.perceiver, kwargs).last_hidden_state, "latents")
    theirs, mine = hf.perceiver.embeddings.latents, ours.perceiver.encoder.latents.pos_embs
    assert mine.data_ptr() != theirs.data_ptr(), "the converted model must own its parameters"


def test_every_transformers_perceiver_class_has_a_case():
    public = {n for n in modeling_perceiver.__all__ if n.startswith("PerceiverFor")}
    assert public == set(CASES) == set(WRAPPERS) - {"PerceiverModel"}
    assert all(name == cls.__name__ for name, cls in WRAPPERS.items())


@pytest.mark.parametrize("case", ["text", "flow"])
def test_cross_attention_shape_for_attention_q(case):
    """With "q", every cross-attention's qk width is its query width (decoders included)."""
    overrides = {"cross_attention_shape_for_attention": "q", "num_cross_attention_heads": 2}
    hf, kwargs = text_case("PerceiverForMaskedLM", **overrides) if case == "text" else flow_case(**overrides)
    assert_close(run(from_transformers(hf), kwargs).logits, run(hf, kwargs).logits)


def test_encoder_qk_and_v_channels():
    """As the released masked LM: qk_channels / v_channels set in the config."""
    hf, kwargs = text_case("PerceiverForMaskedLM", qk_channels=16, v_channels=32)
    ours = from_transformers(hf)
    assert ours.perceiver.encoder.cross_attends[0].attention.qk_channels == 16
    assert_close(run(ours, kwargs).logits, run(hf, kwargs).logits)


def test_dtype_is_kept():
    hf, kwargs = text_case("PerceiverForSequenceClassification")
    ours = from_transformers(hf.double())
    assert ours.perceiver.encoder.latents.pos_embs.dtype == torch.float64
    ref, out = run(hf, kwargs).logits, run(ours, kwargs).logits
    assert out.dtype == torch.float64
    assert (out - ref).abs().max().item() <= 1e-10 * (1 + ref.abs().max().item())


def test_masks():
    hf, kwargs = text_case("PerceiverForSequenceClassification")
    ours = from_transformers(hf)
    ref = run(hf, kwargs).logits
    assert_close(run(ours, {**kwargs, "attention_mask": kwargs["attention_mask"].bool()}).logits, ref, "bool mask")
    assert_close(run(ours, {**kwargs, "attention_mask": kwargs["attention_mask"].long()}).logits, ref, "int mask")
    with pytest.raises(ValueError, match="only 0 \\(padding\\) and 1"):
        ours(**{**kwargs, "attention_mask": kwargs["attention_mask"] * 0.5})
    with pytest.raises(ValueError, match="input_mask must have shape \\(2, 10\\)"):
        ours(**{**kwargs, "attention_mask": kwargs["attention_mask"][:, :5]})
    # An example with no input at all: transformers attends uniformly to its padding, we
    # attend to nothing (documented); the others are unaffected, and we warn.
    empty = kwargs["attention_mask"].clone()
    empty[1] = 0
    with pytest.warns(UserWarning, match="masks every input of some example"):
        out = run(ours, {**kwargs, "attention_mask": empty}).logits
    assert_close(out[0], run(hf, {**kwargs, "attention_mask": empty}).logits[0], "unmasked example")


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu", "silu"])
def test_activation_is_kept(act):
    hf, kwargs = text_case("PerceiverForSequenceClassification", hidden_act=act)
    ours = from_transformers(hf)
    expected = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu", "silu": "silu"}[act]
    assert ours.perceiver.config.encoder.activation == expected
    assert ours.perceiver.config.decoder.activation == expected
    assert_close(run(ours, kwargs).logits, run(hf, kwargs).logits)


def test_unsupported_activation_is_refused():
    hf, _ = text_case("PerceiverForSequenceClassification", hidden_act="quick_gelu")
    with pytest.raises(ValueError, match="hidden_act='quick_gelu'"):
        from_transformers(hf)


def test_attentions_loss_and_tuple_outputs_match():
    hf, kwargs = text_case("PerceiverForSequenceClassification")
    ours = from_transformers(hf)
    kwargs = {**kwargs, "labels": torch.tensor([0, 2]), "output_attentions": True}
    ref, out = run(hf, kwargs), run(ours, kwargs)
    assert_close(out.loss, ref.loss, "loss")
    assert len(out.attentions) == len(ref.attentions) == 4
    for i, (a, b) in enumerate(zip(out.attentions + out.cross_attentions, ref.attentions + ref.cross_attentions)):
        assert_close(a, b, f"attention {i}")
    ref_t, out_t = run(hf, {**kwargs, "return_dict": False}), run(ours, {**kwargs, "return_dict": False})
    assert len(out_t) == len(ref_t) == 5  # loss, logits, self, (encoder cross,), decoder cross
    assert_close(out_t[1], ref_t[1])
    assert_close(out_t[3][0], ref_t[3][0], "encoder cross-attention")
    assert_close(out_t[4], ref_t[4], "decoder cross-attention")


def test_masked_lm_loss_and_input_ids_alias():
    hf, kwargs = text_case("PerceiverForMaskedLM")
    ours = from_transformers(hf)
    labels = torch.full((2, 12), -100)
    labels[:, :3] = 7
    ref = run(hf, {"input_ids": kwargs["inputs"], "attention_mask": kwargs["attention_mask"], "labels": labels})
    out = run(ours, {"input_ids": kwargs["inputs"], "attention_mask": kwargs["attention_mask"], "labels": labels})
    assert_close(out.loss, ref.loss, "loss")
    with pytest.raises(ValueError, match="both `inputs` and `input_ids`"):
        ours(inputs=kwargs["inputs"], input_ids=kwargs["inputs"])
    with pytest.raises(TypeError, match="pixel_values"):
        ours(pixel_values=kwargs["inputs"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_directory_round_trip(tmp_path, name):
    hf, kwargs = CASES[name]()
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = from_transformers(str(tmp_path))
    assert type(ours) is WRAPPERS[name]
    assert_close(run(ours, kwargs).logits, run(hf, kwargs).logits)


@pytest.mark.parametrize("name", sorted(CASES))
def test_converted_model_saves_as_perceptio(tmp_path, name):
    """The perceptio config alone describes the converted model (no hidden wrapper state)."""
    hf, kwargs = CASES[name]()
    ours = from_transformers(hf)
    ours.perceiver.save_pretrained(tmp_path)
    again = type(ours)(Perceiver.from_pretrained(tmp_path), ours.config).eval()
    assert_close(run(again, kwargs).logits, run(hf, kwargs).logits)


def test_directory_with_pytorch_bin(tmp_path):
    hf, kwargs = CASES["PerceiverForSequenceClassification"]()
    hf.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin").is_file() and not (tmp_path / "model.safetensors").exists()
    assert_close(run(from_transformers(tmp_path), kwargs).logits, run(hf, kwargs).logits)


@pytest.mark.parametrize(
    "name, shape",
    [("PerceiverForImageClassificationFourier", (6, 10)), ("PerceiverForImageClassificationConvProcessing", (15, 18))],
)
def test_fourier_image_models_take_other_sizes(name, shape):
    """transformers encodes the grid of the given image (max_resolution stays fixed)."""
    hf, kwargs = image_case(name, 16, shape)
    assert_close(run(from_transformers(hf), kwargs).logits, run(hf, kwargs).logits)


def test_learned_image_model_refuses_other_sizes_and_ignores_interpolation():
    hf, kwargs = CASES["PerceiverForImageClassificationLearned"]()
    ours = from_transformers(hf)
    both = {**kwargs, "interpolate_pos_encoding": True}
    assert_close(run(ours, both).logits, run(hf, both).logits)
    with pytest.raises(ValueError, match="trainable positions were built for a feature grid"):
        ours(pixel_values=torch.randn(1, 3, 6, 6))
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['subsampled_output_points'\\]"):
        ours(pixel_values=kwargs["inputs"], subsampled_output_points={})


def test_multimodal_label_input_is_masked_and_label_points_ignored():
    hf, kwargs = CASES["PerceiverForMultimodalAutoencoding"]()
    ours = from_transformers(hf)
    other = {**kwargs, "inputs": {**kwargs["inputs"], "label": torch.eye(5)[:2]}}
    ref, out = run(hf, other).logits, run(ours, other).logits
    assert_close(out, ref)
    assert_close(out, run(ours, kwargs).logits, "with another label input")
    # transformers fails on label points other than None; we decode the label's one query.
    other["subsampled_output_points"] = {**kwargs["subsampled_output_points"], "label": torch.tensor([0])}
    assert_close(run(ours, other).logits, ref, "with label points")


def test_multimodal_without_points_decodes_everything():
    """transformers fails without subsampled_output_points; we decode all outputs, as
    transformers does when given every index."""
    hf, kwargs = CASES["PerceiverForMultimodalAutoencoding"]()
    ours = from_transformers(hf)
    every = {"audio": torch.arange(4), "image": torch.arange(128)}
    out = run(ours, {"inputs": kwargs["inputs"]}).logits
    assert out["image"].shape == (2, 128, 3) and out["audio"].shape == (2, 32) and out["label"].shape == (2, 5)
    assert_close(out, run(hf, {"inputs": kwargs["inputs"], "subsampled_output_points": every}).logits)


def test_non_perceiver_model_is_refused(tmp_path):
    bert = transformers.BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    model = transformers.BertForMaskedLM(bert)
    with pytest.raises(ValueError, match="BertForMaskedLM .* not a supported transformers Perceiver model"):
        from_transformers(model)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="BertForMaskedLM .* not a supported transformers Perceiver model"):
        from_transformers(tmp_path)
    with pytest.raises(TypeError, match="expects a transformers Perceiver model or a directory"):
        from_transformers(torch.nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_transformers(tmp_path / "missing")


def test_bare_perceiver_model_matches_transformers(tmp_path):
    """PerceiverModel without processors: features [B, M, d_model] -> latents."""
    hf = randomize(transformers.PerceiverModel(tiny_config()))
    g = torch.Generator().manual_seed(1)
    kwargs = {"inputs": torch.randn((2, 10, 24), generator=g), "attention_mask": torch.ones(2, 10)}
    kwargs["attention_mask"][0, 7:] = 0
    ours = from_transformers(hf)
    ref, out = run(hf, kwargs), run(ours, kwargs)
    assert out.logits is None and list(out.keys()) == ["last_hidden_state"]
    assert_close(out.last_hidden_state, ref.last_hidden_state, "last_hidden_state")
    hf.save_pretrained(tmp_path)
    assert_close(run(from_transformers(tmp_path), kwargs).last_hidden_state, ref.last_hidden_state, "from directory")
    with pytest.raises(ValueError, match="doesn't correspond to config.d_model: 24"):
        ours(inputs=torch.randn(2, 10, 8))
    with pytest.raises(ValueError, match="attention_mask must have shape \\(2, 10\\)"):
        ours(inputs=kwargs["inputs"], attention_mask=torch.ones(2, 9))


def test_perceiver_model_with_custom_processors_is_refused():
    c = tiny_config()
    pre = modeling_perceiver.PerceiverTextPreprocessor(c)
    decoder = modeling_perceiver.PerceiverClassificationDecoder(
        c, num_channels=c.d_latents, trainable_position_encoding_kwargs=dict(num_channels=c.d_latents, index_dims=1),
        use_query_residual=True,
    )
    model = transformers.PerceiverModel(c, input_preprocessor=pre, decoder=decoder)
    with pytest.raises(
        ValueError,
        match="PerceiverModel with custom input_preprocessor=PerceiverTextPreprocessor \\(the class builds NoneType\\), "
        "decoder=PerceiverClassificationDecoder \\(the class builds NoneType\\) cannot be mapped",
    ):
        from_transformers(model)
    # a task model with a module swapped for another kind
    classifier = transformers.PerceiverForSequenceClassification(c)
    classifier.perceiver.input_preprocessor = modeling_perceiver.PerceiverOneHotPreprocessor(c)
    with pytest.raises(ValueError, match="PerceiverForSequenceClassification with custom input_preprocessor="
                                         "PerceiverOneHotPreprocessor \\(the class builds PerceiverTextPreprocessor\\)"):
        from_transformers(classifier)


def test_checkpoint_that_does_not_fit_is_reported(tmp_path):
    hf, _ = CASES["PerceiverForSequenceClassification"]()
    hf.save_pretrained(tmp_path)
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    latents = state.pop("perceiver.embeddings.latents")
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing.*perceiver.embeddings.latents"):
        from_transformers(tmp_path)
    state["perceiver.embeddings.latents"] = latents[:2]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="size mismatch for perceiver.embeddings.latents"):
        from_transformers(tmp_path)


def test_import_perceptio_does_not_import_transformers():
    code = (
        "import sys, perceptio; assert 'transformers' not in sys.modules; "
        "perceptio.from_transformers; assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
