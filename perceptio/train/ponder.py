"""The PonderNet loss and halting-step metrics, for every objective.

An objective scores the outputs of a model, ``score(logits, weight) -> (loss, sums)``,
where ``weight [B]`` (or None) weighs each example's loss. For a ponder model in training
(``PerceiverOutput.halting`` set) the loss is

    sum_n  mean_b p_{b,n} L(y_b, y_{b,n})  +  beta * KL(p || Geometric(lambda_p))

(the outputs ``y_n`` of every step weighed by the halting distribution), and the metrics
are those of each example's halting step. Every ponder model's metrics also report the
halting steps: ``ponder_steps_mean`` and their distribution ``ponder_steps_at_{n}`` (the
fraction of examples halting at step n), plus, in training, ``ponder_expected_steps``
(``sum_n n p_n``) and ``ponder_kl``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..encoder import PonderConfig, ponder_kl
from ..model import PerceiverOutput

Sums = dict[str, tuple[float, int]]  # metric -> (sum, count)
Score = Callable[[Any, Tensor | None], tuple[Tensor, Sums]]


def ponder_config(model: nn.Module) -> PonderConfig | None:
    """``encoder.ponder`` of a model, or of the model a DDP / compile wrapper holds."""
    module = getattr(model, "module", getattr(model, "_orig_mod", model))
    return module.config.encoder.ponder


def steps_sums(steps: Tensor, max_steps: int) -> Sums:
    """``ponder_steps_mean`` and ``ponder_steps_at_{n}`` of the halting steps ``steps [B]``."""
    n = steps.shape[0]
    counts = torch.bincount(steps.cpu(), minlength=max_steps + 1)
    sums: Sums = {"ponder_steps_mean": (float(steps.sum()), n)}
    sums.update({f"ponder_steps_at_{k}": (int(counts[k]), n) for k in range(1, max_steps + 1)})
    return sums


def ponder_loss(out: PerceiverOutput, score: Score, config: PonderConfig | None) -> tuple[Tensor, Sums]:
    """The objective's loss and metric sums of ``out``: ``score(out.logits, None)`` for a
    fixed-depth model, the PonderNet loss (module docstring) when ``out.halting`` is set."""
    loss, sums = score(out.logits, None)
    if config is None or out.steps is None:
        return loss, sums
    sums.update(steps_sums(out.steps, config.max_steps))
    if out.halting is None:  # inference: each example's halting step only
        return loss, sums
    task = sum(score(y, out.halting[:, n])[0] for n, y in enumerate(out.step_logits))
    kl = ponder_kl(out.halting, config.lambda_p)
    loss = task + config.beta * kl
    b = out.halting.shape[0]
    expected = (out.halting * torch.arange(1, config.max_steps + 1, device=out.halting.device)).sum(1)
    sums.update({"ponder_kl": (float(kl.detach()) * b, b), "ponder_expected_steps": (float(expected.detach().sum()), b)})
    count = sums["loss"][1] if "loss" in sums else 0  # the count of the objective's own loss metric
    if count:
        sums["loss"] = (float(loss.detach()) * count, count)
        sums["ponder_task_loss"] = (float(task.detach()) * count, count)
    return loss, sums


@torch.no_grad()
def steps_by_group(model: nn.Module, dataset: Any, group: str, batch_size: int = 256) -> dict[int, dict[str, float]]:
    """Halting steps of ``model`` (in eval mode) on ``dataset`` grouped by its field
    ``group`` (``difficulty``, or ``targets`` for classes): ``{value: {"count", "steps_mean",
    "accuracy"}}`` (accuracy where the outputs are class logits ``[B, K]``)."""
    was_training = model.training
    model.eval()
    keys, steps, correct = [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = dataset.batch(torch.arange(start, min(start + batch_size, len(dataset))))
        out = model(batch["inputs"])
        keys.append(batch[group])
        steps.append(out.steps)
        targets = batch.get("targets")
        if isinstance(out.logits, Tensor) and out.logits.dim() == 2 and isinstance(targets, Tensor):
            correct.append(out.logits.argmax(-1) == targets)
    model.train(was_training)
    key, step = torch.cat(keys), torch.cat(steps).float()
    hits = torch.cat(correct).float() if correct else None
    table = {}
    for value in key.unique().tolist():
        rows = key == value
        table[int(value)] = {"count": int(rows.sum()), "steps_mean": float(step[rows].mean())}
        if hits is not None:
            table[int(value)]["accuracy"] = float(hits[rows].mean())
    return table
