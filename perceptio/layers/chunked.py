"""Attention as large matrix products, chunked over the keys: the CPU kernel of the cross-attend.

The Perceiver's cross-attend has few queries (the latents, hundreds) and many keys (the
inputs, up to a million). PyTorch's CPU flash-attention kernel works in small tiles and
parallelises over batch x heads, of which a cross-attend has one or two; its math kernel
materialises the ``[Tq, Tk]`` scores and keeps them for backward. Here the keys are cut
into chunks of ``chunk`` keys and each chunk is one ``bmm`` of ``Tq x chunk`` scores that
stays in cache: an online softmax over the chunks in forward (as flash attention does,
with blocks large enough for the matmul kernel to run near its peak), and in backward the
scores of a chunk are recomputed from the saved log-sum-exp. With bf16 inputs (autocast) the
products run in bf16 and the softmax statistics and sums in fp32. Nothing of size ``Tq x Tk`` is
kept, so memory is that of the flash kernel; time is that of a few large products.

:class:`ChunkedAttention` is an ``autograd.Function`` that works under every torch
transform: ``torch.func.vmap`` (generated rule), and its backward is differentiable
(``create_graph=True``, ``torch.func.grad``, double backward) by recomputing the
attention with differentiable operations when grad mode is on in backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# Scores of one chunk, [Tq, chunk] per batch x head, are kept near this many elements
# (4 MiB of fp32: L2-resident on the CPUs measured in docs/performance.md).
CHUNK_ELEMENTS = 1 << 20
MIN_CHUNK = 512


def key_chunk(num_queries: int) -> int:
    """Keys per chunk for ``num_queries`` queries: ``CHUNK_ELEMENTS / num_queries``, at least
    ``MIN_CHUNK``, a multiple of 64."""
    return max(MIN_CHUNK, (CHUNK_ELEMENTS // max(num_queries, 1)) // 64 * 64)


def reference_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    """``softmax(scale * q k^T + bias) v`` with differentiable operations:
    ``q [G, Tq, D]``, ``k [G, Tk, D]``, ``v [G, Tk, Dv]``, ``bias`` broadcastable to ``[G, Tq, Tk]``."""
    logits = torch.bmm(q, k.transpose(1, 2)) * scale
    if bias is not None:
        logits = logits + bias
    return torch.bmm(logits.softmax(dim=-1), v)


def _scores(q: Tensor, k: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    """``scale * q k^T (+ bias)``: ``[G, Tq, D] x [G, c, D] -> [G, Tq, c]``."""
    if bias is None:
        return torch.bmm(q, k.transpose(1, 2)).mul_(scale)
    return torch.baddbmm(bias.expand(q.shape[0], q.shape[1], k.shape[1]), q, k.transpose(1, 2), alpha=scale)


class ChunkedAttention(torch.autograd.Function):
    """``softmax(scale * q k^T + bias) v`` for ``q [G, Tq, D]``, ``k [G, Tk, D]``,
    ``v [G, Tk, Dv]`` (``G`` = batch x heads) -> ``[G, Tq, Dv]``; ``bias [G or 1, 1, Tk]``:
    0 for a kept key, ``-inf`` for a masked one (every query row must keep one key)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float, chunk: int):
        tk, low = k.shape[1], q.dtype
        acc = torch.promote_types(low, torch.float32)  # softmax statistics and sums: fp32 (fp64) for bf16 products
        lowest = torch.finfo(acc).min  # a row whose first chunk is all masked: exp(-inf - lowest) = 0
        m = l = out = None
        for start in range(0, tk, chunk):
            end = min(start + chunk, tk)
            s = _scores(q, k[:, start:end], None if bias is None else bias[..., start:end], scale).to(acc)
            m_chunk = s.amax(dim=-1, keepdim=True).clamp_min(lowest)
            m_new = m_chunk if m is None else torch.maximum(m, m_chunk)
            p = s.sub_(m_new).exp_()
            pv = torch.bmm(p.to(low), v[:, start:end]).to(acc)
            if m is None:
                l, out = p.sum(dim=-1, keepdim=True), pv
            else:
                correction = (m - m_new).exp()
                l = l * correction + p.sum(dim=-1, keepdim=True)
                out = out * correction + pv
            m = m_new
        out = (out / l).to(low)
        lse = m + l.log()  # [G, Tq, 1]
        return out, lse

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        q, k, v, bias, scale, chunk = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.scale, ctx.chunk = scale, chunk
        ctx.mark_non_differentiable(lse)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, grad_lse: Tensor | None):
        q, k, v, bias, out, lse = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            wanted = [t for t, need in zip((q, k, v), (need_q, need_k, need_v)) if need]
            grads = iter(torch.autograd.grad(reference_attention(q, k, v, bias, scale), wanted, grad_out,
                                             create_graph=True))
            return *(next(grads) if need else None for need in (need_q, need_k, need_v)), None, None, None
        low, acc = q.dtype, lse.dtype
        delta = (grad_out.to(acc) * out.to(acc)).sum(dim=-1, keepdim=True)  # [G, Tq, 1]
        grad_q, grad_k, grad_v = None, [], []
        for start in range(0, k.shape[1], chunk):
            end = min(start + chunk, k.shape[1])
            kc, vc = k[:, start:end], v[:, start:end]
            p = _scores(q, kc, None if bias is None else bias[..., start:end], scale).to(acc).sub_(lse).exp_()
            if need_v:
                grad_v.append(torch.bmm(p.to(low).transpose(1, 2), grad_out))
            if not (need_q or need_k):
                continue
            ds = torch.bmm(grad_out, vc.transpose(1, 2)).to(acc).sub_(delta).mul_(p).to(low)  # d(scores) / scale
            if need_k:
                grad_k.append(torch.bmm(ds.transpose(1, 2), q).mul_(scale))
            if need_q:
                dq = torch.bmm(ds, kc).to(acc)
                grad_q = dq if grad_q is None else grad_q + dq
        return (grad_q.mul_(scale).to(low) if need_q else None, torch.cat(grad_k, dim=1) if need_k else None,
                torch.cat(grad_v, dim=1) if need_v else None, None, None, None)


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None, scale: float | None = None,
                      chunk: int | None = None) -> Tensor:
    """Attention of ``q [B, H, Tq, D]`` to ``k [B, H, Tk, D]``, ``v [B, H, Tk, Dv]`` ->
    ``[B, H, Tq, Dv]``, chunked over keys (:class:`ChunkedAttention`).

    ``key_mask [B, Tk]`` (True = keep; every row must keep one key). ``scale`` defaults to
    ``1 / sqrt(D)``; ``chunk`` to :func:`key_chunk`. More queries than fit one score block
    (``CHUNK_ELEMENTS / chunk``) are taken in blocks of that many."""
    b, h, tq, d = q.shape
    tk = k.shape[2]
    scale = d**-0.5 if scale is None else scale
    chunk = key_chunk(tq) if chunk is None else chunk
    bias = None
    if key_mask is not None:  # [B, Tk] -> [B * H, 1, Tk] additive
        bias = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~key_mask, float("-inf"))
        bias = bias[:, None, None, :].expand(b, h, 1, tk).reshape(b * h, 1, tk)
    q, k, v = q.reshape(b * h, tq, d), k.reshape(b * h, tk, d), v.reshape(b * h, tk, v.shape[-1])
    # Many queries (a decoder's outputs): blocks of queries, so that a score block stays bounded.
    block = max(1, CHUNK_ELEMENTS // chunk)
    outs = [ChunkedAttention.apply(q[:, i:i + block], k, v, bias, scale, chunk)[0] for i in range(0, tq, block)]
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)).view(b, h, tq, -1)
