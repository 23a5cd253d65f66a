"""PonderNet adaptive computation (encoder.ponder): the halting distribution, the KL term,
gradients, batch compaction at inference, training, resume, metrics and bad configs."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal

import pytest
import torch

from perceptio import (
    ClassificationOutputConfig,
    ConfigError,
    CrossAttentionDecoderConfig,
    EncoderConfig,
    GridAdapterConfig,
    LatentMeanDecoderConfig,
    Perceiver,
    PerceiverConfig,
    PonderConfig,
    PositionEncodingConfig,
    TrainableQueriesConfig,
    count_parameters,
)
from perceptio.data import ArrayDataset, DataInfo
from perceptio.data.builtin import ParityConfig, parity_vectors
from perceptio.encoder import geometric_prior, ponder_kl
from perceptio.model import PerceiverOutput
from perceptio.train import checkpoint as ckpt
from perceptio.train.experiment import experiment_from_dict, load_experiment
from perceptio.train.objectives import Classification, MaskedLanguageModel, Multitask, TokenClassification
from perceptio.train.ponder import steps_by_group
from perceptio.train.trainer import Trainer

SIZE = 8


def config(original: bool = False, steps: int = 4, fixed: bool = False, **ponder) -> PerceiverConfig:
    """A tiny parity-sized model: Perceiver IO (the latent block recurs) or the original
    Perceiver (cross-attend + block recur, latent-mean head); ``fixed``: without ponder."""
    depth = {"num_cross_attends": steps, "num_blocks": 1} if original else {"num_blocks": steps}
    encoder = EncoderConfig(num_latents=4, num_latent_channels=16, num_self_attends_per_block=1,
                            num_self_attend_heads=2, num_cross_attend_heads=1, **depth,
                            ponder=None if fixed else PonderConfig(max_steps=steps, **ponder))
    decoder = (LatentMeanDecoderConfig(output_channels=2) if original else CrossAttentionDecoderConfig(
        queries=TrainableQueriesConfig(num_queries=1, num_channels=16), output_channels=2))
    return PerceiverConfig(
        input_adapter=GridAdapterConfig(index_dims=[SIZE], num_input_channels=1, num_channels=8,
                                        position=PositionEncodingConfig(num_bands=2)),
        encoder=encoder, decoder=decoder, output_adapter=ClassificationOutputConfig())


def diverse_model(original: bool = False, **ponder) -> Perceiver:
    """A model whose halting unit depends strongly on the input, so that the examples of
    a batch halt at different steps: its weights are scaled so that ``w . mean(z_1)``
    spreads (std 2) around ``logit(0.25)`` over a batch."""
    torch.manual_seed(0)
    model = Perceiver(config(original, **ponder)).eval()
    enc = model.encoder
    with torch.no_grad():
        pooled = enc.step(0, enc.latents(64), model.adapt(inputs(64, seed=5))[0].inputs).mean(1)  # [B, D]
        w = torch.randn(1, pooled.shape[1], generator=torch.Generator().manual_seed(0))
        w = w * 2 / (pooled @ w.T).std()
        enc.halting.linear.weight.copy_(w)
        enc.halting.linear.bias.fill_(math.log(0.25 / 0.75) - float((pooled @ w.T).mean()))
    return model


def inputs(n: int = 16, seed: int = 0) -> torch.Tensor:
    x, _, _ = parity_vectors(n, SIZE, 1, SIZE, torch.Generator().manual_seed(seed))
    return x[..., None]


@pytest.mark.parametrize("original", [False, True])
def test_halting_distribution_sums_to_one_and_matches_its_definition(original):
    model = diverse_model(original)
    out = model(inputs(), all_steps=True)
    p = out.halting
    assert p.shape == (16, 4) and (p >= 0).all()
    assert torch.allclose(p.sum(1), torch.ones(16), atol=1e-6)
    # p_n = lambda_n prod_{j<n} (1 - lambda_j) with the lambdas recomputed from the latents
    enc, x = model.encoder, model.adapt(inputs())[0].inputs
    z, remaining = enc.latents(16), torch.ones(16)
    for n in range(3):
        z = enc.step(n, z, x)
        lam = enc.halting(z)
        assert torch.allclose(p[:, n], lam * remaining, atol=1e-6)
        remaining = remaining * (1 - lam)
    assert torch.allclose(p[:, 3], remaining, atol=1e-6)  # the last step takes the remainder


def test_kl_term_equals_a_direct_computation():
    p = torch.softmax(torch.randn(5, 6, generator=torch.Generator().manual_seed(0)), 1)
    for lambda_p in (0.1, 0.5, 0.9):
        prior = [lambda_p * (1 - lambda_p) ** n for n in range(5)] + [(1 - lambda_p) ** 5]  # the remainder last
        direct = sum(float(p[b, n]) * math.log(float(p[b, n]) / prior[n]) for b in range(5) for n in range(6)) / 5
        assert float(ponder_kl(p, lambda_p)) == pytest.approx(direct, rel=1e-5)
        assert torch.allclose(geometric_prior(lambda_p, 6).sum(), torch.tensor(1.0))
    prior = geometric_prior(0.3, 6)
    assert float(ponder_kl(prior.expand(4, 6), 0.3)) == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(float(ponder_kl(p, 1.0)))  # a prior with zeros: large, not infinite


def test_gradients_reach_the_halting_unit_through_the_loss():
    model = diverse_model().train()
    x, _, _ = parity_vectors(16, SIZE, 1, SIZE, torch.Generator().manual_seed(1))
    batch = {"inputs": x[..., None], "targets": (x == 1).sum(1) % 2}
    loss, sums = Classification(DataInfo("classification", ["even", "odd"])).loss(model, batch, torch.Generator())
    loss.backward()
    halting = model.encoder.halting.linear
    assert halting.weight.grad.abs().sum() > 0 and halting.bias.grad.abs() > 0
    assert {"ponder_kl", "ponder_expected_steps", "ponder_steps_mean", "ponder_task_loss"} <= set(sums)


def test_halting_starts_at_the_prior_and_halts_after_one_step_as_lambda_p_goes_to_one():
    model = Perceiver(config(lambda_p=0.3)).train()
    p = model(inputs(), all_steps=True).halting
    assert torch.allclose(p, geometric_prior(0.3, 4).expand(16, 4), atol=1e-5)  # KL = 0 at the start
    for lambda_p in (1.0, 0.9999):
        model = Perceiver(config(lambda_p=lambda_p)).eval()
        assert (model(inputs()).steps == 1).all()
        assert (model(inputs(), all_steps=True).halting[:, 0] > 0.999).all()


def test_training_towards_lambda_p_one_learns_to_halt_after_one_step():
    model = diverse_model(lambda_p=1.0, beta=1.0).train()
    assert (model.eval()(inputs()).steps > 1).any()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    objective = Classification(DataInfo("classification", ["even", "odd"]))
    model.train()
    for step in range(30):
        x = inputs(32, seed=step)
        loss, _ = objective.loss(model, {"inputs": x, "targets": (x[..., 0] == 1).sum(1) % 2}, torch.Generator())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model.eval()(inputs(64, seed=99)).steps == 1).all()


@pytest.mark.parametrize("original", [False, True])
def test_inference_with_halting_equals_each_example_alone_for_its_steps(original):
    model = diverse_model(original)
    x = inputs()
    mask = torch.rand(16, SIZE, generator=torch.Generator().manual_seed(2)) < 0.8  # padding, compacted too
    mask[:, 0] = True
    with torch.no_grad():
        out = model(x, input_mask=mask)
        assert len(out.steps.unique()) >= 2  # the batch really shrinks as examples halt
        for b in range(x.shape[0]):
            alone = model(x[b:b + 1], input_mask=mask[b:b + 1])
            assert alone.steps.item() == out.steps[b].item()
            assert torch.allclose(alone.logits, out.logits[b:b + 1], atol=1e-5)
            # ... and the fixed recurrence stopped after that many steps, decoded
            context, _ = model.adapt(x[b:b + 1])
            z = model.encoder.latents(1)
            for n in range(int(out.steps[b])):
                z = model.encoder.step(n, z, context.inputs, mask[b:b + 1])
            assert torch.allclose(model.decode(z, context), out.logits[b:b + 1], atol=1e-5)
        # decoding every step and picking each example's halting step gives the same
        every = model(x, input_mask=mask, all_steps=True)
        assert torch.equal(every.steps, out.steps)
        assert torch.allclose(every.logits, out.logits, atol=1e-5)
        assert torch.allclose(every.latents, model.encode(x, mask)[0], atol=1e-5)


def test_sampled_halting_takes_between_one_and_max_steps():
    model = diverse_model(halting="sample")
    torch.manual_seed(0)
    steps = model(inputs(64)).steps
    assert steps.min() >= 1 and steps.max() <= 4 and len(steps.unique()) > 1


def test_never_halting_equals_the_fixed_depth_model_with_the_same_weights():
    torch.manual_seed(0)
    fixed = Perceiver(config(fixed=True)).eval()
    ponder = Perceiver(config(lambda_p=1e-4)).eval()
    missing = ponder.load_state_dict(fixed.state_dict(), strict=False).missing_keys
    assert missing == ["encoder.halting.linear.weight", "encoder.halting.linear.bias"]
    x = inputs()
    out = ponder(x)
    assert (out.steps == 4).all()
    assert torch.equal(out.logits, fixed(x).logits)


def test_every_objective_weighs_each_step_by_its_halting_probability():
    """With p one-hot at step k the ponder task loss is the plain loss of step k's outputs."""
    model = Perceiver(config(beta=0.0))
    logits = [torch.randn(3, 2, generator=torch.Generator().manual_seed(n)) for n in range(4)]
    halting = torch.zeros(3, 4)
    halting[:, 2] = 1
    out = PerceiverOutput(logits[2], torch.zeros(3, 4, 16), steps=torch.full((3,), 3), step_logits=logits,
                          halting=halting)
    objective = Classification(DataInfo("classification", ["a", "b"]))
    objective.run = lambda model, batch, generator: (out, None)
    batch = {"targets": torch.tensor([0, 1, 1])}
    loss, sums = objective.loss(model, batch, torch.Generator())
    assert torch.allclose(loss, objective.score(logits[2], batch, None)[0])
    assert sums["ponder_steps_at_3"] == (3, 3) and sums["ponder_steps_mean"] == (9.0, 3)
    # masked bytes: each masked position weighed by its example's halting probability
    mlm = MaskedLanguageModel(DataInfo("mlm"))
    byte_logits = [torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(n)) for n in range(4)]
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(9)) < 0.5
    batch = {"mask": mask, "targets": torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(8))}
    weight = torch.tensor([0.2, 0.0, 1.0])
    weighted = mlm.score(byte_logits[0], batch, None, weight)[0]
    per_position = torch.nn.functional.cross_entropy(byte_logits[0][mask], batch["targets"][mask], reduction="none")
    assert torch.allclose(weighted, (per_position * weight[:, None].expand(3, 5)[mask]).mean())


@pytest.mark.parametrize("change, message", [
    ({"ponder": {"max_steps": 0}}, "encoder.ponder.max_steps must be >= 1"),
    ({"ponder": {"max_steps": 4, "lambda_p": 0.0}}, "encoder.ponder.lambda_p must be in (0, 1]"),
    ({"ponder": {"max_steps": 4, "lambda_p": 1.5}}, "encoder.ponder.lambda_p must be in (0, 1]"),
    ({"ponder": {"max_steps": 4, "beta": -0.1}}, "encoder.ponder.beta must be >= 0"),
    ({"ponder": {"max_steps": 4, "threshold": 0.0}}, "encoder.ponder.threshold must be in (0, 1]"),
    ({"ponder": {"max_steps": 4, "halting": "coin"}}, "encoder.ponder.halting: 'coin' is not allowed"),
    ({"ponder": {"max_steps": 3}}, "encoder.ponder.max_steps=3 must equal encoder.num_blocks=4"),
    ({"num_cross_attends": 4, "num_blocks": 1, "share_latent_block_weights": False, "ponder": {"max_steps": 4}},
     "encoder.ponder needs a weight-shared recurrence"),
    ({"num_cross_attends": 4, "num_blocks": 1, "share_cross_attend_weights": False, "ponder": {"max_steps": 4}},
     "share_cross_attend_weights=False"),
])
def test_bad_ponder_configs_are_errors_naming_the_field(change, message):
    data = config(fixed=True).to_dict()
    data["encoder"].update({"num_blocks": 4, **change})
    with pytest.raises(ConfigError) as e:
        PerceiverConfig.from_dict(data)
    assert message in str(e.value)


def test_ponder_config_round_trips_and_saves(tmp_path):
    cfg = config(lambda_p=0.25, beta=0.5, halting="sample")
    assert PerceiverConfig.from_json(cfg.to_json()) == cfg
    model = Perceiver(cfg)
    model.save_pretrained(tmp_path / "m")
    again = Perceiver.from_pretrained(tmp_path / "m").eval()
    torch.manual_seed(1)  # sampled halting draws from the global generator
    expected = model.eval()(inputs()).logits
    torch.manual_seed(1)
    assert torch.equal(again(inputs()).logits, expected)


def test_parity_data_labels_difficulty_and_extrapolation_split():
    splits = ParityConfig(size=12, max_nonzero=6, num_examples=300, num_extrapolation=50).load()
    for name, (low, high) in {"train": (1, 6), "test": (1, 6), "extrapolation": (7, 12)}.items():
        data = splits.get(name).fields
        x, count = data["inputs"][..., 0], data["difficulty"]
        assert torch.equal((x != 0).sum(1), count) and low <= count.min() and count.max() <= high
        assert torch.equal(data["targets"], (x == 1).sum(1) % 2)
        assert set(x.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert splits.eval_names == ["val", "test", "extrapolation"]
    with pytest.raises(ConfigError, match="data.max_nonzero"):
        ParityConfig(size=8, max_nonzero=9)


def tiny_parity(steps: int = 8, **train) -> dict:
    model = config(halting="sample", lambda_p=0.3).to_dict()
    model["encoder"]["dropout"] = 0.1
    return {
        "name": "tiny_parity",
        "data": {"kind": "parity", "size": SIZE, "max_nonzero": 4, "num_examples": 200, "num_extrapolation": 40},
        "model": {"perceiver": model},
        "optim": {"optimizer": "adamw", "lr": 1e-3, "warmup_steps": 2},
        "train": {"steps": steps, "batch_size": 16, "eval_every": 4, "checkpoint_every": 1000, "threads": 1, **train},
        "logging": {"progress": False, "plots": False, "log_every": 1},
    }


def rows(run_dir) -> dict[tuple[int, str, str], float]:
    with (run_dir / "metrics.csv").open() as f:
        return {(int(r["step"]), r["split"], r["name"]): float(r["value"]) for r in csv.DictReader(f)}


def test_ponder_run_resumes_exactly_and_reports_halting_steps(tmp_path):
    full = Trainer(experiment_from_dict(tiny_parity(checkpoint_every=3)), tmp_path / "full")
    results = full.fit()

    def ctrl_c(trainer, step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        Trainer(experiment_from_dict(tiny_parity(checkpoint_every=3)), tmp_path / "cut", callbacks=[ctrl_c]).fit()
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path / "cut")] == [3, 5]
    resumed = Trainer(experiment_from_dict(tiny_parity(checkpoint_every=3)), tmp_path / "cut", resume=True)
    resumed.fit()
    expected = {k: v for k, v in rows(tmp_path / "full").items() if k[1] == "train" and k[2] != "samples_per_s"}
    got = {k: v for k, v in rows(tmp_path / "cut").items() if k[1] == "train" and k[2] != "samples_per_s"}
    assert got == expected and (8, "train", "ponder_kl") in got  # sampled halting steps included
    for k, v in full.module.state_dict().items():
        assert torch.equal(v, resumed.module.state_dict()[k]), k
    # metrics (and so `perceptio evaluate --json`) report the halting steps of every split
    assert set(results) == {"val", "test", "extrapolation"}
    for metrics in results.values():
        assert 1 <= metrics["ponder_steps_mean"] <= 4
        assert sum(metrics[f"ponder_steps_at_{n}"] for n in range(1, 5)) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["parity", "digits_ponder"])
def test_builtin_ponder_configs_and_their_fixed_depth_twins(name):
    ponder = load_experiment(name).model.resolve()
    fixed = load_experiment(name, ["model.perceiver.encoder.ponder=null"]).model.resolve()
    assert ponder.encoder.ponder.max_steps == ponder.encoder.depth and fixed.encoder.ponder is None
    assert count_parameters(ponder) == count_parameters(fixed) + ponder.encoder.num_latent_channels + 1  # w, b


def test_evaluation_with_sampled_halting_is_reproducible_and_leaves_the_global_generator_alone():
    model = diverse_model(halting="sample")
    x, target, count = parity_vectors(64, SIZE, 1, SIZE, torch.Generator().manual_seed(3))
    data = ArrayDataset({"inputs": x[..., None], "targets": target, "difficulty": count})
    objective = Classification(DataInfo("classification", ["even", "odd"]))
    state = torch.get_rng_state()
    first = objective.evaluate(model, data, 16, torch.device("cpu"), contextlib.nullcontext)
    assert torch.equal(torch.get_rng_state(), state)
    assert objective.evaluate(model, data, 16, torch.device("cpu"), contextlib.nullcontext) == first
    assert 1 < first["ponder_steps_mean"] < 4


def test_steps_by_difficulty_counts_every_example_once():
    model = diverse_model()
    x, target, count = parity_vectors(50, SIZE, 1, SIZE, torch.Generator().manual_seed(4))
    data = ArrayDataset({"inputs": x[..., None], "targets": target, "difficulty": count})
    table = steps_by_group(model, data, "difficulty", batch_size=16)
    assert sum(row["count"] for row in table.values()) == 50 and set(table) == set(count.tolist())
    with torch.no_grad():
        out = model(x[..., None])
    for k, row in table.items():
        rows = count == k
        assert row["steps_mean"] == pytest.approx(out.steps[rows].float().mean().item())
        assert row["accuracy"] == pytest.approx((out.logits.argmax(-1) == target)[rows].float().mean().item())


@pytest.mark.parametrize("name, small, metric", [
    ("flow_affine", ["data.num_examples=40"], "epe"),
    ("moving_shapes", ["data.num_examples=40"], "label_accuracy"),
    ("bytes_mlm", ["data.max_bytes=20000"], "masked_accuracy"),
])
def test_every_objective_trains_a_ponder_model_and_reports_its_steps(tmp_path, name, small, metric):
    """Dense (points decoded per step), multimodal (a dict of outputs per step) and masked
    bytes: the ponder loss trains, and evaluation (all outputs, in chunks) reports the steps."""
    ponder = ["model.perceiver.encoder.num_blocks=2", "model.perceiver.encoder.num_self_attends_per_block=1",
              "model.perceiver.encoder.ponder={max_steps: 2, lambda_p: 0.5}"]
    exp = load_experiment(name, small + ponder + ["train.steps=2", "train.batch_size=8", "train.threads=1",
                                                  "logging.progress=false", "logging.plots=false"])
    trainer = Trainer(exp, tmp_path)
    results = trainer.fit()
    assert math.isfinite(results["test"][metric]) and 1 <= results["test"]["ponder_steps_mean"] <= 2
    assert (2, "train", "ponder_kl") in rows(tmp_path)


def test_plots_show_the_halting_steps_per_difficulty(tmp_path):
    pytest.importorskip("matplotlib")
    raw = tiny_parity(4)
    raw["logging"]["plots"] = True
    Trainer(experiment_from_dict(raw), tmp_path).fit()
    assert (tmp_path / "plots" / "ponder_steps.png").is_file()
    table = json.loads((tmp_path / "ponder_steps.json").read_text())
    assert table["group"] == "difficulty" and set(table) == {"group", "test", "extrapolation"}
    assert set(table["test"]) <= {"1", "2", "3", "4"} and set(table["extrapolation"]) <= {"5", "6", "7", "8"}
    assert sum(row["count"] for row in table["extrapolation"].values()) == 40


def test_token_classification_and_multitask_objectives_take_the_ponder_loss():
    # per-byte labels: weights of one give the plain loss; a weight of zero drops an example
    tokens = TokenClassification(DataInfo("token_classification", ["O", "A"]))
    logits = torch.randn(3, 6, 2, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[0, 1, 1, -100, -100, -100], [1, 0, 0, 1, 0, -100], [0, 0, 1, 1, 1, 1]])
    batch = {"targets": targets}
    plain = tokens.score(logits, batch, None)[0]
    assert torch.allclose(tokens.score(logits, batch, None, torch.ones(3))[0], plain)
    without_first = tokens.score(logits[1:], {"targets": targets[1:]}, None)[0]
    weighted = tokens.score(logits, batch, None, torch.tensor([0.0, 1.0, 1.0]))[0]
    assert torch.allclose(weighted, without_first * 11 / 14)  # a mean over all 14 labelled bytes, 11 of them kept
    # multitask: one ponder loss per task's group
    cfg = config(lambda_p=0.3).to_dict()
    cfg["decoder"]["queries"]["num_queries"], cfg["decoder"]["output_channels"] = 2, 3
    torch.manual_seed(0)
    model = Perceiver(PerceiverConfig.from_dict(cfg)).train()
    multitask = Multitask(DataInfo("classification", extras={"tasks": {"a": ["x", "y"], "b": ["p", "q", "r"]}}))
    x = inputs(8)
    batch = {"inputs": x, "targets": torch.tensor([0, 1, 0, 1, 2, 0, 1, 2]), "task": torch.tensor([0] * 4 + [1] * 4)}
    loss, sums = multitask.loss(model, batch, torch.Generator())
    loss.backward()
    assert model.encoder.halting.linear.weight.grad.abs().sum() > 0
    assert {"a_accuracy", "b_loss", "ponder_kl", "ponder_steps_mean"} <= set(sums) and sums["ponder_kl"][1] == 8
