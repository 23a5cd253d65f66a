"""``perceptio bench``: run the benchmark suites and write results (JSON, CSV, Markdown
table, sweep plot).

    perceptio bench [--quick] [--only image,mlm,multimodal,sweep,roofline,training]
                    [--device cpu|cuda] [--dtype float32|bfloat16] [--out DIR]

The contenders (``transformers``, ``perceiver-pytorch``) come with ``pip install 'perceptio[bench]'``.
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
# Relative to the working directory: results are output, not part of the package (in a source
# checkout this is where docs/performance.md's figures live).
DEFAULT_OUT = Path("benchmarks") / "results"


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
    p.add_argument("--out", type=Path, default=None, help="results directory (default ./benchmarks/results/<device>[-quick])")
    p.add_argument("--phase", choices=["timing", "memory", "both"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--rows-out", type=Path, default=None, help=argparse.SUPPRESS)


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
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    repeats = args.repeats or (1 if args.quick else 3)
    settings = Settings(device, dtype, repeats, tolerance=1e-4 if dtype == torch.float32 else 5e-2)
    if args.phase is not None:  # a child: one phase of some suites, rows to --rows-out
        configure_malloc("memory" if args.phase in ("memory", "both") and device.type == "cpu" else "timing")
        settings.phase = args.phase
        rows = [row for name in suites for row in _run_suite(name, settings, args.quick)]
        args.rows_out.write_text(json.dumps([{k: _plain(v) for k, v in r.items()} for r in rows]))
        return 0
    out = args.out or DEFAULT_OUT / (device.type + ("-quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    info.update(device=str(device), dtype=str(dtype).removeprefix("torch."), quick=args.quick, repeats=repeats,
                command="perceptio bench " + " ".join(a for a in sys.argv[1:] if a != "bench"))
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for name in suites:
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        if device.type == "cuda":  # CUDA memory statistics need no separate process
            configure_malloc("timing")
            settings.phase = "both"
            rows += _run_suite(name, settings, args.quick)
        elif name in MEMORY_SUITES:  # timings and peaks from separate processes (harness.configure_malloc)
            rows += merge_peaks(_child(name, "timing", args), _child(name, "memory", args))
        else:
            rows += _child(name, "both" if name == "sweep" else "timing", args)
        print(f"[bench] {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        _write(out, info, rows, time.perf_counter() - started)
    failed = sorted({r["suite"] for r in rows if r.get("failed")})
    print(render(out, rows, info))
    print(f"[bench] results in {out} ({time.perf_counter() - started:.0f} s)")
    return 1 if failed else 0


def render(out: Path, rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """Write ``results.md`` and ``sweep.png`` for these rows; return the Markdown."""
    from .report import markdown, plot_sweep

    text = markdown(rows, info)
    (out / "results.md").write_text(text)
    if any(r.get("suite") == "sweep" and "points" in r for r in rows):
        try:
            plot_sweep(rows, out / "sweep.png", info)
        except ImportError:
            print("[bench] matplotlib not installed: no plot", flush=True)
    return text


# The sweep runs in one process with the memory setting (its contenders are skipped by
# extrapolated time and memory, which needs both; its allocations are large enough to be
# mmap-ed by glibc's defaults too); roofline and training report no memory.
MEMORY_SUITES = ("image", "mlm", "multimodal")
_KEY = ("suite", "case", "contender", "mode", "batch", "points", "chunk_queries")


def _run_suite(name: str, settings: Settings, quick: bool) -> list[dict[str, Any]]:
    try:
        return _suite(name)(settings, quick)
    except Exception as e:  # one suite failing must not lose the others' results
        traceback.print_exc()
        return [dict(suite=name, failed=True, error=f"{type(e).__name__}: {e}")]


def _child(name: str, phase: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run one suite's ``phase`` in a fresh interpreter and return its rows."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rows_out = Path(tmp) / "rows.json"
        argv = [sys.executable, "-m", "perceptio", "bench", "--only", name, "--phase", phase, "--rows-out", str(rows_out),
                "--device", args.device]
        for flag, value in (("--dtype", args.dtype), ("--repeats", args.repeats), ("--threads", args.threads)):
            if value is not None:
                argv += [flag, str(value)]
        if args.quick:
            argv.append("--quick")
        done = subprocess.run(argv, env=_child_env())
        if done.returncode != 0 or not rows_out.exists():
            return [dict(suite=name, failed=True, error=f"{phase} process exited with {done.returncode}")]
        return json.loads(rows_out.read_text())


def _child_env() -> dict[str, str]:
    """This environment, with the directory holding this ``perceptio`` first on the path, so
    that the child runs the same code (a source checkout or an installed package)."""
    import os

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    return env


def merge_peaks(timed: list[dict], measured: list[dict]) -> list[dict]:
    """Peak memory from the memory process's rows into the timing rows (same keys), and
    memory ratios to ``transformers`` recomputed from them."""
    peaks = {tuple(r.get(k) for k in _KEY): r.get("peak_mib") for r in measured}
    merged = [dict(r, peak_mib=peaks.get(tuple(r.get(k) for k in _KEY), r.get("peak_mib"))) for r in timed]
    known = {tuple(r.get(k) for k in _KEY) for r in timed}
    merged += [r for r in measured if tuple(r.get(k) for k in _KEY) not in known and not r.get("failed")]
    base = {(r["suite"], r.get("case"), r.get("mode"), r.get("batch")): r.get("peak_mib")
            for r in merged if r.get("contender") == "transformers"}
    for r in merged:
        b = base.get((r.get("suite"), r.get("case"), r.get("mode"), r.get("batch")))
        if b and r.get("peak_mib") is not None and "memory_vs_transformers" in r:
            r["memory_vs_transformers"] = r["peak_mib"] / b
    return merged


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
