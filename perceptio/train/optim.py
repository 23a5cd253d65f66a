"""Optimizers (AdamW, LAMB) and the learning-rate schedule.

LAMB (You et al., 2019; used by the Perceiver IO paper) is Adam whose per-tensor update
``u = m_hat / (sqrt(v_hat) + eps) + weight_decay * p`` is rescaled by the trust ratio
``||p|| / ||u||`` (1 where either norm is 0). As in the paper's setup, biases and layer
norm parameters (1-d tensors) get no weight decay.

Schedule: linear warm-up over ``warmup_steps`` to ``lr``, then ``constant``, ``cosine``
decay to ``min_lr_ratio * lr`` at the last step, or ``constant_cosine``: constant until
``decay_start`` of the steps, cosine after (the paper's "constant then cosine").

Fine-tuning: ``train.freeze`` patterns switch parameters off (:func:`freeze`), and
``optim.param_groups`` give the parameters they match their own learning rate and weight
decay (:func:`param_groups`); the schedule scales every group's own ``base_lr``.
Patterns are fnmatch patterns on parameter names (``encoder.*``, ``*.norm.*``) or module
names (``encoder`` matches ``encoder.*``); one that matches nothing is an error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

import torch
from torch import nn

from .experiment import OptimConfig, ParamGroupConfig


class LAMB(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0) -> None:
        if lr <= 0 or eps <= 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"LAMB: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                update = (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_(update * trust, alpha=-group["lr"])
        return loss


def matches(name: str, pattern: str) -> bool:
    """Whether parameter ``name`` matches ``pattern`` (fnmatch, or a module name)."""
    return fnmatchcase(name, pattern) or name.startswith(pattern + ".")


def matching(names: Sequence[str], pattern: str, key: str) -> list[str]:
    """The names ``pattern`` matches; none is an error naming ``key`` and some names."""
    found = [n for n in names if matches(n, pattern)]
    if not found:
        modules = sorted({n.split(".")[0] for n in names})
        raise ValueError(f"{key}: {pattern!r} matches no parameter; parameter names start with {modules}, "
                         f"e.g. {list(names[:3])} (patterns are fnmatch patterns such as 'encoder.*')")
    return found


def freeze(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on the parameters matching any of ``patterns``; their names."""
    names = [n for n, _ in model.named_parameters()]
    frozen = {n for p in patterns for n in matching(names, p, "train.freeze")}
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return [n for n in names if n in frozen]


def param_groups(model: nn.Module, weight_decay: float, lr: float,
                 groups: Sequence[ParamGroupConfig] = ()) -> list[dict]:
    """Optimizer groups of the trainable parameters: those matching ``groups[i]`` (the first
    that matches) with its lr / weight decay, the rest with ``lr`` / ``weight_decay``; each
    split so that matrices only are decayed (biases, norms, latents and position tables of
    rank < 2 are not). Every group carries ``name``, ``base_lr`` and ``names``."""
    named = [(n, p) for n, p in model.named_parameters()]
    owner: dict[str, int] = {}
    for i, group in enumerate(groups):
        for pattern in group.patterns():
            for name in matching([n for n, _ in named], pattern, f"optim.param_groups[{i}].params"):
                owner.setdefault(name, i)
    settings = [(f"param_groups[{i}] {g.patterns()}", g.lr or lr,
                 weight_decay if g.weight_decay is None else g.weight_decay) for i, g in enumerate(groups)]
    settings.append(("default", lr, weight_decay))
    out = []
    for i, (label, group_lr, decay) in enumerate(settings):
        members = [(n, p) for n, p in named if p.requires_grad and owner.get(n, len(groups)) == i]
        for suffix, rank_ok, wd in (("", lambda p: p.dim() >= 2, decay), (" (no decay)", lambda p: p.dim() < 2, 0.0)):
            part = [(n, p) for n, p in members if rank_ok(p)]
            if part:
                out.append({"params": [p for _, p in part], "names": [n for n, _ in part], "weight_decay": wd,
                            "lr": group_lr, "base_lr": group_lr, "name": label + suffix})
    if not out:
        raise ValueError("no parameter is left to train: train.freeze matches every parameter of the model")
    return out


def describe_groups(groups: Sequence[dict]) -> str:
    """One line per optimizer group: name, tensors, values, lr, weight decay."""
    return "\n".join(
        f"  {g['name']}: {len(g['params'])} tensors, {sum(p.numel() for p in g['params']):,} parameters, "
        f"lr {g['base_lr']:.3g}, weight_decay {g['weight_decay']:.3g}" for g in groups)


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, config.weight_decay, config.lr, config.param_groups)
    betas = (config.betas[0], config.betas[1])
    if config.optimizer == "lamb":
        return LAMB(groups, lr=config.lr, betas=betas, eps=config.eps, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=config.eps, weight_decay=config.weight_decay)


def lr_factor(step: int, total_steps: int, config: OptimConfig) -> float:
    """Multiplier of ``config.lr`` at optimizer step ``step`` (0-based)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    start = config.warmup_steps
    if config.schedule == "constant_cosine":
        start = max(start, int(config.decay_start * total_steps))
        if step < start:
            return 1.0
    progress = min((step - start) / max(total_steps - start, 1), 1.0)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group's learning rate: its own ``base_lr`` times the schedule's ``factor``."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor

