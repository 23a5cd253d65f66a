"""Which part of a webdataset run differs from the in-memory one: the stream path or the
order of the examples? Trains the quickstart through the stream path (an IterableDataset,
no worker) over the *in-memory* examples, in the order of (a) the in-memory sampler or (b)
the webdataset stream of the shards written from the same data (docs/data.md, "Measured").
(a) reproduces the in-memory run and (b) the webdataset run, to the last digit of the test
loss, so the stream path changes nothing but the order.

    perceptio data to-shards quickstart shards/quickstart --shard-size 100
    python benchmarks/stream_order.py sampler 3 runs/order-sampler-3
    python benchmarks/stream_order.py shards 3 runs/order-shards-3 shards/quickstart
"""

from __future__ import annotations

import itertools
import sys

import torch

from perceptio.data import DataConfig
from perceptio.data.base import Sampler, Splits
from perceptio.data.streams import IterableStream
from perceptio.train.experiment import load_experiment
from perceptio.train.trainer import Trainer


def main() -> None:
    order_name, seed, run_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    source = DataConfig.from_dict({"kind": "digits", "max_shift": 1}, "data").load()
    fields = source.train.fields
    index = {(fields["inputs"][i].numpy().tobytes(), int(fields["targets"][i])): i for i in range(len(source.train))}
    if order_name == "sampler":
        sampler = Sampler(len(source.train), 64, seed)

        def order():
            return (i for step in itertools.count() for i in sampler.global_batch(step).tolist())
    else:
        urls = f"{sys.argv[4]}/train-{{000000..000012}}.tar"
        shards = DataConfig.from_dict({"kind": "webdataset", "urls": urls, "max_shift": 1}, "data").load()

        def order():  # the examples the webdataset run reads (one process, one worker), by their index here
            return (index[(e["inputs"].numpy().tobytes(), int(e["targets"]))]
                    for e, _ in shards.train.stream(seed, 0, 1, 0, 1, None))

    class InOrder(torch.utils.data.IterableDataset):
        def __iter__(self):
            return (source.train.example(i) for i in order())

    stream = IterableStream(InOrder())
    stream.transform = source.train.transform  # the digits kind's shifts, drawn per step as in memory
    experiment = load_experiment("quickstart", [f"train.seed={seed}", "train.num_workers=0"])
    Trainer(experiment, run_dir, splits=Splits(stream, source.val, source.test, source.info)).fit()


if __name__ == "__main__":
    main()
