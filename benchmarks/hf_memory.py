"""Peak memory of reading a Parquet data set with kind ``hf_dataset``, large against tiny
(docs/data.md, "Hugging Face datasets": measured).

    python benchmarks/hf_memory.py write DIR ROWS        # ROWS x (256 float32 + a label): ~1 KiB a row
    python benchmarks/hf_memory.py read DIR CACHE [--steps 200] [--workers 0]

``write`` makes Parquet files of random rows (incompressible: 1.5M rows are ~1.5 GB), 50,000
rows at a time. ``read`` loads them as the trainer does (the first time converting them into
Arrow files in CACHE), then reads ``--steps`` training batches of 64 random rows (through a
DataLoader with ``--workers`` worker processes if > 0), and prints one JSON line: the time
of the load, the examples read per second and this process's (and the workers') peak RSS
(``VmHWM``), with the resident memory split into anonymous (``RssAnon``: copies) and
file-backed (``RssFile``: pages of the memory-mapped table).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from perceptio.data import DataConfig, Sampler
from perceptio.data.base import step_generator

WIDTH = 256  # float32 inputs per row
CHUNK = 50_000  # rows per write


def status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon and RssFile of this process in MiB (/proc/self/status)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) // 1024
    return out


def write(root: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(0)
    schema = pa.schema([("inputs", pa.list_(pa.float32())), ("label", pa.int64())])
    for part, start in enumerate(range(0, rows, CHUNK)):
        n = min(CHUNK, rows - start)
        values = gen.standard_normal(n * WIDTH, dtype=np.float32)
        inputs = pa.ListArray.from_arrays(np.arange(0, n * WIDTH + 1, WIDTH, dtype=np.int32), values)
        table = pa.table({"inputs": inputs, "label": gen.integers(0, 10, n)}, schema=schema)
        pq.write_table(table, root / f"part-{part:05d}.parquet")
    size = sum(f.stat().st_size for f in root.glob("*.parquet"))
    print(json.dumps({"rows": rows, "files": part + 1, "parquet_mib": size // 2**20}))


def read(root: Path, cache: Path, steps: int, workers: int) -> None:
    start = time.perf_counter()
    config = DataConfig.from_dict({"kind": "hf_dataset", "path": str(root), "cache_dir": str(cache),
                                   "columns": {"inputs": "inputs", "labels": "label"}})
    splits = config.load()
    loaded = time.perf_counter() - start
    after_load = status()
    train, batch_size = splits.train, 64
    sampler = Sampler(len(train), batch_size, seed=0)
    worker_peaks = []
    start = time.perf_counter()
    if workers:
        loader = torch.utils.data.DataLoader(
            [sampler.indices(step) for step in range(steps)], batch_size=None, num_workers=workers,
            collate_fn=lambda idx: (train.batch(idx, step_generator(0, 0)), status()))
        for _, worker_status in loader:
            worker_peaks.append(worker_status)
    else:
        for step in range(steps):
            train.batch(sampler.indices(step), step_generator(0, step))
    seconds = time.perf_counter() - start
    arrow = sum(f.stat().st_size for f in cache.rglob("*.arrow")) // 2**20
    print(json.dumps({"rows": len(train) + len(splits.val) + len(splits.test), "arrow_mib": arrow,
                      "load_s": round(loaded, 1), "examples_per_s": round(steps * batch_size / seconds),
                      "after_load": after_load, "end": status(), "workers": workers,
                      "worker_peak_mib": max(w["VmHWM"] for w in worker_peaks) if worker_peaks else None,
                      "worker_rss_anon_mib": max(w["RssAnon"] for w in worker_peaks) if worker_peaks else None}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write")
    w.add_argument("dir", type=Path)
    w.add_argument("rows", type=int)
    r = sub.add_parser("read")
    r.add_argument("dir", type=Path)
    r.add_argument("cache", type=Path)
    r.add_argument("--steps", type=int, default=200)
    r.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    if args.command == "write":
        write(args.dir, args.rows)
    else:
        read(args.dir, args.cache, args.steps, args.workers)
