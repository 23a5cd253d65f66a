"""The models the tasks run, from the two kinds of directory a path can name:

* a model directory (``config.json`` + ``model.safetensors``: ``save_pretrained``,
  ``perceptio convert``);
* a training run directory (``experiment.yaml`` + ``checkpoints/``: ``perceptio train``),
  whose best checkpoint (else its latest) is the model.

A directory is recognised by what it holds, so every task takes either kind.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..model import CONFIG_NAME, WEIGHTS_NAME, Perceiver
from ..train import checkpoint as ckpt
from ..train.experiment import EXPERIMENT_FILE

EXPECTED = (f"a model directory ({CONFIG_NAME} + {WEIGHTS_NAME}, see `perceptio convert`) or a training run "
            f"directory ({EXPERIMENT_FILE} + checkpoints/, see `perceptio train`)")


def is_model_dir(path: str | os.PathLike) -> bool:
    return all((Path(path) / name).is_file() for name in (CONFIG_NAME, WEIGHTS_NAME))


def is_run_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / EXPERIMENT_FILE).is_file() and ckpt.checkpoint_root(Path(path)).is_dir()


def run_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint a run predicts with: its best one, else its latest."""
    if not is_run_dir(run_dir):
        raise ValueError(f"{run_dir} is not a training run directory (expected {EXPERIMENT_FILE} and checkpoints/)")
    checkpoint = ckpt.best_checkpoint(Path(run_dir)) or ckpt.latest_checkpoint(Path(run_dir))
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint yet; train first")
    return checkpoint


def load_run_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> Perceiver:
    """The model of a training run directory (:func:`run_checkpoint`), on ``device``, in eval mode."""
    return ckpt.load_model(run_checkpoint(run_dir), map_location=str(device)).to(torch.device(device)).eval()


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> Perceiver:
    """The model of a model directory or training run directory, on ``device``, in eval mode."""
    if is_run_dir(path):
        return load_run_model(path, device)
    if is_model_dir(path):
        return Perceiver.from_pretrained(path, map_location=str(device)).to(torch.device(device)).eval()
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} does not exist; expected {EXPECTED}")
    raise ValueError(f"{path} is neither a model directory nor a training run directory; expected {EXPECTED}")
