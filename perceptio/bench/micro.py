"""Micro-benchmarks behind perceptio's two CPU performance fixes (docs/performance.md).

    python -m perceptio.bench.micro [--threads N]

1. fp32 GEMM FLOP/s of ``F.linear`` (MKL) vs perceptio's oneDNN path, forward and both
   backward products, on the shapes of the benchmarked models (thread CPU time, best of 5,
   one thread: insensitive to other processes' load).
2. Attention kernels at the given thread count (wall time, median of 3), forward and
   forward+backward: plain ``F.scaled_dot_product_attention``, ``attend`` as written (SDPA
   with its query split, ``PERCEPTIO_ATTENTION_KERNEL=sdpa``) and ``attend`` (the chunked
   kernel where it applies), on the attention shapes of the benchmarked models.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ..layers.attention import attend
from ..layers.kernels import onednn_matmul, set_attention_split_threads

SHAPES = [  # rows, in, out
    (512, 1024, 1024),    # ImageNet latent linears, batch 1
    (4096, 1024, 1024),   # the same at batch 8
    (50176, 261, 261),    # ImageNet cross-attend keys / values
    (256, 1280, 1280),    # masked-LM latent linears
    (2048, 768, 256),     # masked-LM decoder queries
]


def call_times(fn, repeats: int, clock=time.perf_counter) -> list[float]:
    """``clock`` times of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return times


def best_thread_time(fn, repeats: int = 5) -> float:
    """The least thread CPU time of ``repeats`` calls of ``fn`` after one warm-up call."""
    return min(call_times(fn, repeats, time.thread_time))


def gemm() -> None:
    torch.set_num_threads(1)
    print("fp32 GEMM GFLOP/s, one thread (thread CPU time): torch F.linear / oneDNN")
    print(f"{'rows x in x out':>22} | {'forward':>15} | {'grad input':>15} | {'grad weight':>15}")
    for r, i, o in SHAPES:
        x, w, b, dy = torch.randn(r, i), torch.randn(o, i), torch.randn(o), torch.randn(r, o)
        flops = 2 * r * i * o
        cells = []
        for torch_fn, dnn_fn in (
            (lambda: F.linear(x, w, b), lambda: onednn_matmul(x, w, b)),
            (lambda: dy @ w, lambda: onednn_matmul(dy, w.t(), None)),
            (lambda: dy.t() @ x, lambda: onednn_matmul(dy.t(), x.t(), None)),
        ):
            torch_s, dnn_s = best_thread_time(torch_fn), best_thread_time(dnn_fn)
            cells.append(f"{flops / torch_s / 1e9:6.1f} / {flops / dnn_s / 1e9:6.1f}")
        print(f"{f'{r} x {i} x {o}':>22} | " + " | ".join(f"{c:>15}" for c in cells))


ATTENTION_SHAPES = [  # batch, heads, queries, keys, key dim, value dim
    (1, 1, 512, 50176, 261, 261),   # ImageNet cross-attend (as written: projected keys and values)
    (1, 8, 256, 2048, 32, 160),     # masked-LM encoder cross-attend
    (1, 8, 2048, 256, 32, 96),      # masked-LM decoder
    (1, 8, 512, 512, 128, 128),     # ImageNet latent self-attention
    (1, 1, 256, 262144, 64, 64),    # input sweep, 262,144 points
]


def attention_kernels(threads: int) -> None:
    from .models import attention_as_written

    torch.set_num_threads(threads)
    set_attention_split_threads(threads)  # attend plans its split once; plan it for these threads
    print(f"attention, {threads} threads, median of 3 (wall s): forward / forward+backward")
    names = ("F.scaled_dot_product_attention", "attend as written", "attend")
    print(f"{'B, H, Tq, Tk, D, Dv':>32} | " + " | ".join(f"{n:>30}" for n in names))
    for shape in ATTENTION_SHAPES:
        b, h, tq, tk, d, dv = shape
        g = torch.Generator().manual_seed(0)
        q, k = torch.randn(b, h, tq, d, generator=g), torch.randn(b, h, tk, d, generator=g)
        v, grad = torch.randn(b, h, tk, dv, generator=g), torch.randn(b, h, tq, dv, generator=g)
        for t in (q, k, v):
            t.requires_grad_()

        def as_written(*a):
            with attention_as_written():
                return attend(*a)

        cells = []
        for fn in (F.scaled_dot_product_attention, as_written, attend):
            def forward(fn=fn):
                with torch.no_grad():
                    fn(q, k, v)

            def forward_backward(fn=fn):
                q.grad = k.grad = v.grad = None
                fn(q, k, v).backward(grad)

            cells.append(" / ".join(f"{median_wall(f):.4f}" for f in (forward, forward_backward)))
        print(f"{str(shape):>32} | " + " | ".join(f"{c:>30}" for c in cells))


def median_wall(fn, repeats: int = 3) -> float:
    """The median wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    return statistics.median(call_times(fn, repeats))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m perceptio.bench.micro", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    gemm()
    attention_kernels(args.threads)


if __name__ == "__main__":
    main()
