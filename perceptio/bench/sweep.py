"""(4) Input-size sweep: one attention layer over M input points, M = 1k ... 1M.

Contenders, all with the same weights and checked equal at the smallest M:

* ``perceptio``: the Perceiver cross-attend sublayer (pre-norm on latents and inputs,
  one head, residual) from N = 256 fixed latents of width 256 to inputs of width 64;
* ``transformers``: the same sublayer, ``PerceiverAttention(is_cross_attention=True)``;
* ``perceiver-pytorch``: the same sublayer, ``PreNorm(Attention)`` + residual (it has no
  q/k/v biases, so ours are zeroed; it cannot express the rest of these models:
  GEGLU feed-forward, no separate key/value widths);
* ``plain Transformer``: ``nn.TransformerEncoderLayer`` of the input width (64, 4 heads)
  over the M points: self-attention, the quadratic baseline.

A contender is not run at the next M when its last time, extrapolated (linearly for the
Perceivers, quadratically for the Transformer), would exceed ``time_budget_s``; the row
says so. Peak memory is what one call adds (see harness).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .harness import measure_interleaved
from .roofline import matmul_roof
from .models import max_rel_diff

N, D, C, HEADS = 256, 256, 64, 1


def _perceptio():
    from ..layers.blocks import CrossAttention

    block = CrossAttention(D, C, num_heads=HEADS, qk_channels=C)
    for lin in (block.attention.q, block.attention.k, block.attention.v):
        nn.init.zeros_(lin.bias)  # perceiver-pytorch has none

    def sublayer(latents, inputs):
        return latents + block.attend(latents, inputs)

    return block, sublayer


def _transformers(block):
    from transformers import PerceiverConfig
    from transformers.models.perceiver.modeling_perceiver import PerceiverAttention

    attn = PerceiverAttention(PerceiverConfig(attention_probs_dropout_prob=0.0), is_cross_attention=True,
                              num_heads=HEADS, q_dim=D, kv_dim=C, use_query_residual=True)
    s, ours = attn.self, block.attention
    pairs = [(s.layernorm1, block.q_norm), (s.layernorm2, block.kv_norm), (s.query, ours.q), (s.key, ours.k),
             (s.value, ours.v), (attn.output.dense, ours.o)]
    with torch.no_grad():
        for theirs, mine in pairs:
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias)
    mask = None

    def sublayer(latents, inputs):
        nonlocal mask
        if mask is None or mask.shape[-1] != inputs.shape[1]:
            mask = torch.zeros(1, 1, 1, inputs.shape[1])  # what PerceiverModel passes without padding
        return attn(latents, inputs=inputs, inputs_mask=mask)[0]

    return attn, sublayer


def _perceiver_pytorch(block):
    from perceiver_pytorch.perceiver_io import Attention, PreNorm

    pre = PreNorm(D, Attention(D, C, heads=HEADS, dim_head=C // HEADS), context_dim=C)
    ours = block.attention
    with torch.no_grad():
        pre.norm.load_state_dict(block.q_norm.state_dict())
        pre.norm_context.load_state_dict(block.kv_norm.state_dict())
        pre.fn.to_q.weight.copy_(ours.q.weight)
        pre.fn.to_kv.weight.copy_(torch.cat([ours.k.weight, ours.v.weight]))
        pre.fn.to_out.load_state_dict(ours.o.state_dict())

    def sublayer(latents, inputs):
        return latents + pre(latents, context=inputs)

    return pre, sublayer


def _plain_transformer():
    layer = nn.TransformerEncoderLayer(C, 4, C, dropout=0.0, batch_first=True, norm_first=True)
    return layer, lambda latents, inputs: layer(inputs)


def input_sweep(settings, quick: bool) -> list[dict[str, Any]]:
    sizes = settings.extra.get("sweep_sizes") or (
        [1024, 4096, 16384, 65536] if quick else [1024, 4096, 16384, 65536, 262144, 1048576])
    budget = settings.extra.get("sweep_time_budget_s", 5.0 if quick else 40.0)
    memory_budget = settings.extra.get("sweep_memory_budget_mib", 6144.0)
    torch.manual_seed(0)
    block, ours = _perceptio()
    modules = {"perceptio": (block, ours)}
    try:
        modules["transformers"] = _transformers(block)
    except ImportError:
        pass
    try:
        modules["perceiver-pytorch"] = _perceiver_pytorch(block)
    except ImportError:
        pass
    modules["plain Transformer"] = _plain_transformer()
    device, dtype = settings.device, settings.dtype
    for module, _ in modules.values():
        module.to(device, dtype)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, N, D, generator=g).to(device, dtype)

    # Same outputs first (the Transformer computes something else).
    x = torch.randn(1, sizes[0], C, generator=g).to(device, dtype)
    with torch.no_grad():
        ref = ours(latents, x)
        for name, (_, fn) in modules.items():
            if name != "plain Transformer":
                diff = max_rel_diff(fn(latents, x), ref)
                if not diff <= settings.tolerance:
                    raise AssertionError(f"sweep: {name} differs from perceptio by {diff}")

    flops = _flops_as_written(block, ours, latents, C, device, dtype) if settings.timing else {}
    roof = max(matmul_roof(settings, quick).values()) if flops else math.nan
    rows: list[dict[str, Any]] = []
    last: dict[tuple[str, str], tuple[int, float, float]] = {}  # M, seconds, MiB (measured or extrapolated)
    for m in sizes:
        inputs = torch.randn(1, m, C, generator=g).to(device, dtype)
        for mode in ("forward", "forward+backward"):
            runs, skipped = {}, {}
            for name, (module, fn) in modules.items():
                growth = 2 if name == "plain Transformer" else 1
                if (name, mode) in last:
                    m0, t0, mib0 = last[(name, mode)]
                    predicted = (t0 * (m / m0) ** growth, mib0 * (m / m0) ** growth)
                    if predicted[0] > budget or predicted[1] > memory_budget or math.isnan(t0):
                        skipped[name] = predicted
                        continue
                runs[name] = _closure(module, fn, latents, inputs, mode)
            repeats = settings.extra.get("sweep_repeats", max(1, settings.repeats - 1)) if settings.timing else 1
            results = measure_interleaved(runs, repeats, warmup=1, device=device, memory=settings.memory) \
                if runs else {}
            for name, res in results.items():
                last[(name, mode)] = (m, res.median_s, res.peak) if not res.error else (m, math.nan, math.nan)
                rows.append(dict(suite="sweep", case="one attention layer over M points", contender=name,
                                 mode=mode, batch=1, points=m, median_s=res.median_s, peak_mib=res.peak,
                                 rounds=len(res.wall_s), error=res.error))
                if name == "perceptio" and mode in flops and res.wall_s and not res.error:
                    work = flops[mode](m)
                    rows[-1].update(gflops=work / 1e9, gflop_per_s=work / res.median_s / 1e9,
                                    roof_gflop_per_s=roof / 1e9, fraction_of_roof=work / res.median_s / roof)
            for name, (seconds, mib) in skipped.items():
                last[(name, mode)] = (m, seconds, mib)
                rows.append(dict(suite="sweep", case="one attention layer over M points", contender=name, mode=mode,
                                 batch=1, points=m, median_s=math.nan, peak_mib=math.nan, rounds=0,
                                 note=f"not run: extrapolated {seconds:.0f} s, {mib / 1024:.1f} GiB "
                                      f"(budget {budget:.0f} s, {memory_budget / 1024:.0f} GiB)"))
    return rows


def _flops_as_written(block, fn, latents, channels: int, device, dtype) -> dict[str, Any]:
    """``mode -> (M -> FLOPs)`` of the sublayer as written (projections, then attention; what
    ``transformers`` computes), counted by torch's FLOP counter at two input sizes: every term
    is linear in M. perceptio's folded path does less; its rate is reported against this work."""
    from .models import attention_as_written
    from .roofline import count_flops

    counts = {}
    for mode in ("forward", "forward+backward"):
        at = []
        for m in (1024, 2048):
            inputs = torch.zeros(1, m, channels, device=device, dtype=dtype)
            with attention_as_written():
                at.append(count_flops(_closure(block, fn, latents, inputs, mode)))
        slope = (at[1] - at[0]) / 1024
        counts[mode] = lambda m, a=at[0], b=slope: a + b * (m - 1024)
    block.eval()
    return counts


def _closure(module, fn, latents, inputs, mode):
    if mode == "forward":
        def run():
            module.eval()
            with torch.no_grad():
                return fn(latents, inputs)
    else:
        def run():
            module.train()
            fn(latents, inputs).float().square().mean().backward()

        run.prepare = lambda: module.zero_grad(set_to_none=True)  # before the call is measured (harness doc)
    return run
