"""``perceptio evaluate RUN_DIR [--json]``: validation and test metrics of a run's best model."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate the best model of a training run on its val and test splits")
    p.add_argument("run_dir", help="a run directory written by `perceptio train`")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--last", action="store_true", help="evaluate the last checkpoint instead of the best one")
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..train.trainer import evaluate_run

    results = evaluate_run(args.run_dir, device=args.device, which="last" if args.last else "best")
    if args.json:
        print(json.dumps(results))
    else:
        for split, metrics in results.items():
            print(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0
