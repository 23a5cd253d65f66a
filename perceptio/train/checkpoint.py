"""Run directories and atomic checkpoints.

    RUN_DIR/experiment.yaml          the resolved experiment config (EXPERIMENT_FILE)
    RUN_DIR/metrics.csv              one row per logged step / evaluation
    RUN_DIR/checkpoints/step_000200/ model.safetensors + config.json + trainer_state.pt
    RUN_DIR/checkpoints/best/        the best model on the validation metric (+ metrics.json)
    RUN_DIR/metrics.json             final validation and test metrics
    RUN_DIR/plots/*.png              learning curves and cross-attention maps

A checkpoint is written to a hidden temporary folder and renamed into place, so a
crash (or Ctrl-C) while saving never leaves a half-written checkpoint and never
removes a finished one: older step checkpoints are pruned (keep the last ``keep_last``)
only after the new one is complete. ``trainer_state.pt`` holds plain tensors and
numbers only and is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..model import PerceiverConfig
from ..pretrained import WEIGHTS_NAME, save_model_dir
from .experiment import EXPERIMENT_FILE

STATE_NAME = "trainer_state.pt"
_STEP = re.compile(r"^step_(\d+)$")


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run directory (``experiment.yaml`` + ``checkpoints/``)."""
    return (Path(path) / EXPERIMENT_FILE).is_file() and checkpoint_root(Path(path)).is_dir()


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Finished step checkpoints, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name)) and (p / STATE_NAME).is_file()]
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = step_checkpoints(run_dir)
    return found[-1][1] if found else None


def run_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint a run predicts with: its best one, else its latest."""
    if not is_run_dir(run_dir):
        raise ValueError(f"{run_dir} is not a training run directory (expected {EXPERIMENT_FILE} and checkpoints/)")
    checkpoint = best_checkpoint(Path(run_dir)) or latest_checkpoint(Path(run_dir))
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint yet; train first")
    return checkpoint


def best_checkpoint(run_dir: Path) -> Path | None:
    root = checkpoint_root(run_dir)
    for name in ("best", ".old-best"):  # .old-best: a crash between the two renames below
        if (root / name / WEIGHTS_NAME).is_file():
            return root / name
    return None


def _fresh_tmp(root: Path, name: str) -> Path:
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(run_dir: Path, step: int, model_state: dict[str, torch.Tensor], config: PerceiverConfig,
                    trainer_state: dict[str, Any], keep_last: int) -> Path:
    """Write ``checkpoints/step_{step}`` atomically, then prune older step checkpoints."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = _fresh_tmp(root, final.name)
    save_model_dir(tmp, model_state, config)
    torch.save(trainer_state, tmp / STATE_NAME)
    if final.exists():  # re-saving the same step (e.g. Ctrl-C right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in step_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_best(run_dir: Path, model_state: dict[str, torch.Tensor], config: PerceiverConfig,
              metrics: dict[str, Any]) -> Path:
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_tmp(root, "best")
    save_model_dir(tmp, model_state, config)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    best, old = root / "best", root / ".old-best"
    if old.exists():
        shutil.rmtree(old)
    if best.exists():
        os.replace(best, old)
    os.replace(tmp, best)
    shutil.rmtree(old, ignore_errors=True)
    return best


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE_NAME, map_location="cpu", weights_only=True)
