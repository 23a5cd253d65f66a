"""``perceptio data to-shards CONFIG OUT_DIR [--shard-size N|SIZE] [--split train|val|test|all]
[--shuffle-seed N | --no-shuffle]``:
a data set as WebDataset tar shards (read by the ``webdataset`` data kind, docs/data.md).

CONFIG is a YAML file with a ``data:`` section (an experiment file, or only that section)
or a built-in config name; any kind perceptio reads can be written (``digits`` too)."""

from __future__ import annotations

import json
import re

from ..overrides import SET_HELP

UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20,
         "gib": 2**30}


def parse_shard_size(text: str) -> tuple[int | None, int | None]:
    """``1000`` -> (1000 examples, None); ``100MB`` / ``1GiB`` -> (None, bytes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in UNITS:
        raise ValueError(f"--shard-size: expected a number of examples (1000) or a size (100MB, 1GiB), got {text!r}")
    value = float(match.group(1))
    if value <= 0:
        raise ValueError(f"--shard-size must be positive, got {text!r}")
    return (int(value), None) if unit == "" else (None, int(value * UNITS[unit]))


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="prepare data sets (to-shards: write WebDataset shards)",
                       description="Prepare data sets for training.")
    commands = p.add_subparsers(dest="data_command", metavar="COMMAND")
    s = commands.add_parser("to-shards", help="write a data set as WebDataset tar shards with its info.json",
                            description="Write the splits of CONFIG's data set as WebDataset tar shards "
                                        "(OUT_DIR/SPLIT-NNNNNN.tar) and OUT_DIR/info.json; train on them with "
                                        "data: {kind: webdataset, urls: OUT_DIR/train-{000000..NNNNNN}.tar}.")
    s.add_argument("config", help="YAML file with a data: section (an experiment file), or a built-in config name")
    s.add_argument("out_dir", help="the folder of the shards (new or empty)")
    s.add_argument("--shard-size", default="1000",
                   help="examples per shard (1000, the default) or bytes per shard (100MB, 1GiB)")
    s.add_argument("--split", default="all", choices=["train", "val", "test", "all"], help="which split(s) to write")
    s.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a value of the config by its dotted path (data.max_shift=0): {SET_HELP}")
    s.add_argument("--overwrite", action="store_true", help="replace the shards already in OUT_DIR")
    s.add_argument("--shuffle-seed", type=int, default=0,
                   help="write the training examples in the order of a permutation with this seed (default 0), so "
                        "that every shard mixes the whole data set (a shuffle buffer mixes only nearby examples)")
    s.add_argument("--no-shuffle", dest="shuffle_seed", action="store_const", const=None,
                   help="write the training examples in the data set's own order")
    s.set_defaults(run=to_shards)
    p.set_defaults(run=lambda args: p.print_help() or 0)


def to_shards(args) -> int:
    from ..config import ConfigError
    from ..data import DataConfig
    from ..data.shards import SPLITS, write_shards
    from ..train.experiment import apply_set, read_config_file

    shard_size, shard_bytes = parse_shard_size(args.shard_size)
    path, raw = read_config_file(args.config)
    raw = apply_set(raw, args.assignments)
    if "data" not in raw:
        raise ConfigError(f"{path}: no data: section; expected a mapping such as data: {{kind: digits}}")
    try:
        config = DataConfig.from_dict(raw["data"], "data")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    splits = SPLITS if args.split == "all" else (args.split,)
    info = write_shards(config, args.out_dir, splits, shard_size, shard_bytes, args.overwrite, args.shuffle_seed)
    written = json.loads(info.read_text())["splits"]
    print(f"wrote {info.parent}: " + ", ".join(f"{name} {sum(s['examples'])} examples in {len(s['shards'])} shards"
                                               for name, s in written.items()) + f", and {info.name}")
    return 0
