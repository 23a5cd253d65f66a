"""Side-by-side comparison of whole models: outputs checked first, then interleaved
timing and peak memory for the forward pass (no grad) and forward + backward."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .harness import measure_interleaved, paired_ratio
from .models import max_rel_diff, scalar_loss

BASELINE = "transformers"


@dataclass
class Contender:
    """``call()`` runs the model on the suite's inputs; ``context`` wraps every call
    (e.g. switching perceptio's oneDNN path off for an ablation)."""

    model: nn.Module
    call: Callable[[], Any]
    context: Callable[[], Any] = nullcontext
    modes: tuple[str, ...] = ("forward", "forward+backward")
    note: str = ""


@dataclass
class Settings:
    device: torch.device
    dtype: torch.dtype
    repeats: int
    tolerance: float
    extra: dict[str, Any] = field(default_factory=dict)
    phase: str = "both"  # "timing", "memory" (peaks only, no timed rounds) or "both"

    @property
    def timing(self) -> bool:
        return self.phase in ("timing", "both")

    @property
    def memory(self) -> bool:
        return self.phase in ("memory", "both")


def _forward(c: Contender) -> Callable[[], Any]:
    def run():
        with c.context(), torch.no_grad():
            return c.call()

    return run


def _forward_backward(c: Contender) -> Callable[[], Any]:
    def run():
        with c.context():
            scalar_loss(c.call()).backward()

    run.prepare = lambda: c.model.zero_grad(set_to_none=True)  # before the call is measured (harness doc)
    return run


def check_outputs(contenders: dict[str, Contender], reference: str = BASELINE) -> dict[str, float]:
    """Max relative difference of every contender's output to the reference's."""
    outs = {}
    for name, c in contenders.items():
        c.model.eval()
        outs[name] = _forward(c)()
    return {name: max_rel_diff(out, outs[reference]) for name, out in outs.items()}


def _profiles(contenders: dict[str, Contender]) -> dict[tuple[str, str], dict[str, Any]]:
    """``(contender, mode) -> profile_ops`` for perceptio and the baseline: the attention
    kernels they run (on GPU they must be flash / memory-efficient ones, never
    ``attention_math``) and their top operators."""
    from .roofline import profile_ops

    found = {}
    for name in ("perceptio", BASELINE):
        c = contenders.get(name)
        if c is None:
            continue
        c.model.train()
        found[name, "forward+backward"] = profile_ops(_forward_backward(c))
        c.model.eval()
        found[name, "forward"] = profile_ops(_forward(c))
    return found


def compare(
    suite: str, case: str, contenders: dict[str, Contender], settings: Settings, batch: int,
    flops: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Rows (one per contender and mode) of medians, peaks and ratios to ``transformers``."""
    diffs = check_outputs(contenders)
    bad = {n: d for n, d in diffs.items() if not d <= settings.tolerance}
    if bad:
        raise AssertionError(f"{suite}/{case}: outputs differ from {BASELINE}: {bad} (tolerance {settings.tolerance})")
    profiles = _profiles(contenders) if settings.timing else {}
    rows = []
    for mode in ("forward", "forward+backward"):
        runs = {}
        for name, c in contenders.items():
            if mode in c.modes:
                c.model.train(mode != "forward")
                runs[name] = (_forward if mode == "forward" else _forward_backward)(c)
        results = measure_interleaved(runs, settings.repeats if settings.timing else 0, warmup=1,
                                      device=settings.device, memory=settings.memory)
        base = results.get(BASELINE)
        for name, m in results.items():
            row = dict(
                suite=suite, case=case, contender=name, mode=mode, batch=batch,
                median_s=m.median_s, cpu_s=m.median_cpu_s, peak_mib=m.peak, rounds=len(m.wall_s),
                max_rel_diff=diffs[name], error=m.error, note=contenders[name].note,
            )
            if (name, mode) in profiles:
                if name == "perceptio":
                    row["sdpa_kernels"] = profiles[name, mode]["kernels"]
                row["profile"] = profiles[name, mode]["top"]
            if base is not None and base.wall_s and m.wall_s:
                row["speedup_vs_transformers"] = paired_ratio(base, m)
                row["memory_vs_transformers"] = m.peak / base.peak if base.peak > 0 else math.nan
            if flops and mode in flops and m.wall_s:
                row["gflops"] = flops[mode] / 1e9
                row["gflop_per_s"] = flops[mode] / m.median_s / 1e9
            rows.append(row)
    for c in contenders.values():
        c.model.eval()
    return rows
