"""``perceptio train [CONFIG] [--set key.path=value ...] [--run-dir DIR] [--resume | --overwrite]``.

The run directory is locked while training (a second trainer on it stops and names the
first one's pid and host); one that already holds a run is refused unless ``--resume``
continues it or ``--overwrite`` deletes it first.

CONFIG is a YAML file or a built-in config name (default: ``quickstart``, the 8x8 digits).
Under ``torchrun --nproc_per_node N -m perceptio train CONFIG`` the processes train
together (DDP, or FSDP with ``--set train.distributed=fsdp``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..overrides import SET_HELP


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a Perceiver from an experiment config (default: the quickstart)")
    from ..train.experiment import builtin_configs

    p.add_argument("config", nargs="?", default=None,
                   help=f"YAML file or built-in config name ({', '.join(builtin_configs())}); default: quickstart, "
                        "or the run's config with --resume")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a value of the experiment config by its dotted path (train.steps=200, "
                        f"optim.lr=3e-4): {SET_HELP}")
    p.add_argument("--run-dir", default=None, help="where the run is written (default: runs/NAME)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --run-dir")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in --run-dir (checkpoints, metrics, plots) and start over; without "
                        "--resume or --overwrite an existing run is never touched")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..train.experiment import EXPERIMENT_FILE, QUICKSTART, load_experiment
    from ..train.trainer import Trainer

    source = args.config
    if source is None:
        saved = Path(args.run_dir) / EXPERIMENT_FILE if args.run_dir else None
        source = saved if args.resume and saved is not None and saved.is_file() else QUICKSTART
    experiment = load_experiment(source, args.assignments)
    run_dir = Path(args.run_dir or Path("runs") / experiment.name)
    results = Trainer(experiment, run_dir, resume=args.resume, overwrite=args.overwrite).fit()
    if results:
        print(json.dumps(results))
        print(f"run directory: {run_dir}")
    return 0
