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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .linear import Linear


def attend(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
    threads: int | None = None,
) -> Tensor:
    """``F.scaled_dot_product_attention`` of ``q [B, H, Tq, D]`` to ``k, v [B, H, Tk, D(v)]``.

    PyTorch's CPU flash-attention *backward* parallelises over batch x heads only; with
    fewer of those than threads (a one-head cross-attend at batch 1, the Perceiver's
    usual case) it runs on one thread and, with 2 threads, was measured 12x slower than
    this split (docs/performance.md). So when gradients are needed on the CPU and
    ``B * H < threads``, the queries are cut into groups stacked as extra heads (H == 1)
    or batch rows (B == 1) that share ``k`` and ``v`` through ``expand`` (no copy). The
    result is the same attention."""
    b, h, tq, _ = q.shape
    groups = _query_groups(q, k, v, dropout_p, torch.get_num_threads() if threads is None else threads)
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


def _query_groups(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, threads: int) -> int:
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


class MultiHeadAttention(nn.Module):
    """Multi-head attention from ``inputs_q [B, Tq, Cq]`` to ``inputs_kv [B, Tk, Ckv]``.

    Returns ``[B, Tq, output_channels]``, and with ``return_attention=True`` also the
    attention probabilities ``[B, num_heads, Tq, Tk]``.
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
        self.q = Linear(q_in_channels, qk_channels)
        self.k = Linear(kv_in_channels, qk_channels)
        self.v = Linear(kv_in_channels, v_channels)
        self.o = Linear(v_channels, output_channels)

    def _split_heads(self, x: Tensor) -> Tensor:  # [B, T, C] -> [B, H, T, C/H]
        b, t, c = x.shape
        return x.view(b, t, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(
        self,
        inputs_q: Tensor,
        inputs_kv: Tensor,
        key_mask: Tensor | None = None,
        query_mask: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        q = self._split_heads(self.q(inputs_q))
        k = self._split_heads(self.k(inputs_kv))
        v = self._split_heads(self.v(inputs_kv))

        # Rows that can attend to nothing are zeroed after attention (reference `wipe_attn`).
        wipe = None
        sdpa_mask = None
        if key_mask is not None:
            has_key = key_mask.any(dim=1)  # [B]
            # A batch row without any valid key would make softmax NaN; let it attend
            # everywhere (the result is wiped below) so gradients stay finite.
            key_mask = key_mask | ~has_key[:, None]
            sdpa_mask = key_mask[:, None, None, :]  # [B, 1, 1, Tk]
            wipe = ~has_key[:, None].expand(-1, inputs_q.shape[1])  # [B, Tq]
        if query_mask is not None:
            wipe = ~query_mask if wipe is None else wipe | ~query_mask

        dropout = self.attention_dropout if self.training else 0.0
        if return_attention:
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            if sdpa_mask is not None:
                logits = logits.masked_fill(~sdpa_mask, float("-inf"))
            probs = F.dropout(logits.softmax(dim=-1), dropout, self.training)
            out = probs @ v
        else:
            out = attend(q, k, v, attn_mask=sdpa_mask, dropout_p=dropout)
        out = out.transpose(1, 2).flatten(2)  # [B, Tq, v_channels]
        if wipe is not None:
            out = out.masked_fill(wipe[..., None], 0.0)
        out = self.o(out)
        if return_attention:
            if wipe is not None:
                probs = probs.masked_fill(wipe[:, None, :, None], 0.0)
            return out, probs
        return out
