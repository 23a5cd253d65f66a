"""Sublayers that keep less for backward, recomputing cheap tensors there.

* ``mlp(norm(x))``, the pre-norm MLP of every block. Computed as written, autograd keeps
  four tensors of the MLP's rows: ``x`` (for the layer norm), ``y = norm(x)`` (for
  ``fc1``), ``h = fc1(y)`` (for the activation) and ``act(h)`` (for ``fc2``), the last two
  ``widening_factor`` times wider. :class:`NormMLP` keeps ``x``, the norm's per-row
  statistics and ``h``, and recomputes ``y`` and ``act(h)`` in backward.
* ``q(norm(x)), k(norm(x)), v(norm(x))``, an attention's projections of its pre-normed
  inputs: as written, the projections keep ``norm(x)`` (and the norm keeps ``x``);
  :class:`NormLinears` keeps ``x`` and the statistics, and normalises again in backward.
  Self-attention normalises once for all three.
* ``o(merge(out))``, an attention's output projection of its heads ``out [B, H, T, Dv]``.
  As written, ``o`` keeps the merged copy ``[B, T, H * Dv]`` while the attention kernel
  keeps ``out`` itself; :class:`HeadsLinear` keeps ``out`` (the same storage) and merges
  again in backward.

No product is computed twice: the recomputed work is elementwise or a copy. The forward
pass runs the same operations as written (the same outputs, bit for bit), and backward
the same kernels on the recomputed tensors (the same gradients, tested bit for bit).

:func:`norm_mlp`, :func:`norm_linears` and :func:`heads_linear` take these paths where
they apply (:func:`recomputes`): gradients wanted, the switch on
(:func:`.kernels.use_recompute`), not under autocast, ``torch.compile`` (whose
partitioner chooses what to recompute itself), ``torch.jit.trace`` or a ``torch.func``
transform, plain modules without hooks, inputs of at least ``MIN_ELEMENTS`` numbers (a
speed threshold only: both sides compute the same); elsewhere, and for double backward
(``create_graph=True``: the backward differentiates the sublayer as written), they
compute the sublayer as written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels import use_recompute
from .linear import Linear, linear


def mlp_as_written(x: Tensor, norm: nn.LayerNorm, fc1: nn.Linear, fc2: nn.Linear,
                   activation: Callable[[Tensor], Tensor]) -> Tensor:
    """``fc2(activation(fc1(norm(x))))``: ``x [..., C] -> [..., C]``."""
    return fc2(activation(fc1(norm(x))))


def norm_backward(grad_y: Tensor | None, x: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor | None,
                  bias: Tensor | None, needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """The layer norm's backward (autograd's own kernel): gradients of ``x [R, C]``, its
    weight and bias from ``grad_y [R, C]`` (None: no gradient reaches the norm's output)."""
    if grad_y is None:
        return None, None, None
    return torch.ops.aten.native_layer_norm_backward(
        grad_y, x, (x.shape[-1],), mean, rstd, weight, bias,
        [needs[0], needs[1] and weight is not None, needs[2] and bias is not None])


class NormMLP(torch.autograd.Function):
    """``linear(act(linear(layer_norm(x), w1, b1)), w2, b2)`` for ``x [R, C]``, keeping
    ``x``, the norm's mean and 1/std ``[R, 1]`` and ``h [R, hidden]`` for backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None, eps: float,
                w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
                activation: Callable[[Tensor], Tensor]) -> Tensor:
        y, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, eps)
        h = linear(y, w1, b1)
        ctx.save_for_backward(x, mean, rstd, h, norm_weight, norm_bias, w1, b1, w2, b2)
        ctx.eps, ctx.activation = eps, activation
        return linear(activation(h), w2, b2)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # grad [R, C]
        x, mean, rstd, h, norm_weight, norm_bias, w1, b1, w2, b2 = ctx.saved_tensors
        needs = ctx.needs_input_grad  # x, norm_weight, norm_bias, eps, w1, b1, w2, b2, activation
        if torch.is_grad_enabled():  # create_graph: differentiable, through the MLP as written
            inputs = [t for t, n in zip((x, norm_weight, norm_bias, w1, b1, w2, b2), needs[:3] + needs[4:8]) if n]
            with torch.enable_grad():
                y = F.layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, ctx.eps)
                out = F.linear(ctx.activation(F.linear(y, w1, b1)), w2, b2)
            found = iter(torch.autograd.grad(out, inputs, grad, create_graph=True))
            return tuple(next(found) if n else None for n in needs[:3]) + (None,) + tuple(
                next(found) if n else None for n in needs[4:8]) + (None,)
        with torch.enable_grad():  # the activation again, for its output and its backward
            h_in = h.detach().requires_grad_()
            a = ctx.activation(h_in)
        grad_h, = torch.autograd.grad(a, h_in, linear(grad, w2.t()))  # [R, hidden]
        grad_w2 = linear(grad.t(), a.detach().t()) if needs[6] else None  # [C, R] @ [R, hidden]
        del a
        grad_w1 = grad_y = None
        if needs[4] or any(needs[:3]):
            y = torch.native_layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, ctx.eps)[0] if needs[4] else None
            grad_w1 = linear(grad_h.t(), y.t()) if needs[4] else None  # [hidden, R] @ [R, C]
            grad_y = linear(grad_h, w1.t()) if any(needs[:3]) else None  # [R, hidden] @ [hidden, C]
        grad_x, grad_nw, grad_nb = norm_backward(grad_y, x, mean, rstd, norm_weight, norm_bias, needs[:3])
        grad_b1 = grad_h.sum(0) if b1 is not None and needs[5] else None
        grad_b2 = grad.sum(0) if b2 is not None and needs[7] else None
        return grad_x, grad_nw, grad_nb, None, grad_w1, grad_b1, grad_w2, grad_b2, None


# Below this many elements of ``x`` the memory saved is small and the Functions' per-call cost
# shows (measured: 3-4 % of the quickstart's step time, 64 x 32 rows of 64 channels).
MIN_ELEMENTS = 1 << 18


def _autocast() -> bool:
    return any(torch.is_autocast_enabled(device) for device in ("cpu", "cuda"))


def recomputes(x: Tensor, *modules: nn.Module) -> bool:
    """Whether to keep less for ``x`` through ``modules``: a layer norm (or None) and
    :class:`.linear.Linear` s, without hooks (module doc)."""
    if not torch.is_grad_enabled() or not use_recompute():
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or _autocast():
        return False  # before reading x's size: a trace would record it
    if x.numel() < MIN_ELEMENTS:
        return False
    if torch._C._functorch.maybe_current_level() is not None:  # inside a torch.func transform
        return False
    norm, *linears = modules
    if (norm is not None and type(norm) is not nn.LayerNorm) or not all(
            isinstance(m, nn.Linear) and type(m).forward is Linear.forward for m in linears):
        return False  # a replaced module (an adapter, a quantised linear) computes something else
    modules = tuple(m for m in modules if m is not None)
    if any(m._forward_hooks or m._forward_pre_hooks for m in modules):
        return False  # hooks see the modules' own calls
    return x.requires_grad or any(p.requires_grad for m in modules for p in m.parameters())


def norm_mlp(x: Tensor, norm: nn.LayerNorm, fc1: nn.Linear, fc2: nn.Linear,
             activation: Callable[[Tensor], Tensor]) -> Tensor:
    """``fc2(activation(fc1(norm(x))))``: ``x [..., C] -> [..., C]``, recomputing the norm
    and the activation in backward where that applies (module doc)."""
    if not recomputes(x, norm, fc1, fc2):
        return mlp_as_written(x, norm, fc1, fc2, activation)
    rows = x.reshape(-1, x.shape[-1])
    out = NormMLP.apply(rows, norm.weight, norm.bias, norm.eps, fc1.weight, fc1.bias, fc2.weight, fc2.bias,
                        activation)
    return out.view(*x.shape[:-1], out.shape[-1])



class NormLinears(torch.autograd.Function):
    """``[linear(layer_norm(x), w_i, b_i) for i]`` for ``x [R, C]`` (the projections of one
    normalised input: an attention's q, k, v), keeping ``x`` and the norm's statistics,
    not ``layer_norm(x)``. ``params``: ``w_1, b_1, w_2, b_2, ...`` (a bias may be None)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None, eps: float,
                *params: Tensor | None) -> tuple[Tensor, ...]:
        y, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, eps)
        ctx.save_for_backward(x, mean, rstd, norm_weight, norm_bias, *params)
        ctx.eps = eps
        ctx.set_materialize_grads(False)
        return tuple(linear(y, params[i], params[i + 1]) for i in range(0, len(params), 2))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None):  # grads[i]: [R, out_i] or None (output unused)
        x, mean, rstd, norm_weight, norm_bias, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad  # x, norm_weight, norm_bias, eps, w_1, b_1, ...
        if torch.is_grad_enabled():  # create_graph: differentiable, as written
            inputs = [t for t, n in zip((x, norm_weight, norm_bias, *params), needs[:3] + needs[4:]) if n]
            with torch.enable_grad():
                y = F.layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, ctx.eps)
                outs = [F.linear(y, params[i], params[i + 1]) for i in range(0, len(params), 2)]
            used = [(o, g) for o, g in zip(outs, grads) if g is not None]
            found = iter(torch.autograd.grad([o for o, _ in used], inputs, [g for _, g in used], create_graph=True,
                                             allow_unused=True))
            return tuple(next(found) if n else None for n in needs[:3]) + (None,) + tuple(
                next(found) if n else None for n in needs[4:])
        y = None
        if any(g is not None and needs[4 + 2 * j] for j, g in enumerate(grads)):
            y = torch.native_layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, ctx.eps)[0]
        grad_y = None
        param_grads: list[Tensor | None] = [None] * len(params)
        # last projection first: the order in which autograd would add the parts of grad_y
        for j in reversed(range(len(grads))):
            g, weight, bias = grads[j], params[2 * j], params[2 * j + 1]
            if g is None:
                continue
            if needs[4 + 2 * j]:
                param_grads[2 * j] = linear(g.t(), y.t())  # [out, R] @ [R, C]
            if bias is not None and needs[5 + 2 * j]:
                param_grads[2 * j + 1] = g.sum(0)
            if any(needs[:3]):
                part = linear(g, weight.t())  # [R, out] @ [out, C]
                grad_y = part if grad_y is None else grad_y.add_(part)
        grad_x, grad_nw, grad_nb = norm_backward(grad_y, x, mean, rstd, norm_weight, norm_bias, needs[:3])
        return (grad_x, grad_nw, grad_nb, None, *param_grads)


def norm_linears(x: Tensor, norm: nn.LayerNorm, linears: tuple[nn.Linear, ...]) -> tuple[Tensor, ...]:
    """``tuple(lin(norm(x)) for lin in linears)``: ``x [..., C]`` -> ``[..., out_i]`` each,
    keeping ``x`` rather than ``norm(x)`` for backward where that applies (module doc)."""
    if not recomputes(x, norm, *linears):
        y = norm(x)
        return tuple(lin(y) for lin in linears)
    rows = x.reshape(-1, x.shape[-1])
    params = [t for lin in linears for t in (lin.weight, lin.bias)]
    outs = NormLinears.apply(rows, norm.weight, norm.bias, norm.eps, *params)
    return tuple(o.view(*x.shape[:-1], o.shape[-1]) for o in outs)

class HeadsLinear(torch.autograd.Function):
    """``linear(merge(out), weight, bias)`` for heads ``out [B, H, T, Dv]`` -> ``[B, T, O]``,
    where ``merge`` is ``[B, H, T, Dv] -> [B, T, H * Dv]`` (head-major channels); keeps
    ``out``, not the merged copy."""

    @staticmethod
    def forward(ctx: Any, out: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        b, h, t, dv = out.shape
        ctx.save_for_backward(out, weight, bias)
        return linear(out.transpose(1, 2).reshape(b * t, h * dv), weight, bias).view(b, t, -1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # grad [B, T, O]
        out, weight, bias = ctx.saved_tensors
        b, h, t, dv = out.shape
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph: differentiable, as written
            inputs = [x for x, n in zip((out, weight, bias), needs) if n]
            with torch.enable_grad():
                y = F.linear(out.transpose(1, 2).flatten(2), weight, bias)
            found = iter(torch.autograd.grad(y, inputs, grad, create_graph=True))
            return tuple(next(found) if n else None for n in needs)
        rows = grad.reshape(b * t, -1)
        grad_out = grad_w = grad_b = None
        if needs[0]:
            grad_out = linear(rows, weight.t()).view(b, t, h, dv).transpose(1, 2)  # [B, H, T, Dv]
        if needs[1]:
            grad_w = linear(rows.t(), out.transpose(1, 2).reshape(b * t, h * dv).t())  # [O, BT] @ [BT, H Dv]
        if bias is not None and needs[2]:
            grad_b = rows.sum(0)
        return grad_out, grad_w, grad_b


def heads_linear(out: Tensor, o: nn.Linear) -> Tensor:
    """``o(out.transpose(1, 2).flatten(2))``: heads ``out [B, H, T, Dv]`` -> ``[B, T, O]``,
    keeping ``out`` rather than its merged copy where that applies (module doc)."""
    if not recomputes(out, None, o):
        return o(out.transpose(1, 2).flatten(2))
    return HeadsLinear.apply(out, o.weight, o.bias)
