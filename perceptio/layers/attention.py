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
from .kernels import attention_split_threads
from .linear import Linear


def attend(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0) -> Tensor:
    """``F.scaled_dot_product_attention`` of ``q [B, H, Tq, D]`` to ``k, v [B, H, Tk, D(v)]``
    (``attn_mask`` broadcastable to ``[B, H, Tq, Tk]``, True = keep) -> ``[B, H, Tq, Dv]``.

    PyTorch's CPU flash-attention *backward* parallelises over batch x heads only; with
    fewer of those than threads (a one-head cross-attend at batch 1, the Perceiver's
    usual case) it runs on one thread and, with 2 threads, was measured 12x slower than
    this split (docs/performance.md). So when gradients are needed on the CPU and
    ``B * H`` is below the thread count decided once (:func:`.kernels.attention_split_threads`),
    the queries are cut into groups stacked as extra heads (H == 1) or batch rows (B == 1)
    that share ``k`` and ``v`` through ``expand`` (no copy). Every query row is computed
    as without the split; only the key and value gradients are summed in another order."""
    b, h, tq, _ = q.shape
    groups = query_groups(q, k, v, dropout_p, attention_split_threads())
    if groups == 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    if h == 1:  # [B, 1, Tq, D] -> [B, groups, Tq / groups, D]
        out = F.scaled_dot_product_attention(
            q.reshape(b, groups, tq // groups, -1), k.expand(b, groups, -1, -1), v.expand(b, groups, -1, -1),
            attn_mask=attn_mask,
        )
        return out.reshape(b, 1, tq, -1)
    # b == 1: [1, H, Tq, D] -> [groups, H, Tq / groups, D]
    qg = q.reshape(h, groups, tq // groups, -1).transpose(0, 1)
    out = F.scaled_dot_product_attention(qg, k.expand(groups, -1, -1, -1), v.expand(groups, -1, -1, -1),
                                         attn_mask=attn_mask)
    return out.transpose(0, 1).reshape(1, h, tq, -1)


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

    def forward(
        self,
        inputs_q: Tensor,
        inputs_kv: Tensor,
        key_mask: Tensor | None = None,
        query_mask: Tensor | None = None,
    ) -> Tensor:
        q = self.split_heads(self.q(inputs_q))
        k = self.split_heads(self.k(inputs_kv))
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
            out = attend(q, k, v, attn_mask=sdpa_mask, dropout_p=dropout)
            out = out.transpose(1, 2).flatten(2)  # [B, Tq, v_channels]
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
