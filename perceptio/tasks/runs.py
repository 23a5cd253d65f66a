"""Predictions of a training run (``perceptio predict run RUN_DIR INPUTS...``): its model
does what its data set trained it for, on inputs read the way that data set reads them.

* classification runs: images (``.png``, ``.jpg`` ...; :func:`~perceptio.data.files.read_image`,
  the reader of the ``image_folder`` data, resized to the training size), ``.npy`` arrays,
  ``.wav`` clips, ``.csv`` point clouds -> the top classes (:func:`.classification.top_predictions`);
* masked-byte runs: text (a file or a literal string) with ``[MASK]`` / ``[MASK:N]``
  markers -> the filled text (:func:`.fill_mask.fill_mask`, as for the published model);
* text runs (``text_folder``, ``text_table``, ``python_docs``, ``text_spans``): a literal
  string or a UTF-8 file, cut to the run's ``max_length`` bytes -> the top classes, or for
  per-byte labels the labelled spans in character offsets (:func:`labelled_spans`);
* dense runs (optical flow): ``.npy`` frame pairs ``[2, H, W, C]`` -> the predicted flow,
  saved as ``.npy``.

Multimodal runs take dicts of modalities, which no file holds: use the Python API.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data import files as data_files
from ..data.base import DataInfo, ExampleDataset
from ..data.builtin import DigitsConfig
from ..data.files import WavFolderConfig
from ..data.text import encode_texts
from ..model import Perceiver
from ..train.experiment import ExperimentConfig, load_run_experiment
from ..train.objectives import Objective, build_objective
from .classification import check_top_k, top_predictions
from .fill_mask import fill_mask
from .loading import load_run_model

INPUT_SUFFIXES = (*data_files.IMAGE_EXTENSIONS, ".npy", ".wav", ".csv")


@dataclass
class TrainedRun:
    """A run's model with what its data set says about inputs and outputs."""

    model: Perceiver
    experiment: ExperimentConfig
    info: DataInfo  # the objective and class names
    objective: Objective  # the trainer's objective: its ``predict`` decodes dense outputs as in training
    input_shape: tuple[int, ...]  # one training input; every input file must read to this shape
    target_shape: tuple[int, ...]  # one training target (dense outputs are reshaped to it)
    sample_rate: int | None = None  # wav_folder runs: the rate of the training clips (a .wav must have it)


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedRun:
    """The best model of ``run_dir`` (else its latest) and its data set's description."""
    model = load_run_model(run_dir, device)
    experiment = load_run_experiment(run_dir)
    splits = experiment.data.load()  # the data set's shapes and class names
    # one example, no batch axis (files are read on access); a streamed train split has no index: test's
    example = (splits.train if isinstance(splits.train, ExampleDataset) else splits.test).example(0)
    inputs, targets = example.get("inputs"), example.get("targets")
    return TrainedRun(
        model=model,
        experiment=experiment,
        info=splits.info,
        objective=build_objective(splits.info, **experiment.objective.settings()),
        # mlm data have token ids and multimodal data dicts of modalities: no one input shape
        input_shape=tuple(inputs.shape) if isinstance(inputs, Tensor) else (),
        target_shape=tuple(targets.shape) if isinstance(targets, Tensor) else (),
        sample_rate=experiment.data.rate() if isinstance(experiment.data, WavFolderConfig) else None,
    )


def read_run_input(path: str | os.PathLike, run: TrainedRun) -> Tensor:
    """One input file -> a tensor of the run's input shape, read as its data set reads files."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    shape = run.input_shape
    suffix = p.suffix.lower()
    if suffix in data_files.IMAGE_EXTENSIONS:
        if len(shape) != 3 or shape[2] not in (1, 3):
            raise ValueError(f"{path}: this run takes inputs of shape {shape}, not images")
        array = data_files.read_image(p, shape[:2], shape[2]).astype(np.float32) / 255.0
        if isinstance(run.experiment.data, DigitsConfig):  # digits: bright ink on black, like the training data
            array = array if array.mean() < 0.5 else 1.0 - array
        return torch.from_numpy(array)
    if suffix == ".npy":
        array = torch.from_numpy(data_files.load_npy(p).astype(np.float32))
    elif suffix == ".wav":  # cropped or zero-padded, as wav_folder does
        samples, rate = data_files.read_wav(p)
        if run.sample_rate is not None and rate != run.sample_rate:
            raise ValueError(f"{path}: sample rate {rate} Hz, but the run was trained on {run.sample_rate} Hz clips; "
                             f"resample the file to {run.sample_rate} Hz")
        array = torch.zeros(shape[0])
        n = min(len(samples), shape[0])
        array[:n] = torch.from_numpy(samples[:n])
    elif suffix == ".csv":  # resampled to the run's number of points, as csv_points does
        pts = data_files.read_csv_points(p)
        idx = np.random.default_rng(0).choice(len(pts), shape[0], replace=len(pts) < shape[0])
        array = torch.from_numpy(pts[idx])
    else:
        raise ValueError(f"{path}: unsupported input type {suffix!r}; expected one of {', '.join(INPUT_SUFFIXES)}")
    if tuple(array.shape) != shape:
        raise ValueError(f"{path}: shape {tuple(array.shape)} does not fit the run's examples {shape}")
    return array


def labelled_spans(text: str, byte_labels: list[int], classes: list[str]) -> list[list]:
    """``[start, end, label]`` character spans of runs of one label other than ``O`` (class 0);
    a character takes the label of its first byte (``byte_labels`` covers a prefix of the bytes)."""
    spans: list[list] = []
    offset = 0
    for i, ch in enumerate(text):
        label = byte_labels[offset] if offset < len(byte_labels) else 0
        offset += len(ch.encode("utf-8"))
        if label and spans and spans[-1][1] == i and spans[-1][2] == classes[label]:
            spans[-1][1] = i + 1
        elif label:
            spans.append([i, i + 1, classes[label]])
    return spans


def class_result(item: str, logits: Tensor, top_k: int, classes: list[str]) -> dict[str, Any]:
    """``{"input", "label", "top": {class: probability}}`` of one input's ``logits [1, K]``."""
    top = top_predictions(logits, top_k, classes)[0]
    return {"input": item, "label": top[0].label, "top": {p.label: round(p.score, 4) for p in top}}


def predict_text(run: TrainedRun, inputs: list[str], top_k: int) -> list[dict[str, Any]]:
    """Text runs: each input is a UTF-8 file or else the text itself."""
    device = next(run.model.parameters()).device
    classes = run.info.classes or []
    results = []
    for item in inputs:
        text = data_files.read_utf8(item) if Path(item).is_file() else item
        ids, mask = encode_texts([text], run.info.extras["max_length"])
        logits = run.model(ids.to(device), input_mask=mask.to(device)).logits
        if run.info.objective == "token_classification":
            labels = logits[0, : int(mask.sum())].argmax(-1).tolist()
            results.append({"input": item, "spans": labelled_spans(text, labels, classes)})
        elif run.info.objective == "multitask":  # every task's answer: query t, its first len(classes_t) logits
            answers = {}
            for t, (name, names) in enumerate(run.info.extras["tasks"].items()):
                out = run.model(ids.to(device), input_mask=mask.to(device), points=torch.tensor([t], device=device))
                answers[name] = class_result(item, out.logits[:, : len(names)], top_k, names)
            results.append({"input": item, "tasks": {n: {k: v for k, v in a.items() if k != "input"}
                                                     for n, a in answers.items()}})
        else:
            results.append(class_result(item, logits, top_k, classes))
    return results


@torch.no_grad()
def predict_run(run: TrainedRun, inputs: list[str], top_k: int = 3, output: str | os.PathLike | None = None
                ) -> list[dict[str, Any]]:
    """One JSON-ready result per input: ``{"input", "label", "top"}`` (classification),
    ``{"input", "text", "fills"}`` (masked bytes) or ``{"input", "output", "shape"}`` (dense;
    the prediction is saved as ``output/STEM.pred.npy``)."""
    objective = run.info.objective
    if objective == "multimodal":
        raise ValueError("perceptio predict does not read multimodal inputs from files; use the Python API "
                         "(perceptio.tasks.autoencode or the model itself)")
    if objective == "mlm":
        results = []
        for item in inputs:
            text = Path(item).read_text() if Path(item).is_file() else item
            filled = fill_mask(run.model, text)
            results.append({"input": item, "text": filled.text, "fills": filled.fills})
        return results
    check_top_k(top_k)
    if run.info.extras.get("text"):
        return predict_text(run, inputs, top_k)
    if output is not None and Path(output).exists() and not Path(output).is_dir():
        raise ValueError(f"--output {output} is a file; expected a folder for the predicted arrays")
    device = next(run.model.parameters()).device
    results = []
    for item in inputs:
        x = read_run_input(item, run)[None].to(device)
        out = run.objective.predict(run.model, x)
        if objective == "classification":
            results.append(class_result(item, out, top_k, run.info.classes or [str(i) for i in range(out.shape[-1])]))
        else:
            array = out[0].reshape(run.target_shape).cpu().numpy()
            dest = Path(output or ".") / f"{Path(item).stem}.pred.npy"
            dest.parent.mkdir(parents=True, exist_ok=True)
            np.save(dest, array)
            results.append({"input": item, "output": str(dest), "shape": list(array.shape)})
    return results
