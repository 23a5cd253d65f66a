"""``perceptio predict TASK MODEL ...``: run a model on files or text (perceptio.tasks).

    perceptio predict fill-mask MODEL "The capital of France is[MASK:6]."
    perceptio predict fill-mask MODEL "This is an incomplete sentence." --mask 10:21
    perceptio predict image-classification MODEL cat.jpg dog.png --top-k 5
    perceptio predict optical-flow MODEL frame1.png frame2.png -o flow.flo --png flow.png
    perceptio predict multimodal-autoencoding MODEL clip.npz -o reconstruction.npz
    perceptio predict run RUN_DIR my_digit.png points.csv "hello [MASK:5]"
    perceptio predict RUN_DIR "some text"          (the same as `predict run RUN_DIR ...`)

MODEL is a model directory or a training run directory, told apart by what it holds
(perceptio.tasks.loading). ``run`` is the task a run was trained for (its data set's
objective), on inputs read the way its data set reads files. A task is a subcommand, so
every form is an ordinary argparse parser and ``perceptio predict --help`` lists them all;
the one shorthand, ``perceptio predict RUN_DIR ...``, applies only when the first argument
is not a task name and is a training run directory (:func:`run_shorthand`).
"""

from __future__ import annotations

import json


TASKS = ("fill-mask", "image-classification", "classify", "optical-flow", "flow", "multimodal-autoencoding",
         "autoencode", "run")


def run_shorthand(argv: list[str]) -> list[str]:
    """``predict RUN_DIR ...`` -> ``predict run RUN_DIR ...`` when RUN_DIR is a training run
    directory and not a task name; any other command line is returned as it is."""
    from ..train.checkpoint import is_run_dir

    if len(argv) > 1 and argv[0] == "predict" and argv[1] not in TASKS and not argv[1].startswith("-") \
            and is_run_dir(argv[1]):
        return [argv[0], "run", *argv[1:]]
    return argv


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="run a model: fill-mask, image-classification, optical-flow, ..., "
                                       "or `run` for a training run's own task",
                       description="`perceptio predict TASK MODEL ...` runs TASK with MODEL, a model directory "
                                   "(see `perceptio convert`) or a training run directory (see `perceptio train`; "
                                   "its best checkpoint is used). `perceptio predict run RUN_DIR INPUTS...` does "
                                   "what the run was trained for. `perceptio predict TASK --help` for each task.")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)

    t = tasks.add_parser("fill-mask", help="fill masked byte spans of a text with the byte-level language model",
                         description="Spans are [MASK] (one byte) or [MASK:N] (N bytes) markers in TEXT, or byte "
                                     "ranges START:END of the literal TEXT given with --mask.")
    _common(t)
    t.add_argument("text", help='text with [MASK] / [MASK:N] markers, e.g. "Paris is the capital of[MASK:7]."')
    t.add_argument("--mask", action="append", metavar="START:END",
                   help="mask bytes START..END-1 of the literal TEXT (markers are then not parsed); repeatable")
    t.set_defaults(run=run_fill_mask)

    t = tasks.add_parser("image-classification", aliases=["classify"], help="top-k classes of image files",
                         description="Images are centre-cropped (224/256 of the shorter side), resized to the "
                                     "model's size and ImageNet-normalised. Class names come from --labels or "
                                     "MODEL/labels.txt (one per line) when present.")
    _common(t)
    t.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    t.add_argument("--top-k", type=int, default=5, help="classes to show per image (default: 5)")
    t.add_argument("--labels", help="class names, one per line (default: MODEL/labels.txt if present)")
    t.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    t.set_defaults(run=run_image_classification)

    t = tasks.add_parser("optical-flow", aliases=["flow"], help="optical flow between two image files of any size",
                         description="Frames larger than the model's training size are processed in overlapping "
                                     "tiles blended by distance to the tile border; the flow is written as a "
                                     "Middlebury .flo file and optionally colour-coded as PNG.")
    _common(t)
    t.add_argument("frame1", help="first image file")
    t.add_argument("frame2", help="second image file (same size)")
    t.add_argument("-o", "--out", required=True, help="output .flo file")
    t.add_argument("--png", help="also write the colour-coded flow (Middlebury colour wheel) to this PNG")
    t.add_argument("--min-overlap", type=int, default=20, help="minimum tile overlap in pixels (default: 20)")
    t.add_argument("--batch-size", type=int, default=1, help="tiles per forward pass (default: 1)")
    t.add_argument("--scale", type=float, default=20.0,
                   help="factor from model output to pixels (default: 20, as in the reference colab)")
    t.set_defaults(run=run_optical_flow)

    t = tasks.add_parser("multimodal-autoencoding", aliases=["autoencode"],
                         help="reconstruct a video + audio clip and classify it (Kinetics-700 autoencoder)",
                         description="CLIP is an .npz file with 'video' [T, H, W, 3] (uint8, or float in [0, 1]) and "
                                     "'audio' [N] or [N, C] (int16, or float in [-1, 1]) of the model's sizes. The "
                                     "clip is encoded once and decoded CHUNK_SIZE outputs at a time.")
    _common(t)
    t.add_argument("clip", help=".npz file with arrays 'video' and 'audio'")
    t.add_argument("-o", "--out", help="write the reconstruction (video, audio, label_logits) to this .npz")
    t.add_argument("--chunk-size", type=int, default=8192, help="decoder queries per chunk (default: 8192)")
    t.add_argument("--top-k", type=int, default=5, help="classes to show (default: 5)")
    t.add_argument("--labels", help="class names, one per line (default: MODEL/labels.txt if present)")
    t.set_defaults(run=run_multimodal_autoencoding)

    t = tasks.add_parser("run", help="what a training run was trained for, on files or text",
                         description="Predictions of a run's best model: top classes for classification runs "
                                     "(images, .npy, .wav, .csv, read as the run's data set reads them), the "
                                     "filled text for masked-byte runs (text or a text file with [MASK] / "
                                     "[MASK:N]), the output array for dense runs (.npy frame pairs). One JSON "
                                     "object per input and line.")
    t.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `perceptio train`")
    t.add_argument("inputs", nargs="+", help="input files or, for masked-byte runs, text with [MASK] / [MASK:N]")
    t.add_argument("--top-k", type=int, default=3, help="classes to show per input (default: 3)")
    t.add_argument("--output", default=None, help="folder for dense outputs (.npy); default: current folder")
    t.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    t.set_defaults(run=run_training_run)


def _common(p) -> None:
    p.add_argument("model", metavar="MODEL", help="a model directory (see `perceptio convert`) or a training run "
                                                  "directory (see `perceptio train`)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _load(args):
    from perceptio.tasks.loading import load_model

    return load_model(args.model, args.device)


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


def _labels(args) -> list[str] | None:
    from pathlib import Path

    from perceptio.pretrained import read_labels

    return Path(args.labels).read_text().splitlines() if args.labels else read_labels(args.model)


def _print_predictions(preds, indent: str = "  ") -> None:
    for p in preds:
        name = f"  {p.label}" if p.label is not None else ""
        print(f"{indent}{p.score:8.4f}  {p.index:>5}{name}")


def run_image_classification(args) -> int:
    from perceptio.tasks.image_classification import classify_images

    labels = _labels(args)
    results = classify_images(_load(args), args.images, args.top_k, labels, args.batch_size)
    if args.json:
        print(json.dumps([{"image": str(path), "predictions": [vars(p) for p in preds]}
                          for path, preds in zip(args.images, results)], ensure_ascii=False))
        return 0
    for path, preds in zip(args.images, results):
        print(path)
        _print_predictions(preds)
    return 0


def run_optical_flow(args) -> int:
    from perceptio.tasks.optical_flow import estimate_flow, flow_to_color, save_png, write_flo

    flow = estimate_flow(_load(args), args.frame1, args.frame2, args.min_overlap, args.batch_size, args.scale)
    write_flo(args.out, flow)
    if args.png:
        save_png(args.png, flow_to_color(flow))
    speed = flow.norm(dim=-1)
    summary = {"out": args.out, "png": args.png, "height": flow.shape[0], "width": flow.shape[1],
               "mean_speed": float(speed.mean()), "max_speed": float(speed.max())}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {args.out} ({flow.shape[1]}x{flow.shape[0]}, mean |flow| {summary['mean_speed']:.3f} px, "
              f"max {summary['max_speed']:.3f} px)" + (f" and {args.png}" if args.png else ""))
    return 0


def run_multimodal_autoencoding(args) -> int:
    import numpy as np

    from perceptio.tasks.multimodal import autoencode

    with np.load(args.clip, allow_pickle=False) as clip:
        missing = [k for k in ("video", "audio") if k not in clip]
        if missing:
            raise ValueError(f"{args.clip}: missing arrays {missing}; expected 'video' and 'audio', got {sorted(clip)}")
        video, audio = clip["video"], clip["audio"]
    result = autoencode(_load(args), video, audio, args.chunk_size, args.top_k, _labels(args))
    if args.out:
        np.savez(args.out, video=result.video.numpy(), audio=result.audio.numpy(),
                 label_logits=result.label_logits.numpy())
    if args.json:
        print(json.dumps({"out": args.out, "predictions": [vars(p) for p in result.top_k]}, ensure_ascii=False))
        return 0
    if args.out:
        print(f"wrote {args.out}: video {list(result.video.shape)}, audio {list(result.audio.shape)}")
    print("classes:")
    _print_predictions(result.top_k)
    return 0


def run_training_run(args) -> int:
    from perceptio.tasks.runs import load_run, predict_run

    for result in predict_run(load_run(args.run_dir, args.device), args.inputs, args.top_k, args.output):
        print(json.dumps(result, ensure_ascii=False))
    return 0
