"""Training: configs and CLI, optimizers, exact resume, Ctrl-C, atomic checkpoints,
gradient accumulation, bf16 / activation checkpointing, distributed equivalence."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import socket
from pathlib import Path

import pytest
import torch

from perceptio.cli import main
from perceptio.config import ConfigError
from perceptio.train import checkpoint as ckpt
from perceptio.train.experiment import experiment_from_dict, load_experiment
from perceptio.train.optim import LAMB, lr_factor
from perceptio.train.experiment import OptimConfig
from perceptio.train.trainer import Trainer

TINY_MODEL = {
    "input_adapter": {"kind": "image", "image_shape": [8, 8, 1], "prep_type": "pixels", "spatial_downsample": 1,
                      "position": {"num_bands": 2}},
    "encoder": {"num_latents": 4, "num_latent_channels": 16, "num_self_attends_per_block": 1,
                "num_self_attend_heads": 2, "num_cross_attend_heads": 1, "dropout": 0.1},
    "decoder": {"kind": "cross_attention", "queries": {"kind": "trainable", "num_queries": 1, "num_channels": 16},
                "output_channels": 10},
    "output_adapter": {"kind": "classification"},
}


def exact(d: dict) -> dict:
    """No dropout and no augmentation (both are drawn per process and micro-batch), and an
    Adam eps that keeps float round-off of the gradients from being amplified to lr-sized
    sign flips: for comparing runs that split the same batch differently."""
    d["model"]["perceiver"]["encoder"]["dropout"] = 0.0
    d["data"]["max_shift"] = 0
    d["optim"]["eps"] = 1e-3
    return d


def tiny(steps: int = 6, **train) -> dict:
    return {
        "name": "tiny",
        "data": {"kind": "digits"},
        "model": {"perceiver": json.loads(json.dumps(TINY_MODEL))},
        "optim": {"optimizer": "adamw", "lr": 1e-3, "warmup_steps": 2},
        "train": {"steps": steps, "batch_size": 8, "eval_every": 1000, "checkpoint_every": 1000, "eval_batch_size": 512,
                  "threads": 1, **train},
        "logging": {"progress": False, "plots": False, "log_every": 1},
    }


def train_losses(run_dir: Path) -> dict[int, float]:
    with (run_dir / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f)
                if r["split"] == "train" and r["name"] == "loss"}


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -- configs --------------------------------------------------------------------------------
def test_builtin_configs_load_and_set_overrides():
    exp = load_experiment("quickstart", ["train.steps=7", "optim.lr=1e-3", "optim.betas=[0.9, 0.99]"])
    assert exp.train.steps == 7 and exp.optim.lr == 1e-3 and exp.optim.betas == [0.9, 0.99]
    for name in ("digits", "bytes_mlm", "flow_affine", "point_shapes", "moving_shapes"):
        load_experiment(name)


@pytest.mark.parametrize("assignment, message", [
    ("train.stepz=3", "train.stepz: unknown key; allowed keys: ["),
    ("train.steps=many", "train.steps: expected an integer, got str 'many'"),
    ("optim.optimizer=sgd", "optim.optimizer: 'sgd' is not allowed; allowed values: ['adamw', 'lamb']"),
    ("data.kind=imagenet", "data.kind: unknown kind 'imagenet'; allowed: ["),
    ("model.perceiver.encoder.num_latentz=3", "model.perceiver.encoder.num_latentz: unknown key"),
    ("train.batch_size=10", "train.batch_size=10 must be divisible by train.grad_accum=4"),
])
def test_bad_config_values_name_the_key(assignment, message):
    with pytest.raises(ConfigError) as e:
        load_experiment("quickstart", [assignment, "train.grad_accum=4"] if "batch" in assignment else [assignment])
    assert message in str(e.value)


def test_cli_rejects_unknown_key_and_missing_config(capsys):
    assert main(["train", "quickstart", "--set", "train.stepz=1", "--run-dir", "/nonexistent/x"]) == 2
    assert "train.stepz: unknown key" in capsys.readouterr().err
    assert main(["train", "no_such_config.yaml"]) == 2
    assert "not found" in capsys.readouterr().err


# -- optimizers and schedule ---------------------------------------------------------------
def test_lamb_first_step_moves_each_tensor_by_lr_times_its_norm():
    p = torch.nn.Parameter(torch.randn(5, 7))
    before = p.detach().clone()
    opt = LAMB([p], lr=0.01, eps=1e-12)
    p.grad = torch.randn(5, 7)
    opt.step()
    # first step: update = sign(grad) (Adam), trust ratio ||p|| / ||update||
    assert torch.allclose((p - before).norm(), 0.01 * before.norm(), rtol=1e-5)
    assert torch.allclose(p - before, -0.01 * before.norm() / math.sqrt(35) * p.grad.sign(), atol=1e-6)


def test_lr_schedule_warmup_constant_then_cosine():
    cfg = OptimConfig(warmup_steps=10, schedule="constant_cosine", decay_start=0.5, min_lr_ratio=0.1)
    f = [lr_factor(s, 100, cfg) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in f[10:50])
    assert f[75] == pytest.approx(0.1 + 0.9 * 0.5) and f[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[50:], f[51:]))


# -- the trainer -------------------------------------------------------------------------------
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    """Ctrl-C at step 5 saves a checkpoint; --resume continues with the same losses, data
    order, augmentation and dropout randomness as an uninterrupted run (CPU, seeded)."""
    full = Trainer(experiment_from_dict(tiny(10, checkpoint_every=4, ema_decay=0.9)), tmp_path / "full")
    full.fit()

    def ctrl_c(trainer, step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)  # handled: stop after this step and save

    with pytest.raises(KeyboardInterrupt):
        Trainer(experiment_from_dict(tiny(10, checkpoint_every=4, ema_decay=0.9)), tmp_path / "cut",
                callbacks=[ctrl_c]).fit()
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path / "cut")] == [4, 5]
    resumed = Trainer(experiment_from_dict(tiny(10, checkpoint_every=4, ema_decay=0.9)), tmp_path / "cut", resume=True)
    resumed.fit()
    assert resumed.resumed_from.name == "step_000005"
    expected, got = train_losses(tmp_path / "full"), train_losses(tmp_path / "cut")
    assert sorted(got) == list(range(1, 11))
    assert got == expected  # bit-identical
    for k, v in weights(full.module).items():
        assert torch.equal(v, resumed.module.state_dict()[k]), k
    assert all(torch.equal(a, b) for a, b in zip(full.ema, resumed.ema))  # the weight average too
    assert not all(torch.equal(a, p) for a, p in zip(full.ema, full.module.parameters()))


def test_keep_last_best_and_failed_save_keeps_finished_checkpoints(tmp_path, monkeypatch):
    trainer = Trainer(experiment_from_dict(tiny(6, checkpoint_every=2, keep_last=2, eval_every=3)), tmp_path)
    trainer.fit()
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path)] == [4, 6]
    assert json.loads((ckpt.best_checkpoint(tmp_path) / "metrics.json").read_text())["step"] in (3, 6)
    # a crash while writing the next checkpoint leaves the finished ones untouched
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    trainer.step = 8
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path)] == [4, 6]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000006"
    assert (ckpt.latest_checkpoint(tmp_path) / "model.safetensors").is_file()


def test_grad_accumulation_equals_full_batch(tmp_path):
    one = Trainer(experiment_from_dict(exact(tiny(3))), tmp_path / "one")
    one.fit()
    acc = Trainer(experiment_from_dict(exact(tiny(3, grad_accum=4))), tmp_path / "acc")
    acc.fit()
    for k, v in weights(one.module).items():
        torch.testing.assert_close(acc.module.state_dict()[k], v, rtol=1e-4, atol=1e-5)


def test_bf16_activation_checkpointing_lamb_run(tmp_path):
    d = tiny(3, precision="bf16", activation_checkpointing=True, label_smoothing=0.1)
    d["optim"]["optimizer"] = "lamb"
    trainer = Trainer(experiment_from_dict(d), tmp_path)
    results = trainer.fit()
    assert trainer.module.config.encoder.activation_checkpointing
    assert set(results) == {"val", "test"} and 0.0 <= results["test"]["accuracy"] <= 1.0
    assert all(math.isfinite(v) for v in train_losses(tmp_path).values())


def test_cli_train_evaluate_json_plots_and_resolved_config(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--run-dir", str(run), "--set", "train.steps=4", "--set", "train.eval_every=2",
            "--set", "train.threads=1", "--set", "logging.progress=false", "--set", "train.batch_size=16",
            "--set", "model.perceiver.encoder.num_self_attends_per_block=1"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"val", "test"} and "accuracy" in metrics["test"]
    assert metrics == json.loads((run / "metrics.json").read_text())
    saved = load_experiment(run / "experiment.yaml")
    assert saved.train.steps == 4 and saved.name == "quickstart"
    # --resume without CONFIG continues with the run's own experiment.yaml
    with pytest.warns(UserWarning, match="config differs"):
        assert main(["train", "--run-dir", str(run), "--resume", "--set", "train.steps=6"]) == 0
    assert sorted(train_losses(run)) == [4, 6]  # log_every=25: the last step of each part
    assert load_experiment(run / "experiment.yaml").train.steps == 6
    capsys.readouterr()
    assert (run / "plots" / "learning_curves.png").stat().st_size > 0
    assert (run / "plots" / "cross_attention.png").stat().st_size > 0
    # `perceptio predict run RUN_DIR INPUTS...`: the run's own task (classification) on files
    from PIL import Image

    import numpy as np

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "blank.png")
    np.save(tmp_path / "digit.npy", np.zeros((8, 8, 1), np.float32))
    assert main(["predict", "run", str(run), str(tmp_path / "blank.png"), str(tmp_path / "digit.npy"), "--top-k", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in lines] == [str(tmp_path / "blank.png"), str(tmp_path / "digit.npy")]
    assert all(r["label"] in [str(i) for i in range(10)] and len(r["top"]) == 2 for r in lines)
    np.save(tmp_path / "wrong.npy", np.zeros((8, 8, 3), np.float32))
    assert main(["predict", "run", str(run), str(tmp_path / "wrong.npy")]) == 2
    assert "wrong.npy: shape (8, 8, 3) does not fit the run's examples (8, 8, 1)" in capsys.readouterr().err


def test_config_not_fitting_data_names_the_key(tmp_path):
    d = tiny(1)
    d["model"]["perceiver"]["input_adapter"]["image_shape"] = [8, 8, 3]
    with pytest.raises(ValueError, match=r"does not fit model input_adapter \(kind=image\).*3 channels"):
        Trainer(experiment_from_dict(d), tmp_path).fit()
    d = tiny(1)
    d["model"]["perceiver"]["decoder"]["output_channels"] = 7
    with pytest.raises(ValueError, match=r"10 classes.*predicts 7.*decoder.output_channels"):
        Trainer(experiment_from_dict(d), tmp_path).fit()


# -- distributed ----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, configs: dict, run_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch.distributed as dist

    states = {}
    for strategy, config in configs.items():  # one process group, one run per strategy
        trainer = Trainer(experiment_from_dict(config), f"{run_dir}/{strategy}")
        trainer.fit()
        states[strategy] = {k: v.detach().cpu() for k, v in trainer._model_state().items()}
    if rank == 0:
        torch.save(states, out)
    # Leave together: a rank tearing gloo down while the other still talks to it aborts.
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    """DDP (gloo) and FSDP with 2 CPU processes and batch 8 (4 per process) reach the same
    parameters after 3 steps as one process with batch 8."""
    configs = {strategy: exact(tiny(3, distributed=strategy)) for strategy in ("ddp", "fsdp")}
    single = Trainer(experiment_from_dict(configs["ddp"]), tmp_path / "single")
    single.fit()
    out = tmp_path / "states.pt"
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), configs, str(tmp_path), str(out)), nprocs=2)
    states = torch.load(out, weights_only=True)
    assert (tmp_path / "ddp" / "metrics.json").is_file() and (tmp_path / "fsdp" / "metrics.json").is_file()
    for strategy in ("ddp", "fsdp"):
        for k, v in weights(single.module).items():
            torch.testing.assert_close(states[strategy][k], v, rtol=1e-4, atol=1e-5, msg=f"{strategy} {k}")


def test_tensorboard_logging(tmp_path):
    pytest.importorskip("tensorboard")
    d = tiny(2)
    d["logging"]["tensorboard"] = True
    Trainer(experiment_from_dict(d), tmp_path).fit()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_model_from_a_preset_with_overrides(tmp_path):
    exp = experiment_from_dict({
        "data": {"kind": "bytes_mlm", "seq_len": 32, "max_bytes": 8000},
        "model": {"preset": "language-perceiver",
                  "overrides": {"num_latents": 4, "num_latent_channels": 32, "num_self_attends_per_block": 1,
                                "max_seq_len": 32, "d_model": 16}},
        "train": {"steps": 2, "batch_size": 8, "threads": 1},
        "logging": {"progress": False, "plots": False},
    })
    results = Trainer(exp, tmp_path).fit()
    assert "masked_accuracy" in results["test"]
    assert load_experiment(tmp_path / "experiment.yaml").model.preset == "language-perceiver"
    with pytest.raises(ConfigError, match="model.preset"):
        experiment_from_dict({"data": {"kind": "digits"}, "model": {"preset": "no-such-model"}}).model.resolve()
    with pytest.raises(ConfigError, match="exactly one of model.perceiver"):
        experiment_from_dict({"data": {"kind": "digits"}, "model": {}})
