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
only after the new one is complete. A failed write (a full disk: ``OSError(ENOSPC)``)
removes the temporary folder and says which checkpoint is kept. ``trainer_state.pt``
holds plain tensors and numbers only and is read with ``torch.load(weights_only=True)``
(:func:`~perceptio.pretrained.read_torch_file`). ``--resume`` takes the newest intact
checkpoint (:func:`load_latest`): a damaged newer one is renamed ``damaged_step_N`` and
named in a warning.
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model import PerceiverConfig
from ..pretrained import (WEIGHTS_NAME, DamagedFileError, atomic_write_bytes, atomic_write_json, load_weights,
                          read_torch_file, save_model_dir)
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


def _write_tmp(root: Path, final: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` into a fresh temporary folder for ``final`` -> the complete folder. On
    failure the temporary folder is removed and the error names the checkpoint, the disk
    (for ENOSPC) and the checkpoint that is kept."""
    tmp = _fresh_tmp(root, final.name)
    try:
        write(tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest_checkpoint(root.parent) if final.name != "best" else best_checkpoint(root.parent)
        cause = "no space left on device" if e.errno == errno.ENOSPC else str(e)
        message = (f"writing checkpoint {final} failed: {cause}; the partial checkpoint was removed, "
                   f"{f'the previous one ({kept}) is kept' if kept else 'no earlier checkpoint exists'}")
        if e.errno == errno.ENOSPC:
            message += "; free disk space and continue with --resume"
        raise (OSError(e.errno, message) if e.errno is not None else OSError(message)) from None
    return tmp


def save_checkpoint(run_dir: Path, step: int, model_state: dict[str, torch.Tensor], config: PerceiverConfig,
                    trainer_state: dict[str, Any], keep_last: int) -> Path:
    """Write ``checkpoints/step_{step}`` atomically, then prune older step checkpoints."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"

    def write(tmp: Path) -> None:
        save_model_dir(tmp, model_state, config)
        buffer = io.BytesIO()  # serialised in memory, written by Python: a full disk is an OSError(ENOSPC)
        torch.save(trainer_state, buffer)
        atomic_write_bytes(tmp / STATE_NAME, buffer.getvalue())

    tmp = _write_tmp(root, final, write)
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
    best, old = root / "best", root / ".old-best"

    def write(tmp: Path) -> None:
        save_model_dir(tmp, model_state, config)
        atomic_write_json(tmp / "metrics.json", metrics)

    tmp = _write_tmp(root, best, write)
    if old.exists():
        shutil.rmtree(old)
    if best.exists():
        os.replace(best, old)
    os.replace(tmp, best)
    shutil.rmtree(old, ignore_errors=True)
    return best


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """``trainer_state.pt`` of a checkpoint (tensors and numbers only); DamagedFileError when
    it is damaged, refused, or not a trainer state."""
    path = checkpoint / STATE_NAME
    state = read_torch_file(path)
    missing = [k for k in ("step", "optimizer", "rng") if not isinstance(state, dict) or k not in state]
    if missing:
        raise DamagedFileError(f"{path}: not a trainer state (missing {missing})")
    return state


def load_latest(run_dir: Path, model: nn.Module) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest intact step checkpoint into ``model`` -> (its folder, its trainer
    state), or None without any. A damaged newer checkpoint (truncated weights, a damaged
    or refused trainer state) is renamed ``damaged_step_N`` and named in a warning."""
    found = step_checkpoints(run_dir)
    for _, path in reversed(found):
        try:
            state = load_trainer_state(path)
            load_weights(model, path)
        except (DamagedFileError, FileNotFoundError) as e:
            aside = path.with_name(f"damaged_{path.name}")
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(path, aside)
            warnings.warn(f"--resume: skipped damaged checkpoint {path} (moved to {aside.name}): {e}", stacklevel=2)
            continue
        return path, state
    if found:
        raise DamagedFileError(f"--resume: every checkpoint in {checkpoint_root(run_dir)} is damaged (moved to "
                               "damaged_step_*); start over with --overwrite")
    return None
