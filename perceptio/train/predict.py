"""Predictions of a trained run: ``perceptio predict RUN_DIR INPUTS...``.

Inputs are files read the way the run's data set reads them, or literal text:

* classification runs: images (``.png``, ``.jpg`` ...; resized to the training size),
  ``.npy`` arrays, ``.wav`` clips, ``.csv`` point clouds -> top classes with probabilities;
* masked-byte runs: text (a file or a literal string) where each ``[MASK]`` is one byte
  to fill in -> the completed text;
* dense runs (optical flow): ``.npy`` frame pairs ``[2, H, W, C]`` -> the predicted flow,
  written next to ``--output``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import files as data_files
from ..data.builtin import DigitsConfig
from ..tokenizer import MASK, NUM_SPECIAL_TOKENS
from . import checkpoint as ckpt
from .experiment import EXPERIMENT_FILE, ExperimentConfig, load_run_experiment
from .objectives import build_objective

MASK_TEXT = "[MASK]"


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / EXPERIMENT_FILE).is_file() and (Path(path) / "checkpoints").is_dir()


def read_example(path: str, experiment: ExperimentConfig, example: torch.Tensor) -> torch.Tensor:
    """One input file -> a tensor shaped like the training examples (``example``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    data = experiment.data
    suffix = p.suffix.lower()
    if suffix in data_files.IMAGE_EXTENSIONS:
        if example.dim() != 3:
            raise ValueError(f"{path}: this run takes inputs of shape {tuple(example.shape)}, not images")
        array = data_files.read_image(p, list(example.shape[:2]), example.shape[2])
        if isinstance(data, DigitsConfig):  # digits: bright ink on black, like the training data
            array = array if array.mean() < 0.5 else 1.0 - array
        return torch.from_numpy(array)
    if suffix == ".npy":
        array = torch.from_numpy(data_files.load_npy(p).astype(np.float32))
    elif suffix == ".wav":
        samples, _ = data_files.read_wav(p)
        array = torch.zeros(example.shape[0])
        n = min(len(samples), example.shape[0])
        array[:n] = torch.from_numpy(samples[:n])
    elif suffix == ".csv":
        pts = data_files.read_csv_points(p)
        idx = np.random.default_rng(0).choice(len(pts), example.shape[0], replace=len(pts) < example.shape[0])
        array = torch.from_numpy(pts[idx])
    else:
        raise ValueError(f"{path}: unsupported input type {suffix!r}; use an image, .npy, .wav or .csv file")
    if array.shape != example.shape:
        raise ValueError(f"{path}: shape {tuple(array.shape)} does not fit the run's examples {tuple(example.shape)}")
    return array


def _fill_masks(model, text: str, seq_len: int) -> str:
    parts = text.split(MASK_TEXT)
    ids: list[int] = []
    masked: list[int] = []
    for i, part in enumerate(parts):
        ids.extend(b + NUM_SPECIAL_TOKENS for b in part.encode("utf-8"))
        if i < len(parts) - 1:
            masked.append(len(ids))
            ids.append(MASK)
    if len(ids) > seq_len:
        raise ValueError(f"text is {len(ids)} bytes long; the model takes at most {seq_len}")
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    for pos in masked:
        ids[pos] = int(logits[pos, NUM_SPECIAL_TOKENS:].argmax()) + NUM_SPECIAL_TOKENS
    return bytes(i - NUM_SPECIAL_TOKENS for i in ids).decode("utf-8", errors="replace")


def predict_run(run_dir: str | Path, inputs: list[str], top_k: int = 3, output: str | None = None) -> list[dict[str, Any]]:
    """One result dict per input."""
    run_dir = Path(run_dir)
    experiment = load_run_experiment(run_dir)
    checkpoint = ckpt.best_checkpoint(run_dir) or ckpt.latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint; train first")
    model = ckpt.load_model(checkpoint).eval()
    splits = experiment.data.load()
    info = splits.info
    results = []
    if info.objective == "mlm":
        seq_len = model.config.input_adapter.max_seq_len
        for item in inputs:
            text = Path(item).read_text() if Path(item).is_file() else item
            results.append({"input": item, "text": _fill_masks(model, text, seq_len)})
        return results
    if info.objective == "multimodal":
        raise ValueError("perceptio predict does not read multimodal inputs from files; use the Python API")
    example = splits.train.fields["inputs"][0]
    objective = build_objective(info, **experiment.objective.settings())
    for item in inputs:
        x = read_example(item, experiment, example)[None]
        with torch.no_grad():
            out = objective.predict(model, x)
        if info.objective == "classification":
            probs = out.float().softmax(-1)[0]
            top = probs.topk(min(top_k, probs.numel()))
            classes = info.classes or [str(i) for i in range(probs.numel())]
            results.append({"input": item, "label": classes[int(top.indices[0])],
                            "top": {classes[int(i)]: round(float(p), 4) for p, i in zip(top.values, top.indices)}})
        else:
            target_shape = splits.train.fields["targets"].shape[1:]
            array = out[0].reshape(target_shape).numpy()
            dest = Path(output or ".") / f"{Path(item).stem}.pred.npy"
            dest.parent.mkdir(parents=True, exist_ok=True)
            np.save(dest, array)
            results.append({"input": item, "output": str(dest), "shape": list(array.shape)})
    return results
