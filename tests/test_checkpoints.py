"""Importing checkpoints: DeepMind pickles (restricted unpickler), Hugging Face directories,
source detection, mismatch reports and the ``perceptio convert`` command."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from perceptio import Perceiver, load_deepmind_checkpoint
from perceptio.checkpoints import (
    convert, detect_deepmind_preset, detect_source, load_checkpoint,
    read_transformers_labels,
)
from perceptio.cli import main
from perceptio.interop.deepmind import config_from_reference, load_reference_file

from helpers import SHIPPED_FIXTURES

MLM_PICKLE = SHIPPED_FIXTURES / "mlm_small.pickle"
# mlm_small.json's reference config as language-perceiver overrides.
MLM_SMALL_OVERRIDES = dict(max_seq_len=96, d_model=64, num_latents=16, num_latent_channels=96,
                           num_self_attends_per_block=2, qk_channels=32, v_channels=96,
                           decoder_qk_channels=32, decoder_v_channels=64)


def mlm_golden() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    arrays = np.load(SHIPPED_FIXTURES / "mlm_small.npz")
    return (torch.from_numpy(arrays["inputs::ids"]).long(), torch.from_numpy(arrays["inputs::mask"]).bool(),
            arrays["outputs::logits"])


def assert_matches_golden(model: Perceiver) -> None:
    ids, mask, expected = mlm_golden()
    with torch.no_grad():
        logits = model(ids, input_mask=mask, query_mask=mask).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4 * (1 + np.abs(expected).max()), rtol=0)


def write_pickle(path, obj) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)
    return str(path)


# -- DeepMind checkpoints --------------------------------------------------------------
def test_load_with_the_reference_config():
    config = config_from_reference(json.loads((SHIPPED_FIXTURES / "mlm_small.json").read_text())["config"])
    assert_matches_golden(load_deepmind_checkpoint(MLM_PICKLE, config))


def test_load_with_a_preset_and_overrides():
    model = load_deepmind_checkpoint(MLM_PICKLE, "language-perceiver", **MLM_SMALL_OVERRIDES)
    assert not model.training
    assert_matches_golden(model)


def test_preset_is_recognised_from_parameter_names():
    params, _ = load_reference_file(str(MLM_PICKLE))
    assert detect_deepmind_preset(params) == "language-perceiver"
    with pytest.raises(ValueError, match="cannot tell"):
        detect_deepmind_preset({"something/else::w": np.zeros(1)})


def test_wrong_shapes_are_named():
    with pytest.raises(ValueError) as e:
        load_deepmind_checkpoint(MLM_PICKLE, "language-perceiver", **{**MLM_SMALL_OVERRIDES, "num_latents": 17,
                                                                       "max_seq_len": 128})
    message = str(e.value)
    assert str(MLM_PICKLE) in message and "wrong shape" in message
    assert "encoder.latents.pos_embs: expected (17, 96), got (16, 96)" in message
    assert "input_adapter.position.pos_embs: expected (128, 64), got (96, 64)" in message
    assert "decoder.query_builder.queries.pos_embs: expected (128, 64), got (96, 64)" in message


def test_missing_and_unused_parameters_are_named(tmp_path):
    params, _ = load_reference_file(str(MLM_PICKLE))
    tree: dict = {}
    for key, value in params.items():
        module, name = key.split("::")
        tree.setdefault(module, {})[name] = value
    del tree["embedding_decoder"]
    path = write_pickle(tmp_path / "missing.pickle", tree)
    with pytest.raises(ValueError, match=r"missing: \['output_adapter.bias'\]"):
        load_deepmind_checkpoint(path, "language-perceiver", **MLM_SMALL_OVERRIDES)
    tree["embedding_decoder"] = {"bias": np.zeros(262, np.float32)}
    tree["extra_head/linear"] = {"w": np.zeros((2, 2), np.float32)}
    path = write_pickle(tmp_path / "extra.pickle", tree)
    with pytest.raises(ValueError, match=r"not used by the model: \['extra_head/linear::w'\]"):
        load_deepmind_checkpoint(path, "language-perceiver", **MLM_SMALL_OVERRIDES)


class _RunsCommand:
    def __reduce__(self):
        return os.system, ("echo pwned",)


class _Custom:
    def __init__(self):
        self.x = 1


@pytest.mark.parametrize("payload, culprit", [
    ({"embed": _RunsCommand()}, "system"),
    ({"embed": {"embeddings": _Custom()}}, "_Custom"),
])
def test_restricted_unpickler_refuses_code(tmp_path, payload, culprit):
    path = write_pickle(tmp_path / "evil.pickle", payload)
    with pytest.raises(ValueError, match=rf"not a readable DeepMind checkpoint \(refusing to unpickle .*{culprit}"):
        load_deepmind_checkpoint(path, "language-perceiver", **MLM_SMALL_OVERRIDES)


def test_haiku_flat_mapping_is_read_without_haiku(tmp_path, monkeypatch):
    """Old releases pickle ``haiku._src.data_structures.FlatMapping``; fake that class (haiku
    is not installed) to write such a pickle, then read it with the module gone."""

    class FlatMapping(dict):
        def __reduce__(self):
            return FlatMapping, (dict(self),)

    FlatMapping.__module__ = "haiku._src.data_structures"
    FlatMapping.__qualname__ = "FlatMapping"
    fake = types.ModuleType("haiku._src.data_structures")
    fake.FlatMapping = FlatMapping
    for name in ("haiku", "haiku._src"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "haiku._src.data_structures", fake)

    params, _ = load_reference_file(str(MLM_PICKLE))
    tree: dict = {}
    for key, value in params.items():
        module, name = key.split("::")
        tree.setdefault(module, {})[name] = value
    path = write_pickle(tmp_path / "flat.pickle", FlatMapping({m: FlatMapping(p) for m, p in tree.items()}))
    for name in ("haiku", "haiku._src", "haiku._src.data_structures"):
        monkeypatch.delitem(sys.modules, name)
    assert b"haiku._src.data_structures" in open(path, "rb").read()
    assert_matches_golden(load_deepmind_checkpoint(path, "language-perceiver", **MLM_SMALL_OVERRIDES))


# -- source detection and Hugging Face directories -------------------------------------------
def test_detect_source(tmp_path):
    assert detect_source(MLM_PICKLE) == "deepmind"
    model_dir = tmp_path / "ours"
    load_deepmind_checkpoint(MLM_PICKLE, "language-perceiver", **MLM_SMALL_OVERRIDES).save_pretrained(model_dir)
    assert detect_source(model_dir) == "perceptio"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "perceiver", "architectures": ["PerceiverForMaskedLM"]}))
    assert detect_source(hf) == "transformers"
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a pickle"):
        detect_source(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="without config.json"):
        detect_source(tmp_path)
    with pytest.raises(FileNotFoundError):
        detect_source(tmp_path / "absent")


def test_transformers_labels(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"1": "dog", "0": "cat"}}))
    assert read_transformers_labels(tmp_path) == ["cat", "dog"]
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}))
    assert read_transformers_labels(tmp_path) is None


def _tiny_transformers_config(transformers, **kwargs):
    sizes = dict(num_latents=8, d_latents=32, d_model=16, num_blocks=1, num_self_attends_per_block=1,
                 num_self_attention_heads=4, num_cross_attention_heads=4, qk_channels=16, v_channels=32)
    return transformers.PerceiverConfig(**{**sizes, **kwargs})


def test_convert_transformers_masked_lm(tmp_path, capsys):
    pytest.importorskip("perceptio.interop.transformers")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.PerceiverForMaskedLM(_tiny_transformers_config(transformers, max_position_embeddings=48)).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert detect_source(tmp_path / "hf") == "transformers"
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    assert "converted transformers checkpoint" in capsys.readouterr().out
    model = Perceiver.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(6, 262, (2, 30))
    with torch.no_grad():
        expected = hf(inputs=ids).logits
        ours = model(ids).logits
    torch.testing.assert_close(ours[:, :30], expected[:, :30], atol=1e-4, rtol=1e-4)
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "x"), "--preset", "language-perceiver"]) == 2
    assert "apply to DeepMind checkpoints only" in capsys.readouterr().err


def test_convert_transformers_classifier_writes_labels(tmp_path, capsys):
    pytest.importorskip("perceptio.interop.transformers")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    names = ["tabby", "tiger", "lion"]
    config = _tiny_transformers_config(transformers, id2label=dict(enumerate(names)), qk_channels=None,
                                       v_channels=None, d_latents=16, num_cross_attention_heads=1)
    hf = transformers.PerceiverForImageClassificationConvProcessing(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = convert(tmp_path / "hf", tmp_path / "out")
    assert (tmp_path / "out" / "labels.txt").read_text().splitlines() == names
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(images.permute(0, 2, 3, 1)).logits, hf(inputs=images).logits,
                                   atol=1e-4, rtol=1e-4)


def test_presets_do_not_apply_to_self_describing_directories(tmp_path):
    load_deepmind_checkpoint(MLM_PICKLE, "language-perceiver", **MLM_SMALL_OVERRIDES).save_pretrained(tmp_path)
    model, labels = load_checkpoint(tmp_path)
    assert labels is None
    assert_matches_golden(model)
    with pytest.raises(ValueError, match="apply to DeepMind checkpoints only"):
        load_checkpoint(tmp_path, "language-perceiver")


# -- perceptio convert ----------------------------------------------------------------------------
def test_convert_api_writes_a_loadable_directory(tmp_path):
    convert(MLM_PICKLE, tmp_path / "out", "language-perceiver", **MLM_SMALL_OVERRIDES)
    assert_matches_golden(Perceiver.from_pretrained(tmp_path / "out"))


def test_cli_convert_with_preset_overrides(tmp_path, capsys):
    sets = [arg for k, v in MLM_SMALL_OVERRIDES.items() for arg in ("--set", f"{k}={v}")]
    assert main(["convert", str(MLM_PICKLE), str(tmp_path / "out"), "--preset", "language-perceiver", *sets]) == 0
    assert "converted deepmind checkpoint" in capsys.readouterr().out
    assert_matches_golden(Perceiver.from_pretrained(tmp_path / "out"))


def test_cli_convert_with_reference_config(tmp_path):
    assert main(["convert", str(MLM_PICKLE), str(tmp_path / "out"), "--config",
                 str(SHIPPED_FIXTURES / "mlm_small.json")]) == 0
    assert_matches_golden(Perceiver.from_pretrained(tmp_path / "out"))


def test_cli_convert_reports_mismatches(tmp_path, capsys):
    sets = [arg for k, v in MLM_SMALL_OVERRIDES.items() for arg in ("--set", f"{k}={v}")]
    assert main(["convert", str(MLM_PICKLE), str(tmp_path / "out"), *sets, "--set", "num_latents=17"]) == 2
    err = capsys.readouterr().err
    assert "perceptio convert: error:" in err and "encoder.latents.pos_embs: expected (17, 96), got (16, 96)" in err
    assert not (tmp_path / "out").exists()
    assert main(["convert", str(MLM_PICKLE), str(tmp_path / "out"), "--set", "num_latents"]) == 2
    assert "--set 'num_latents': expected KEY=VALUE" in capsys.readouterr().err


# -- a checkpoint with batch-norm state ---------------------------------------------------------
CONV_SMALL_OVERRIDES = dict(image_size=32, num_classes=10, num_channels=16, num_bands=8, num_latents=24,
                            num_latent_channels=64, num_blocks=2, num_self_attends_per_block=2)


def test_conv_checkpoint_with_batch_norm_state():
    pickle_path = SHIPPED_FIXTURES / "imagenet_conv_small.pickle"
    params, state = load_reference_file(str(pickle_path))
    assert state and detect_deepmind_preset(params) == "vision-perceiver-conv"
    arrays = np.load(SHIPPED_FIXTURES / "imagenet_conv_small.npz")
    images, expected = torch.from_numpy(arrays["inputs::images"]), arrays["outputs::logits"]
    reference = config_from_reference(json.loads((SHIPPED_FIXTURES / "imagenet_conv_small.json").read_text())["config"])
    for model in (load_deepmind_checkpoint(pickle_path, reference),
                  load_deepmind_checkpoint(pickle_path, **CONV_SMALL_OVERRIDES)):  # preset recognised
        with torch.no_grad():
            logits = model(images).logits.numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-4 * (1 + np.abs(expected).max()), rtol=0)
    assert load_deepmind_checkpoint(pickle_path, **CONV_SMALL_OVERRIDES).config == reference


# -- the multimodal autoencoder: preset + chunked decoding vs the official outputs ------------------
MULTIMODAL_SMALL_OVERRIDES = dict(num_frames=2, image_size=16, audio_samples_per_frame=64, samples_per_patch=16,
                                  num_classes=7, num_image_bands=8, num_audio_bands=24, label_query_channels=48,
                                  decoder_channels=32, num_latents=16, num_latent_channels=64,
                                  num_self_attends_per_block=2)


def test_multimodal_checkpoint_autoencodes_like_the_reference(tmp_path):
    """A checkpoint pickle written from the fixture (its encoder scope renamed to
    ``encoder/~`` as in the video autoencoding colab) through the preset and the chunked
    ``autoencode`` task reproduces the official full decode."""
    from perceptio.tasks.multimodal import autoencode

    arrays = np.load(SHIPPED_FIXTURES / "multimodal_small.npz")
    tree: dict = {}
    for key in arrays:
        group, _, name = key.partition("::")
        if group == "params":
            module, param = name.split("::")
            module = module.replace("perceiver_encoder/", "encoder/", 1)
            tree.setdefault(module, {})[param] = arrays[key]
    path = write_pickle(tmp_path / "video_autoencoding.pystate", tree)
    model = load_deepmind_checkpoint(path, **MULTIMODAL_SMALL_OVERRIDES)  # preset recognised
    reference = config_from_reference(json.loads((SHIPPED_FIXTURES / "multimodal_small.json").read_text())["config"])
    assert model.config == reference
    for b in range(2):
        result = autoencode(model, arrays["inputs::images"][b], arrays["inputs::audio"][b], chunk_size=200)
        for ours, name in ((result.video.reshape(-1, 3), "image"), (result.audio.reshape(-1), "audio"),
                           (result.label_logits, "label")):
            expected = arrays[f"outputs::full/{name}"][b]
            np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4 * (1 + np.abs(expected).max()), rtol=0,
                                       err_msg=name)
