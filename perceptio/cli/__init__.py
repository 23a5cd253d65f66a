"""The ``perceptio`` command. Each subcommand lives in its own module of this package,
which defines ``add_parser(subparsers)`` registering itself (with ``set_defaults(run=...)``)."""

from __future__ import annotations

import argparse
import sys

from . import bench, convert, evaluate, generate, info, predict, presets, train

# Subcommand modules, in the order ``perceptio --help`` lists them.
SUBCOMMANDS = [info, presets, convert, predict, train, evaluate, generate, bench]
COMMANDS = [module.__name__.rsplit(".", 1)[1] for module in SUBCOMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perceptio", description="Perceiver and Perceiver IO in PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
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
    except ImportError as e:  # an optional extra is not installed; the message names it
        print(f"perceptio {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
