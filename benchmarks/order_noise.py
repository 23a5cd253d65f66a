"""How much the digits config's early training depends on the data order alone: the same
in-memory examples, initial weights (seed 4), dropout and shifts, in the order a webdataset
stream emits them (``shuffle_buffer`` 2000: a whole epoch, for three stream seeds) and in
``torch.randperm`` orders (three seeds); the mean training loss of steps 175-250
(docs/data.md, "Measured (branch shards)").

    perceptio data to-shards digits shards/digits --shard-size 100
    python benchmarks/order_noise.py shards/digits
"""

from __future__ import annotations

import csv
import sys
import tempfile

import torch

from perceptio.data.base import Splits
from perceptio.data.builtin import DigitsConfig
from perceptio.data.shards import WebDatasetConfig
from perceptio.data.streams import IterableStream
from perceptio.train.experiment import load_experiment
from perceptio.train.trainer import Trainer

STEPS = 250


def mean_late_loss(source: Splits, order: list[int]) -> float:
    class InOrder(torch.utils.data.IterableDataset):
        def __iter__(self):
            return (source.train.example(i) for i in order)

    stream = IterableStream(InOrder())
    stream.transform = source.train.transform
    args = ["train.seed=4", f"train.steps={STEPS}", "train.eval_every=1000", "logging.progress=false",
            "logging.plots=false", "train.num_workers=0", "logging.log_every=25"]
    with tempfile.TemporaryDirectory() as run_dir:
        Trainer(load_experiment("digits", args), run_dir, splits=Splits(stream, source.val, source.test,
                                                                         source.info)).fit()
        with open(f"{run_dir}/metrics.csv") as f:
            losses = [float(r["value"]) for r in csv.DictReader(f) if r["split"] == "train" and r["name"] == "loss"]
    return sum(losses[-4:]) / 4


def main() -> None:
    folder = sys.argv[1]
    source = DigitsConfig(max_shift=1).load()
    index = {tuple(source.train.example(i)["inputs"].flatten().tolist()): i for i in range(len(source.train))}
    stream = WebDatasetConfig(urls=f"{folder}/train-*.tar", shuffle_buffer=2000).load().train
    n = STEPS * 64
    for s in range(3):
        items = stream.stream(s + 10, 0, 1, 0, 1, None)
        order = [index[tuple(next(items)[0]["inputs"].flatten().tolist())] for _ in range(n)]
        print(f"stream order, seed {s + 10}: {mean_late_loss(source, order):.4f}", flush=True)
        perm = [i for e in range(n // len(index) + 1)
                for i in torch.randperm(len(index), generator=torch.Generator().manual_seed(1000 * s + e)).tolist()]
        print(f"randperm order, seed {s}: {mean_late_loss(source, perm[:n]):.4f}", flush=True)


if __name__ == "__main__":
    main()
