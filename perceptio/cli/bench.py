"""``perceptio bench``: the benchmarks of docs/performance.md (perceptio vs ``transformers``,
``perceiver-pytorch`` and a plain Transformer). They live in ``benchmarks/`` of a source
checkout and need ``transformers`` (and ``perceiver-pytorch`` for the sweep's third contender)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _benchmarks():
    if not (ROOT / "benchmarks" / "run.py").is_file():
        raise FileNotFoundError(f"{ROOT / 'benchmarks'} not found: `perceptio bench` runs from a source checkout")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import benchmarks.run

    return benchmarks.run


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run the performance benchmarks (docs/performance.md)")
    try:
        _benchmarks().add_arguments(p)
    except FileNotFoundError:
        pass  # reported when run
    p.set_defaults(run=run)


def run(args) -> int:
    return _benchmarks().run(args)
