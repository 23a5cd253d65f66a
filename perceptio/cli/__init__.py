"""The ``perceptio`` command. Each subcommand lives in its own module of this package,
which defines ``add_parser(subparsers)`` registering itself (with ``set_defaults(run=...)``)."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order ``perceptio --help`` lists them.
COMMANDS = ["info", "presets", "convert", "predict", "train", "evaluate", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perceptio", description="Perceiver and Perceiver IO in PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def _run_dir_predict(argv: list[str]) -> bool:
    """``perceptio predict RUN_DIR ...`` with a training run directory (see cli/predict_run.py)."""
    if len(argv) < 2 or argv[0] != "predict":
        return False
    from ..train.predict import is_run_dir

    return is_run_dir(argv[1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if _run_dir_predict(argv):
        from . import predict_run

        try:
            return predict_run.main(argv[1:])
        except (ValueError, TypeError, FileNotFoundError) as e:
            print(f"perceptio predict: error: {e}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"perceptio {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
