"""Peak memory and time of a training step with perceptio's recomputation on and off
(``PERCEPTIO_RECOMPUTE``, perceptio.layers.recompute), against ``transformers``, for the
ImageNet Fourier classifier (1, 16 and 48 latent layers) and the byte masked LM (1 and 26).
Two peaks: the step's (gradients set to None before it, as the bench suites measure it:
the gradients, the same for both, are allocated in the step) and its activations (the
gradients' buffers exist before the step, which adds into them). Peaks in a process of
their own with the memory malloc setting, times interleaved (the harness of
perceptio.bench). docs/performance.md, "Memory of a training step".

    python benchmarks/recompute_memory.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch

from perceptio.bench.harness import configure_malloc, measure_interleaved
from perceptio.bench.models import IMAGE_FOURIER, LANGUAGE, pair, scalar_loss
from perceptio.bench.suites import depth_sizes
from perceptio.layers import kernels

CASES = {
    "image, 1 latent layer": ("PerceiverForImageClassificationFourier", depth_sizes(IMAGE_FOURIER, 1, 48), "image"),
    "image, 16 latent layers": ("PerceiverForImageClassificationFourier", depth_sizes(IMAGE_FOURIER, 16, 48), "image"),
    "image, 48 latent layers": ("PerceiverForImageClassificationFourier", dict(IMAGE_FOURIER), "image"),
    "masked LM, 1 latent layer": ("PerceiverForMaskedLM", depth_sizes(LANGUAGE, 1, 26), "bytes"),
    "masked LM, 26 latent layers": ("PerceiverForMaskedLM", dict(LANGUAGE), "bytes"),
}


def steps(case: str, keep_grads: bool = False) -> dict:
    kind, sizes, inputs = CASES[case]
    hf, ours = pair(kind, sizes)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 224, 224, generator=g) if inputs == "image" else torch.randint(0, 262, (1, 2048), generator=g)

    def step(model, recompute):
        def run():
            kernels.set_recompute(recompute)
            scalar_loss(model(inputs=x).logits).backward()

        if not keep_grads:
            run.prepare = lambda: model.zero_grad(set_to_none=True)
        return run

    return {"transformers": step(hf, True), "perceptio": step(ours, True),
            "perceptio (PERCEPTIO_RECOMPUTE=0)": step(ours, False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # the memory child process
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.case:  # peaks only, in this fresh process
        configure_malloc("memory")
        step = measure_interleaved(steps(args.case), repeats=0, warmup=1)
        kept = measure_interleaved(steps(args.case, keep_grads=True), repeats=0, warmup=1)  # warm-up made the grads
        for name in step:
            print(f"{name}\t{step[name].peak:.0f}\t{kept[name].peak:.0f}")
        return
    print("| case | contender | forward+backward s (vs transformers) | step peak MiB (vs transformers) | "
          "activations MiB (vs transformers) |")
    print("|---|---|---|---|---|")
    for case in CASES:
        child = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True, text=True, check=True)
        peaks = {name: (float(a), float(b)) for name, a, b in (line.split("\t") for line in
                                                                   child.stdout.strip().splitlines())}
        times = measure_interleaved(steps(case), repeats=args.repeats, memory=False)
        base_s, (base_step, base_act) = times["transformers"].median_s, peaks["transformers"]
        for name, m in times.items():
            step, act = peaks[name]
            print(f"| {case} | {name} | {m.median_s:.3f} ({base_s / m.median_s:.2f}x) | {step:.0f} "
                  f"({step / base_step:.2f}x) | {act:.0f} ({act / base_act:.2f}x) |", flush=True)


if __name__ == "__main__":
    main()
