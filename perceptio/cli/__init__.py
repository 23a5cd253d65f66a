"""The ``perceptio`` command. Each subcommand lives in its own module of this package,
which defines ``add_parser(subparsers)`` registering itself (with ``set_defaults(run=...)``).

Errors reach the user as one line, ``perceptio COMMAND: error: ...`` (exit status 2), never
as a Python traceback; ``--debug`` (anywhere on the command line) shows the traceback
instead. An error that is not one of perceptio's own (a bug, or torch failing) is one line
too, with its type and the advice to rerun with ``--debug`` (exit status 1).
"""

from __future__ import annotations

import argparse
import sys
import warnings

from . import bench, convert, data, evaluate, generate, info, predict, presets, train

# Subcommand modules, in the order ``perceptio --help`` lists them.
SUBCOMMANDS = [info, presets, convert, predict, data, train, evaluate, generate, bench]
COMMANDS = [module.__name__.rsplit(".", 1)[1] for module in SUBCOMMANDS]


DEBUG_HELP = "show the Python traceback of an error instead of its one-line message"
# Errors that describe what the user gave (a value, a file, a missing extra): shown as they are.
USER_ERRORS = (ValueError, TypeError, KeyError, ImportError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perceptio", description="Perceiver and Perceiver IO in PyTorch.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``--debug`` anywhere before a ``--`` (``perceptio train --debug ...`` too) -> (the
    other arguments, whether it was given)."""
    end = argv.index("--") if "--" in argv else len(argv)
    rest = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return rest, len(rest) != len(argv)


def one_line(e: BaseException) -> str:
    """The message of an error as one line; OSErrors as ``PATH: reason``."""
    if isinstance(e, OSError) and e.filename is not None:
        text = f"{e.filename}: {e.strerror or e}"
    elif isinstance(e, OSError) and e.strerror:
        text = e.strerror
    elif isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    else:
        text = str(e)
    text = " ".join(text.split()) or type(e).__name__
    if not isinstance(e, USER_ERRORS):
        text = f"{type(e).__name__}: {text} (unexpected; rerun with --debug for the traceback)"
    return text


def main(argv: list[str] | None = None) -> int:
    command_line = argv is None  # the `perceptio` process itself, not a caller in Python
    argv, debug = split_debug(sys.argv[1:] if argv is None else list(argv))
    argv = predict.run_shorthand(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = args.debug or debug
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    name = f"perceptio {args.command}"
    with warnings.catch_warnings():
        if command_line and not args.debug:  # warnings as one line each, without the source line
            warnings.showwarning = lambda message, category, *_: print(f"{name}: warning: {message}",
                                                                         file=sys.stderr)
        try:
            return int(args.run(args) or 0)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001 - the CLI shows every error as one line
            if args.debug:
                raise
            print(f"{name}: error: {one_line(e)}", file=sys.stderr)
            return 2 if isinstance(e, USER_ERRORS) else 1


if __name__ == "__main__":
    sys.exit(main())
