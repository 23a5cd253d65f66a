"""The perceptio model directory, and writing files atomically.

    MODEL_DIR/config.json          the PerceiverConfig as JSON
    MODEL_DIR/model.safetensors    the state dict (safetensors: loading runs no code)
    MODEL_DIR/labels.txt           optional: class names, one per line

Every writer of a model directory (``Perceiver.save_pretrained``, training checkpoints,
``perceptio convert``) and every reader goes through this module. Each file is written
to a temporary name next to its destination and renamed into place, so a crash while
writing leaves the previous file (or none), never a truncated one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import Config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LABELS_NAME = "labels.txt"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then rename ``tmp_path`` to ``path`` (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def save_model_dir(
    directory: str | os.PathLike, state: dict[str, Tensor], config: Config, labels: list[str] | None = None
) -> None:
    """Write ``model.safetensors``, ``config.json`` and (if given) ``labels.txt`` to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_text(directory / CONFIG_NAME, config.to_json())
    if labels:
        atomic_write_text(directory / LABELS_NAME, "\n".join(labels) + "\n")


# config.json's "architecture" -> the model class (Perceiver when absent); each model module registers itself.
ARCHITECTURES: dict[str, type[nn.Module]] = {}
DEFAULT_ARCHITECTURE = "perceiver"


def register_architecture(name: str, cls: type[nn.Module]) -> None:
    assert name not in ARCHITECTURES, f"architecture {name!r} is registered twice"
    ARCHITECTURES[name] = cls


def architecture_of(config: dict[str, Any]) -> str:
    """The ``architecture`` a ``config.json`` mapping names (``perceiver`` when it names none)."""
    return config.get("architecture", DEFAULT_ARCHITECTURE) if isinstance(config, dict) else DEFAULT_ARCHITECTURE


def is_model_dir(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a perceptio model (both files, a perceptio config)."""
    directory = Path(directory)
    if not ((directory / CONFIG_NAME).is_file() and (directory / WEIGHTS_NAME).is_file()):
        return False
    try:
        config = json.loads((directory / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and ("input_adapter" in config or config.get("architecture") in ARCHITECTURES)


def build_model(config: Config) -> nn.Module:
    """A fresh model of the architecture ``config`` describes."""
    return ARCHITECTURES[architecture_of(config.to_dict())](config)


def load_pretrained(directory: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """The model saved in ``directory``, of the class its ``config.json`` names."""
    name = architecture_of(read_config_dict(directory))
    if name not in ARCHITECTURES:
        raise ValueError(f"{Path(directory) / CONFIG_NAME}: unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name].from_pretrained(directory, map_location=map_location)


def read_config_dict(directory: str | os.PathLike) -> dict[str, Any]:
    """The raw ``config.json`` of a model directory; raises naming what is missing."""
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: not a perceptio model directory")
    try:
        return json.loads((directory / CONFIG_NAME).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{directory / CONFIG_NAME}: not valid JSON ({e})") from None


def load_weights(model: nn.Module, directory: str | os.PathLike, map_location: str = "cpu") -> None:
    """Load ``directory/model.safetensors`` into ``model`` strictly (see :func:`load_state_dict_strict`)."""
    load_state_dict_strict(model, load_file(str(Path(directory) / WEIGHTS_NAME), device=str(map_location)))


def load_state_dict_strict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load ``state`` into ``model``; on mismatch name every missing, unexpected and
    wrongly shaped parameter."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(state[k].shape)}"
        for k in set(expected) & set(state)
        if expected[k].shape != state[k].shape
    )
    if missing or unexpected or wrong:
        parts = [f"{label}: {items}" for label, items in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
        raise ValueError("state dict does not fit the model; " + "; ".join(parts))
    model.load_state_dict(state)


def read_labels(directory: str | os.PathLike) -> list[str] | None:
    """Class names of ``directory/labels.txt``, or None without one."""
    path = Path(directory) / LABELS_NAME
    return path.read_text().splitlines() if path.is_file() else None
