"""What adaptive computation (``encoder.ponder``) saves: time per example against the mean
number of halting steps.

    python -m perceptio.bench.ponder [--run RUN_DIR] [--batch 256] [--repeats 5]

Inference of one batch (one thread, thread CPU time, best of ``--repeats`` interleaved
rounds: little affected by the load of other processes) in three ways with the same weights:

* ``halting``: each example halts and leaves the batch (the default of ``model(x)`` in eval);
* ``all steps``: every example runs all ``max_steps`` steps (no early exit);
* ``fixed depth``: the model without ``ponder`` (the same weights minus the halting unit) at
  ``max_steps``.

With ``--run`` the model and the test examples are a trained run's (its best checkpoint);
without, the built-in ``parity`` model with random weights. Then a sweep forces every
example to halt after exactly k steps (a constant halting probability) for k = 1 ..
max_steps: the time per example grows linearly with k.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import torch

from ..model import Perceiver
from .micro import best_thread_time


def fixed_depth(model: Perceiver) -> Perceiver:
    """The same model without ``ponder``, with the same weights."""
    config = model.config
    fixed = Perceiver(dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, ponder=None))).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.halting.")}
    fixed.load_state_dict(state)
    return fixed


def force_steps(model: Perceiver, k: int) -> None:
    """Make every example halt after exactly ``k`` steps with the threshold rule: a constant
    lambda with ``1 - (1 - lambda)^k`` just past the threshold."""
    threshold = model.config.encoder.ponder.threshold
    lam = 1 - (1 - threshold) ** (1 / (k - 0.5)) if k > 1 else 1 - 1e-6
    with torch.no_grad():
        model.encoder.halting.linear.weight.zero_()
        model.encoder.halting.linear.bias.fill_(math.log(lam / (1 - lam)))


def measure(model: Perceiver, inputs: torch.Tensor, repeats: int) -> dict[str, float]:
    """Seconds per example of the three ways (interleaved rounds, the least thread CPU
    time of each), and the mean halting steps."""
    fixed = fixed_depth(model)
    batch = inputs.shape[0]
    ways = {"halting": lambda: model(inputs), "all_steps": lambda: model(inputs, all_steps=True),
            "fixed": lambda: fixed(inputs)}
    with torch.no_grad():
        steps = model(inputs).steps.float().mean().item()
        best = {name: math.inf for name in ways}
        for _ in range(repeats):  # A B C A B C ...: load from other processes hits all alike
            for name, fn in ways.items():
                best[name] = min(best[name], best_thread_time(fn, 1))
    return {"steps_mean": steps, **{name: t / batch for name, t in best.items()}}


def load(run: str | None, batch: int) -> tuple[Perceiver, torch.Tensor, str]:
    from ..train import checkpoint as ckpt
    from ..train.experiment import load_experiment, load_run_experiment

    if run is None:
        experiment = load_experiment("parity", ["data.num_examples=2000"])
        torch.manual_seed(0)
        model = Perceiver(experiment.model.resolve()).eval()
        what = "built-in parity model, random weights"
    else:
        experiment = load_run_experiment(run)
        checkpoint = ckpt.best_checkpoint(run) or ckpt.latest_checkpoint(run)
        model = Perceiver.from_pretrained(checkpoint).eval()
        what = f"{run} ({checkpoint.name})"
    if model.encoder.halting is None:
        raise ValueError(f"{what}: the model has no encoder.ponder; nothing to measure")
    test = experiment.data.load().test
    inputs = test.batch(torch.arange(min(batch, len(test))))["inputs"]
    return model, inputs, what


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m perceptio.bench.ponder", description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a run directory of a ponder model (default: the parity model, random weights)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, inputs, what = load(args.run, args.batch)
    max_steps = model.config.encoder.ponder.max_steps
    print(f"{what}: batch {inputs.shape[0]}, max_steps {max_steps}; one thread, thread CPU time per example "
          f"(best of {args.repeats})")
    r = measure(model, inputs, args.repeats)
    print(f"learned halting: mean steps {r['steps_mean']:.2f} of {max_steps} "
          f"({r['steps_mean'] / max_steps:.0%} of the latent steps); "
          f"halting {r['halting'] * 1e6:.0f} us, all steps {r['all_steps'] * 1e6:.0f} us, "
          f"fixed depth {r['fixed'] * 1e6:.0f} us per example: {r['halting'] / r['fixed']:.0%} of the fixed-depth time")
    print(f"{'forced steps':>12} | {'us / example':>12} | {'vs fixed depth':>14}")
    for k in range(1, max_steps + 1):
        force_steps(model, k)
        r = measure(model, inputs, args.repeats)
        assert r["steps_mean"] == k, r
        print(f"{k:>12} | {r['halting'] * 1e6:>12.0f} | {r['halting'] / r['fixed']:>14.0%}")


if __name__ == "__main__":
    main()
