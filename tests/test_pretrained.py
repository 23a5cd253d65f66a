"""The model directory format (perceptio.pretrained): one writer, one strict reader."""

import json

import pytest
import torch

from perceptio import CrossAttentionDecoderConfig, EncoderConfig, Perceiver, PerceiverConfig, TextAdapterConfig
from perceptio.pretrained import (
    CONFIG_NAME, WEIGHTS_NAME, atomic_write, atomic_write_text, is_model_dir, read_labels, save_model_dir,
)
from perceptio.queries import TrainableQueriesConfig
from perceptio.train import checkpoint as ckpt


def tiny() -> Perceiver:
    torch.manual_seed(0)
    return Perceiver(PerceiverConfig(
        input_adapter=TextAdapterConfig(max_seq_len=8, num_channels=16),
        encoder=EncoderConfig(num_latents=4, num_latent_channels=16, num_self_attends_per_block=1,
                              num_self_attend_heads=2, num_cross_attend_heads=1),
        decoder=CrossAttentionDecoderConfig(queries=TrainableQueriesConfig(num_queries=8, num_channels=16)),
    ))


def test_training_checkpoints_are_model_directories(tmp_path):
    model = tiny()
    path = ckpt.save_checkpoint(tmp_path, 3, model.state_dict(), model.config, {"step": 3}, keep_last=1)
    assert is_model_dir(path)
    loaded = Perceiver.from_pretrained(path)
    ids = torch.randint(0, 262, (2, 8))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_labels_round_trip_and_are_optional(tmp_path):
    model = tiny()
    save_model_dir(tmp_path / "a", model.state_dict(), model.config, ["cat", "dog"])
    save_model_dir(tmp_path / "b", model.state_dict(), model.config)
    assert read_labels(tmp_path / "a") == ["cat", "dog"]
    assert read_labels(tmp_path / "b") is None


def test_strict_load_names_every_mismatch(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["encoder"]["num_latents"] = 5
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"wrong shape: \['encoder.latents.pos_embs: expected \(5, 16\), got \(4, 16\)'\]"):
        Perceiver.from_pretrained(tmp_path)


def test_not_a_model_directory(tmp_path):
    assert not is_model_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{CONFIG_NAME} not found: not a perceptio model directory"):
        Perceiver.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    (tmp_path / WEIGHTS_NAME).write_bytes(b"")
    assert not is_model_dir(tmp_path)
    with pytest.raises(ValueError, match="not valid JSON"):
        Perceiver.from_pretrained(tmp_path)


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    class Boom(Exception):
        pass

    def fail(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary left behind


def test_convert_recognises_model_directories_by_the_same_rule(tmp_path):
    from perceptio.checkpoints import detect_source

    model = tiny()
    model.save_pretrained(tmp_path)
    assert detect_source(tmp_path) == "perceptio"
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors not found: not a complete perceptio model"):
        detect_source(tmp_path)
