"""The perceptio model directory, and writing files atomically.

    MODEL_DIR/config.json          the PerceiverConfig as JSON
    MODEL_DIR/model.safetensors    the state dict (safetensors: loading runs no code)
    MODEL_DIR/labels.txt           optional: class names, one per line

Every writer of a model directory (``Perceiver.save_pretrained``, training checkpoints,
``perceptio convert``) and every reader goes through this module. Each file is written
to a temporary name next to its destination and renamed into place, so a crash while
writing leaves the previous file (or none), never a truncated one; a full disk is an
``OSError(ENOSPC)`` naming the file (the bytes are written by Python, not by a library
that would hide the errno).

Every file perceptio reads that may be damaged or hostile goes through a reader here:
:func:`read_json`, :func:`read_safetensors` (header checked against the file size before
any tensor is read), :func:`read_torch_file` (``torch.load(weights_only=True)``). Each
raises :class:`DamagedFileError` (a ``ValueError``) naming the file and what is wrong with
it in one line, never a library's traceback or its advice to disable ``weights_only``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors_bytes
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def save_model_dir(
    directory: str | os.PathLike, state: dict[str, Tensor], config: Config, labels: list[str] | None = None
) -> None:
    """Write ``model.safetensors``, ``config.json`` and (if given) ``labels.txt`` to ``directory``."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is a file; expected a folder to write the model to")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_bytes(directory / WEIGHTS_NAME, save_safetensors_bytes(tensors, metadata={"format": "pt"}))
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
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
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


# ---------------------------------------------------------------------------------------
# Reading files that may be damaged or hostile
# ---------------------------------------------------------------------------------------
class DamagedFileError(ValueError):
    """A file perceptio reads is empty, truncated, of another format, or holds objects it
    refuses to load; the message names the file and the damage."""


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from ``path`` (``config.json``); DamagedFileError when it is empty,
    not UTF-8 JSON, or not an object."""
    path = Path(path)
    text = path.read_bytes()
    if not text.strip():
        raise DamagedFileError(f"{path}: empty file; expected a JSON object")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedFileError(f"{path}: not valid JSON ({e}); expected a JSON object") from None
    if not isinstance(data, dict):
        raise DamagedFileError(f"{path}: expected a JSON object, got a JSON {type(data).__name__}")
    return data


# safetensors header dtype names -> torch dtypes (the ones torch can hold)
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100_000_000  # the limit of the safetensors library itself
TensorSpec = tuple[tuple[int, ...], torch.dtype]  # (shape, dtype)


def _other_format(head: bytes) -> str | None:
    if head[:1] == b"\x80":
        return "a pickle (what torch.save or pickle write), not safetensors; refused: pickles can run code"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (what torch.save writes), not safetensors; refused: it holds a pickle"
    return None


def safetensors_header(path: str | os.PathLike) -> dict[str, TensorSpec]:
    """``{name: (shape, dtype)}`` of a safetensors file, read from its header alone (no tensor
    is read); DamagedFileError when the file is empty, truncated, of another format (a
    pickle or a torch.save zip in its place), or its header is not a valid safetensors header."""
    path = Path(path)
    try:
        return _read_header(path)
    except DamagedFileError:
        with open(path, "rb") as f:
            other = _other_format(f.read(4))
        if other:
            raise DamagedFileError(f"{path}: holds {other}") from None
        raise


def _read_header(path: Path) -> dict[str, TensorSpec]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if size == 0:
            raise DamagedFileError(f"{path}: empty file; expected safetensors weights")
        if size < 8:
            raise DamagedFileError(f"{path}: truncated ({size} bytes); a safetensors file starts with an 8-byte "
                                   "header length")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise DamagedFileError(f"{path}: not a safetensors file or truncated (its header claims {length:,} bytes, "
                                   f"the file has {size:,})")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DamagedFileError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise DamagedFileError(f"{path}: not a safetensors file (its header is not a JSON object)")
    data_size, specs = size - 8 - length, {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"]), entry["data_offsets"]
            numel = 1
            for n in shape:
                numel *= int(n)
            ok = all(isinstance(n, int) and n >= 0 for n in shape) and 0 <= begin <= end
            ok = ok and end - begin == numel * dtype.itemsize
        except (KeyError, TypeError, ValueError):
            raise DamagedFileError(f"{path}: damaged safetensors header (entry {name!r}: {entry!r:.200})") from None
        if not ok:
            raise DamagedFileError(f"{path}: damaged safetensors header (entry {name!r}: {entry!r:.200})")
        if end > data_size:
            raise DamagedFileError(f"{path}: truncated ({size:,} bytes; tensor {name!r} ends at byte "
                                   f"{8 + length + end:,})")
        specs[name] = (shape, dtype)
    return specs


def read_safetensors(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The tensors of a safetensors file, checked first by :func:`safetensors_header`."""
    safetensors_header(path)
    try:
        return load_file(str(path), device=str(map_location))
    except SafetensorError as e:
        raise DamagedFileError(f"{path}: damaged safetensors file ({e})") from None


def read_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers only.
    A file holding other objects is refused (DamagedFileError, one line: which file, that
    it holds objects other than tensors, that it was refused), as is a damaged one."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise DamagedFileError(f"{path}: empty file; expected a torch.save file of tensors")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the weights-only loader's notes on pickle protocols
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        culprit = re.search(r"GLOBAL (\S+)", str(e))
        if culprit:
            raise DamagedFileError(f"{path}: holds objects other than tensors ({culprit.group(1)}); refused to load "
                                   "it (only tensors, numbers, strings and containers are loaded)") from None
        raise DamagedFileError(f"{path}: damaged, or not a torch.save file of tensors; refused to load it") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # noqa: BLE001 - torch's reader fails on damage in many ways (EINVAL, IndexError, ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise DamagedFileError(f"{path}: damaged or truncated torch.save file ({first})") from None


def read_config_dict(directory: str | os.PathLike) -> dict[str, Any]:
    """The raw ``config.json`` of a model directory; raises naming what is missing."""
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: not a perceptio model directory")
    return read_json(directory / CONFIG_NAME)


def check_weights_file(model: nn.Module, directory: str | os.PathLike) -> None:
    """Compare ``model`` (it may live on the meta device) with the header of
    ``directory/model.safetensors``: names, shapes and kinds of dtype (:func:`check_state_fits`)."""
    path = Path(directory) / WEIGHTS_NAME
    check_state_fits(specs_of(model.state_dict()), safetensors_header(path), str(path))


def load_weights(model: nn.Module, directory: str | os.PathLike, map_location: str = "cpu") -> None:
    """Load ``directory/model.safetensors`` into ``model`` strictly (see :func:`load_state_dict_strict`)."""
    check_weights_file(model, directory)
    load_state_dict_strict(model, read_safetensors(Path(directory) / WEIGHTS_NAME, map_location))


def specs_of(state: dict[str, Tensor]) -> dict[str, TensorSpec]:
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def check_state_fits(expected: dict[str, TensorSpec], given: dict[str, TensorSpec], source: str = "state dict") -> None:
    """Raise ValueError naming every missing, unexpected, wrongly shaped and wrongly typed
    (integer or bool data for a floating parameter, or the reverse) entry of ``given``."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    common = set(expected) & set(given)
    wrong = sorted(f"{k}: expected {expected[k][0]}, got {given[k][0]}" for k in common if expected[k][0] != given[k][0])
    dtypes = sorted(f"{k}: expected {expected[k][1]}, got {given[k][1]}" for k in common
                    if expected[k][1].is_floating_point != given[k][1].is_floating_point
                    or expected[k][1].is_complex != given[k][1].is_complex)
    if missing or unexpected or wrong or dtypes:
        parts = [f"{label}: {items}" for label, items in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong), ("wrong dtype", dtypes))
                 if items]
        raise ValueError(f"{source} does not fit the model; " + "; ".join(parts))


def load_state_dict_strict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load ``state`` into ``model``; on mismatch name every missing, unexpected,
    wrongly shaped and wrongly typed parameter (:func:`check_state_fits`)."""
    check_state_fits(specs_of(model.state_dict()), specs_of(state))
    model.load_state_dict(state)


def read_labels(directory: str | os.PathLike) -> list[str] | None:
    """Class names of ``directory/labels.txt``, or None without one."""
    path = Path(directory) / LABELS_NAME
    return path.read_text().splitlines() if path.is_file() else None


def check_device(name: str | torch.device) -> torch.device:
    """``torch.device(name)``, or a ValueError saying that the name is not a device or that
    this machine lacks it (``cuda`` without CUDA), before anything is moved there."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {str(name)!r} is not a torch device; expected cpu, cuda, cuda:N or mps") from None
    backend = {"cuda": torch.cuda, "mps": getattr(torch.backends, "mps", None)}.get(device.type)
    if backend is not None and not backend.is_available():
        raise ValueError(f"device {str(name)!r} but {device.type.upper()} is not available on this machine; use 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(name)!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
