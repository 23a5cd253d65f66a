"""``perceptio bench``: the benchmarks of docs/performance.md (perceptio vs ``transformers``,
``perceiver-pytorch`` and a plain Transformer), in :mod:`perceptio.bench`. The contenders
come with ``pip install 'perceptio[bench]'``."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from ..bench.run import add_arguments

    p = sub.add_parser("bench", help="run the performance benchmarks (docs/performance.md)",
                       description="Run the performance benchmarks of docs/performance.md; the contenders "
                                   "need pip install 'perceptio[bench]'.")
    add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.run import run as run_benchmarks

    return run_benchmarks(args)
