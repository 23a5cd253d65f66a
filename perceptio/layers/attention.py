"""Multi-head attention on ``torch.nn.functional.scaled_dot_product_attention``.

Semantics follow the official Perceiver IO ``MultiHeadAttention``:

* ``qk_channels`` defaults to the query input width, ``v_channels`` to ``qk_channels``,
  ``output_channels`` to ``v_channels``;
* logits are scaled by ``1 / sqrt(qk_channels // num_heads)``;
* masks are boolean, ``True`` = keep. A query row that may attend to no key at all
  (its query is masked, or every key is) outputs **zeros** before the output
  projection, as the reference does (``wipe_attn``), instead of NaN or a uniform mean.

Masks are given as a key-padding mask ``[B, Tk]`` and a query mask ``[B, Tq]``; the
reference's full mask is their outer product, so nothing of size ``Tq x Tk`` is built.

Attention maps are never returned by ``forward``: :func:`collect_attention` records the
probabilities ``[B, heads, Tq, Tk]`` of every ``MultiHeadAttention`` in a model, by module
name, while it is active. Only then is the attention computed explicitly (softmax, then
the product with the values, as in ``transformers``), and the recorded tensor is the one
multiplied with the values: it is part of the autograd graph.

Double backward (``create_graph=True``, gradient penalties) through attention needs SDPA's
math kernel, ``with torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``: PyTorch's CPU
flash-attention kernel has no second derivative.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..limits import ATTENTION_SIZE, format_bytes
from .chunked import chunked_attention
from .kernels import attention_kernel, attention_split_threads
from .linear import Linear, linear
from .recompute import heads_linear, norm_linears


def attend(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
           scale: float | None = None) -> Tensor:
    """Attention of ``q [B, H, Tq, D]`` to ``k [B, H, Tk, D]``, ``v [B, H, Tk, Dv]``
    (``attn_mask`` broadcastable to ``[B, H, Tq, Tk]``, True = keep; ``scale`` defaults to
    ``1 / sqrt(D)``) -> ``[B, H, Tq, Dv]``.

    The kernel is chosen by shape (:func:`uses_plain_bf16`, :func:`uses_chunked`), never
    changing the function:

    * a bf16 attention with a small score map: as written, bmm, softmax, bmm;

    * more keys than queries on the CPU (the cross-attend into the latents), or value heads
      of another width than key heads (masks, if any, per key):
      :func:`.chunked.chunked_attention`, large products chunked over the keys, measured
      0.97-1.6x SDPA's CPU kernels forward+backward at 2 threads (docs/performance.md);
    * else ``F.scaled_dot_product_attention``. Its CPU flash *backward* parallelises over
      batch x heads only; with fewer of those than threads (one head at batch 1) it runs on
      one thread, so when gradients are needed on the CPU and ``B * H`` is below the thread
      count decided once (:func:`.kernels.attention_split_threads`), the queries are cut into
      groups stacked as extra heads (H == 1) or batch rows (B == 1) that share ``k`` and ``v``
      through ``expand`` (no copy). Every query row is computed as without the split."""
    if uses_plain_bf16(q, k, dropout_p, attn_mask):
        logits = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
        if attn_mask is not None:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        return logits.softmax(dim=-1) @ v
    if uses_chunked(q, k, v, attn_mask, dropout_p):
        key_mask = None if attn_mask is None else attn_mask.reshape(attn_mask.shape[0], -1)
        if not torch.is_autocast_enabled("cpu"):
            return chunked_attention(q, k, v, key_mask, scale)
        low = torch.get_autocast_dtype("cpu")  # products in the autocast dtype, statistics in fp32
        with torch.autocast("cpu", enabled=False):
            return chunked_attention(q.to(low), k.to(low), v.to(low), key_mask, scale)
    b, h, tq, _ = q.shape
    sdpa = partial(F.scaled_dot_product_attention, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    # a compiled graph holds plain SDPA: no split planned for this process's thread count
    groups = 1 if torch.compiler.is_compiling() else query_groups(q, k, v, dropout_p, attention_split_threads())
    if groups == 1:
        return sdpa(q, k, v)
    if h == 1:  # [B, 1, Tq, D] -> [B, groups, Tq / groups, D]
        out = sdpa(q.reshape(b, groups, tq // groups, -1), k.expand(b, groups, -1, -1), v.expand(b, groups, -1, -1))
        return out.reshape(b, 1, tq, -1)
    # b == 1: [1, H, Tq, D] -> [groups, H, Tq / groups, D]
    qg = q.reshape(h, groups, tq // groups, -1).transpose(0, 1)
    out = sdpa(qg, k.expand(groups, -1, -1, -1), v.expand(groups, -1, -1, -1))
    return out.transpose(0, 1).reshape(1, h, tq, -1)


MATH_SCORES = 1 << 19
PLAIN_BF16_SCORES = 1 << 22


def uses_plain_bf16(q: Tensor, k: Tensor, dropout_p: float = 0.0, attn_mask: Tensor | None = None) -> bool:
    """Whether :func:`attend` computes a bf16 CPU attention (bf16 inputs or autocast) as
    written, ``softmax(q k^T) v`` with the scores in memory: for at most
    ``PLAIN_BF16_SCORES`` scores in all, measured 2-3x faster than SDPA's CPU kernels and
    :mod:`.chunked` in bf16 (those convert to and from fp32 around their softmax)."""
    return (
        attention_kernel() == "auto"
        and q.device.type == "cpu"
        and (q.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                           and torch.get_autocast_dtype("cpu") == torch.bfloat16))
        and not dropout_p
        and (attn_mask is None or attn_mask.dtype == torch.bool)
        and q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] <= PLAIN_BF16_SCORES
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


def uses_chunked(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0) -> bool:
    """Whether :func:`attend` takes :func:`.chunked.chunked_attention` for these inputs: a CPU
    fp32/fp64/bf16 attention (under autocast too) with more keys than queries, or with value
    heads wider or narrower than key heads (SDPA has only its math kernel for those) and at
    least ``MATH_SCORES`` scores per head (below, SDPA's math kernel was measured faster), no dropout, no mask or a key mask
    (``[B, 1, 1, Tk]``), outside ``torch.compile`` / ``torch.jit.trace`` (graphs record SDPA)."""
    return (
        attention_kernel() == "auto"
        and q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.float64, torch.bfloat16)
        and (k.shape[2] > q.shape[2] or (v.shape[-1] != q.shape[-1] and q.shape[2] * k.shape[2] >= MATH_SCORES))
        and not dropout_p
        and (attn_mask is None or (attn_mask.dtype == torch.bool and attn_mask.dim() == 4
                                   and attn_mask.shape[1:3] == (1, 1) and attn_mask.shape[0] == q.shape[0]))
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


def query_groups(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, threads: int) -> int:
    """Number of query groups :func:`attend` splits ``q [B, H, Tq, D]`` into for ``threads``."""
    b, h, tq, _ = q.shape
    if (
        q.device.type != "cpu"
        or dropout_p
        or not torch.is_grad_enabled()
        or not (q.requires_grad or k.requires_grad or v.requires_grad)
        or (b != 1 and h != 1)
        or b * h >= threads
    ):
        return 1
    groups = threads // (b * h)
    while groups > 1 and tq % groups:
        groups -= 1
    return groups


def zero_masked(inputs_kv: Tensor, key_mask: Tensor | None) -> Tensor:
    """``inputs_kv [B, Tk, C]`` with the masked keys (``key_mask [B, Tk]`` False) set to 0.

    Masked keys may hold anything (NaN, Inf padding): their attention probability is 0,
    but ``0 * NaN`` in ``probs @ v`` would reach every output (and in backward every
    gradient). A finite masked key contributes exactly 0 to outputs and gradients, so
    zeroing it changes no result. :class:`MultiHeadAttention` itself expects finite keys;
    the cross-attention block zeroes them before its layer norm."""
    return inputs_kv if key_mask is None else inputs_kv.masked_fill(~key_mask[..., None], 0.0)


Recorder = Callable[[Tensor], None]


class MultiHeadAttention(nn.Module):
    """Multi-head attention from ``inputs_q [B, Tq, Cq]`` to ``inputs_kv [B, Tk, Ckv]``
    -> ``[B, Tq, output_channels]``.

    ``recorder``: None (the default: SDPA, nothing kept), or a function that receives the
    attention probabilities ``[B, num_heads, Tq, Tk]`` of each call; set by
    :func:`collect_attention`.
    """

    def __init__(
        self,
        q_in_channels: int,
        kv_in_channels: int,
        num_heads: int = 1,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        output_channels: int | None = None,
        attention_dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        qk_channels = qk_channels or q_in_channels
        v_channels = v_channels or qk_channels
        output_channels = output_channels or v_channels
        for name, value in (("qk_channels", qk_channels), ("v_channels", v_channels)):
            if value % num_heads:
                raise ValueError(
                    f"{name}={value} is not divisible by num_heads={num_heads}; "
                    f"choose num_heads dividing {value}"
                )
        self.num_heads = num_heads
        self.qk_channels, self.v_channels = qk_channels, v_channels
        self.attention_dropout = attention_dropout
        self.q = Linear(q_in_channels, qk_channels, bias=bias)
        self.k = Linear(kv_in_channels, qk_channels, bias=bias)
        self.v = Linear(kv_in_channels, v_channels, bias=bias)
        self.o = Linear(v_channels, output_channels, bias=bias)
        self.recorder: Recorder | None = None

    def split_heads(self, x: Tensor) -> Tensor:
        """``[B, T, C] -> [B, H, T, C/H]``, channel ``h * C/H + c`` to head ``h`` (head-major)."""
        b, t, c = x.shape
        return x.view(b, t, self.num_heads, c // self.num_heads).transpose(1, 2)

    def merge_heads(self, out: Tensor) -> Tensor:
        """Per-head values ``[B, H, Tq, Dv]`` -> the output projection ``[B, Tq, output_channels]``."""
        return self.o(out.transpose(1, 2).flatten(2))

    def folds(self, num_queries: int, num_keys: int) -> tuple[bool, bool]:
        """Whether the forward folds the key / value projection into the queries / the output
        for this shape: a one-head attention without attention dropout where that takes fewer
        multiply-adds (``C`` = ``kv_in_channels``, ``Tq`` queries, ``Tk`` keys)::

            keys:   Tq qk C + Tq Tk C   <   Tk C qk + Tq Tk qk   (project Tk keys, then score)
            values: Tq Tk C + Tq C v    <   Tk C v  + Tq Tk v

        True for the cross-attend of a large input into the latents (e.g. ImageNet: 50,176
        inputs of 261 channels into 512 latents: a third fewer products, and no ``[Tk, qk]``
        keys or ``[Tk, v]`` values are made or kept for backward). Never with
        ``PERCEPTIO_ATTENTION_KERNEL=sdpa`` (the projections as written, for comparisons)."""
        if (self.num_heads != 1 or (self.training and self.attention_dropout) or num_keys <= num_queries
                or attention_kernel() != "auto"):
            return False, False
        c, tq, tk, qk, v = self.k.in_features, num_queries, num_keys, self.qk_channels, self.v_channels
        return tq * qk * c + tq * tk * c < tk * c * qk + tq * tk * qk, tq * tk * c + tq * c * v < tk * c * v + tq * tk * v

    def forward(
        self,
        inputs_q: Tensor,
        inputs_kv: Tensor,
        key_mask: Tensor | None = None,
        query_mask: Tensor | None = None,
        kv_scale: Tensor | None = None,
        kv_shift: Tensor | None = None,
        q_norm: nn.LayerNorm | None = None,
        kv_norm: nn.LayerNorm | None = None,
    ) -> Tensor:
        """``kv_scale``, ``kv_shift`` ``[Ckv]`` (a layer norm's affine, folded in by
        :class:`.blocks.CrossAttention`): the keys and values are made from
        ``inputs_kv * kv_scale + kv_shift`` without that tensor being built where the
        projections are folded (:meth:`folds`). ``q_norm`` / ``kv_norm``: layer norms
        applied here to ``inputs_q`` / ``inputs_kv`` (the blocks' pre-norms), so that the
        projections keep the inputs, not their normalised copies, for backward
        (:func:`.recompute.norm_linears`); the same norm of the same tensor (self-attention)
        is computed once. No projection is folded where ``kv_norm`` is given."""
        self_attends = q_norm is not None and q_norm is kv_norm and inputs_q is inputs_kv
        if self_attends:
            q, k, v = (self.split_heads(t) for t in norm_linears(inputs_q, q_norm, (self.q, self.k, self.v)))
        else:
            q = self.split_heads(self.q(inputs_q) if q_norm is None else norm_linears(inputs_q, q_norm, (self.q,))[0])
        fold_keys, fold_values = (False, False) if self.recorder is not None or kv_norm is not None else self.folds(
            q.shape[2], inputs_kv.shape[1])
        affine = kv_scale is not None
        if affine and not (fold_keys and fold_values):
            inputs_kv, affine = inputs_kv * kv_scale + kv_shift, False
        scale = None
        if fold_keys:
            # q . (W_k x + b_k) = (q W_k) . x + q . b_k: the last term is the same for every key of a
            # query, which softmax ignores; its gradient is exactly 0 (kept defined by the 0 * sum).
            # With the affine, x = x_hat * scale + shift: q W_k . shift is such a term too.
            q = q @ self.k.weight
            if affine:
                q = q * kv_scale + 0.0 * kv_shift.sum()
            if self.k.bias is not None:
                q = q + 0.0 * self.k.bias.sum()
            k, scale = inputs_kv[:, None], (self.qk_channels // self.num_heads) ** -0.5
        elif kv_norm is not None and not self_attends:
            k, v = (self.split_heads(t) for t in norm_linears(inputs_kv, kv_norm, (self.k, self.v)))
        elif not self_attends:
            k = self.split_heads(self.k(inputs_kv))
        # softmax rows sum to 1: p (x W_v^T + b_v) = (p x) W_v^T + b_v
        if fold_values:
            v = inputs_kv[:, None]
        elif kv_norm is None:
            v = self.split_heads(self.v(inputs_kv))

        # Rows that can attend to nothing are zeroed (reference `wipe_attn`).
        wipe = None
        sdpa_mask = None
        if key_mask is not None:
            has_key = key_mask.any(dim=1)  # [B]
            # A batch row without any valid key would make softmax NaN; let it attend
            # everywhere (the result is wiped) so gradients stay finite.
            key_mask = key_mask | ~has_key[:, None]
            sdpa_mask = key_mask[:, None, None, :]  # [B, 1, 1, Tk]
            wipe = ~has_key[:, None].expand(-1, inputs_q.shape[1])  # [B, Tq]
        if query_mask is not None:
            wipe = ~query_mask if wipe is None else wipe | ~query_mask

        dropout = self.attention_dropout if self.training else 0.0
        if self.recorder is None:
            out = attend(q, k, v, attn_mask=sdpa_mask, dropout_p=dropout, scale=scale)
            if not fold_values and wipe is None:  # keeps the kernel's output, not a merged copy
                return heads_linear(out, self.o)
            out = out.transpose(1, 2).flatten(2)  # [B, Tq, v_channels] (folded: [B, Tq, C])
            if fold_values:
                out = linear(out * kv_scale + kv_shift if affine else out, self.v.weight, self.v.bias)
            if wipe is not None:
                out = out.masked_fill(wipe[..., None], 0.0)
        else:
            check_map_size((*q.shape[:3], k.shape[2]), q.dtype)
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [B, H, Tq, Tk]
            if sdpa_mask is not None:
                logits = logits.masked_fill(~sdpa_mask, float("-inf"))
            probs = logits.softmax(dim=-1)
            if wipe is not None:
                probs = probs.masked_fill(wipe[:, None, :, None], 0.0)
            probs = F.dropout(probs, dropout, self.training)
            self.recorder(probs)  # the very tensor multiplied with v: gradients reach it
            out = (probs @ v).transpose(1, 2).flatten(2)
        return self.o(out)


# ---------------------------------------------------------------------------------------
# Collecting attention maps
# ---------------------------------------------------------------------------------------
def check_map_size(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Refuse (ValueError) to compute an attention map ``[B, H, Tq, Tk]`` larger than
    ``PERCEPTIO_MAX_ATTENTION_GB`` (default 2 GB), before it is allocated."""
    size = math.prod(shape) * dtype.itemsize
    if size > ATTENTION_SIZE.value():
        raise ValueError(
            f"an attention map {list(shape)} [batch, heads, queries, keys] of {dtype} would take {format_bytes(size)}, "
            f"above {ATTENTION_SIZE.describe()}: record maps of fewer inputs or outputs (a smaller batch, decode "
            f"fewer points), or raise the limit")


class AttentionMaps:
    """Attention probabilities ``[B, heads, Tq, Tk]`` recorded by module name, in call order.

    A module called several times (a weight-shared block) has one map per call. All maps
    together may take at most ``PERCEPTIO_MAX_ATTENTION_GB``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Tensor]] = []
        self.nbytes = 0

    def record(self, name: str, probs: Tensor) -> None:
        self.nbytes += probs.numel() * probs.element_size()
        if self.nbytes > ATTENTION_SIZE.value():
            raise ValueError(
                f"the attention maps recorded up to {name} ({len(self.calls) + 1} maps, the last "
                f"{list(probs.shape)}) take {format_bytes(self.nbytes)}, above {ATTENTION_SIZE.describe()}: record "
                f"maps of fewer inputs or outputs (a smaller batch, decode fewer points), or raise the limit")
        self.calls.append((name, probs))

    def __getitem__(self, name: str) -> list[Tensor]:
        return [p for n, p in self.calls if n == name]

    def by_module(self) -> dict[str, list[Tensor]]:
        """``{module_name: [map per call]}``, modules in the order of their first call."""
        out: dict[str, list[Tensor]] = {}
        for name, probs in self.calls:
            out.setdefault(name, []).append(probs)
        return out

    def under(self, prefix: str) -> list[Tensor]:
        """Maps of the modules named ``prefix`` or ``prefix.*``, in call order."""
        return [p for n, p in self.calls if n == prefix or n.startswith(prefix + ".")]


def attention_modules(model: nn.Module) -> list[tuple[str, MultiHeadAttention]]:
    """``(name, module)`` of every :class:`MultiHeadAttention` in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]


def _both(first: Recorder, second: Recorder, probs: Tensor) -> None:
    first(probs)
    second(probs)


@contextmanager
def _recorders(modules: list[tuple[MultiHeadAttention, Recorder | None]]) -> Iterator[None]:
    previous = [m.recorder for m, _ in modules]
    for m, recorder in modules:
        m.recorder = recorder
    try:
        yield
    finally:
        for (m, _), before in zip(modules, previous):
            m.recorder = before


@contextmanager
def collect_attention(model: nn.Module) -> Iterator[AttentionMaps]:
    """Record the attention maps of every :class:`MultiHeadAttention` in ``model`` (names as
    in ``model.named_modules()``) during the forward passes run inside the block::

        with collect_attention(model) as maps:
            model(inputs)
        maps.by_module()  # {"encoder.cross_attends.0.attention": [[B, H, N, M]], ...}

    Nested blocks over the same modules each get every map."""
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no MultiHeadAttention module whose maps could be collected")
    maps = AttentionMaps()
    recorders = []
    for name, module in modules:
        record = partial(maps.record, name)
        recorders.append((module, record if module.recorder is None else partial(_both, module.recorder, record)))
    with _recorders(recorders):
        yield maps


def _discard(probs: Tensor) -> None:
    pass


def checkpoint_block(block: nn.Module, *args: Tensor) -> Tensor:
    """``torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)`` for a block
    whose attention maps may be being collected: its recomputation in backward takes the
    forward's attention path (checkpointing needs the same saved tensors) and records
    nothing a second time, even if it runs after :func:`collect_attention` has ended."""
    modules = [m for _, m in attention_modules(block)]
    if all(m.recorder is None for m in modules):
        return checkpoint(block, *args, use_reentrant=False)
    recompute = [(m, None if m.recorder is None else _discard) for m in modules]
    return checkpoint(block, *args, use_reentrant=False, context_fn=lambda: (nullcontext(), _recorders(recompute)))
