"""Your own data from files.

Classification data sets are folder trees, one sub-folder per class (sorted names are
the classes), like torchvision's ``ImageFolder``::

    path/cat/001.png  path/cat/002.png  path/dog/001.png ...

The folder kinds read each example when it is used (:class:`FileExamples`), so a folder
of any size costs no memory; only its index (file names, class ids, sizes) is held, built
once and cached (:func:`folder_index`):

* ``image_folder``: PNG/JPEG/... images (Pillow), resized to ``image_size`` (bicubic,
  :func:`read_image`; ``resize: false`` refuses other sizes instead) and scaled to [0, 1];
  unreadable files are skipped with a warning naming them (``on_error: skip``, its default);
* ``npy_folder``: one ``.npy`` array per example, all of one shape (or ``npy`` below);
* ``npy``: one ``inputs.npy`` ``[N, ...]`` and ``labels.npy`` ``[N]`` of class ids (in memory);
* ``wav_folder``: WAV files (stdlib ``wave``; 8/16/32-bit PCM, mixed to mono), cropped or
  zero-padded to ``num_samples``;
* ``csv_points``: point clouds, one CSV per example, rows ``x,y,z[,features...]``
  (an optional header line), resampled to ``num_points``;
* ``video_folder``: clips, each a folder of frame images or a ``.npy`` ``[T, H, W, C]``,
  cut to ``num_frames`` consecutive frames (at a random start in training);
* ``text_files``: UTF-8 text files for masked-byte language modelling, read by windows (``os.pread``), never loaded.

Every problem names the file (and the config key) it comes from: a file that is missing
or unreadable is an error, or with ``data.on_error: skip`` is skipped with a warning
(example ``i`` then reads the next readable file). Numbers must be finite (also after the
cast to float32: ``1e300`` overflows): an example holding NaN or Inf is an error naming
the file and row, or, with ``data.on_nonfinite: skip``, is skipped with a warning.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import warnings
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from ..config import ConfigError, check_positive
from ..tokenizer import NUM_SPECIAL_TOKENS
from .base import (Batch, DataConfig, DataInfo, ExampleDataset, Nested, Splits, example_generator,
                   random_splits, split_indices)
from .builtin import TextMLMConfig
from .corpus import ByteCorpus, TextWindows, block_layout, text_index

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


# ---------------------------------------------------------------------------------------
# Folder indexes and examples read on access
# ---------------------------------------------------------------------------------------
INDEX_VERSION = 1


def user_cache_dir() -> Path:
    """perceptio's cache folder: ``$XDG_CACHE_HOME/perceptio`` (else ``~/.cache/perceptio``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "perceptio"


@dataclass
class FolderIndex:
    """The files of a class-folder tree: ``paths`` ``[N]`` (bytes, relative to the root, in
    sorted order), ``labels`` ``[N]`` (class ids into ``classes``), ``sizes`` ``[N]`` (bytes
    on disk) and ``probes`` ``[N]`` (what the kind's ``probe`` read from each file header, e.g.
    an array's shape; empty strings if it reads none). Numpy arrays, not Python lists, so
    a million files cost tens of MB, shared by DataLoader workers without copies."""

    classes: list[str]
    paths: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    probes: np.ndarray
    dirs: np.ndarray  # every folder listed (relative), with its modification time:
    dir_mtimes: np.ndarray  # a file added, removed or renamed changes its folder's

    def is_current(self, root: Path) -> bool:
        """Whether no folder of the tree changed since the index was built."""
        try:
            return all(os.stat(root / os.fsdecode(d)).st_mtime_ns == int(t) for d, t in zip(self.dirs, self.dir_mtimes))
        except OSError:
            return False


CACHE_FOLDER = ".perceptio"  # beside the data: hidden, so never a class or a text file


def index_path(root: Path, tag: str, cache: str) -> Path | None:
    """Where an index of ``root`` is kept: ``ROOT/.perceptio/index-TAG.npz`` (``cache:
    auto``; in :func:`user_cache_dir` if ROOT is not writable), in the folder ``cache``, or
    nowhere (``off``). The folder is made here, before the tree's folders are stat-ed:
    writing the index into it later changes no modification time the index holds."""
    if cache == "off":
        return None
    name = f"index-{tag}.npz"
    if cache == "auto" and os.access(root, os.W_OK):
        folder = root / CACHE_FOLDER
    else:
        name = f"{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]}-{name}"
        folder = user_cache_dir() / "index" if cache == "auto" else Path(cache).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # e.g. a read-only cache folder: listed every run
    return folder / name


def read_index(path: Path) -> FolderIndex | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != INDEX_VERSION:
                return None
            return FolderIndex([c.decode() for c in z["classes"]], z["paths"], z["labels"], z["sizes"],
                               z["probes"], z["dirs"], z["dir_mtimes"])
    except (OSError, ValueError, KeyError):  # missing, torn or of another format: rebuilt
        return None


def write_index(path: Path, index: FolderIndex) -> None:
    """Atomically (several processes may build the same index at once); a folder that
    cannot be written only costs the listing next time."""
    try:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, version=np.array(INDEX_VERSION), classes=np.array([c.encode() for c in index.classes], "S"),
                     paths=index.paths, labels=index.labels, sizes=index.sizes, probes=index.probes, dirs=index.dirs,
                     dir_mtimes=index.dir_mtimes)
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not write the folder index {path} ({e}); the folder is listed again next run",
                      stacklevel=3)


def byte_strings(values: list[str]) -> np.ndarray:
    return np.array([os.fsencode(v) for v in values], dtype="S") if values else np.zeros(0, "S1")


def build_index(base: Path, classes: list[str], items: Callable, probe: Callable | None, key: str) -> FolderIndex:
    paths, labels, sizes, probes, dirs = [], [], [], [], {".": os.stat(base).st_mtime_ns}
    for label, name in enumerate(classes):
        found, walked = items(base / name)
        for d in walked:
            dirs[str(d.relative_to(base))] = os.stat(d).st_mtime_ns
        for f in found:
            paths.append(str(f.relative_to(base)))
            labels.append(label)
            sizes.append(f.stat().st_size if f.is_file() else 0)
            probes.append(probe(f) if probe is not None else "")
    return FolderIndex(classes, byte_strings(paths), np.array(labels, np.int32), np.array(sizes, np.int64),
                       byte_strings(probes), byte_strings(list(dirs)), np.array(list(dirs.values()), np.int64))


def files_below(folder: Path, extensions: tuple[str, ...]) -> tuple[list[Path], list[Path]]:
    """Files with ``extensions`` anywhere below ``folder`` (sorted as paths), and the folders walked."""
    found, walked = [], []
    for d, subdirs, names in os.walk(folder):
        walked.append(Path(d))
        found += [Path(d) / n for n in names if Path(n).suffix.lower() in extensions]
    return sorted(found, key=lambda f: f.parts), walked


def folder_index(root: str, extensions: tuple[str, ...], key: str = "data.path", cache: str = "auto",
                 items: Callable | None = None, probe: Callable | None = None,
                 tag: str = "") -> tuple[Path, FolderIndex]:
    """The index of a class-folder tree (``root/CLASS/.../FILE``), from its cache when no
    folder of the tree changed since it was built, else listed (and probed) and cached.

    ``items(class_folder) -> (examples, folders walked)`` lists one class (default: files with
    ``extensions`` anywhere below it); ``probe(path) -> str`` reads what the kind checks at
    load time from a file header; ``tag`` names the cache file of this kind of listing."""
    base = _existing(root, key)
    if not base.is_dir():
        raise ValueError(f"{key}: {base} is not a folder; expected one sub-folder per class")
    tag = hashlib.sha256(f"{tag}{sorted(extensions)}".encode()).hexdigest()[:8]
    cached_at = index_path(base, tag, cache)
    index = read_index(cached_at) if cached_at is not None and cached_at.is_file() else None
    if index is not None and index.is_current(base):
        return base, index
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{key}: {base} has no class sub-folders (expected {base}/CLASS_NAME/FILE)")
    index = build_index(base, classes, items or (lambda d: files_below(d, extensions)), probe, key)
    if not len(index.paths):
        raise ValueError(f"{key}: no {'/'.join(extensions)} files under {base}/<class>/")
    if cached_at is not None:
        write_index(cached_at, index)
    return base, index


class FileExamples(ExampleDataset):
    """Example ``i``: ``{"inputs": config.decode(file i), "targets": its class id}``, read
    when it is used. A missing or unreadable file is an error naming it, or (``on_error:
    skip``) a warning, and example ``i`` reads the next readable file instead; NaN / Inf
    follow ``on_nonfinite`` alike."""

    def __init__(self, config: LazyFolderConfig, root: Path, index: FolderIndex, key: str,
                 labels: np.ndarray | None = None) -> None:
        self.config, self.root, self.index, self.key = config, root, index, key
        self.labels = index.labels if labels is None else labels

    def __len__(self) -> int:
        return len(self.index.paths)

    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(self.index.paths[i])

    def read(self, i: int, generator: torch.Generator | None) -> tuple[Path, int, np.ndarray]:
        """``(file, example read, inputs)`` of example ``i`` (``i``, or after it if skipped)."""
        n = len(self)
        for k in ((i + j) % n for j in range(n)):
            path = self.path(k)
            try:
                return path, k, self.config.decode(path, k, generator)
            except NonFiniteError as e:
                keep_finite(self.config, e.where, e.problem)  # raises unless on_nonfinite: skip
            except (OSError, ValueError) as e:
                problem = f"{path} does not exist" if isinstance(e, FileNotFoundError) else str(e)
                if not problem.startswith(str(path)):
                    problem = f"{path}: {problem}"
                if self.config.on_error == "error":
                    raise ValueError(f"{problem} (listed under {self.key}); fix or remove the file, or set "
                                     "data.on_error: skip to skip such files") from None
                warnings.warn(f"skipping unreadable {self.config.what} {problem} (data.on_error: skip)", stacklevel=2)
        raise ValueError(f"{self.key}: none of the {n} {self.config.what} files under {self.root} could be read")

    def example(self, i: int, generator: torch.Generator | None = None) -> dict[str, Nested]:
        _, k, inputs = self.read(i, generator)
        return {"inputs": torch.from_numpy(inputs), "targets": torch.tensor(int(self.labels[k]), dtype=torch.long)}

    def gather(self, indices: Tensor, *, seed: int = 0, step: int = 0) -> Batch:
        if not len(indices):
            raise ValueError("a batch needs at least one index")
        read = [self.read(int(i), example_generator(seed, step, int(i))) for i in indices]
        first_path, _, first = read[0]
        for path, _, x in read[1:]:
            if x.shape != first.shape:
                raise ValueError(f"inconsistent {self.config.what} shapes: {path} has shape {x.shape}, but "
                                 f"{first_path} has {first.shape}; every example must have the same shape"
                                 + self.config.shape_hint)
        return {"inputs": torch.from_numpy(np.stack([x for _, _, x in read])),
                "targets": torch.from_numpy(np.array([self.labels[k] for _, k, _ in read], np.int64))}


@dataclass(kw_only=True)
class LazyFolderConfig(FolderConfig):
    """A class-folder kind read on access. ``val_path`` / ``test_path``: class-folder trees
    of their own for validation / test (with the class names of ``path``); then ``path``
    is split only into what they do not give (``val_fraction`` / ``test_fraction`` unused)."""

    val_path: str | None = None
    test_path: str | None = None
    on_error: Literal["error", "skip"] = "error"  # a missing or unreadable file: stop, or skip it with a warning
    # where the folder index is cached: auto (ROOT/.perceptio-index-*.npz, else ~/.cache/perceptio/index),
    # a folder, or off (list the folder every run)
    index_cache: str = "auto"

    extensions: ClassVar[tuple[str, ...]] = ()
    what: ClassVar[str] = "file"  # in messages: "unreadable image ..."
    shape_hint: ClassVar[str] = ""

    def decode(self, path: Path, index: int, generator: torch.Generator | None) -> np.ndarray:
        """The inputs of one file (float32, no batch axis); ``generator``: its random transforms."""
        raise NotImplementedError

    def probe(self, path: Path) -> str:
        """What load checks of every file, read from its header once when the index is built."""
        return ""

    def probed(self) -> bool:
        return type(self).probe is not LazyFolderConfig.probe

    def items(self, folder: Path) -> tuple[list[Path], list[Path]]:
        return files_below(folder, self.extensions)

    def check_index(self, root: Path, index: FolderIndex, key: str) -> None:
        """Refuse at load what the probes show (e.g. arrays of several shapes)."""

    def index(self, root: str, key: str) -> tuple[Path, FolderIndex]:
        """The (cached) index of the class-folder tree ``root``, read from config key ``key``."""
        return folder_index(root, self.extensions, key, self.index_cache, self.items,
                            self.probe if self.probed() else None, tag=f"{self.kind}{self.probed()}")

    def examples(self, root: str, key: str, classes: list[str] | None = None) -> FileExamples:
        base, index = self.index(root, key)
        self.check_index(base, index, key)
        labels = None
        if classes is not None:  # a val / test tree: its class ids are those of data.path
            unknown = sorted(set(index.classes) - set(classes))
            if unknown:
                raise ValueError(f"{key}: class folder {base / unknown[0]} is not a class of data.path "
                                 f"({classes[:10]}); use the class names of data.path")
            labels = np.array([classes.index(c) for c in index.classes], np.int32)[index.labels]
        return FileExamples(self, base, index, key, labels)

    def load(self) -> Splits:
        data = self.examples(self.path, "data.path")
        info = DataInfo("classification", data.index.classes)
        val_fraction = 0.0 if self.val_path else self.val_fraction
        test_fraction = 0.0 if self.test_path else self.test_fraction
        train, val, test = split_indices(len(data), val_fraction, test_fraction, self.split_seed)
        val_data = self.examples(self.val_path, "data.val_path", info.classes) if self.val_path else data.subset(val)
        test_data = (self.examples(self.test_path, "data.test_path", info.classes) if self.test_path
                     else data.subset(test))
        return Splits(data.subset(train), val_data, test_data, info)

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
class ImageFolderConfig(LazyFolderConfig):
    image_size: list[int] = field(default_factory=lambda: [32, 32])  # [H, W] after resizing
    channels: int = 3  # 1: grayscale, 3: RGB
    resize: bool = True  # false: an image of another size than image_size is refused (named), not resized
    on_error: Literal["error", "skip"] = "skip"

    extensions: ClassVar[tuple[str, ...]] = IMAGE_EXTENSIONS
    what: ClassVar[str] = "image"
    shape_hint: ClassVar[str] = " (set data.resize: true to resize every image to data.image_size)"

    def validate(self) -> None:
        super().validate()
        if len(self.image_size) != 2 or any(s <= 0 for s in self.image_size):
            raise ConfigError(f"data.image_size must be [H, W], got {self.image_size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")

    def decode(self, path: Path, index: int, generator: torch.Generator | None) -> np.ndarray:
        pixels = read_image(path, self.image_size if self.resize else None, self.channels)
        if tuple(pixels.shape[:2]) != tuple(self.image_size):
            raise ValueError(f"{path}: image of {pixels.shape[0]}x{pixels.shape[1]} pixels, but data.image_size is "
                             f"{self.image_size} and data.resize is false; set data.resize: true to resize it")
        return pixels.astype(np.float32) / 255.0


# ---------------------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------------------
def load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """The array in ``path`` (``mmap``: memory-mapped, read on access); never unpickled."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({e})") from None


@DataConfig.register("npy_folder")
@dataclass(kw_only=True)
class NpyFolderConfig(LazyFolderConfig):
    """One ``.npy`` per example (any shape, e.g. a time series ``[T, C]``), class sub-folders.
    Every array's shape is read from its header when the folder is indexed: arrays of
    several shapes are refused at load, naming one of each."""

    extensions: ClassVar[tuple[str, ...]] = (".npy",)
    what: ClassVar[str] = "array"

    def probe(self, path: Path) -> str:
        try:
            return str(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        except (ValueError, OSError):
            return "?"  # unreadable: named when it is read

    def check_index(self, root: Path, index: FolderIndex, key: str) -> None:
        shapes = index.probes[index.probes != b"?"]
        if len(np.unique(shapes)) > 1:
            first = index.probes[0]
            other = int(np.argmax((index.probes != first) & (index.probes != b"?")))
            raise ValueError(f"inconsistent array shapes: {root / os.fsdecode(index.paths[other])} has shape "
                             f"{index.probes[other].decode()}, but {root / os.fsdecode(index.paths[0])} has "
                             f"{first.decode()}; every example must have the same shape")

    def decode(self, path: Path, index: int, generator: torch.Generator | None) -> np.ndarray:
        a = load_npy(path).astype(np.float32)
        problem = first_nonfinite(a)
        if problem is not None:
            raise NonFiniteError(str(path), problem)
        return a


SCAN_BYTES = 1 << 25  # rows of a .npy checked for NaN / Inf per read at load: memory stays bounded


class ArrayRows(ExampleDataset):
    """Rows ``rows`` of a ``.npy`` array ``inputs [N, ...]`` (memory-mapped: a row is read
    from the file when a batch needs it, as float32) with integer ``labels [N]``. Each
    process maps the file itself: pickling (DataLoader workers) sends the path, not data."""

    def __init__(self, path: Path, labels: np.ndarray, rows: np.ndarray) -> None:
        self.path, self.labels, self.rows = path, labels, rows
        self._inputs: np.ndarray | None = None

    @property
    def inputs(self) -> np.ndarray:
        if self._inputs is None:
            self._inputs = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._inputs

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_inputs": None}

    def __len__(self) -> int:
        return len(self.rows)

    def example(self, i: int, generator: torch.Generator | None = None) -> dict[str, Nested]:
        row = int(self.rows[i])
        return {"inputs": torch.from_numpy(np.array(self.inputs[row], dtype=np.float32)),
                "targets": torch.tensor(int(self.labels[row]), dtype=torch.long)}

    def gather(self, indices: Tensor, *, seed: int = 0, step: int = 0) -> Batch:
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        if not len(rows):
            raise ValueError("a batch needs at least one index")
        return {"inputs": torch.from_numpy(np.asarray(self.inputs[rows], dtype=np.float32)),
                "targets": torch.from_numpy(self.labels[rows].astype(np.int64))}

    def subset(self, indices: Tensor) -> ExampleDataset:
        view = ArrayRows(self.path, self.labels, self.rows[np.asarray(indices, dtype=np.int64)])
        view.transform = self.transform
        return view


@DataConfig.register("npy")
@dataclass(kw_only=True)
class NpyConfig(DataConfig):
    """``inputs`` ``[N, ...]`` and ``labels`` ``[N]`` (integer classes 0..K-1) as .npy files.
    ``inputs`` is memory-mapped (an array of any size costs no memory); its rows are
    checked for NaN / Inf once at load, a block at a time."""

    inputs: str = ""
    labels: str = ""

    def validate(self) -> None:
        super().validate()
        if not self.inputs or not self.labels:
            raise ConfigError("data.inputs and data.labels (paths of .npy files) are required for data kind 'npy'")

    def describe(self) -> str:
        return f"data.inputs={self.inputs}"

    def load(self) -> Splits:
        path = _existing(self.inputs, "data.inputs")
        x = load_npy(path, mmap=True)
        y = load_npy(_existing(self.labels, "data.labels"))
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"data.labels: {self.labels} must be a 1-d integer array, got shape {y.shape} "
                             f"dtype {y.dtype}")
        if x.ndim < 1 or len(x) != len(y):
            raise ValueError(f"inconsistent array shapes: data.inputs {self.inputs} has {len(x) if x.ndim else 0} "
                             f"examples (shape {x.shape}), data.labels {self.labels} has {len(y)}")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise ValueError(f"data.inputs: {self.inputs} holds {x.dtype} values; expected numbers")
        if y.min(initial=0) < 0:
            raise ValueError(f"data.labels: {self.labels} has negative class ids")
        classes = [str(i) for i in range(int(y.max(initial=0)) + 1)]
        keep = np.ones(len(x), dtype=bool)
        step = max(1, SCAN_BYTES // max(1, x[:1].nbytes))
        for start in range(0, len(x), step):
            block = np.asarray(x[start:start + step], dtype=np.float32)  # float32: what training reads
            bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
            for i in np.flatnonzero(bad):
                keep[start + i] = keep_finite(self, f"data.inputs: {self.inputs} row {start + i}",
                                              first_nonfinite(block[i]))
        if not keep.any():
            raise ValueError(f"data.inputs: every row of {self.inputs} holds NaN or Inf")
        dataset = ArrayRows(path, y, np.flatnonzero(keep))
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
class WavFolderConfig(LazyFolderConfig):
    num_samples: int = 16000  # each clip is cropped / zero-padded to this length
    sample_rate: int | None = None  # required rate; None: whatever the first file has

    extensions: ClassVar[tuple[str, ...]] = (".wav",)
    what: ClassVar[str] = "WAV file"

    def validate(self) -> None:
        super().validate()
        check_positive(self, "num_samples", "sample_rate")

    def rate(self) -> int:
        """The sample rate of the clips: ``sample_rate``, or the first file's."""
        return self.sample_rate or self.first_rate

    @functools.cached_property
    def first_rate(self) -> int:
        """The first file's sample rate, read once (not a config field)."""
        base, index = self.index(self.path, "data.path")
        return read_wav(base / os.fsdecode(index.paths[0]))[1]

    def load(self) -> Splits:
        self.rate()  # read before DataLoader workers copy the config
        return super().load()

    def decode(self, path: Path, index: int, generator: torch.Generator | None) -> np.ndarray:
        samples, rate = read_wav(path)
        if rate != self.rate():
            raise ValueError(f"{path}: sample rate {rate} Hz differs from {self.rate()} Hz (data.sample_rate or the "
                             f"first file); resample your files to one rate")
        clip = np.zeros(self.num_samples, np.float32)
        clip[: min(len(samples), self.num_samples)] = samples[: self.num_samples]
        return clip


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
class CsvPointsConfig(LazyFolderConfig):
    num_points: int = 256  # points per cloud after resampling, seeded by (seed, the file's place in the folder)
    seed: int = 0

    extensions: ClassVar[tuple[str, ...]] = (".csv",)
    what: ClassVar[str] = "point cloud"
    shape_hint: ClassVar[str] = " (the same number of columns in every file)"

    def validate(self) -> None:
        super().validate()
        check_positive(self, "num_points")

    def decode(self, path: Path, index: int, generator: torch.Generator | None) -> np.ndarray:
        pts = read_csv_points(path)
        rng = np.random.default_rng([self.seed, index])  # the same points of a file every time it is read
        return pts[rng.choice(len(pts), self.num_points, replace=len(pts) < self.num_points)]


VIDEO_SUFFIXES = (".npy",)


@DataConfig.register("video_folder")
@dataclass(kw_only=True)
class VideoFolderConfig(LazyFolderConfig):
    """Video clips for classification, ``path/CLASS/CLIP``: each clip a folder of frame images
    (sorted by name) or a ``.npy`` array ``[T, H, W, C]`` (uint8, scaled to [0, 1], or float).
    An example is ``num_frames`` consecutive frames, every ``frame_stride``-th, from a random
    start in training (drawn from ``example_generator``; evaluation: a fixed draw per clip),
    as ``[num_frames, H, W, C]`` (the ``grid`` input adapter with ``index_dims: [T, H, W]``).
    Frames are resized to ``image_size`` (``resize: false``: refused if of another size)."""

    num_frames: int = 8
    frame_stride: int = 1
    image_size: list[int] = field(default_factory=lambda: [32, 32])  # [H, W]
    channels: int = 3  # 1: grayscale, 3: RGB
    resize: bool = True

    what: ClassVar[str] = "clip"
    shape_hint: ClassVar[str] = " (set data.resize: true to resize every frame to data.image_size)"

    def validate(self) -> None:
        super().validate()
        check_positive(self, "num_frames", "frame_stride")
        if len(self.image_size) != 2 or any(s <= 0 for s in self.image_size):
            raise ConfigError(f"data.image_size must be [H, W], got {self.image_size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")

    def items(self, folder: Path) -> tuple[list[Path], list[Path]]:
        clips = [c for c in folder.iterdir() if not c.name.startswith(".")
                 and (c.is_dir() or c.suffix.lower() in VIDEO_SUFFIXES)]
        return sorted(clips), [folder]

    def decode(self, path: Path, index: int, generator: torch.Generator | None) -> np.ndarray:
        if path.is_dir():
            frames = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
            total = len(frames)
        else:
            clip = np.load(path, mmap_mode="r", allow_pickle=False)
            if clip.ndim != 4 or clip.shape[-1] != self.channels:
                raise ValueError(f"{path}: a clip must be an array [T, H, W, {self.channels}] (data.channels), got "
                                 f"shape {clip.shape}")
            total = clip.shape[0]
        span = (self.num_frames - 1) * self.frame_stride + 1
        if total < span:
            raise ValueError(f"{path}: {total} frames, fewer than data.num_frames={self.num_frames} at "
                             f"data.frame_stride={self.frame_stride} need ({span})")
        start = 0 if generator is None else int(torch.randint(total - span + 1, (1,), generator=generator))
        picked = range(start, start + span, self.frame_stride)
        if path.is_dir():
            out = np.stack([read_image(frames[t], self.image_size if self.resize else None, self.channels)
                            for t in picked]).astype(np.float32) / 255.0
        else:
            part = np.asarray(clip[start:start + span:self.frame_stride])
            if part.dtype == np.uint8 and self.resize and tuple(part.shape[1:3]) != tuple(self.image_size):
                part = np.stack([resize_image(f, *self.image_size) for f in part])
            out = part.astype(np.float32) / 255.0 if part.dtype == np.uint8 else part.astype(np.float32)
        if tuple(out.shape[1:3]) != tuple(self.image_size):
            raise ValueError(f"{path}: frames of {out.shape[1]}x{out.shape[2]} pixels, but data.image_size is "
                             f"{self.image_size}" + ("; set data.resize: true to resize them" if not self.resize else
                                                     " (float clips are not resized: store them at that size)"))
        problem = first_nonfinite(out)
        if problem is not None:
            raise NonFiniteError(str(path), problem)
        return out


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
    """UTF-8 text files (paths, folders or glob patterns), joined with blank lines and read
    window by window (:mod:`perceptio.data.corpus`: what an example and an epoch are).
    ``val_paths`` / ``test_paths``: files of their own for validation / test (then the
    fraction of ``paths`` is unused)."""

    paths: list[str] = field(default_factory=list)
    val_paths: list[str] = field(default_factory=list)
    test_paths: list[str] = field(default_factory=list)
    on_decode_error: Literal["error", "replace", "skip"] = "error"
    # bytes per block (a training example: a window at a random offset in a block); None: seq_len, or more so
    # that there are at most 2**20 blocks
    block_size: int | None = None
    # where the UTF-8 check of the files is cached: auto (next to the files, else ~/.cache/perceptio), a folder, off
    index_cache: str = "auto"

    def validate(self) -> None:
        super().validate()
        check_positive(self, "block_size")
        if not self.paths:
            raise ConfigError("data.paths (text files, folders or glob patterns) is required for data kind 'text_files'")
        if self.block_size is not None and self.block_size < self.seq_len:
            raise ConfigError(f"data.block_size={self.block_size} must be at least data.seq_len={self.seq_len}")

    def describe(self) -> str:
        return f"data.paths={self.paths}"

    def files(self, patterns: list[str] | None = None, key: str = "data.paths") -> list[Path]:
        out: list[Path] = []
        for i, pattern in enumerate(self.paths if patterns is None else patterns):
            matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
            if not matches:
                raise FileNotFoundError(f"{key}[{i}]: {pattern} does not exist (no file matches)")
            for m in map(Path, matches):
                found = sorted(p for p in m.rglob("*") if p.is_file()) if m.is_dir() else [m]
                out.extend(p for p in found if CACHE_FOLDER not in p.relative_to(m).parts[:-1])
        return out

    def corpus(self, patterns: list[str], key: str) -> tuple[ByteCorpus, np.ndarray]:
        """The files of ``patterns`` (non-UTF-8 ones refused, skipped or marked for replacing
        as ``on_decode_error`` says) and their byte counts ``[256]``."""
        files = self.files(patterns, key)
        common = Path(os.path.commonpath([str(f.parent.resolve()) for f in files]))
        digest = hashlib.sha256("\0".join(str(f.resolve()) for f in files).encode()).hexdigest()[:16]
        at = index_path(common, f"text-{digest}", self.index_cache)
        kept, sizes, replace, counts = [], [], [], np.zeros(256, np.int64)
        for f, check in zip(files, text_index(files, at)):
            if check.bad_at >= 0:
                with open(f, "rb") as fh:
                    fh.seek(check.bad_at)
                    byte = fh.read(1)
                problem = f"{f}: not UTF-8 text (byte {check.bad_at}: {byte!r})"
                if self.on_decode_error == "error":
                    raise ValueError(f"{problem}; convert it, or set data.on_decode_error to 'replace' or 'skip'")
                if self.on_decode_error == "skip":
                    warnings.warn(f"skipping non-UTF-8 file {problem}", stacklevel=3)
                    continue
            kept.append(f)
            sizes.append(check.size)
            replace.append(check.bad_at >= 0)
            counts += check.counts
        return ByteCorpus(kept, sizes, replace), counts

    def load(self) -> Splits:
        corpus, counts = self.corpus(self.paths, "data.paths")
        block_size, n = block_layout(corpus.size, self.seq_len, self.block_size)
        if n < 3:
            raise ValueError(f"{self.describe()}: {corpus.size} bytes make fewer than 3 blocks of "
                             f"data.block_size={block_size} (data.seq_len={self.seq_len}); give more text or lower "
                             "them")
        windows = lambda c, blocks, mode, bs=block_size: TextWindows(  # noqa: E731
            c, blocks, bs, self.seq_len, self.mask_prob, mode)
        parts = split_indices(n, 0.0 if self.val_paths else self.val_fraction,
                              0.0 if self.test_paths else self.test_fraction, self.split_seed)
        splits = []
        given = ((self.val_paths, "data.val_paths"), (self.test_paths, "data.test_paths"))
        for part, (paths, key) in zip(parts[1:], given):
            if paths:
                other, _ = self.corpus(paths, key)
                other_size, other_n = block_layout(other.size, self.seq_len, block_size)
                if other_n == 0:
                    raise ValueError(f"{key}: {other.size} bytes hold no sequence of data.seq_len={self.seq_len}")
                splits.append(windows(other, torch.arange(other_n), "all", other_size))
            else:
                splits.append(windows(corpus, part, "all"))
        # the unigram baseline: the most common byte of the training files
        info = DataInfo("mlm", extras={"unigram_top_id": int(counts.argmax()) + NUM_SPECIAL_TOKENS})
        return Splits(windows(corpus, parts[0], "random"), *splits, info)
