"""``Linear``: an ``nn.Linear`` whose large fp32 CPU matmuls run on oneDNN.

On CPU, ``F.linear`` computes fp32 products with MKL's ``sgemm``. On x86 CPUs that MKL
does not take for Intel ones (AMD Zen, for instance) it runs its AVX2 kernels, while
oneDNN, which PyTorch also ships, dispatches on the instruction set and runs AVX-512:
on the machine of docs/performance.md that is ~2x the FLOP/s for the same fp32 product.
This module routes the forward *and* both backward products of a linear layer through
oneDNN's ``linear`` primitive (the op PyTorch's own compiler uses) and keeps everything
else of ``nn.Linear``: parameters, state-dict keys, initialisation, ``isinstance``.

The result is the same fp32 product summed in another order (differences ~1e-6
relative). The oneDNN path is taken only when all of these hold, else ``F.linear``:

* input and weight are fp32 tensors on the CPU, no autocast, not being compiled;
* the product is large enough to amortise oneDNN's per-call cost
  (``rows * in_features * out_features >= MIN_MACS``);
* the op exists in this PyTorch build and agreed with ``F.linear`` on a probe once;
* ``PERCEPTIO_ONEDNN_LINEAR`` is not ``0``.

Double backward (``create_graph=True``) through this path is not supported.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

MIN_MACS = 1 << 21
_state: dict[str, bool] = {}


def _linear_pointwise(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x [R, in] @ weight[out, in].T + bias`` on oneDNN; any strides."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_available() -> bool:
    """Whether the oneDNN path is usable (checked once per process, then cached)."""
    if "ok" not in _state:
        _state["ok"] = _probe()
    return _state["ok"] and os.environ.get("PERCEPTIO_ONEDNN_LINEAR", "1") != "0"


def _probe() -> bool:
    try:
        if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            return False
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=g) for s in ((64, 96), (80, 96), (80,)))
        y = _linear_pointwise(x, w, b)
        gw = _linear_pointwise(y.t(), x.t(), None)
        return torch.allclose(y, F.linear(x, w, b), rtol=1e-4, atol=1e-4) and torch.allclose(
            gw, y.t() @ x, rtol=1e-4, atol=1e-3
        )
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # x: [R, in]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _linear_pointwise(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # grad: [R, out]
        x, weight = ctx.saved_tensors
        if grad.stride(-1) != 1 and grad.stride(0) != 1:
            grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _linear_pointwise(grad, weight.t(), None)  # [R, out] @ [out, in]
        if ctx.needs_input_grad[1]:
            grad_w = _linear_pointwise(grad.t(), x.t(), None)  # [out, R] @ [R, in]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def _autocast_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` that takes the oneDNN path where it applies (see the module doc)."""
    out_features, in_features = weight.shape
    rows = x.numel() // in_features if in_features else 0
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or rows * in_features * out_features < MIN_MACS
        or _autocast_cpu()
        or torch.compiler.is_compiling()
        or not onednn_available()
    ):
        return F.linear(x, weight, bias)
    out = _OneDNNLinear.apply(x.reshape(rows, in_features), weight, bias)
    return out.view(*x.shape[:-1], out_features)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) computed with :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
