"""``perceptio predict RUN_DIR INPUTS...`` for runs of ``perceptio train``.

The ``predict`` command of published models lives in :mod:`perceptio.cli.predict`; when its
first argument is a run directory (it holds ``experiment.yaml`` and ``checkpoints/``),
:func:`perceptio.cli.main` hands the arguments to this module instead."""

from __future__ import annotations

import argparse
import json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="perceptio predict", description="predict with the best model of a training run")
    p.add_argument("run_dir", help="a run directory written by `perceptio train`")
    p.add_argument("inputs", nargs="+", help="input files (images, .npy, .wav, .csv) or, for text runs, text "
                                             "with [MASK] for each byte to fill in")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per input")
    p.add_argument("--output", default=None, help="folder for dense outputs (.npy); default: current folder")
    return p


def main(argv: list[str]) -> int:
    from ..train.predict import predict_run

    args = build_parser().parse_args(argv)
    for result in predict_run(args.run_dir, args.inputs, args.top_k, args.output):
        print(json.dumps(result))
    return 0
