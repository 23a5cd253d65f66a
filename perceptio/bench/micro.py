"""Micro-benchmarks behind perceptio's two CPU performance fixes (docs/performance.md).

    python -m perceptio.bench.micro [--threads N]

1. fp32 GEMM FLOP/s of ``F.linear`` (MKL) vs perceptio's oneDNN path, forward and both
   backward products, on the shapes of the benchmarked models (thread CPU time, best of 5,
   one thread: insensitive to other processes' load).
2. A one-head cross-attend over 50,176 points (the ImageNet model's) forward+backward with
   plain ``F.scaled_dot_product_attention`` vs ``perceptio.layers.attention.attend``, at the
   given thread count (wall time, median of 3).
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


def best_thread_time(fn, repeats: int = 5) -> float:
    """The least thread CPU time of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return min(times)


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


def cross_attend_backward(threads: int) -> None:
    torch.set_num_threads(threads)
    set_attention_split_threads(threads)  # attend plans its split once; plan it for these threads
    q = torch.randn(1, 1, 512, 261, requires_grad=True)
    k = torch.randn(1, 1, 50176, 261, requires_grad=True)
    v = torch.randn(1, 1, 50176, 261, requires_grad=True)
    grad = torch.randn(1, 1, 512, 261)
    results = {}
    for name, fn in (("F.scaled_dot_product_attention", F.scaled_dot_product_attention), ("attend", attend)):
        times = []
        for _ in range(4):
            q.grad = k.grad = v.grad = None
            t0 = time.perf_counter()
            fn(q, k, v).backward(grad)
            times.append(time.perf_counter() - t0)
        results[name] = statistics.median(times[1:])
    print(f"1-head cross-attend 512 x 50,176 (261 channels) forward+backward, {threads} threads, median s: "
          + ", ".join(f"{n} {t:.2f}" for n, t in results.items()))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m perceptio.bench.micro", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    gemm()
    cross_attend_backward(args.threads)


if __name__ == "__main__":
    main()
