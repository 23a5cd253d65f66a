"""A config in memory (digits by default) with the sampler's seed shifted by OFFSET (the
initial weights, dropout and shifts unchanged): how much the test accuracy of one seed
depends on the data order alone (docs/data.md, "Measured (branch shards)", "Accuracy from
shards").

    python benchmarks/sampler_offset.py 100 runs/digits-order100 --set train.seed=0
    python benchmarks/sampler_offset.py 100 runs/quickstart-order100 --config quickstart --set train.seed=0
"""

from __future__ import annotations

import argparse
import json

from perceptio.data import base
from perceptio.train.experiment import load_experiment
from perceptio.train.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("offset", type=int, help="added to the sampler's seed")
    parser.add_argument("run_dir")
    parser.add_argument("--config", default="digits", help="a built-in config name or YAML file (default digits)")
    parser.add_argument("--set", dest="assignments", action="append", default=[])
    args = parser.parse_args()
    make_sampler = base.Splits.make_sampler
    base.Splits.make_sampler = lambda splits, batch_size, seed: make_sampler(splits, batch_size, seed + args.offset)
    experiment = load_experiment(args.config, ["logging.progress=false", "logging.plots=false", *args.assignments])
    print(json.dumps(Trainer(experiment, args.run_dir, overwrite=True).fit()))


if __name__ == "__main__":
    main()
