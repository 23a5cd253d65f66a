"""Run the benchmark suites and write results (JSON, CSV, Markdown table, sweep plot).

    python -m benchmarks.run [--quick] [--only image,mlm,multimodal,sweep,roofline,training]
                             [--device cpu|cuda] [--dtype float32|bfloat16] [--out DIR]

(also ``perceptio bench`` with the same options, from a source checkout).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from .compare import Settings
from .harness import configure_malloc, machine_info

SUITES = ("image", "mlm", "multimodal", "sweep", "roofline", "training")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _suite(name: str):
    from . import multimodal, roofline, suites, sweep

    return {
        "image": suites.image_fourier,
        "mlm": suites.masked_lm,
        "multimodal": multimodal.reconstruct,
        "sweep": sweep.input_sweep,
        "roofline": roofline.latent_stack,
        "training": roofline.training_utilisation,
    }[name]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="smoke run (~1-2 min on 2 cores): reduced depths and sizes")
    p.add_argument("--only", default=",".join(SUITES), help=f"comma-separated suites of {', '.join(SUITES)}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: float32 on cpu, bfloat16 on cuda")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per contender (default 3, quick 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/<device>)")


def run(args: argparse.Namespace) -> int:
    suites = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        raise ValueError(f"unknown suites {unknown}; choose from {', '.join(SUITES)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda given but torch.cuda.is_available() is False")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        configure_malloc()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    repeats = args.repeats or (1 if args.quick else 3)
    settings = Settings(device, dtype, repeats, tolerance=1e-4 if dtype == torch.float32 else 5e-2)
    out = args.out or DEFAULT_OUT / (device.type + ("-quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    info.update(device=str(device), dtype=str(dtype).removeprefix("torch."), quick=args.quick, repeats=repeats,
                command="perceptio bench " + " ".join(sys.argv[1:]) if sys.argv else "")
    rows: list[dict[str, Any]] = []
    failed = []
    started = time.perf_counter()
    for name in suites:
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        try:
            new = _suite(name)(settings, args.quick)
        except Exception as e:  # one suite failing must not lose the others' results
            traceback.print_exc()
            failed.append(name)
            new = [dict(suite=name, error=f"{type(e).__name__}: {e}")]
        rows += new
        print(f"[bench] {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        _write(out, info, rows, time.perf_counter() - started)
    from .report import markdown, plot_sweep

    (out / "results.md").write_text(markdown(rows, info))
    if any(r.get("suite") == "sweep" and "points" in r for r in rows):
        try:
            plot_sweep(rows, out / "sweep.png", info)
        except ImportError:
            print("[bench] matplotlib not installed: no plot", flush=True)
    print(markdown(rows, info))
    print(f"[bench] results in {out} ({time.perf_counter() - started:.0f} s)")
    return 1 if failed else 0


def _write(out: Path, info: dict, rows: list[dict], seconds: float) -> None:
    import csv

    clean = [{k: _plain(v) for k, v in r.items()} for r in rows]
    (out / "results.json").write_text(json.dumps({"machine": info, "seconds": seconds, "rows": clean}, indent=1))
    keys = sorted({k for r in clean for k in r}, key=lambda k: (k not in _ORDER, _ORDER.index(k) if k in _ORDER else 0, k))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(clean)


_ORDER = ["suite", "case", "contender", "mode", "batch", "points", "median_s", "cpu_s", "peak_mib",
          "speedup_vs_transformers", "memory_vs_transformers", "gflop_per_s", "fraction_of_roof"]


def _plain(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (torch.dtype, torch.device)):
        return str(v)
    return v


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
