"""Hugging Face ``datasets`` as training data (kind ``hf_dataset``; the optional extra ``[datasets]``).

``data: {kind: hf_dataset, path: DIR_OR_NAME, split: train, columns: {inputs: image, labels: label}}``

``path`` is one of:

* a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``;
* a folder (or one file) of Parquet or Arrow files, split as on the Hub by file or folder
  names (``train-00000-of-00004.parquet``, ``validation/...``; no split name: all ``train``).
  Arrow files are memory-mapped where they are; Parquet files (compressed, not mappable) are
  converted once into Arrow files in the datasets cache (``cache_dir``) and mapped there;
* the name of a data set already in the local Hugging Face datasets cache (``load_dataset(name)``
  ran once with network access). Hugging Face's offline mode is forced: nothing is downloaded.

The rows stay on disk: an example is read from the memory-mapped table and decoded when a
batch asks for it (Images with Pillow, as ``image_folder`` reads files: :func:`read_image`;
Audio as WAV bytes with the standard library, as ``wav_folder``; numbers as float32 tensors of
the row's shape). Pickling the data set for DataLoader workers pickles the file names, not the
table. ``columns`` maps the keys of the objective to column names and chooses the objective:

* ``{inputs: X, labels: Y}``: classification. ``Y``: a ``ClassLabel`` (its names are the
  classes), integers or strings (the classes are their sorted distinct values, read from the
  Arrow columns of the splits without decoding a row);
* ``{text: X}``: masked bytes, as ``text_files``: the rows' UTF-8 bytes joined by blank lines
  and cut into ``seq_len``-byte sequences, ``mask_prob`` of the bytes predicted;
* ``{text: X, labels: Y}``: text classification: the first ``seq_len`` bytes of each row, padded
  (``input_mask``).

Splits: a source with splits gives ``split`` (default ``train``) for training, and ``validation``
(or ``val``, ``valid``, ``dev``) and ``test`` for evaluation where it has them (``val_split`` and
``test_split`` pick others); a missing one is ``val_fraction`` / ``test_fraction`` of the
training rows (indices only: nothing is read).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..config import ConfigError, check_positive
from ..tokenizer import NUM_SPECIAL_TOKENS, VOCAB_SIZE, ByteTokenizer
from .base import Batch, DataConfig, DataInfo, ExampleDataset, Splits, nested_stack, split_indices
from .builtin import TextMLMConfig, random_shift
from .files import read_image, read_wav

if TYPE_CHECKING:
    import datasets

DATA_SUFFIXES = (".parquet", ".arrow")
VAL_NAMES = ("validation", "val", "valid", "dev")  # the Hub's names of a validation split
SEPARATOR = b"\n\n"  # between the rows of a text column, as text_files joins its files
NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # a data set name (owner/name or name)
UNIGRAM_BYTES = 1 << 20  # the unigram baseline of masked bytes counts the first MiB of training text


def require_datasets():
    try:
        import datasets
    except ImportError:
        raise ImportError("data kind 'hf_dataset' needs the Hugging Face datasets package: "
                          "pip install 'perceptio[datasets]'") from None
    return datasets


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """Hugging Face's offline mode for the duration: nothing is downloaded. ``datasets`` and
    ``huggingface_hub`` read ``HF_HUB_OFFLINE`` once, when imported, so their flags are set
    here (and restored after)."""
    datasets = require_datasets()
    import huggingface_hub.constants as hub

    saved = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved


# ---------------------------------------------------------------------------------------
# Sources: a saved data set, Parquet / Arrow files, the cache
# ---------------------------------------------------------------------------------------
def split_files(root: Path) -> dict[str, list[str]]:
    """The Parquet / Arrow files of ``root`` (a file or a folder) by split, the splits named
    by file and folder names as on the Hub (none: ``train``)."""
    datasets = require_datasets()
    if root.is_file():
        return {"train": [str(root)]} if root.suffix.lower() in DATA_SUFFIXES else {}
    try:
        patterns = datasets.data_files.get_data_patterns(str(root))
    except datasets.data_files.EmptyDatasetError:
        return {}
    found = datasets.data_files.DataFilesDict.from_patterns(patterns, base_path=str(root))
    kept = {str(s): [f for f in files if Path(f).suffix.lower() in DATA_SUFFIXES] for s, files in found.items()}
    return {s: files for s, files in kept.items() if files}


def what_is_there(root: Path) -> str:
    """``"3 files: 2 .csv, 1 .txt (a.csv, b.csv, notes.txt)"``: what a folder holds."""
    if root.is_file():
        return f"a {root.suffix or 'suffix-less'} file"
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        return "nothing (an empty folder)"
    counts: dict[str, int] = {}
    for f in files:
        counts[f.suffix.lower() or "suffix-less"] = counts.get(f.suffix.lower() or "suffix-less", 0) + 1
    names = ", ".join(str(f.relative_to(root)) for f in files[:4]) + (", ..." if len(files) > 4 else "")
    kinds = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"{len(files)} files: {kinds} ({names})"


def read_files(root: Path, files: dict[str, list[str]], cache_dir: str | None) -> datasets.DatasetDict:
    """Arrow files memory-mapped in place; Parquet files converted once into the datasets cache."""
    datasets = require_datasets()
    suffixes = {Path(f).suffix.lower() for fs in files.values() for f in fs}
    if len(suffixes) > 1:
        raise ValueError(f"data.path: {root} holds both Parquet and Arrow files; keep one format per data set")
    if suffixes == {".parquet"}:
        return datasets.load_dataset("parquet", data_files=files, cache_dir=cache_dir, keep_in_memory=False)
    out = {}
    for split, names in files.items():
        parts = []
        for f in names:
            try:
                parts.append(datasets.Dataset.from_file(f))
            except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
                with open(f, "rb") as file:
                    feather = file.read(6) == b"ARROW1"  # the magic of the IPC file format
                what = "an Arrow IPC file (Feather), not" if feather else "not"
                raise ValueError(f"data.path: {f} is {what} an Arrow stream as datasets writes it ({e}); write it with "
                                 "Dataset.save_to_disk, or as Parquet") from None
        out[split] = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    return datasets.DatasetDict(out)


def open_source(path: str, cache_dir: str | None = None,
                config_name: str | None = None) -> datasets.Dataset | datasets.DatasetDict:
    """The data set at ``path`` (see the module docstring), memory-mapped, read offline."""
    datasets = require_datasets()
    root = Path(path).expanduser()
    with offline_hub():
        if root.is_dir() and any((root / f).is_file() for f in ("dataset_dict.json", "state.json")):
            return datasets.load_from_disk(str(root), keep_in_memory=False)
        if root.exists():
            files = split_files(root)
            if not files:
                raise ValueError(f"data.path: {root} is neither a data set saved with save_to_disk (no "
                                 f"dataset_dict.json or state.json) nor a folder of Parquet/Arrow files; it holds "
                                 f"{what_is_there(root)}")
            return read_files(root, files, cache_dir)
        cache = cache_dir or datasets.config.HF_DATASETS_CACHE
        if not NAME.match(path):
            raise FileNotFoundError(f"data.path: {root} does not exist")
        try:
            return datasets.load_dataset(path, config_name, cache_dir=cache_dir, keep_in_memory=False)
        except (ConnectionError, FileNotFoundError) as e:  # offline: not cached (DatasetNotFoundError is one)
            raise FileNotFoundError(
                f"data.path: {path!r} is not a folder here and not a data set in the Hugging Face datasets cache "
                f"{cache} ({type(e).__name__}); nothing is downloaded: run datasets.load_dataset({path!r}) once "
                "with network access (or set HF_DATASETS_CACHE / data.cache_dir to the cache that holds it)"
            ) from None


# ---------------------------------------------------------------------------------------
# Columns: what a feature is, and how a value of it becomes tensors
# ---------------------------------------------------------------------------------------
def feature_type(feature: Any) -> str:
    """A short description of a ``datasets`` feature (``Image``, ``int64``, ``list of float32``)."""
    datasets = require_datasets()
    f = datasets.features
    if isinstance(feature, f.ClassLabel):
        return f"ClassLabel of {feature.num_classes} names"
    if isinstance(feature, f.Value):
        return feature.dtype
    if isinstance(feature, (f.List, f.LargeList)):
        return f"list of {feature_type(feature.feature)}"
    if isinstance(feature, (f.Array2D, f.Array3D, f.Array4D, f.Array5D)):
        return f"array {list(feature.shape)} of {feature.dtype}"
    if isinstance(feature, dict):
        return "struct"
    return type(feature).__name__


def is_number_dtype(dtype: str) -> bool:
    try:
        return np.dtype(dtype).kind in "biuf"
    except TypeError:  # string, large_string, binary, timestamp[s], ...
        return False


def is_numeric(feature: Any) -> bool:
    """Whether every leaf of ``feature`` is a number (a number, lists or arrays of numbers)."""
    f = require_datasets().features
    if isinstance(feature, f.ClassLabel):
        return True
    if isinstance(feature, f.Value):
        return is_number_dtype(feature.dtype)
    if isinstance(feature, (f.List, f.LargeList)):
        return is_numeric(feature.feature)
    if isinstance(feature, (f.Array2D, f.Array3D, f.Array4D, f.Array5D)):
        return is_number_dtype(feature.dtype)
    return False


def is_text(feature: Any) -> bool:
    f = require_datasets().features
    return isinstance(feature, f.Value) and feature.dtype in ("string", "large_string")


def columns_there(data: datasets.Dataset) -> str:
    return ", ".join(f"{name} ({feature_type(feature)})" for name, feature in data.features.items())


class Blob(io.BytesIO):
    """The encoded bytes of one row's image or audio, named by where they come from (the
    readers of perceptio.data.files name their source in their errors)."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name


def encoded(value: dict[str, Any], where: str) -> Blob | str:
    """An Image / Audio value read undecoded (``{"bytes", "path"}``) -> something to open."""
    if value.get("bytes") is not None:
        return Blob(value["bytes"], where)
    if value.get("path"):
        return value["path"]
    raise ValueError(f"{where}: neither bytes nor a path")


@dataclass
class ImageReader:
    """An Image -> ``[H, W, channels]`` float32 in [0, 1], bicubic-resized to ``size`` if
    given (``resize``; else an image of another size is refused)."""

    key: str
    size: list[int] | None
    channels: int
    resize: bool = True

    def __call__(self, value: Any, where: str) -> dict[str, Tensor]:
        pixels = read_image(encoded(value, where), self.size if self.resize else None, self.channels)
        if self.size is not None and tuple(pixels.shape[:2]) != tuple(self.size):
            raise ValueError(f"{where}: image of {pixels.shape[0]}x{pixels.shape[1]} pixels, but data.image_size is "
                             f"{self.size} and data.resize is false; set data.resize: true to resize it")
        return {self.key: torch.from_numpy(pixels.astype(np.float32) / 255.0)}


@dataclass
class AudioReader:
    """An Audio of WAV bytes -> mono samples ``[num_samples]`` (cropped or zero-padded if
    ``num_samples`` is given), at ``sample_rate`` if given."""

    key: str
    num_samples: int | None
    sample_rate: int | None

    def __call__(self, value: Any, where: str) -> dict[str, Tensor]:
        samples, rate = read_wav(encoded(value, where))
        if self.sample_rate is not None and rate != self.sample_rate:
            raise ValueError(f"{where}: sample rate {rate} Hz, but data.sample_rate is {self.sample_rate} Hz")
        if self.num_samples is not None:
            clip = np.zeros(self.num_samples, np.float32)
            clip[: min(len(samples), self.num_samples)] = samples[: self.num_samples]
            samples = clip
        return {self.key: torch.from_numpy(samples)}


@dataclass
class NumberReader:
    """Numbers (a number, a list, an array) -> a float32 tensor of the row's shape."""

    key: str

    def __call__(self, value: Any, where: str) -> dict[str, Tensor]:
        try:
            array = np.array(value, dtype=np.float32)  # a copy: the mapped table is read-only
        except ValueError:  # an object array: lists of different lengths
            raise ValueError(f"{where}: a ragged list (its lists have different lengths); every example must have "
                             "one shape") from None
        if not np.isfinite(array).all():
            raise ValueError(f"{where}: holds NaN or an infinite value, expected finite numbers (filter the data set "
                             "with datasets' Dataset.filter first)")
        return {self.key: torch.from_numpy(array)}


@dataclass
class LabelReader:
    """A class label -> its class index ``[]`` (long): a ClassLabel id as it is, any other
    value by ``index`` (value -> index of its class)."""

    index: dict[Any, int] | None = None

    def __call__(self, value: Any, where: str) -> dict[str, Tensor]:
        label = int(value) if self.index is None else self.index[value.item() if hasattr(value, "item") else value]
        if label < 0:
            raise ValueError(f"{where}: label {label} (no label); every training and evaluation row needs one")
        return {"targets": torch.tensor(label, dtype=torch.long)}


@dataclass
class TextReader:
    """A text -> its first ``max_length`` UTF-8 byte ids ``[max_length]``, padded, and the
    ``input_mask`` (True on the bytes)."""

    max_length: int

    def __call__(self, value: Any, where: str) -> dict[str, Tensor]:
        ids, mask = ByteTokenizer().batch_encode([str(value)], self.max_length, truncate=True)
        return {"inputs": ids[0], "input_mask": mask[0]}


class HFExamples(ExampleDataset):
    """The rows of one split of a Hugging Face data set, decoded on access.

    ``readers``: ``(column, reader)`` pairs; ``reader(value, where)`` turns a row's value of
    ``column`` into tensors by key (``inputs``, ``targets``, ...). ``where`` names the split in
    errors. A batch is one read of its rows from the memory-mapped table."""

    def __init__(self, data: datasets.Dataset, readers: list[tuple[str, Any]], where: str, transform=None) -> None:
        datasets = require_datasets()
        columns = list(dict.fromkeys(column for column, _ in readers))
        view = data.select_columns(columns)
        for column in columns:  # images and audio come undecoded ({"bytes", "path"}): decoded here
            feature = view.features[column]
            if isinstance(feature, (datasets.Image, datasets.Audio)):
                view = view.cast_column(column, type(feature)(decode=False))
        self.data = view.with_format("numpy")
        self.readers, self.where, self.transform = readers, where, transform

    def __len__(self) -> int:
        return len(self.data)

    def decode(self, i: int, row: dict[str, Any]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for column, reader in self.readers:
            out.update(reader(row[column], f"{self.where} row {i} column {column!r}"))
        return out

    def example(self, i: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.where}: row {i} of {len(self)}")
        return self.decode(i, self.data[i])

    def gather(self, indices: Tensor, *, seed: int = 0, step: int = 0) -> Batch:
        rows = [int(i) for i in indices]
        if not rows:
            raise ValueError("a batch needs at least one index")
        table = self.data[rows]  # column -> the values of these rows, in one read
        return self.collate([self.decode(i, {c: v[j] for c, v in table.items()}) for j, i in enumerate(rows)])

    def collate(self, examples: list[dict[str, Tensor]]) -> Batch:
        for key in examples[0]:
            shapes = {tuple(e[key].shape) for e in examples}
            if len(shapes) > 1:
                raise ValueError(f"{self.where}: the {key} of one batch have different shapes {sorted(shapes)[:4]}; "
                                 "set data.image_size: [H, W] (images) or data.num_samples (audio) to resize them, "
                                 "or make every row one shape")
        return super().collate(examples)


class HFTextWindows(ExampleDataset):
    """Masked bytes of a text column: the rows' UTF-8 bytes joined by blank lines and cut into
    ``seq_len``-byte windows; example ``i`` is window ``i`` (``ids [seq_len]``, the byte ids of
    :mod:`perceptio.tokenizer`). Only the rows' byte lengths are held (read from the Arrow
    offsets); a window reads the rows it covers."""

    def __init__(self, data: datasets.Dataset, column: str, seq_len: int, where: str, transform=None) -> None:
        import pyarrow.compute as pc

        self.data = data.select_columns([column])
        lengths = pc.binary_length(self.data.with_format("arrow")[column]).fill_null(0).to_numpy().astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths + len(SEPARATOR))[:-1]]).astype(np.int64)
        total = int(self.starts[-1] + lengths[-1]) if len(lengths) else 0
        self.column, self.seq_len, self.where, self.transform = column, seq_len, where, transform
        self.size = total // seq_len

    def __len__(self) -> int:
        return self.size

    def example(self, i: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if not 0 <= i < self.size:
            raise IndexError(f"{self.where}: window {i} of {self.size}")
        start, end = i * self.seq_len, (i + 1) * self.seq_len
        first = int(np.searchsorted(self.starts, start, "right")) - 1
        last = int(np.searchsorted(self.starts, end - 1, "right")) - 1
        texts = self.data[first:last + 1][self.column]
        # each row with the separator after it: a window may end inside a separator
        joined = b"".join((t or "").encode("utf-8") + SEPARATOR for t in texts)
        offset = start - int(self.starts[first])
        window = np.frombuffer(joined[offset:offset + self.seq_len], np.uint8)
        return {"ids": torch.from_numpy(window.astype(np.int64)) + NUM_SPECIAL_TOKENS}


# ---------------------------------------------------------------------------------------
# The data kind
# ---------------------------------------------------------------------------------------
@DataConfig.register("hf_dataset")
@dataclass(kw_only=True)
class HFDatasetConfig(TextMLMConfig):
    """A Hugging Face data set (see the module docstring). ``seq_len`` and ``mask_prob`` are
    those of the masked-byte kinds (``text_files``); ``seq_len`` is also the byte length of
    a text to classify."""

    path: str = ""  # a save_to_disk folder, a folder or file of Parquet/Arrow, or a name in the cache
    columns: dict[str, str] = field(default_factory=dict)  # {inputs, labels} | {text} | {text, labels}
    split: str | None = None  # the training split, where the source has splits (None: train)
    val_split: str | None = None  # None: validation / val / valid / dev if there is one, else val_fraction
    test_split: str | None = None  # None: test if there is one, else test_fraction
    config_name: str | None = None  # a cached data set's configuration (load_dataset's second argument)
    cache_dir: str | None = None  # the datasets cache (names, converted Parquet); None: HF_DATASETS_CACHE
    image_size: list[int] | None = None  # [H, W] of every image; None: the images' own size (one size, else refused)
    resize: bool = True  # images of another size than image_size are bicubic-resized to it (false: refused, named)
    channels: int = 3  # images: 1 grey, 3 RGB
    num_samples: int | None = None  # audio: every clip cropped / zero-padded to it; None: one length, else refused
    sample_rate: int | None = None  # audio: the rate every clip must have (None: any)
    max_shift: int = 0  # training augmentation of image inputs [H, W, C]: random shifts of up to this many pixels

    def validate(self) -> None:
        super().validate()
        if not self.path:
            raise ConfigError("data.path (a saved data set, Parquet/Arrow files, or a data set name) is required "
                              "for data kind 'hf_dataset'")
        keys = set(self.columns)
        if keys not in ({"inputs", "labels"}, {"text"}, {"text", "labels"}):
            raise ConfigError(f"data.columns must map inputs and labels (classification), text (masked bytes) or text "
                              f"and labels (text classification) to column names, got {self.columns or '{}'}")
        if self.image_size is not None and (len(self.image_size) != 2 or any(s <= 0 for s in self.image_size)):
            raise ConfigError(f"data.image_size must be [H, W] or null, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        check_positive(self, "num_samples", "sample_rate")
        if self.max_shift < 0:
            raise ConfigError(f"data.max_shift must be >= 0, got {self.max_shift}")
        if self.on_nonfinite != "error":
            raise ConfigError("data.on_nonfinite: skip is not available for hf_dataset (rows are read on access, "
                              "never scanned); filter the data set with datasets' Dataset.filter first")

    def describe(self) -> str:
        return f"data.path={self.path}"

    # -- splits ------------------------------------------------------------------------------
    def source_splits(self) -> tuple[Any, Any | None, Any | None]:
        """The train split, and the val / test splits the source has (None: cut from train)."""
        source = open_source(self.path, self.cache_dir, self.config_name)
        datasets = require_datasets()
        if isinstance(source, datasets.Dataset):
            for key in ("split", "val_split", "test_split"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"data.{key}: {self.path} is one Dataset without splits (saved with "
                                      f"Dataset.save_to_disk); remove data.{key}")
            return source, None, None
        names = list(source)

        def pick(key: str, defaults: tuple[str, ...]) -> Any | None:
            name = getattr(self, key)
            if name is None:
                name = next((n for n in defaults if n in source), None)
                if name is None and key == "split":
                    raise ValueError(f"data.split: {self.path} has no 'train' split; set data.split to one of: "
                                     f"{', '.join(names)}")
                return None if name is None else source[name]
            if name not in source:
                raise ValueError(f"data.{key}: {self.path} has no split {name!r}; its splits are: {', '.join(names)}")
            return source[name]

        train, val, test = pick("split", ("train",)), pick("val_split", VAL_NAMES), pick("test_split", ("test",))
        if val is train or test is train:
            raise ConfigError(f"data.val_split / data.test_split must differ from the training split "
                              f"({self.split or 'train'})")
        return train, val, test

    def check_columns(self, data: Any, name: str) -> None:
        for key, column in self.columns.items():
            if column not in data.features:
                raise ValueError(f"data.columns.{key}: {self.path} ({name} split) has no column {column!r}; its "
                                 f"columns are: {columns_there(data)}")

    # -- readers ---------------------------------------------------------------------------
    def input_reader(self, feature: Any, column: str) -> Any:
        datasets = require_datasets()
        if isinstance(feature, datasets.Image):
            return ImageReader("inputs", self.image_size, self.channels, self.resize)
        if isinstance(feature, datasets.Audio):
            return AudioReader("inputs", self.num_samples, self.sample_rate)
        if is_numeric(feature):
            return NumberReader("inputs")
        hint = "; text is read with data.columns: {text: COLUMN}" if is_text(feature) else ""
        raise ValueError(f"data.columns.inputs: column {column!r} of {self.path} has type {feature_type(feature)}; "
                         f"expected numbers (a number, a list or an array of them), an Image or an Audio{hint}")

    def classes(self, parts: list[tuple[str, Any]]) -> tuple[list[str], LabelReader]:
        """The class names and the label reader: a ClassLabel's names, else the sorted distinct
        values of the label column over all splits (read from the Arrow column)."""
        datasets = require_datasets()
        column = self.columns["labels"]
        feature = parts[0][1].features[column]
        if isinstance(feature, datasets.ClassLabel):
            for name, data in parts:  # found now, not when the run evaluates its test split
                if any(v < 0 for v in data.unique(column)):
                    key = {"train": "split", "val": "val_split", "test": "test_split"}[name]
                    raise ValueError(f"data.columns.labels: the {name} split of {self.path} has rows labelled -1 (no "
                                     f"label, as unlabelled test sets have); pick another split with data.{key}, or "
                                     "leave those rows out (Dataset.filter)")
            return list(feature.names), LabelReader()
        integer = isinstance(feature, datasets.Value) and is_number_dtype(feature.dtype) and \
            np.dtype(feature.dtype).kind in "biu"
        if not (integer or is_text(feature)):
            raise ValueError(f"data.columns.labels: column {column!r} of {self.path} has type {feature_type(feature)}; "
                             "expected class labels (a ClassLabel, integers or strings)")
        values: set[Any] = set()
        for _, data in parts:
            values.update(data.unique(column))
        if None in values:
            raise ValueError(f"data.columns.labels: column {column!r} of {self.path} has rows without a label (null)")
        ordered = sorted(values)
        return [str(v) for v in ordered], LabelReader({v: k for k, v in enumerate(ordered)})

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> Splits:
        train, val, test = self.source_splits()
        parts = [(name, data) for name, data in (("train", train), ("val", val), ("test", test)) if data is not None]
        for name, data in parts:
            self.check_columns(data, name)
        if self.columns.keys() == {"text"}:
            return self.masked_bytes(parts)
        classes, labels = self.classes(parts)
        if "text" in self.columns:
            readers = [(self.text_column(parts), TextReader(self.seq_len)), (self.columns["labels"], labels)]
            info = DataInfo("classification", classes, {"text": True, "max_length": self.seq_len})
        else:
            column = self.columns["inputs"]
            readers = [(column, self.input_reader(train.features[column], column)), (self.columns["labels"], labels)]
            info = DataInfo("classification", classes)
        sets = {name: HFExamples(data, readers, f"{self.describe()} ({name} split)") for name, data in parts}
        augment = None
        if self.max_shift:
            shape = tuple(sets["train"].example(0)["inputs"].shape)
            if len(shape) != 3:
                raise ValueError(f"data.max_shift needs image inputs [H, W, C]; column {self.columns.get('inputs')!r} "
                                 f"gives examples of shape {shape}")
            augment = self._augment
        return self.cut(sets, info, augment)

    def cut(self, sets: dict[str, ExampleDataset], info: DataInfo, augment=None) -> Splits:
        """Splits from the source's splits, the missing val / test cut from train (indices only);
        ``augment``: the batch-level transform of the training split only."""
        rows = sets["train"]
        if "val" in sets and "test" in sets:
            keep, val, test = torch.arange(len(rows)), None, None
        else:
            keep, val, test = split_indices(len(rows), 0.0 if "val" in sets else self.val_fraction,
                                            0.0 if "test" in sets else self.test_fraction, self.split_seed)
        train = rows.subset(keep)
        if augment is not None:  # the view's own transform: the evaluation splits do not share it
            train.transform = augment
        return Splits(train, sets["val"] if "val" in sets else rows.subset(val),
                      sets["test"] if "test" in sets else rows.subset(test), info)

    def text_column(self, parts: list[tuple[str, Any]]) -> str:
        """``columns.text``, checked to be text in every split."""
        column = self.columns["text"]
        for _, data in parts:
            if not is_text(data.features[column]):
                raise ValueError(f"data.columns.text: column {column!r} of {self.path} has type "
                                 f"{feature_type(data.features[column])}; expected text (string)")
        return column

    def masked_bytes(self, parts: list[tuple[str, Any]]) -> Splits:
        column = self.text_column(parts)
        sets = {name: HFTextWindows(data, column, self.seq_len, f"{self.describe()} ({name} split)", self._mask)
                for name, data in parts}
        if len(sets["train"]) < 3:
            raise ValueError(f"{self.describe()}: the training text makes {len(sets['train'])} sequences of "
                             f"data.seq_len={self.seq_len} bytes, fewer than 3; give more text or lower seq_len")
        splits = self.cut(sets, DataInfo("mlm"))
        sample = splits.train.batch(torch.arange(min(len(splits.train), max(1, UNIGRAM_BYTES // self.seq_len))))
        counts = torch.bincount(sample["targets"].flatten(), minlength=VOCAB_SIZE)
        splits.info.extras["unigram_top_id"] = int(counts.argmax())
        return splits

    def _augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        return {**batch, "inputs": random_shift(batch["inputs"], self.max_shift, generator)}


def classification_to_hf(splits: Splits) -> datasets.DatasetDict:
    """In-memory classification splits (``inputs`` and ``targets`` tensors, as the built-in
    kinds have them) -> a ``DatasetDict`` (``train``, ``validation``, ``test``) with columns
    ``inputs`` (float32 arrays of the examples' shape) and ``label`` (a ClassLabel of the
    classes), e.g. to save with ``save_to_disk`` and read back with kind ``hf_dataset``."""
    datasets = require_datasets()
    f = datasets.features
    if splits.info.objective != "classification":
        raise ValueError(f"expected classification data, got objective {splits.info.objective!r}")
    out = {}
    for name, split in (("train", splits.train), ("validation", splits.val), ("test", splits.test)):
        data = nested_stack([split.example(i) for i in range(len(split))])  # examples, without augmentation
        inputs, targets = data["inputs"].float().numpy(), data["targets"].numpy()
        shape = inputs.shape[1:]
        if len(shape) == 0:
            inputs_feature = f.Value("float32")
        elif len(shape) == 1:
            inputs_feature = f.List(f.Value("float32"), length=shape[0])
        elif len(shape) <= 5:
            inputs_feature = getattr(f, f"Array{len(shape)}D")(shape=shape, dtype="float32")
        else:
            raise ValueError(f"examples of {len(shape)} dimensions {shape}: at most 5 fit an Arrow array column")
        features = f.Features({"inputs": inputs_feature, "label": f.ClassLabel(names=list(splits.info.classes or []))})
        out[name] = datasets.Dataset.from_dict({"inputs": inputs, "label": targets}, features=features)
    return datasets.DatasetDict(out)
