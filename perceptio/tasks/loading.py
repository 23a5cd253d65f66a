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

from ..model import Perceiver
from ..perceiver_ar import PerceiverAR
from ..pretrained import CONFIG_NAME, WEIGHTS_NAME, is_model_dir, load_pretrained
from ..train.checkpoint import is_run_dir, run_checkpoint
from ..train.experiment import EXPERIMENT_FILE

EXPECTED = (f"a model directory ({CONFIG_NAME} + {WEIGHTS_NAME}, see `perceptio convert`) or a training run "
            f"directory ({EXPERIMENT_FILE} + checkpoints/, see `perceptio train`)")


def load_run_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> Perceiver | PerceiverAR:
    """The model of a training run directory (:func:`run_checkpoint`), on ``device``, in eval mode."""
    return ready(load_pretrained(run_checkpoint(run_dir), map_location=str(device)), device)


def ready(model: Perceiver | PerceiverAR, device: str | torch.device) -> Perceiver | PerceiverAR:
    """``model`` on ``device``, in eval mode, refusing non-finite inputs (``check_finite``)."""
    model.check_finite = True
    return model.to(torch.device(device)).eval()


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> Perceiver | PerceiverAR:
    """The model (of the class its config.json names) of a model directory or training run
    directory, on ``device``, in eval mode."""
    if is_run_dir(path):
        return load_run_model(path, device)
    if is_model_dir(path):
        return ready(load_pretrained(path, map_location=str(device)), device)
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} does not exist; expected {EXPECTED}")
    raise ValueError(f"{path} is neither a model directory nor a training run directory; expected {EXPECTED}")
