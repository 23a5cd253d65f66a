"""Optimizers (AdamW, LAMB) and the learning-rate schedule.

LAMB (You et al., 2019; used by the Perceiver IO paper) is Adam whose per-tensor update
``u = m_hat / (sqrt(v_hat) + eps) + weight_decay * p`` is rescaled by the trust ratio
``||p|| / ||u||`` (1 where either norm is 0). As in the paper's setup, biases and layer
norm parameters (1-d tensors) get no weight decay.

Schedule: linear warm-up over ``warmup_steps`` to ``lr``, then ``constant``, ``cosine``
decay to ``min_lr_ratio * lr`` at the last step, or ``constant_cosine``: constant until
``decay_start`` of the steps, cosine after (the paper's "constant then cosine").
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from .experiment import OptimConfig


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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay for matrices only: biases, norms, latents and position tables of rank
    < 2 are not decayed."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, config.weight_decay)
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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

