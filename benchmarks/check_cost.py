"""What the input checks of perceptio cost (docs/reliability.md): the forward of a model
with ``check_finite`` off and on, interleaved, and the masked-key pass (``zero_masked``)
alone. Usage: ``python benchmarks/check_cost.py [--preset NAME] [--reps N] [--threads T]``."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from perceptio.layers.attention import zero_masked
from perceptio.model import check_finite_inputs
from perceptio.presets import create_model


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="vision-perceiver-fourier")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.preset).eval().to(args.device)
    shape = model.config.input_adapter.image_shape
    x = torch.randn(1, *shape, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def forward(check: bool):
        model.check_finite = check
        with torch.no_grad():
            model(x)
        sync()

    forward(False), forward(True)  # warm up
    off, on = [], []
    for _ in range(args.reps):  # interleaved, so drifts of a shared machine hit both
        off += timed(lambda: forward(False), 1)
        on += timed(lambda: forward(True), 1)
    context = model.input_adapter(x).inputs
    mask = torch.ones(context.shape[:2], dtype=torch.bool, device=args.device)
    mask[:, -100:] = False

    def check():
        check_finite_inputs(context, mask, x)
        sync()

    def keys():
        zero_masked(context, mask)
        sync()

    m_off, m_on = statistics.median(off), statistics.median(on)
    print(f"{args.preset} on {args.device}, {args.threads} threads, input array {list(context.shape)}")
    print(f"forward, check_finite off: median {m_off * 1e3:.1f} ms  (all: {[round(t * 1e3, 1) for t in off]})")
    print(f"forward, check_finite on:  median {m_on * 1e3:.1f} ms  (all: {[round(t * 1e3, 1) for t in on]})")
    for name, fn in (("the check_finite pass alone", check), ("zero_masked (a masked cross-attend) alone", keys)):
        fn()
        t = statistics.median(timed(fn, args.reps * 4))
        print(f"{name}: median {t * 1e3:.2f} ms = {100 * t / m_off:.2f} % of the forward")


if __name__ == "__main__":
    main()
