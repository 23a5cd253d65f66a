"""``perceptio predict TASK MODEL_DIR ...``: run a model directory on files or text.

    perceptio predict fill-mask MODEL_DIR "The capital of France is[MASK:6]."
    perceptio predict fill-mask MODEL_DIR "This is an incomplete sentence." --mask 10:21
"""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="run a model directory: fill-mask, image-classification, optical-flow, ...")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)

    t = tasks.add_parser("fill-mask", help="fill masked byte spans of a text with the byte-level language model",
                         description="Spans are [MASK] (one byte) or [MASK:N] (N bytes) markers in TEXT, or byte "
                                     "ranges START:END of the literal TEXT given with --mask.")
    _common(t)
    t.add_argument("text", help='text with [MASK] / [MASK:N] markers, e.g. "Paris is the capital of[MASK:7]."')
    t.add_argument("--mask", action="append", metavar="START:END",
                   help="mask bytes START..END-1 of the literal TEXT (markers are then not parsed); repeatable")
    t.set_defaults(run=run_fill_mask)


def _common(p) -> None:
    p.add_argument("model_dir", help="a perceptio model directory (see `perceptio convert`)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _load(args):
    import torch

    from perceptio.model import Perceiver

    return Perceiver.from_pretrained(args.model_dir, map_location=args.device).to(torch.device(args.device)).eval()


def _span(text: str) -> tuple[int, int]:
    start, sep, end = text.partition(":")
    if not sep or not start.strip().isdigit() or not end.strip().isdigit():
        raise ValueError(f"--mask expects START:END byte offsets, got {text!r}")
    return int(start), int(end)


def run_fill_mask(args) -> int:
    from perceptio.tasks.fill_mask import fill_mask

    spans = [_span(s) for s in args.mask] if args.mask else None
    result = fill_mask(_load(args), args.text, spans)
    if args.json:
        print(json.dumps({"text": result.text, "spans": result.spans, "fills": result.fills}, ensure_ascii=False))
    else:
        print(result.text)
    return 0
