"""Perceiver AR against a decoder-only causal Transformer (docs/training.md, benchmarks/).

* :class:`CausalTransformer`: the baseline, built from the same layers (perceptio.layers
  SelfAttention blocks, the same rotary encoding, activation and widths) with full causal
  self-attention over all N positions: O(L N^2) against Perceiver AR's O(z N + L z^2).
* ``train``: train either model for a fixed wall time on ``bytes_clm`` windows and score the
  held-out bytes (the last z of every window: the same bytes for both models) in bits per byte.
* ``step``: seconds and peak memory of one training step (forward + backward + AdamW) at a
  context length; ``decode``: generation tokens/s of a cache against full recompute.

Each measurement runs in its own process (``python -m perceptio.bench.causal KIND ...``) and
prints one JSON line, so peak memory is that process's own (``VmHWM``, glibc set to return
freed memory, as in :mod:`perceptio.bench.harness`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.builtin import BytesCLMConfig
from ..layers.blocks import SelfAttention, layer_norm
from ..layers.linear import Linear
from ..layers.position import RotaryEncoding
from ..perceiver_ar import PerceiverAR, PerceiverARConfig
from .harness import configure_malloc, peak_rss_mib, rss_mib

WIDTH, HEADS, LATENT_LAYERS = 128, 4, 4


class CausalTransformer(nn.Module):
    """Decoder-only Transformer over bytes: ``ids [B, N] -> logits [B, N, V]`` (every position
    predicts the next byte), pre-norm blocks with rotary positions."""

    def __init__(self, num_classes: int, channels: int, num_layers: int, num_heads: int, widening_factor: int = 2,
                 fraction_to_rotate: float = 0.5, max_wavelength: int = 65536, activation: str = "sq_relu") -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(num_classes, channels)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.blocks = nn.ModuleList(
            [SelfAttention(channels, num_heads, widening_factor=widening_factor, activation=activation)
             for _ in range(num_layers)])
        self.rotary = RotaryEncoding(channels // num_heads, num_heads, fraction_to_rotate, 1.0, max_wavelength)
        self.final_norm = layer_norm(channels)
        self.logits = Linear(channels, num_classes)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.token_embedding(ids)
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        for block in self.blocks:
            attn = block.attention
            h = block.norm(x)
            q, k, v = (attn.split_heads(f(h)) for f in (attn.q, attn.k, attn.v))
            q, k = self.rotary(q, positions), self.rotary(k, positions)
            x = block.finish(x, attn.merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True)))
        return self.logits(self.final_norm(x))


def perceiver_ar(context: int, latents: int, from_data: bool = False) -> PerceiverAR:
    """The Perceiver AR of the comparison (the bytes_clm sizes at ``context`` and ``latents``)."""
    return PerceiverAR(PerceiverARConfig(
        max_context_length=context, input_embed_dim=WIDTH, num_z_channels=WIDTH, z_index_dim=latents,
        num_transformers_per_block=LATENT_LAYERS, num_cross_attend_heads=HEADS, num_transformer_heads=HEADS,
        cross_attend_widening_factor=2, transformer_widening_factor=2, fraction_to_rotate=0.5,
        max_wavelength=max(context, 1024) + 1, use_positions_from_data=from_data))


def transformer() -> CausalTransformer:
    """The baseline with Perceiver AR's width and (one layer more: its cross-attention) parameter count."""
    return CausalTransformer(259, WIDTH, LATENT_LAYERS + 1, HEADS)


def build(kind: str, context: int, latents: int) -> nn.Module:
    torch.manual_seed(0)
    return perceiver_ar(context, latents) if kind == "ar" else transformer()


def loss_of(model: nn.Module, inputs: Tensor, targets: Tensor, scored: int | None) -> Tensor:
    """Mean next-byte cross-entropy: Perceiver AR at its latents; the Transformer at every
    position (training) or at the last ``scored`` positions (evaluation: the bytes Perceiver AR scores)."""
    if isinstance(model, PerceiverAR):
        out = model(inputs)
        return F.cross_entropy(out.logits.flatten(0, 1), targets.gather(1, out.latent_last_steps).flatten())
    logits = model(inputs)
    if scored is not None:
        logits, targets = logits[:, -scored:], targets[:, -scored:]
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def train(kind: str, context: int, latents: int, seconds: float, batch_size: int, lr: float = 2e-3,
          eval_windows: int = 256, max_steps: int | None = None) -> dict[str, Any]:
    """Train for ``seconds`` of this process's CPU time (the steady measure of compute on a
    shared machine; wall time is also reported), or ``max_steps``, on bytes_clm windows of
    ``context`` bytes; held-out bits per byte."""
    splits = BytesCLMConfig(seq_len=context, stride=latents, val_fraction=0.02, test_fraction=0.04).load()
    model = build(kind, context, latents).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = 50
    gen = torch.Generator().manual_seed(0)
    steps, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.process_time() - cpu_start < seconds and (max_steps is None or steps < max_steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (steps + 1) / warmup)
        batch = splits.train.batch(torch.randint(len(splits.train), (batch_size,), generator=gen))
        loss = loss_of(model, batch["inputs"], batch["targets"], None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    test = splits.test
    n = min(eval_windows, len(test))
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, 16):
            batch = test.batch(torch.arange(i, min(i + 16, n)))
            total += loss_of(model, batch["inputs"], batch["targets"], latents).item() * (min(i + 16, n) - i)
    return {"model": kind, "context": context, "latents": latents, "wall_s": round(elapsed, 1),
            "cpu_s": round(cpu, 1), "steps": steps, "steps_per_cpu_s": steps / cpu, "batch_size": batch_size, "test_bits_per_byte": total / n / math.log(2),
            "test_bytes_scored": n * latents, "parameters": sum(p.numel() for p in model.parameters()),
            "peak_rss_mib": peak_rss_mib()}


def step(kind: str, context: int, latents: int, repeats: int = 3) -> dict[str, Any]:
    """Median seconds of a training step at batch 1 and ``context`` bytes, and the process's peak memory."""
    configure_malloc("memory")
    model = build(kind, context, latents).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(3, 259, (1, context + 1), generator=torch.Generator().manual_seed(0))
    base = rss_mib()
    times, cpu = [], []
    for _ in range(repeats + 1):
        t, c = time.perf_counter(), time.process_time()
        loss = loss_of(model, ids[:, :-1], ids[:, 1:], None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    times, cpu = sorted(times[1:]), sorted(cpu[1:])  # the first step warms up
    return {"model": kind, "context": context, "latents": latents, "median_step_s": times[len(times) // 2],
            "median_step_cpu_s": cpu[len(cpu) // 2],
            "peak_rss_mib": peak_rss_mib(), "rss_before_mib": base}


def decode(context: int, latents: int, new_tokens: int, cache: str) -> dict[str, Any]:
    """Generation after a prompt of ``context - new_tokens`` bytes (the window is full at the
    end) with ``cache``: seconds of the prompt (first token), tokens/s of the others, peak memory."""
    configure_malloc("memory")
    torch.manual_seed(0)
    model = perceiver_ar(context, latents, from_data=cache == "reference").eval()
    prompt = torch.randint(3, 259, (1, context - new_tokens), generator=torch.Generator().manual_seed(0)).tolist()
    base = rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    steps = model.stream(prompt, new_tokens, seed=0, cache=cache)
    next(steps)
    t1, c1 = time.perf_counter(), time.process_time()
    n = 1 + sum(1 for _ in steps)
    t2, c2 = time.perf_counter(), time.process_time()
    return {"context": context, "latents": latents, "cache": cache, "prompt": len(prompt[0]), "new_tokens": n,
            "first_token_s": t1 - t0, "tokens_per_s": (n - 1) / (t2 - t1), "tokens_per_cpu_s": (n - 1) / (c2 - c1),
            "peak_rss_mib": peak_rss_mib(),
            "rss_before_mib": base}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m perceptio.bench.causal", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["train", "step", "decode"])
    p.add_argument("--model", choices=["ar", "transformer"], default="ar")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--latents", type=int, default=64)
    p.add_argument("--seconds", type=float, default=120.0, help="train: CPU seconds of training")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="train: stop after this many steps (within --seconds)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--cache", choices=["exact", "reference", "none"], default="exact")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.kind == "train":
        row = train(args.model, args.context, args.latents, args.seconds, args.batch_size, max_steps=args.steps)
    elif args.kind == "step":
        row = step(args.model, args.context, args.latents)
    else:
        row = decode(args.context, args.latents, args.new_tokens, args.cache)
    print(json.dumps(row | {"threads": args.threads}), flush=True)


if __name__ == "__main__":
    main()
