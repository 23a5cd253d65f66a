"""(5) Achieved FLOP/s of the latent self-attention stack against this machine's measured
matrix-multiply FLOP/s; which SDPA kernels run; model FLOP utilisation of training.

The roof is the best of torch's own matmul (``torch.mm``: MKL on CPU, cuBLAS on GPU)
and, on CPU, the oneDNN matmul perceptio's linears use, on square products large
enough to reach peak. Model FLOPs count the matrix products only (linears, Q K^T, P V),
forward + backward = 3 x forward; recomputation is not counted (the usual MFU rule).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any

import torch

from .harness import measure_interleaved, synchronize


def _best_rate(fn, flops: float, device, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return flops / statistics.median(times)


def matmul_roof(settings, quick: bool) -> dict[str, float]:
    """FLOP/s of large square fp32 (or ``settings.dtype``) matrix products."""
    from ..layers.kernels import onednn_linear_works, onednn_matmul

    device, dtype = settings.device, settings.dtype
    n = 2048 if quick or device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    rates = {"torch.mm": _best_rate(lambda: a @ b, 2 * n**3, device)}
    if device.type == "cpu" and dtype == torch.float32 and onednn_linear_works():
        rates["oneDNN"] = _best_rate(lambda: onednn_matmul(a, b, None), 2 * n**3, device)
    return rates


def latent_stack_flops(batch: int, latents: int, channels: int, layers: int, widening: int = 1) -> float:
    """Forward matmul FLOPs of ``layers`` self-attention blocks (q, k, v, o, MLP, QK^T, PV)."""
    linear = 2 * batch * latents * (4 * channels**2 + 2 * widening * channels**2)
    attention = 2 * 2 * batch * latents**2 * channels
    return layers * (linear + attention)


def latent_stack(settings, quick: bool) -> list[dict[str, Any]]:
    """The ImageNet model's latent block (6 layers, 512 x 1024, 8 heads) at batch >= 8."""
    from ..encoder import EncoderConfig, LatentBlock
    from ..layers.linear import linear

    device, dtype = settings.device, settings.dtype
    batch = settings.extra.get("roofline_batch", 2 if quick else 8)
    layers, latents, channels = (2 if quick else 6), 512, 1024
    torch.manual_seed(0)
    block = LatentBlock(EncoderConfig(num_latents=latents, num_latent_channels=channels,
                                      num_self_attends_per_block=layers, activation="gelu")).to(device, dtype)
    z = torch.randn(batch, latents, channels, device=device, dtype=dtype)
    roof = matmul_roof(settings, quick)
    forward = latent_stack_flops(batch, latents, channels, layers)
    _check_flop_formula(block, z[:1], latent_stack_flops(1, latents, channels, layers))

    def fwd():
        with torch.no_grad():
            block(z)

    def fwd_bwd():
        block.zero_grad(set_to_none=True)
        block(z).float().square().mean().backward()

    rows = [dict(suite="roofline", case=f"matmul roof: {name}", contender=name, mode="matmul",
                 gflop_per_s=rate / 1e9, note="square products") for name, rate in roof.items()]
    # Interleave the stack with the roof's product, so both see the same load: the
    # fraction is the median over rounds of (stack FLOP/s) / (roof FLOP/s) in that round,
    # on wall time and on process CPU time (insensitive to preemption by other processes).
    roof_name = max(roof, key=roof.get)
    n = 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    roof_fn = (lambda: linear(a, a)) if roof_name == "oneDNN" else (lambda: a @ a)
    threads = torch.get_num_threads()
    settings_threads = [threads] + ([1] if device.type == "cpu" and threads > 1 else [])
    for nthreads, mode in [(t, m) for t in settings_threads for m in ("forward", "forward+backward")]:
        fn, flops = (fwd, forward) if mode == "forward" else (fwd_bwd, 3 * forward)
        torch.set_num_threads(nthreads)
        block.train(mode != "forward")
        fn()
        runs = measure_interleaved({"stack": fn, "roof": roof_fn}, settings.extra.get("roofline_repeats", 3),
                                   warmup=1, device=device, memory=False)
        stack, ref = runs["stack"], runs["roof"]
        wall = [(flops / s) / (2 * n**3 / r) for s, r in zip(stack.wall_s, ref.wall_s)]
        cpu = [(flops / s) / (2 * n**3 / r) for s, r in zip(stack.cpu_s, ref.cpu_s)]
        rows.append(dict(
            suite="roofline", case=f"latent stack: {layers} x SelfAttention(1024, 8 heads), 512 latents",
            contender="perceptio", mode=mode, batch=batch, gflops=flops / 1e9, median_s=stack.median_s,
            gflop_per_s=flops / stack.median_s / 1e9, roof_gflop_per_s=2 * n**3 / ref.median_s / 1e9,
            fraction_of_roof=statistics.median(wall), fraction_of_roof_cpu_time=statistics.median(cpu),
            roof=roof_name, threads=nthreads,
        ))
    torch.set_num_threads(threads)
    return rows


def count_flops(fn) -> int:
    """Matmul FLOPs of ``fn()`` by torch's ``FlopCounterMode``, run on the paths it can see
    (perceptio's oneDNN linears off, SDPA on its math backend; same products)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from .models import onednn_linear

    with onednn_linear(False), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _check_flop_formula(block, z, expected: float) -> None:
    """The analytic count equals torch's FLOP counter."""
    with torch.no_grad():
        counted = count_flops(lambda: block(z))
    if abs(counted - expected) > 1e-6 * expected:
        raise AssertionError(f"FLOP formula {expected:.4g} != torch FlopCounterMode {counted:.4g}")


def sdpa_kernels(fn) -> dict[str, int]:
    """Which attention implementations ``fn()`` runs (SDPA's by profiler op name, perceptio's
    ``chunked`` kernel by its autograd function)."""
    return profile_ops(fn)["kernels"]


def profile_ops(fn, top: int = 8) -> dict[str, Any]:
    """One profiled run of ``fn()``: ``kernels`` (as :func:`sdpa_kernels`) and ``top``: the
    ``top`` operators by self CPU time, ``[name, self ms, share of the total]``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        fn()
    names = Counter()
    for event in prof.events():
        name = event.name
        if name.startswith("aten::_scaled_dot_product") and "backward" not in name:
            names[name.removeprefix("aten::_scaled_dot_product_")] += 1
        elif name.startswith("aten::_efficient_attention") or name.startswith("aten::_flash_attention"):
            names[name.removeprefix("aten::")] += 1
        elif name == "ChunkedAttention":
            names["chunked"] += 1
    ops = [e for e in prof.key_averages() if not e.key.startswith(("autograd::", "ProfilerStep"))]
    total = sum(e.self_cpu_time_total for e in ops) or 1.0
    ranked = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"kernels": dict(names),
            "top": [[e.key, round(e.self_cpu_time_total / 1e3, 1), round(e.self_cpu_time_total / total, 3)]
                    for e in ranked]}


def training_utilisation(settings, quick: bool) -> list[dict[str, Any]]:
    """Model FLOP utilisation of a masked-LM training step (forward, backward, AdamW)."""
    from ..presets import create_model

    device, dtype = settings.device, settings.dtype
    overrides = {"num_self_attends_per_block": 2} if quick else {}
    model = create_model("language-perceiver", **overrides).to(device, dtype).train()
    batch = settings.extra.get("mfu_batch", 1 if device.type == "cpu" else 32)
    ids = torch.randint(0, 262, (batch, 2048), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = model(ids).logits
        torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.flatten()).backward()
        optimizer.step()

    flops = count_flops(step)
    kernels = sdpa_kernels(step)
    rate = _best_rate(step, flops, device, repeats=settings.extra.get("mfu_repeats", 2))
    roof = max(matmul_roof(settings, quick).values())
    row = dict(suite="training", case="masked LM (language-perceiver) training step" + (" [quick]" if quick else ""),
               contender="perceptio", mode="train step", batch=batch, gflops=flops / 1e9, gflop_per_s=rate / 1e9,
               fraction_of_roof=rate / roof, roof_gflop_per_s=roof / 1e9, sdpa_kernels=kernels)
    peak = _nominal_peak(device, dtype)
    if peak:
        row["mfu_vs_spec"] = rate / peak
        row["spec_tflop_per_s"] = peak / 1e12
    return [row]


def _nominal_peak(device, dtype) -> float | None:
    """Dense bf16 / fp16 tensor-core peak of known GPUs (spec sheets), else None."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12)):
        if key in name:
            return peak * (0.76 if key == "H100" and "PCIe" in name else 1.0)
    return None
