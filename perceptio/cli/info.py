"""``perceptio info``: versions and the compute this machine offers."""

from __future__ import annotations

import platform


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show versions and available devices")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    import perceptio

    print(f"perceptio {perceptio.__version__}, torch {torch.__version__}, python {platform.python_version()}")
    print(f"threads: {torch.get_num_threads()}, cuda: {torch.cuda.is_available()}")
    return 0
