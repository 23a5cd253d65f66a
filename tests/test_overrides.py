"""The one ``--set`` grammar (perceptio.overrides) and the one dotted-path setter
(perceptio.config.set_by_path), as ``perceptio convert`` and ``perceptio train`` use them."""

from __future__ import annotations

import pytest
import torch

import perceptio.checkpoints
import perceptio.train.trainer
from perceptio.cli import main
from perceptio.config import ConfigError, set_by_path
from perceptio.overrides import parse_assignments

from helpers import SHIPPED_FIXTURES

# VALUE text -> what it means, for both commands.
VALUES = {
    "2": 2, "-3": -3, "1e-3": 0.001, "0.5": 0.5, ".5": 0.5, "2.0": 2.0,
    "true": True, "false": False, "null": None, "": None,
    "[1, 2]": [1, 2], "[0.9,0.99]": [0.9, 0.99], "{a: 1}": {"a": 1},
    "lamb": "lamb", "runs/x": "runs/x", "'8'": "8", "a=b": "a=b",
}
EXPECTED = {f"k{i}": v for i, v in enumerate(VALUES.values())}


def sets(prefix: str = "") -> list[str]:
    return [arg for i, text in enumerate(VALUES) for arg in ("--set", f"{prefix}k{i}={text}")]


def test_the_same_set_strings_give_the_same_values_in_convert_and_train(monkeypatch, tmp_path):
    seen = {}

    def convert(source, out_dir, preset, **overrides):
        seen["convert"] = overrides
        return torch.nn.Linear(1, 1)

    class Trainer:
        def __init__(self, experiment, run_dir, resume=False, overwrite=False):
            seen["train"] = experiment.model.overrides

        def fit(self):
            return {}

    monkeypatch.setattr(perceptio.checkpoints, "convert", convert)
    monkeypatch.setattr(perceptio.checkpoints, "detect_source", lambda source: "deepmind")
    monkeypatch.setattr(perceptio.train.trainer, "Trainer", Trainer)
    assert main(["convert", "ckpt.pickle", str(tmp_path / "out"), "--preset", "language-perceiver", *sets()]) == 0
    assert main(["train", "quickstart", "--set", "model.perceiver=null", "--set", "model.preset=language-perceiver",
                 *sets("model.overrides."), "--run-dir", str(tmp_path / "run")]) == 0
    # repr: 2 is not 2.0 and True is not 1
    assert repr(seen["convert"]) == repr(seen["train"]) == repr(EXPECTED)


def test_a_later_assignment_wins():
    assert parse_assignments(["a.b=1", "c=x", "a.b=2"]) == [("a.b", 1), ("c", "x"), ("a.b", 2)]
    assert dict(parse_assignments(["a.b=1", "a.b=2"])) == {"a.b": 2}


@pytest.mark.parametrize("item", ["num_latents", "=3", "a..b=1", ".a=1", "a.=1"])
def test_malformed_assignments_are_rejected_alike_by_both_commands(item, capsys, tmp_path):
    assert main(["convert", "ckpt.pickle", str(tmp_path), "--preset", "language-perceiver", "--set", item]) == 2
    convert_err = capsys.readouterr().err
    assert main(["train", "quickstart", "--set", item, "--run-dir", str(tmp_path)]) == 2
    train_err = capsys.readouterr().err
    message = f"--set {item!r}: expected KEY=VALUE"
    assert message in convert_err and message in train_err


def test_a_value_that_is_not_yaml_names_the_assignment():
    with pytest.raises(ConfigError, match=r"--set 'optim.betas=\[0.9,': VALUE is not one YAML value"):
        parse_assignments(["optim.betas=[0.9,"])


# -- set_by_path ---------------------------------------------------------------------------
def test_set_by_path_sets_existing_fields_as_plain_data():
    data = {"encoder": {"num_blocks": 1, "dropout": 0.0}, "name": "x"}
    set_by_path(data, "encoder.num_blocks", 3)
    set_by_path(data, "name", ("a", "b"))
    assert data == {"encoder": {"num_blocks": 3, "dropout": 0.0}, "name": ["a", "b"]}


def test_set_by_path_strict_names_the_path_and_the_fields():
    data = {"encoder": {"num_blocks": 1, "dropout": 0.0}}
    with pytest.raises(ConfigError, match=r"cannot set 'encoder.num_block': encoder has no field 'num_block'; "
                                          r"fields: \['dropout', 'num_blocks'\]"):
        set_by_path(data, "encoder.num_block", 2)
    with pytest.raises(ConfigError, match=r"cannot set 'decoder.x': the config has no field 'decoder'; fields: \['encoder'\]"):
        set_by_path(data, "decoder.x", 2)
    with pytest.raises(ConfigError, match=r"cannot set 'encoder.dropout.p': encoder.dropout is a value \(0.0\), not a section"):
        set_by_path(data, "encoder.dropout.p", 2)
    assert data == {"encoder": {"num_blocks": 1, "dropout": 0.0}}


def test_set_by_path_create_makes_missing_sections():
    data = {"train": {"steps": 3}, "logging": None}
    set_by_path(data, "optim.lr", 0.1, create=True)
    set_by_path(data, "logging.plots", False, create=True)
    set_by_path(data, "train.batch_size", 8, create=True)
    assert data == {"train": {"steps": 3, "batch_size": 8}, "logging": {"plots": False}, "optim": {"lr": 0.1}}
    with pytest.raises(ConfigError, match=r"cannot set 'train.steps.x': train.steps is a value \(3\), not a section"):
        set_by_path(data, "train.steps.x", 1, create=True)


def test_train_set_errors_name_the_path(capsys, tmp_path):
    assert main(["train", "quickstart", "--set", "train.steps.x=1", "--run-dir", str(tmp_path)]) == 2
    assert "cannot set 'train.steps.x': train.steps is a value" in capsys.readouterr().err
    assert main(["train", "quickstart", "--set", "optim.lr=fast", "--run-dir", str(tmp_path)]) == 2
    assert "optim.lr: expected a number, got str 'fast'" in capsys.readouterr().err


def test_convert_set_errors_name_the_path(capsys, tmp_path):
    args = ["convert", str(SHIPPED_FIXTURES / "mlm_small.pickle"), str(tmp_path / "out"), "--preset", "language-perceiver"]
    assert main([*args, "--set", "encoder.num_block=2"]) == 2
    assert "cannot set 'encoder.num_block': encoder has no field 'num_block'" in capsys.readouterr().err
    assert main([*args, "--set", "num_latents=many"]) == 2
    assert "size field num_latents must be an integer" in capsys.readouterr().err
