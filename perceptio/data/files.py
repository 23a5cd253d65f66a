"""Your own data from files.

Classification data sets are folder trees, one sub-folder per class (sorted names are
the classes), like torchvision's ``ImageFolder``::

    path/cat/001.png  path/cat/002.png  path/dog/001.png ...

* ``image_folder``: PNG/JPEG/... images (Pillow), resized to ``image_size`` (bicubic,
  :func:`read_image`) and scaled to [0, 1]; unreadable
  files are skipped with a warning naming them;
* ``npy_folder``: one ``.npy`` array per example, all of one shape (or ``npy`` below);
* ``npy``: one ``inputs.npy`` ``[N, ...]`` and ``labels.npy`` ``[N]`` of class ids;
* ``wav_folder``: WAV files (stdlib ``wave``; 8/16/32-bit PCM, mixed to mono), cropped or
  zero-padded to ``num_samples``;
* ``csv_points``: point clouds, one CSV per example, rows ``x,y,z[,features...]``
  (an optional header line), resampled to ``num_points``;
* ``text_files``: UTF-8 text files for masked-byte language modelling.

Every problem names the file (and the config key) it comes from. Numbers must be finite
(also after the cast to float32: ``1e300`` overflows): an example holding NaN or Inf is an
error naming the file and row, or, with ``data.on_nonfinite: skip``, is left out with a
warning naming them.
"""

from __future__ import annotations

import glob
import os
import warnings
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
from torch import Tensor

from ..config import ConfigError, check_positive
from .base import ArrayDataset, DataConfig, DataInfo, Splits, random_splits
from .builtin import TextMLMConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _existing(path: str, key: str = "data.path") -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{key}: {p} does not exist")
    return p


def class_files(root: str, extensions: tuple[str, ...], key: str = "data.path") -> tuple[list[str], list[tuple[Path, int]]]:
    """Classes (sorted sub-folder names) and ``(file, class index)`` of a folder tree."""
    base = _existing(root, key)
    if not base.is_dir():
        raise ValueError(f"{key}: {base} is not a folder; expected one sub-folder per class")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{key}: {base} has no class sub-folders (expected {base}/CLASS_NAME/FILE)")
    files = [
        (f, i)
        for i, c in enumerate(classes)
        for f in sorted((base / c).rglob("*"))
        if f.is_file() and f.suffix.lower() in extensions
    ]
    if not files:
        raise ValueError(f"{key}: no {'/'.join(extensions)} files under {base}/<class>/")
    return classes, files


@dataclass(kw_only=True)
class FolderConfig(DataConfig):
    path: str = ""

    def validate(self) -> None:
        super().validate()
        if not self.path:
            raise ConfigError(f"data.path is required for data kind {self.kind!r}")

    def describe(self) -> str:
        return f"data.path={self.path}"

    def _classification(self, inputs: Tensor, labels: list[int], classes: list[str]) -> Splits:
        dataset = ArrayDataset({"inputs": inputs, "targets": torch.tensor(labels, dtype=torch.long)})
        return random_splits(dataset, DataInfo("classification", classes), self.val_fraction, self.test_fraction,
                             self.split_seed)


def first_nonfinite(a: np.ndarray) -> str | None:
    """``"index (3, 1) is nan"`` for the first NaN/Inf of ``a``, None if all are finite."""
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"index {index[0] if len(index) == 1 else index} is {a[index]}"


def keep_finite(data: DataConfig, where: str, problem: str | None) -> bool:
    """Whether to keep an example: True if ``problem`` is None (its numbers are finite);
    else raise a ValueError naming ``where`` (``data.on_nonfinite: error``) or warn and
    return False (``skip``)."""
    if problem is None:
        return True
    message = f"{where}: {problem}, expected finite numbers"
    if data.on_nonfinite == "error":
        raise ValueError(f"{message}; fix the file, or set data.on_nonfinite: skip to leave such examples out")
    warnings.warn(f"skipping {message} (data.on_nonfinite: skip)", stacklevel=3)
    return False


def _stack_same_shape(arrays: list[tuple[Path, np.ndarray]], what: str) -> Tensor:
    first_path, first = arrays[0]
    for path, a in arrays[1:]:
        if a.shape != first.shape:
            raise ValueError(f"inconsistent {what} shapes: {path} has shape {a.shape}, but {first_path} has "
                             f"{first.shape}; every example must have the same shape")
    return torch.from_numpy(np.stack([a for _, a in arrays]).astype(np.float32))


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------
def pillow():
    """Pillow's ``Image`` module (Pillow is in the ``image`` and ``train`` extras)."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading and writing image files needs Pillow: pip install 'perceptio[image]'") from None
    return Image


def resize_image(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of ``[H, W, C]`` uint8 pixels (C = 1 or 3) -> ``[height, width, C]`` uint8."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"expected pixels [H, W, 1 or 3] uint8, got {pixels.dtype} {pixels.shape}")
    Image = pillow()
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    resized = np.asarray(image.resize((width, height), Image.BICUBIC))
    return resized.reshape(height, width, pixels.shape[2])


def read_image(path: str | os.PathLike, size: Sequence[int] | None = None, channels: int = 3) -> np.ndarray:
    """An image file -> ``[H, W, channels]`` uint8 pixels (grey for ``channels=1``, else RGB;
    palette and alpha images are converted), bicubic-resized to ``size = (H, W)`` if given.

    The one image reader of the package: the published models' preprocessing (the reference
    ImageNet colab resizes with bicubic interpolation), training data (``image_folder``) and
    predictions of training runs all read images here, so a trained model sees at prediction
    time exactly the pixels it was trained on."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    try:
        with pillow().open(path) as image:
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB")).copy()
    except FileNotFoundError:
        raise
    except (OSError, pillow().DecompressionBombError) as e:  # "cannot identify image file", a pixel bomb
        raise ValueError(f"{path}: not a readable image ({e})") from None
    pixels = pixels.reshape(*pixels.shape[:2], channels)
    if size is not None and tuple(pixels.shape[:2]) != tuple(size):
        pixels = resize_image(pixels, *size)
    return pixels


@DataConfig.register("image_folder")
@dataclass(kw_only=True)
class ImageFolderConfig(FolderConfig):
    image_size: list[int] = field(default_factory=lambda: [32, 32])  # [H, W] after resizing
    channels: int = 3  # 1: grayscale, 3: RGB

    def validate(self) -> None:
        super().validate()
        if len(self.image_size) != 2 or any(s <= 0 for s in self.image_size):
            raise ConfigError(f"data.image_size must be [H, W], got {self.image_size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")

    def load(self) -> Splits:
        classes, files = class_files(self.path, IMAGE_EXTENSIONS)
        images, labels = [], []
        for f, label in files:
            try:
                images.append(read_image(f, self.image_size, self.channels).astype(np.float32) / 255.0)
                labels.append(label)
            except Exception as e:  # noqa: BLE001 - any decoder error means "unreadable"
                warnings.warn(f"skipping unreadable image {f}: {type(e).__name__}: {e}", stacklevel=2)
        if not images:
            raise ValueError(f"data.path: none of the {len(files)} image files under {self.path} could be read")
        return self._classification(torch.from_numpy(np.stack(images)), labels, classes)


# ---------------------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------------------
def load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({e})") from None


@DataConfig.register("npy_folder")
@dataclass(kw_only=True)
class NpyFolderConfig(FolderConfig):
    """One ``.npy`` per example (any shape, e.g. a time series ``[T, C]``), class sub-folders."""


    def load(self) -> Splits:
        classes, files = class_files(self.path, (".npy",))
        arrays = [(f, load_npy(f)) for f, _ in files]
        stacked = _stack_same_shape(arrays, "array")
        keep = [keep_finite(self, str(f), first_nonfinite(x.numpy())) for (f, _), x in zip(arrays, stacked)]
        if not any(keep):
            raise ValueError(f"data.path: every one of the {len(files)} arrays under {self.path} holds NaN or Inf")
        labels = [c for (_, c), k in zip(files, keep) if k]
        return self._classification(stacked[torch.tensor(keep)], labels, classes)


@DataConfig.register("npy")
@dataclass(kw_only=True)
class NpyConfig(DataConfig):
    """``inputs`` ``[N, ...]`` and ``labels`` ``[N]`` (integer classes 0..K-1) as .npy files."""

    inputs: str = ""
    labels: str = ""

    def validate(self) -> None:
        super().validate()
        if not self.inputs or not self.labels:
            raise ConfigError("data.inputs and data.labels (paths of .npy files) are required for data kind 'npy'")

    def describe(self) -> str:
        return f"data.inputs={self.inputs}"

    def load(self) -> Splits:
        x = load_npy(_existing(self.inputs, "data.inputs"))
        y = load_npy(_existing(self.labels, "data.labels"))
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"data.labels: {self.labels} must be a 1-d integer array, got shape {y.shape} "
                             f"dtype {y.dtype}")
        if len(x) != len(y):
            raise ValueError(f"inconsistent array shapes: data.inputs {self.inputs} has {len(x)} examples "
                             f"(shape {x.shape}), data.labels {self.labels} has {len(y)}")
        if y.min() < 0:
            raise ValueError(f"data.labels: {self.labels} has negative class ids")
        classes = [str(i) for i in range(int(y.max()) + 1)]
        x = x.astype(np.float32)
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        keep = [keep_finite(self, f"data.inputs: {self.inputs} row {i}", first_nonfinite(x[i])) if bad[i] else True
                for i in range(len(x))] if bad.any() else [True] * len(x)
        x, y = x[keep], y[keep]
        if not len(x):
            raise ValueError(f"data.inputs: every row of {self.inputs} holds NaN or Inf")
        dataset = ArrayDataset({"inputs": torch.from_numpy(x), "targets": torch.from_numpy(y).long()})
        return random_splits(dataset, DataInfo("classification", classes), self.val_fraction, self.test_fraction,
                             self.split_seed)


# ---------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------
def read_wav(path: str | Path | BinaryIO) -> tuple[np.ndarray, int]:
    """A PCM WAV file (a path, or an open binary file) -> (mono float32 samples in [-1, 1], sample rate)."""
    try:
        with wave.open(path if hasattr(path, "read") else str(path), "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable PCM WAV file ({e})") from None
    if width == 1:
        samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width in (2, 4):
        dtype = np.int16 if width == 2 else np.int32
        samples = np.frombuffer(raw, dtype).astype(np.float32) / np.iinfo(dtype).max
    else:
        raise ValueError(f"{path}: {8 * width}-bit samples are not supported (8, 16 or 32-bit PCM)")
    return samples.reshape(-1, channels).mean(axis=1), rate


@DataConfig.register("wav_folder")
@dataclass(kw_only=True)
class WavFolderConfig(FolderConfig):
    num_samples: int = 16000  # each clip is cropped / zero-padded to this length
    sample_rate: int | None = None  # required rate; None: whatever the first file has

    def validate(self) -> None:
        super().validate()
        check_positive(self, "num_samples", "sample_rate")

    def rate(self) -> int:
        """The sample rate of the clips: ``sample_rate``, or the first file's."""
        return self.sample_rate or read_wav(class_files(self.path, (".wav",))[1][0][0])[1]

    def load(self) -> Splits:
        classes, files = class_files(self.path, (".wav",))
        clips, rate = [], self.sample_rate
        for f, _ in files:
            samples, r = read_wav(f)
            rate = rate or r
            if r != rate:
                raise ValueError(f"{f}: sample rate {r} Hz differs from {rate} Hz (data.sample_rate or the first "
                                 f"file); resample your files to one rate")
            clip = np.zeros(self.num_samples, np.float32)
            clip[: min(len(samples), self.num_samples)] = samples[: self.num_samples]
            clips.append(clip)
        return self._classification(torch.from_numpy(np.stack(clips)), [c for _, c in files], classes)


# ---------------------------------------------------------------------------------------
# Point clouds
# ---------------------------------------------------------------------------------------
def read_csv_points(path: Path) -> np.ndarray:
    numbered = [(i + 1, ln.strip()) for i, ln in enumerate(Path(path).read_text(errors="replace").splitlines())
                if ln.strip()]
    if numbered and any(ch.isalpha() for ch in numbered[0][1].replace("e", "").replace("E", "")):
        numbered = numbered[1:]  # header
    line_numbers, lines = [n for n, _ in numbered], [ln for _, ln in numbered]
    rows = [ln.split(",") for ln in lines]
    if not rows:
        raise ValueError(f"{path}: no points (expected rows x,y,z[,features...])")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        bad = next(i for i, r in enumerate(rows) if len(r) != len(rows[0]))
        raise ValueError(f"{path}: inconsistent number of columns ({len(rows[0])} in the first row, "
                         f"{len(rows[bad])} in row {bad + 1})")
    try:
        points = np.array(rows, dtype=np.float32)
    except ValueError as e:
        raise ValueError(f"{path}: not numeric CSV ({e})") from None
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise NonFiniteError(f"{path}", f"line {line_numbers[row]} ({lines[row]!r}) holds NaN or an infinite value "
                             f"({int(bad.sum())} such rows)")
    return points


class NonFiniteError(ValueError):
    """A data file holds NaN or an infinite value: ``where`` (the file) and ``problem``."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}, expected finite numbers")
        self.where, self.problem = where, problem


@DataConfig.register("csv_points")
@dataclass(kw_only=True)
class CsvPointsConfig(FolderConfig):
    num_points: int = 256  # points per cloud after (seeded) resampling
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_positive(self, "num_points")

    def load(self) -> Splits:
        classes, files = class_files(self.path, (".csv",))
        rng = np.random.default_rng(self.seed)
        clouds = []
        labels = []
        for f, label in files:
            try:
                pts = read_csv_points(f)
            except NonFiniteError as e:
                keep_finite(self, e.where, e.problem)
                continue
            idx = rng.choice(len(pts), self.num_points, replace=len(pts) < self.num_points)
            clouds.append((f, pts[idx]))
            labels.append(label)
        if not clouds:
            raise ValueError(f"data.path: every one of the {len(files)} CSV files under {self.path} holds NaN or Inf")
        return self._classification(_stack_same_shape(clouds, "point cloud (columns)"), labels, classes)


# ---------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------
def not_utf8(path: str | os.PathLike, data: bytes, error: UnicodeDecodeError) -> str:
    """The message of a file that is not UTF-8: the file, the byte offset and the byte."""
    return f"{path}: not UTF-8 text (byte {error.start}: {data[error.start:error.start + 1]!r})"


def read_utf8(path: str | os.PathLike) -> str:
    """A UTF-8 text file; any other encoding is an error naming the file and the byte offset."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(not_utf8(path, data, e) + "; convert it to UTF-8") from None


@DataConfig.register("text_files")
@dataclass(kw_only=True)
class TextFilesConfig(TextMLMConfig):
    """UTF-8 text files (paths, folders or glob patterns), joined with blank lines."""

    paths: list[str] = field(default_factory=list)
    on_decode_error: Literal["error", "replace", "skip"] = "error"

    def validate(self) -> None:
        super().validate()
        if not self.paths:
            raise ConfigError("data.paths (text files, folders or glob patterns) is required for data kind 'text_files'")

    def describe(self) -> str:
        return f"data.paths={self.paths}"

    def files(self) -> list[Path]:
        out: list[Path] = []
        for i, pattern in enumerate(self.paths):
            matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
            if not matches:
                raise FileNotFoundError(f"data.paths[{i}]: {pattern} does not exist (no file matches)")
            for m in map(Path, matches):
                out.extend(sorted(p for p in m.rglob("*") if p.is_file()) if m.is_dir() else [m])
        return out

    def text_bytes(self) -> bytes:
        parts = []
        for f in self.files():
            data = f.read_bytes()
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as e:
                if self.on_decode_error == "error":
                    raise ValueError(not_utf8(f, data, e) + "; convert it, or set data.on_decode_error to "
                                     "'replace' or 'skip'") from None
                if self.on_decode_error == "skip":
                    warnings.warn(f"skipping non-UTF-8 file {f}", stacklevel=2)
                    continue
                data = data.decode("utf-8", errors="replace").encode("utf-8")
            parts.append(data)
        return b"\n\n".join(parts)
