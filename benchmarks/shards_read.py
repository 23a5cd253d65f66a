"""Read throughput of WebDataset shards: perceptio's tarfile reader (kind ``webdataset``)
against the ``webdataset`` package (pip install webdataset), one process, interleaved.

    perceptio data to-shards digits /tmp/shards/digits --shard-size 100
    python benchmarks/shards_read.py /tmp/shards/digits --reps 5

Both decode every example (``.npy`` and ``.cls`` members) of one epoch of the train shards;
perceptio's with no shuffling (``shuffle_buffer: 1``) and with its default buffer of 1000."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from perceptio.data.shards import WebDatasetConfig


def perceptio_epoch(urls: list[str], n: int, buffer: int) -> None:
    items = WebDatasetConfig(urls=urls, shuffle_buffer=buffer).load().train.stream(0, 0, 1, 0, 1, None)
    for _ in range(n):
        next(items)


def webdataset_epoch(urls: list[str], n: int) -> None:
    import webdataset as wds

    count = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())
    assert count == n, (count, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", help="a folder written by perceptio data to-shards")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    folder = Path(args.shards)
    train = json.loads((folder / "info.json").read_text())["splits"]["train"]
    urls, n = [str(folder / name) for name in train["shards"]], sum(train["examples"])
    readers = {"perceptio (shuffle_buffer 1)": lambda: perceptio_epoch(urls, n, 1),
               "perceptio (shuffle_buffer 1000)": lambda: perceptio_epoch(urls, n, 1000),
               "webdataset 1.0 (no shuffle)": lambda: webdataset_epoch(urls, n)}
    rates: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(args.reps):
        for name, read in readers.items():
            start = time.perf_counter()
            read()
            rates[name].append(n / (time.perf_counter() - start))
    for name, values in rates.items():
        print(f"{name}: median {statistics.median(values):,.0f} examples/s (min {min(values):,.0f}, "
              f"max {max(values):,.0f}; {n} examples x {args.reps})")


if __name__ == "__main__":
    main()
