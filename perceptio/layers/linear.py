"""``Linear``: an ``nn.Linear`` whose large fp32 CPU products may run on oneDNN.

Where :func:`.kernels.use_onednn_linear` says so (non-Intel x86 CPUs with AVX-512, on
which MKL's ``sgemm`` runs AVX2 kernels), the forward *and* both backward products of a
linear layer go through oneDNN's ``linear`` primitive (the op PyTorch's own compiler
uses); parameters, state-dict keys, initialisation and ``isinstance`` stay those of
``nn.Linear``. The result is the same fp32 product summed in another order (differences
~1e-6 relative).

The oneDNN path is an ``autograd.Function`` that supports every torch transform: its
backward is itself differentiable (double backward, ``torch.func.hessian``), it has a
``vmap`` rule (``torch.func.vmap``, per-sample gradients) and a ``jvp`` rule (forward-mode
AD), and ``torch.func.grad`` uses its backward. It is taken only when all of these hold,
else ``F.linear``:

* the switch is on (decided once per process, see :mod:`.kernels`);
* input and weight are fp32 tensors on the CPU, no autocast, not being compiled by
  ``torch.compile`` nor traced by ``torch.jit.trace`` (graphs record ``F.linear``);
* the product is large enough to amortise oneDNN's per-call cost
  (``rows * in_features * out_features >= MIN_MACS``): only a speed threshold, both sides
  of it compute the same function.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels import onednn_matmul, use_onednn_linear

MIN_MACS = 1 << 21


class OneDNNLinear(torch.autograd.Function):
    """``x [R, in] @ weight [out, in].T + bias`` on oneDNN, differentiable to any order."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return onednn_matmul(x, weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # grad: [R, out]
        x, weight = ctx.saved_tensors
        if grad.stride(-1) != 1 and grad.stride(0) != 1:
            grad = grad.contiguous()
        # With create_graph=True (double backward, torch.func.grad) grad mode is on: through
        # `apply` again so that these products are differentiable; else the bare kernel.
        product = OneDNNLinear.apply if torch.is_grad_enabled() else onednn_matmul
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = product(grad, weight.t(), None)  # [R, out] @ [out, in]
        if ctx.needs_input_grad[1]:
            grad_w = product(grad.t(), x.t(), None)  # [out, R] @ [R, in]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b

    @staticmethod
    def jvp(ctx: Any, x_t: Tensor | None, weight_t: Tensor | None, bias_t: Tensor | None) -> Tensor:
        x, weight = ctx.saved_tensors
        parts = [F.linear(x_t, weight) if x_t is not None else None,
                 F.linear(x, weight_t) if weight_t is not None else None, bias_t]
        return sum(p for p in parts if p is not None)

    @staticmethod
    def vmap(info: Any, in_dims: tuple, x: Tensor, weight: Tensor, bias: Tensor | None):
        x_dim, weight_dim, bias_dim = in_dims
        if weight_dim is None and bias_dim is None:  # a batch of inputs: more rows
            x = x.movedim(x_dim, 0)  # [V, R, in]
            out = OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
            return out.view(*x.shape[:-1], weight.shape[0]), 0
        # Batched weights (ensembles, per-sample gradients of weights): F.linear's own rule.
        return torch.vmap(F.linear, in_dims=in_dims)(x, weight, bias), 0


def _autocast_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x [..., in], weight [out, in], bias [out]) -> [..., out]``, on oneDNN
    where that applies (see the module doc)."""
    if (
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or not use_onednn_linear()
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or _autocast_cpu()
    ):
        return F.linear(x, weight, bias)
    out_features, in_features = weight.shape
    rows = x.numel() // in_features if in_features else 0
    if rows * in_features * out_features < MIN_MACS:
        return F.linear(x, weight, bias)
    out = OneDNNLinear.apply(x.reshape(rows, in_features), weight, bias)
    return out.view(*x.shape[:-1], out_features)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) computed with :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
