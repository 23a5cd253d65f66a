"""Reliability of what enters perceptio (issue 9, model inputs, configs and sizes): every
bad input gets an error naming what was expected and what was given, before any tensor
math or allocation; masked inputs never matter. The slower cases: tests/battery_inputs.py."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from perceptio import (CrossAttentionDecoderConfig, EncoderConfig, FourierQueriesConfig, Perceiver, PerceiverConfig,
                       TextAdapterConfig)
from perceptio.adapters.grid import PointCloudAdapterConfig
from perceptio.config import Config, ConfigError
from perceptio.data import DataConfig
from perceptio.overrides import load_yaml
from perceptio.presets import create_model
from perceptio.queries import InputQueriesConfig, TrainableQueriesConfig
from perceptio.train.experiment import experiment_from_dict, load_experiment
from perceptio.train.trainer import Trainer, TrainingDiverged

ROOT = Path(__file__).resolve().parents[1]


def encoder(**kw) -> EncoderConfig:
    return EncoderConfig(**{"num_latents": 4, "num_latent_channels": 8, "num_self_attends_per_block": 1,
                            "num_self_attend_heads": 2, "num_cross_attend_heads": 2, **kw})


def text_model(**adapter) -> Perceiver:
    torch.manual_seed(0)
    return Perceiver(PerceiverConfig(
        input_adapter=TextAdapterConfig(max_seq_len=16, num_channels=8, **adapter), encoder=encoder(),
        decoder=CrossAttentionDecoderConfig(queries=FourierQueriesConfig(index_dims=[4, 4], num_bands=2),
                                            output_channels=3)))


def point_model(queries="trainable", num_cross_attends: int = 1) -> Perceiver:
    torch.manual_seed(0)
    q = TrainableQueriesConfig(num_queries=2, num_channels=8) if queries == "trainable" else InputQueriesConfig()
    return Perceiver(PerceiverConfig(
        input_adapter=PointCloudAdapterConfig(num_features=2, num_channels=4, num_bands=3),
        encoder=encoder(num_cross_attends=num_cross_attends, num_cross_attend_heads=1), decoder=CrossAttentionDecoderConfig(queries=q))).eval()


# ---------------------------------------------------------------------------------------
# Non-finite config values: one mechanism, every float field of every Config
# ---------------------------------------------------------------------------------------
def all_configs() -> list[type[Config]]:
    found, todo = [], [Config]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        found.append(cls)
    return found


def float_fields() -> list[tuple[type[Config], str]]:
    out = []
    for cls in all_configs():
        if "_registry" in cls.__dict__ or cls is Config:
            continue  # polymorphic bases
        for f in dataclasses.fields(cls):
            if float in (typing.get_type_hints(cls)[f.name], *typing.get_args(typing.get_type_hints(cls)[f.name])):
                out.append((cls, f.name))
    return out


def test_every_float_config_field_rejects_nan_and_inf():
    cases = float_fields()
    assert len(cases) > 20  # encoder dropouts, optim, data fractions, init scales, ...
    checked = 0
    for cls, name in cases:
        try:
            base = cls()
        except (TypeError, ConfigError):  # needs required fields (e.g. PerceiverConfig's adapter)
            continue
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ConfigError, match=rf"{cls.__name__}\.{name} must be a finite number, got "):
                dataclasses.replace(base, **{name: bad})
        checked += 1
    assert checked > 20


@pytest.mark.parametrize("assignment, where", [
    ("optim.lr=.nan", "OptimConfig.lr"), ("optim.lr=.inf", "OptimConfig.lr"),
    ("optim.betas=[0.9, .nan]", "OptimConfig.betas[1]"),
    ("model.perceiver.encoder.dropout=-.inf", "model.perceiver.encoder: EncoderConfig.dropout"),
])
def test_experiment_with_non_finite_value_is_refused_naming_the_key(assignment, where):
    with pytest.raises(ConfigError, match=rf"quickstart.yaml: .*{where.replace('[', '.').replace(']', '.')} must be a "
                                          r"finite number, got -?(nan|inf)"):
        load_experiment("quickstart", [assignment])


# ---------------------------------------------------------------------------------------
# YAML alias bombs
# ---------------------------------------------------------------------------------------
def alias_bomb(levels: int = 9) -> str:
    lines, previous = ["a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"], "a"
    for name in "bcdefghijk"[: levels - 1]:
        lines.append(f"{name}: &{name} [{', '.join(['*' + previous] * 10)}]")
        previous = name
    return "\n".join(lines)


def test_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    with pytest.raises(ConfigError, match=r"expands to more than 100,000 values through aliases"):
        load_yaml(alias_bomb())  # 10^9 values if expanded
    path = tmp_path / "bomb.yaml"
    path.write_text("data: {kind: digits}\nmodel:\n  preset: language-perceiver\n  overrides:\n"
                    + textwrap.indent(alias_bomb(), "    ") + "\n")
    with pytest.raises(ConfigError, match=r"bomb.yaml: YAML line \d+, column \d+: the document expands"):
        load_experiment(path)


def test_yaml_recursive_alias_is_refused_and_plain_aliases_work():
    with pytest.raises(ConfigError, match=r"an alias refers to the node that contains it"):
        load_yaml("a: &a [1, *a]")
    assert load_yaml("a: &x {b: 1}\nc: *x") == {"a": {"b": 1}, "c": {"b": 1}}


# ---------------------------------------------------------------------------------------
# Sizes counted on the meta device before anything is allocated
# ---------------------------------------------------------------------------------------
def test_huge_position_table_is_refused_naming_field_and_size():
    config = PerceiverConfig(input_adapter=TextAdapterConfig(max_seq_len=100_000_000), encoder=encoder())
    with pytest.raises(ConfigError, match=r"^input_adapter\.max_seq_len=100000000 makes a 307 GB tensor "
                                          r"input_adapter\.position\.pos_embs \[100000000, 768\].*above the limit of "
                                          r"4 GB \(PERCEPTIO_MAX_MODEL_GB"):
        Perceiver(config)


def test_huge_width_through_create_model_names_the_field():
    with pytest.raises(ConfigError, match=r"^encoder\.num_latent_channels=65536 makes 9\d\d GB in \d+ tensors"):
        create_model("language-perceiver", num_latent_channels=65536)


def test_too_many_layers_are_refused_before_building_them():
    config = PerceiverConfig(input_adapter=TextAdapterConfig(), encoder=encoder().replace(
        num_self_attends_per_block=10**7))
    with pytest.raises(ConfigError, match=r"num_self_attends_per_block=10000000 .* makes 10,000,001 attention "
                                          r"layers, above the limit of 1,024 \(PERCEPTIO_MAX_LAYERS\)"):
        Perceiver(config)


def test_the_size_limit_can_be_lowered_and_raised(monkeypatch):
    config = text_model().config
    with pytest.raises(ConfigError, match=r"above the limit of 1 kB"):
        Perceiver(config, max_gb=1e-6)
    monkeypatch.setenv("PERCEPTIO_MAX_MODEL_GB", "1e-6")
    with pytest.raises(ConfigError, match=r"above the limit of 1 kB \(PERCEPTIO_MAX_MODEL_GB"):
        Perceiver(config)
    Perceiver(config, max_gb=1.0)  # the keyword wins
    monkeypatch.setenv("PERCEPTIO_MAX_MODEL_GB", "lots")
    with pytest.raises(ValueError, match=r"PERCEPTIO_MAX_MODEL_GB='lots': expected a number"):
        Perceiver(config)


def test_size_guard_allocates_nothing_on_every_construction_path(tmp_path):
    """Constructor, create_model, a hand-edited config.json, `perceptio train --set`: each
    is refused with the field named, and the process never grows beyond a few hundred MB."""
    model_dir = tmp_path / "model"
    text_model().save_pretrained(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["input_adapter"]["max_seq_len"] = 10**9  # 32 GB at 8 channels
    (model_dir / "config.json").write_text(json.dumps(config))
    script = textwrap.dedent(f"""
        import resource, sys
        from perceptio import Perceiver, PerceiverConfig, TextAdapterConfig
        from perceptio.cli import main
        from perceptio.presets import create_model
        def refused(make):
            try:
                make()
            except ValueError as e:
                print("refused:", e)
            else:
                print("NOT refused")
        refused(lambda: Perceiver(PerceiverConfig(input_adapter=TextAdapterConfig(max_seq_len=100_000_000))))
        refused(lambda: create_model("language-perceiver", num_latent_channels=65536))
        refused(lambda: Perceiver.from_pretrained({str(model_dir)!r}))
        code = main(["train", "quickstart", "--run-dir", {str(tmp_path / "run")!r},
                     "--set", "model.perceiver.encoder.num_latents=100000000"])
        print("train exit", code)
        # VmHWM: the peak of this process image alone (ru_maxrss survives exec, so it would
        # report the pytest process's own peak when that is higher)
        hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")]
        kb = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("peak MB", kb / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines[:3]] == ["refused"] * 3, out.stdout
    assert "max_seq_len=100000000 makes a 307 GB tensor" in lines[0] and "max_seq_len=1000000000 makes a 32 GB" in lines[2]
    assert "num_latent_channels=65536" in lines[1]
    assert "train exit 2" in out.stdout
    assert "encoder.num_latents=100000000 makes" in out.stderr and "Traceback" not in out.stderr
    assert float(lines[-1].split()[-1]) < 1500, out.stdout  # torch + sklearn + the data: a few hundred MB


def test_an_output_grid_too_large_to_decode_at_once_is_refused_before_allocation():
    """Fourier queries of a 10^10-point grid: forward refuses before making the grid (80 GB of
    positions alone); the parameters are small, so the construction-time size check passes."""
    torch.manual_seed(0)
    model = Perceiver(PerceiverConfig(
        input_adapter=TextAdapterConfig(max_seq_len=16, num_channels=8), encoder=encoder(),
        decoder=CrossAttentionDecoderConfig(queries=FourierQueriesConfig(index_dims=[100_000, 100_000], num_bands=2),
                                            output_channels=3)))
    ids = torch.randint(0, 256, (1, 16))
    with pytest.raises(ValueError, match=r"10,000,000,000 positions x 2 dims x num_bands=2 would take .* GB, "
                                         r"above the limit of 4 GB \(PERCEPTIO_MAX_FEATURES_GB\)"):
        model(ids)
    # the same grid decodes in bounded pieces: the first rows only
    out = model.decode(model.encode(ids)[0], rows=torch.arange(5))
    assert out.shape == (1, 5, 3) and torch.isfinite(out).all()


def test_fourier_features_above_the_limit_are_refused(monkeypatch):
    from perceptio.layers.position import FourierPositionEncoding

    encoding = FourierPositionEncoding(None, num_bands=4, max_resolution=[8, 8])
    positions = torch.rand(1000, 2)
    assert encoding.encode(positions).shape == (1000, 2 + 2 * 2 * 4)
    monkeypatch.setenv("PERCEPTIO_MAX_FEATURES_GB", str(1000 * 19 * 4 / 1e9))  # below 1000 x (18 + 2) floats
    with pytest.raises(ValueError, match="1,000 positions x 2 dims x num_bands=4 .*PERCEPTIO_MAX_FEATURES_GB"):
        encoding.encode(positions)


def test_attention_maps_above_the_limit_are_refused_before_allocation(monkeypatch):
    model = text_model()
    ids = torch.randint(0, 262, (2, 16))
    monkeypatch.setenv("PERCEPTIO_MAX_ATTENTION_GB", "1e-7")  # 100 bytes: every map is larger
    with pytest.raises(ValueError, match=r"an attention map \[2, 2, 4, 16\] \[batch, heads, queries, keys\] of "
                                         r"torch.float32 would take 1.02 kB, above the limit of 100 B "
                                         r"\(PERCEPTIO_MAX_ATTENTION_GB\)"):
        model(ids, return_attention=True)
    monkeypatch.setenv("PERCEPTIO_MAX_ATTENTION_GB", "1.5e-6")  # each map fits, all of them do not
    with pytest.raises(ValueError, match=r"the attention maps recorded up to decoder\.\S+ \(3 maps, the last "
                                         r"\[2, 1, 16, 4\]\) take 1.79 kB, above the limit of 1.5 kB"):
        model(ids, return_attention=True)
    monkeypatch.delenv("PERCEPTIO_MAX_ATTENTION_GB")
    assert len(model(ids, return_attention=True).attentions["cross"]) == 1


# ---------------------------------------------------------------------------------------
# Output indices
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("points, error, given", [
    (torch.tensor([16]), ValueError, r"got values in \[16, 16\]"),
    (torch.tensor([3, -1]), ValueError, r"got values in \[-1, 3\]"),
    (torch.tensor([1.0]), TypeError, r"got dtype torch.float32"),
    (torch.tensor([True]), TypeError, r"got dtype torch.bool"),
    (torch.tensor([[1]]), ValueError, r"got shape \(1, 1\)"),
    ([1, 2], TypeError, r"got list"),
])
def test_points_are_validated_once(points, error, given):
    model = text_model()
    ids = torch.randint(0, 262, (2, 16))
    expected = r"points must be a 1-d integer tensor of output indices in \[0, 16\)"
    with pytest.raises(error, match=rf"{expected}.*{given}"):
        model(ids, points=points)
    latents, context = model.encode(ids)
    with pytest.raises(error, match=rf"{expected}.*{given}"):
        model.decode_chunked(latents, context, chunk_size=4, points=points)
    with pytest.raises(error, match=given):
        model.decode(latents, context, rows=points)


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5, True])
def test_chunk_size_must_be_a_positive_integer(chunk_size):
    model = text_model()
    with pytest.raises(ValueError, match=rf"chunk_size must be a positive integer \(queries per chunk\), got "
                                         rf"{chunk_size!r}"):
        model.decode_chunked(*model.encode(torch.randint(0, 262, (1, 16))), chunk_size=chunk_size)


def test_valid_points_and_multimodal_points_out_of_range():
    from perceptio.presets import preset_config

    model = text_model()
    ids = torch.randint(0, 262, (2, 16))
    full = model(ids).logits
    torch.testing.assert_close(model(ids, points=torch.tensor([0, 15], dtype=torch.int32)).logits.shape,
                               torch.Size([2, 2, 3]))
    latents, context = model.encode(ids)
    torch.testing.assert_close(model.decode(latents, context, rows=torch.tensor([2, 9])), full[:, [2, 9]])
    config = preset_config("multimodal-perceiver")
    with torch.device("meta"):
        mm = Perceiver(config)
    with pytest.raises(ValueError, match=r"points\['label'\] must be a 1-d integer tensor of output indices in "
                                         r"\[0, 1\) .*got values in \[1, 1\]"):
        mm.decoder.check_selection(None, {"label": torch.tensor([1])}, "points")


# ---------------------------------------------------------------------------------------
# Masked inputs never matter, NaN and Inf included
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("queries, num_cross_attends", [("trainable", 1), ("trainable", 3), ("inputs", 1)])
@pytest.mark.parametrize("fill", [math.nan, math.inf, -math.inf, 1e30])
def test_masked_padding_does_not_change_outputs(queries, num_cross_attends, fill):
    model = point_model(queries, num_cross_attends)
    model.check_finite = True
    points = torch.randn(2, 5, 5)
    padded = torch.cat([points, torch.full((2, 3, 5), fill)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3] * 2)
    with torch.no_grad():
        expected = model(points)
        out = model(padded, input_mask=mask)
        maps = model(padded, input_mask=mask, return_attention=True)  # the explicit attention path
    rows = slice(0, 5) if queries == "inputs" else slice(None)  # input queries: one output per input point
    torch.testing.assert_close(out.logits[:, rows], expected.logits[:, rows], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps.logits[:, rows], expected.logits[:, rows], rtol=1e-5, atol=1e-6)
    assert all(torch.isfinite(m).all() for m in maps.attentions["cross"])


def test_masked_padding_gradients_stay_finite_and_unchanged():
    """No parameter sees the padding, the input adapter's included (inputs laid out like the
    mask are zeroed where it is False): the gradients equal those of zero padding."""
    def grads(fill):
        model = point_model().train()
        padded = torch.cat([points, torch.full((2, 3, 5), fill)], dim=1)
        model(padded, input_mask=mask).logits.square().sum().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    points = torch.randn(2, 5, 5)
    mask = torch.tensor([[True] * 5 + [False] * 3, [True] * 2 + [False] * 6])
    with_nan, with_zeros = grads(math.nan), grads(0.0)
    assert any(n.startswith("input_adapter.") for n in with_nan) and with_nan.keys() == with_zeros.keys()
    for name, g in with_nan.items():
        torch.testing.assert_close(g, with_zeros[name], msg=name)


def test_fully_masked_example_with_nan_padding_stays_finite():
    model = point_model()
    padded = torch.full((2, 4, 5), math.nan)
    padded[0] = torch.randn(4, 5)
    mask = torch.tensor([[True] * 4, [False] * 4])
    out = model(padded, input_mask=mask).logits
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------
# Non-finite valid inputs
# ---------------------------------------------------------------------------------------
def test_non_finite_inputs_are_refused_when_checking():
    model = point_model()
    points = torch.randn(2, 5, 5)
    points[1, 3, 0] = math.nan
    assert not torch.isfinite(model(points).logits[1]).all()  # off by default: the API's switch
    model.check_finite = True
    with pytest.raises(ValueError, match=r"inputs hold NaN or infinite values \(the first at index \[1, 3, 0\]: "
                                         r"nan\), reaching example 1, position 3 of the 5 positions .* expected finite"):
        model(points)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3] = False
    assert torch.isfinite(model(points, input_mask=mask).logits).all()  # masked: allowed
    points[1, 4, 2] = math.inf  # the one the mask keeps is named, not the masked one
    with pytest.raises(ValueError, match=r"the first at index \[1, 4, 2\]: inf\), reaching example 1, position 4"):
        model(points, input_mask=mask)


def test_non_finite_weights_are_named_as_such():
    model = point_model()
    model.check_finite = True
    with torch.no_grad():
        model.input_adapter.project.weight[0, 0] = math.inf
    with pytest.raises(ValueError, match=r"although the inputs are finite: the model's weights hold NaN"):
        model(torch.randn(1, 4, 5))


# ---------------------------------------------------------------------------------------
# Inputs of another dtype or device
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_inputs_of_another_float_dtype_are_cast_where_they_enter(dtype):
    model = point_model()
    points = torch.randn(2, 5, 5).to(dtype)
    mask = torch.ones(2, 5, dtype=torch.bool)
    out = model(points, input_mask=mask).logits
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(points.float()).logits)


def test_meta_text_model_infers_shapes_without_data():
    with torch.device("meta"):
        model = text_model()
    ids = torch.empty(3, 10, dtype=torch.long, device="meta")
    assert model(ids).logits.shape == (3, 16, 3)
    with pytest.raises(ValueError, match=r"sequence length 20 exceeds the model's max_seq_len=16"):
        model(torch.empty(3, 20, dtype=torch.long, device="meta"))


# ---------------------------------------------------------------------------------------
# Data files with NaN / Inf
# ---------------------------------------------------------------------------------------
def test_npy_with_non_finite_row_names_file_and_row(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    x[7, 2] = np.inf
    x[11, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(20) % 2)
    data = {"kind": "npy", "inputs": str(tmp_path / "x.npy"), "labels": str(tmp_path / "y.npy")}
    with pytest.raises(ValueError, match=r"data.inputs: .*x.npy row 7: index 2 is inf, expected finite numbers; "
                                         r"fix the file, or set data.on_nonfinite: skip"):
        DataConfig.from_dict(data).load()
    with pytest.warns(UserWarning, match=r"skipping data.inputs: .*x.npy row 11: index 0 is nan"):
        splits = DataConfig.from_dict({**data, "on_nonfinite": "skip"}).load()
    assert len(splits.train) + len(splits.val) + len(splits.test) == 18


def test_npy_overflowing_float32_is_non_finite(tmp_path):
    x = np.ones((10, 2))
    x[4, 1] = 1e300  # finite in float64, inf in float32
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.zeros(10, dtype=np.int64))
    with pytest.raises(ValueError, match=r"row 4: index 1 is inf"):
        DataConfig.from_dict({"kind": "npy", "inputs": str(tmp_path / "x.npy"),
                              "labels": str(tmp_path / "y.npy")}).load()


def test_csv_points_with_nan_cell_names_file_and_line(tmp_path):
    for c in ("a", "b"):
        for i in range(5):
            (tmp_path / c).mkdir(exist_ok=True)
            (tmp_path / c / f"{i}.csv").write_text("x,y,z\n" + "\n".join("0.1,0.2,0.3" for _ in range(6)))
    (tmp_path / "b" / "3.csv").write_text("x,y,z\n0,0,0\n\n1,nan,2\n")
    data = {"kind": "csv_points", "path": str(tmp_path), "num_points": 4, "val_fraction": 0.0, "test_fraction": 0.0}
    read_all = lambda d: d.batch(torch.arange(len(d)))  # noqa: E731  (files are read on access)
    with pytest.raises(ValueError, match=r"b/3.csv: line 4 \('1,nan,2'\) holds NaN or an infinite value"):
        read_all(DataConfig.from_dict(data).load().train)
    with pytest.warns(UserWarning, match=r"skipping .*b/3.csv: line 4"):
        batch = read_all(DataConfig.from_dict({**data, "on_nonfinite": "skip"}).load().train)
    assert len(batch["inputs"]) == 10 and torch.isfinite(batch["inputs"]).all()  # b/3.csv's place: the next file


def test_npy_folder_with_nan_file_is_named(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(4):
            np.save(tmp_path / c / f"{i}.npy", np.ones((3, 2), np.float32))
    np.save(tmp_path / "a" / "2.npy", np.array([[1, 2], [np.nan, 3], [4, 5]], np.float32))
    train = DataConfig.from_dict({"kind": "npy_folder", "path": str(tmp_path), "test_fraction": 0.0,
                                  "val_fraction": 0.0}).load().train  # read on access
    with pytest.raises(ValueError, match=r"a/2.npy: index \(1, 0\) is nan, expected finite numbers"):
        train.batch(torch.arange(len(train)))


# ---------------------------------------------------------------------------------------
# The trainer stops on a non-finite loss and never keeps a NaN model as the best
# ---------------------------------------------------------------------------------------
def test_trainer_stops_on_non_finite_loss_and_keeps_no_nan_best(tmp_path):
    from test_train import tiny

    from perceptio.train import checkpoint as ckpt

    def poison(trainer, step):
        if step == 2:
            with torch.no_grad():
                next(trainer.module.parameters()).fill_(math.nan)

    exp = experiment_from_dict(tiny(steps=6, eval_every=1, checkpoint_every=1))
    trainer = Trainer(exp, tmp_path / "run", callbacks=[poison])
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 3: the loss is nan \(expected a finite "
                                               r"number\); stopped without saving these weights \(the checkpoints up "
                                               r"to step_\d+ and best/ are kept\)\. Lower optim.lr"):
        trainer.fit()
    best = ckpt.best_checkpoint(tmp_path / "run")
    assert best is not None and json.loads((best / "metrics.json").read_text())["step"] == 1
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(best / "model.safetensors").values())
