"""WebDataset tar shards: written from any data set, streamed, split across readers, resumable.

A shard is a plain tar file holding examples one after another, each as the members
``KEY.FIELD.EXT`` (the WebDataset layout): ``000000042.inputs.npy``, ``000000042.targets.cls``;
nested fields keep their path (``KEY.inputs.video.npy``). Members are decoded by extension:
``.npy`` (numpy), ``.cls`` (an integer class id, text), ``.json`` (a number or nested list),
``.png`` / ``.jpg`` / ``.jpeg`` (an image ``[H, W, C]`` in [0, 1]). :func:`write_shards`
(``perceptio data to-shards``) writes tensors as ``.npy`` (exact) and integer labels as
``.cls``, and puts ``info.json`` beside the shards: the data set's :class:`DataInfo`, its
fields, and each split's shards with their example counts, so a run needs only ``urls``.

Reading (kind ``webdataset``) uses the standard library's ``tarfile``, not the
``webdataset`` package: it reads as fast (docs/data.md) and can start at a byte offset,
which resumption needs. The training split is a :class:`ShardStream`:

* **Readers.** Process ``rank`` of ``world_size`` with DataLoader worker ``worker`` of
  ``num_workers`` is reader ``g = rank * num_workers + worker`` of ``R = world_size *
  num_workers``. Each epoch the shards are permuted by ``(seed, epoch)`` (the same order
  everywhere) and reader ``g`` reads shards ``g, g + R, g + 2R, ...`` of that order: the
  readers' shards are disjoint and together all of them. When ``R`` does not divide the
  number of shards, some readers read one shard more per epoch (a warning says so); the
  stream is endless (epoch after epoch), so nobody waits, but those readers' epochs end
  later. Fewer shards than readers is an error.
* **Shuffling.** Each reader keeps a buffer of ``shuffle_buffer`` examples and emits a
  random one of them for each one it reads; the draw is a hash of ``(seed, epoch, rank,
  worker, count)``, so it needs no stored random state. The buffer is emptied at the end
  of the reader's epoch: an epoch is every example once.
* **Positions.** Every example comes with the reader's position after it: the epoch, the
  shard (its place in the reader's list) and byte offset of the next unread example, the
  examples drawn this epoch, and the ``(shard, offset)`` of each example still in the
  buffer. A stream resumed from a position re-reads the buffered examples by seeking to
  them and continues at the offset: nothing already emitted is read again.

Validation and test shards are map-style (:class:`ShardExamples`): one pass over the tar
headers (no member is decoded) indexes the examples, then each is read on access by seeking.
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import os
import re
import shutil
import tarfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..config import ConfigError, check_positive
from .base import Batch, DataConfig, DataInfo, ExampleDataset, Nested, Splits, StreamDataset, nested_stack
from .builtin import random_shift
from .loader import LoaderOptions, deliver, read_noting_warnings, unchanged

INFO_FILE = "info.json"
FORMAT = "perceptio-shards"
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")
EXTENSIONS = ("npy", "cls", "json", *IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------------------
# Shard names: brace patterns, globs, lists
# ---------------------------------------------------------------------------------------
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """``train-{000000..000002}.tar`` -> three names (zero padding kept), ``{a,b}`` -> two;
    several groups multiply, in order."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    ranged = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if ranged:
        lo, hi = ranged.groups()
        width = len(lo) if lo.startswith("0") else 0
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [head + c + rest for c in choices for rest in expand_braces(tail)]


def resolve_urls(urls: str | Sequence[str], key: str) -> list[str]:
    """Local shard paths of ``urls``: brace patterns and globs (``*``, ``?``, ``[``) expanded,
    lists concatenated. A glob matching nothing is an error naming it; a brace-expanded
    name that does not exist is reported when it is read (``on_error``)."""
    out: list[str] = []
    for pattern in [urls] if isinstance(urls, str) else list(urls):
        for name in expand_braces(os.path.expanduser(pattern)):
            if any(c in name for c in "*?["):
                found = sorted(glob.glob(name))
                if not found:
                    raise FileNotFoundError(f"{key}: the pattern {name!r} matches no file")
                out += found
            else:
                out.append(name)
    if not out:
        raise ValueError(f"{key}: {urls!r} names no shard")
    return out


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------
def flatten(example: Mapping[str, Nested], prefix: str = "") -> dict[str, Tensor]:
    """``{"inputs": {"video": t}}`` -> ``{"inputs.video": t}``."""
    out: dict[str, Tensor] = {}
    for k, v in example.items():
        if "." in k:
            raise ValueError(f"field name {prefix + k!r} contains '.', which separates fields in shard member names")
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = torch.as_tensor(v)
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, v in flat.items():
        *parents, last = name.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return out


def encode_member(value: Tensor) -> tuple[str, bytes]:
    """A tensor -> (extension, bytes): integer scalars as ``.cls`` text, the rest ``.npy``."""
    if value.dim() == 0 and not value.dtype.is_floating_point and value.dtype != torch.bool:
        return "cls", str(int(value)).encode()
    buffer = io.BytesIO()
    np.save(buffer, value.detach().cpu().numpy(), allow_pickle=False)
    return "npy", buffer.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: the same data give the same bytes
    tar.addfile(info, io.BytesIO(data))


def write_split(dataset: ExampleDataset, out_dir: Path, split: str, shard_size: int | None = None,
                shard_bytes: int | None = None, order: Sequence[int] | None = None) -> dict[str, Any]:
    """Write ``dataset`` (its examples without random transforms) as ``out_dir/SPLIT-NNNNNN.tar``,
    in ``order`` (None: index order; an example's key is its index either way), a new
    shard after ``shard_size`` examples or ``shard_bytes`` bytes. Each shard is written
    under a temporary name and renamed when complete. Returns the split's entry of
    ``info.json``: ``{"shards": [names], "examples": [count per shard], "fields": {name: ext}}``."""
    if shard_size is None and shard_bytes is None:
        raise ValueError("give shard_size (examples per shard) or shard_bytes")
    names: list[str] = []
    counts: list[int] = []
    fields: dict[str, str] = {}
    tar = tmp = None

    def close() -> None:
        tar.close()
        os.replace(tmp, out_dir / names[-1])

    written = 0
    for i in range(len(dataset)) if order is None else order:
        if tar is None:
            names.append(f"{split}-{len(names):06d}.tar")
            counts.append(0)
            tmp = out_dir / f".{names[-1]}.tmp"
            tar, written = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT), 0
        flat = flatten(dataset.example(i, None))
        members = {name: encode_member(value) for name, value in flat.items()}
        kinds = {name: ext for name, (ext, _) in members.items()}
        if not fields:
            fields = kinds
        elif kinds != fields:
            raise ValueError(f"{split} example {i} has fields {kinds}, the first example {fields}; every example "
                             "must have the same fields")
        for name, (ext, data) in members.items():
            _add_member(tar, f"{i:09d}.{name}.{ext}", data)
            written += len(data) + 512
        counts[-1] += 1
        if (shard_size is not None and counts[-1] >= shard_size) or (shard_bytes is not None and written >= shard_bytes):
            close()
            tar = None
    if tar is not None:
        close()
    return {"shards": names, "examples": counts, "fields": fields}


def write_info(out_dir: Path, info: DataInfo, splits: dict[str, dict[str, Any]], source: dict[str, Any]) -> Path:
    """``info.json``: what a ``webdataset`` run needs besides the shards (atomically written)."""
    record = {"format": FORMAT, "version": 1,
              "info": {"objective": info.objective, "classes": info.classes, "extras": info.extras},
              "splits": splits, "source": source}
    try:
        text = json.dumps(record, indent=1)
    except TypeError as e:
        raise ValueError(f"the data set's info cannot be written as JSON ({e}): {info}") from None
    path = out_dir / INFO_FILE
    tmp = out_dir / f".{INFO_FILE}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_shards(config: DataConfig, out_dir: str | os.PathLike, splits: Sequence[str] = SPLITS,
                 shard_size: int | None = 1000, shard_bytes: int | None = None, overwrite: bool = False,
                 shuffle_seed: int | None = 0) -> Path:
    """Write the ``splits`` of the data set ``config`` as shards in ``out_dir`` with its
    ``info.json`` (``perceptio data to-shards``). The training split is written in the
    order of a permutation seeded by ``shuffle_seed`` (None: the data set's order): a
    stream's shuffle buffer mixes only nearby examples, and a source in class order (class
    folders) would otherwise give shards of one class each. Everything is written into a temporary
    folder beside ``out_dir`` and renamed into place when complete. An existing non-empty
    ``out_dir`` is refused unless ``overwrite``, and even then only if it holds nothing but
    shards and ``info.json``. Returns the path of ``info.json``."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is not a folder")
    if out.is_dir() and any(out.iterdir()):
        others = sorted(p.name for p in out.iterdir() if not (p.suffix == ".tar" or p.name == INFO_FILE))
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; choose a new folder or pass --overwrite to replace its shards")
        if others:
            raise FileExistsError(f"{out} holds files that are not shards ({', '.join(others[:5])}); --overwrite "
                                  "replaces only a folder of shards: choose another folder")
    loaded = config.load()
    if any(loaded.get(name).transform is not None for name in splits):
        warnings.warn(f"{config.describe()} applies a random transform to its batches (augmentation, masking) that "
                      "the shards do not hold: they hold the examples as read; kind webdataset re-applies image "
                      "shifts (data.max_shift), not other transforms", stacklevel=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        def order(name: str) -> list[int] | None:
            if name != "train" or shuffle_seed is None:
                return None
            return torch.randperm(len(loaded.train), generator=torch.Generator().manual_seed(shuffle_seed)).tolist()

        written = {name: write_split(loaded.get(name), tmp, name, shard_size, shard_bytes, order(name))
                   for name in splits}
        write_info(tmp, loaded.info, written, config.to_dict())
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / INFO_FILE


def read_info(path: Path, key: str) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{key}: {path} not found; write the shards with `perceptio data to-shards` (which "
                                f"puts {INFO_FILE} beside them) or give data.info") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{key}: {path} is not a readable {INFO_FILE}: {e}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{key}: {path} is not a perceptio shard index (expected \"format\": {FORMAT!r})")
    return record


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------
class ShardError(ValueError):
    """A shard that is missing or unreadable, or an example in it that is bad."""


@dataclass
class Sample:
    key: str
    members: dict[str, bytes]  # "inputs.npy" -> bytes
    offset: int  # byte offset of the sample's first header
    end: int  # byte offset of the next sample's first header (or the end of the archive)


def read_samples(path: str, offset: int = 0, limit: int | None = None) -> Iterator[Sample]:
    """The samples of one shard from byte ``offset`` on (``limit``: at most that many).
    Members are grouped by key (the name up to the first dot). A shard that is missing,
    not a tar file or truncated raises :class:`ShardError` naming it."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ShardError(f"shard {path}: cannot be read ({e.strerror or e})") from None
    with f:
        f.seek(offset)
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
        except tarfile.TarError as e:
            if offset and f.seek(0, os.SEEK_END) <= offset + 1024:  # resumed at the end-of-archive marker
                return
            raise ShardError(f"shard {path}: not a readable tar file ({e})") from None
        key, members, start, count = None, {}, offset, 0
        try:
            while True:
                info = tar.next()
                if info is None:
                    break
                tar.members.clear()  # tarfile keeps every header otherwise: a large shard would grow memory
                if not info.isfile():
                    continue
                base = os.path.basename(info.name)
                this, _, suffix = base.partition(".")
                if this != key:
                    if key is not None:
                        yield Sample(key, members, start, info.offset)
                        count += 1
                        if limit is not None and count >= limit:
                            return
                    key, members, start = this, {}, info.offset
                data = tar.extractfile(info).read()
                if len(data) != info.size:
                    raise tarfile.ReadError(f"member {info.name} is truncated")
                members[suffix] = data
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ShardError(f"shard {path}: unreadable after byte {start} (truncated or damaged: {e})") from None
        if key is not None:
            yield Sample(key, members, start, f.seek(0, os.SEEK_END))


def decode_member(suffix: str, data: bytes) -> Tensor:
    """One member by its extension (the text after the last dot)."""
    ext = suffix.rsplit(".", 1)[-1].lower()
    if ext == "npy":
        return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False).copy())
    if ext == "cls":
        return torch.tensor(int(data.decode().strip()))
    if ext == "json":
        return torch.tensor(json.loads(data))
    if ext in IMAGE_EXTENSIONS:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            array = np.asarray(im.convert("L" if im.mode in ("L", "1", "I;16") else "RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array if array.ndim == 3 else array[..., None])
    raise ValueError(f"unsupported member extension {ext!r}; supported: {list(EXTENSIONS)}")


def decode_sample(sample: Sample, members: Mapping[str, str] | None, shard: str) -> dict[str, Nested]:
    """A sample's members -> an example (nested by the dotted field names). ``members``:
    field name -> member suffix (``{"inputs": "inputs.npy"}``, or ``{"inputs": "jpg"}`` for
    shards of other tools), the fields every sample must have; None: every member, named
    by its suffix without the extension."""
    if members is None:
        members = {suffix.rsplit(".", 1)[0] if "." in suffix else suffix: suffix for suffix in sample.members}
    missing = sorted(name for name, suffix in members.items() if suffix not in sample.members)
    if missing:
        raise ShardError(f"shard {shard}: sample {sample.key!r} lacks the field(s) {missing}; it has "
                         f"{sorted(sample.members)}")
    flat: dict[str, Tensor] = {}
    for name, suffix in members.items():
        try:
            flat[name] = decode_member(suffix, sample.members[suffix])
        except Exception as e:  # noqa: BLE001 - any decoder failure names the member
            raise ShardError(f"shard {shard}: sample {sample.key!r}: member {sample.key}.{suffix} cannot be "
                             f"decoded ({type(e).__name__}: {e})") from None
    return unflatten(flat)


def mix(*values: int) -> int:
    """A 64-bit hash of integers (splitmix64 steps): the shuffle draws, without RNG state."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h


def epoch_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """The shards' order in ``epoch``: the same in every process."""
    return torch.randperm(num_shards, generator=torch.Generator().manual_seed(mix(seed, epoch) % 2**63)).tolist()


class ShardReader:
    """What the train and evaluation splits share: the shard list, the fields (``members``:
    field name -> member suffix, :func:`decode_sample`), bad-input
    policy (``on_error``: ``error`` raises naming the shard, ``skip`` warns and goes on),
    and the batch-level transform (random image shifts)."""

    def __init__(self, shards: list[str], members: Mapping[str, str] | None, counts: list[int] | None,
                 on_error: str = "error", max_shift: int = 0) -> None:
        self.shards, self.members, self.counts = shards, members, counts
        self.on_error, self.max_shift = on_error, max_shift
        self.decoded = 0  # examples decoded by this object (in this process): resumption reads none twice

    def samples(self, shard: int, offset: int = 0, limit: int | None = None) -> Iterator[tuple[dict, Sample]]:
        """Decoded examples of shard ``shard`` from ``offset``; a bad shard or sample raises
        or (``on_error: skip``) is skipped with a warning."""
        path = self.shards[shard]
        seen = 0
        try:
            for sample in read_samples(path, offset, limit):
                seen += 1
                try:
                    example = decode_sample(sample, self.members, path)
                except ShardError as e:
                    self._bad(e, "skipped the sample")
                    continue
                self.decoded += 1
                yield example, sample
        except ShardError as e:
            self._bad(e, "skipped the rest of the shard")
            return
        expected = self.counts[shard] if self.counts is not None and shard < len(self.counts) else None
        if offset == 0 and limit is None and expected is not None and seen != expected:
            self._bad(ShardError(f"shard {path}: {seen} examples, {INFO_FILE} says {expected} (truncated or "
                                 "replaced?)"), "kept the examples read")

    def _bad(self, error: ShardError, what: str) -> None:
        if self.on_error == "error":
            raise error
        warnings.warn(f"{error}; {what} (data.on_error: skip)", stacklevel=3)

    def collate(self, examples: list[dict[str, Nested]]) -> Batch:
        return nested_stack(examples)

    def transform(self, batch: Batch, generator: torch.Generator) -> Batch:
        if self.max_shift <= 0:
            return batch
        return {**batch, "inputs": random_shift(batch["inputs"], self.max_shift, generator)}


class ShardStream(ShardReader, StreamDataset):
    """The training split: an endless, shuffled stream of the shards' examples (module doc)."""

    def __init__(self, shards: list[str], members: Mapping[str, str] | None, counts: list[int] | None,
                 shuffle_buffer: int = 1000, on_error: str = "error", max_shift: int = 0) -> None:
        ShardReader.__init__(self, shards, members, counts, on_error, max_shift)
        self.shuffle_buffer = shuffle_buffer
        if max_shift <= 0:
            self.transform = None

    @property
    def num_examples(self) -> int | None:
        """Examples per epoch (from info.json), or None where unknown."""
        return sum(self.counts) if self.counts is not None else None

    def reader_shards(self, seed: int, epoch: int, reader: int, readers: int) -> list[int]:
        if readers > len(self.shards):
            raise ValueError(f"{len(self.shards)} shards for {readers} readers (processes x DataLoader workers): "
                             "every reader needs a shard; write smaller shards (perceptio data to-shards "
                             "--shard-size) or lower train.num_workers")
        return epoch_order(len(self.shards), seed, epoch)[reader::readers]

    def stream(self, seed: int, rank: int, world_size: int, worker: int, num_workers: int,
               state: dict[str, Any] | None) -> Iterator[tuple[dict[str, Nested], dict[str, Any]]]:
        readers, reader = world_size * num_workers, rank * num_workers + worker
        self.reader_shards(seed, 0, reader, readers)  # too many readers: an error before anything is read
        if readers > 1 and len(self.shards) % readers and reader == 0 and state is None:
            warnings.warn(f"{len(self.shards)} shards do not divide among {readers} readers (processes x workers): "
                          "some read one shard more per epoch", stacklevel=2)
        state = state or {}
        epoch, j, offset, drawn = (int(state.get(k, 0)) for k in ("epoch", "shard", "offset", "drawn"))
        # the buffer: examples and their (shard, offset), in two lists (a position copies the second);
        # a resumed stream reads again the examples that were in it, at their offsets
        examples: list[dict] = []
        where: list[list[int]] = []
        for shard, at in state.get("buffer", []):
            for example, sample in self.samples(shard, at, limit=1):
                examples.append(example)
                where.append([shard, at])
        size = max(1, self.shuffle_buffer)
        for epoch in itertools.count(epoch):
            mine = self.reader_shards(seed, epoch, reader, readers)
            for j in range(j, len(mine)):
                for example, sample in self.samples(mine[j], offset):
                    examples.append(example)
                    where.append([mine[j], sample.offset])
                    if len(examples) >= size:
                        drawn += 1
                        yield self._draw(examples, where, mix(seed, epoch, rank, worker, drawn - 1)), {
                            "epoch": epoch, "shard": j, "offset": sample.end, "drawn": drawn, "buffer": list(where)}
                offset = 0
            while examples:  # the end of this reader's epoch: empty the buffer
                drawn += 1
                example = self._draw(examples, where, mix(seed, epoch, rank, worker, drawn - 1))
                yield example, ({"epoch": epoch, "shard": len(mine), "offset": 0, "drawn": drawn, "buffer": list(where)}
                                if examples else {"epoch": epoch + 1, "shard": 0, "offset": 0, "drawn": 0, "buffer": []})
            j, drawn = 0, 0

    @staticmethod
    def _draw(examples: list, where: list, draw: int) -> dict:
        """Take the example ``draw % len`` out of the buffer (the last one takes its place)."""
        k = draw % len(examples)
        example = examples[k]
        examples[k], where[k] = examples[-1], where[-1]
        examples.pop()
        where.pop()
        return example


class ShardExamples(ShardReader, ExampleDataset):
    """Shards read by index (validation, test): the tar headers are scanned once on first
    use (no member is decoded), then example ``i`` is read by seeking to it."""

    def __init__(self, shards: list[str], members: Mapping[str, str] | None, counts: list[int] | None,
                 on_error: str = "error") -> None:
        ShardReader.__init__(self, shards, members, counts, on_error)
        self.transform = None
        self._index: list[tuple[int, int]] | None = None

    @property
    def index(self) -> list[tuple[int, int]]:
        if self._index is None:
            index = []
            for shard, path in enumerate(self.shards):
                try:
                    index += [(shard, s.offset) for s in read_samples(path)]
                except ShardError as e:
                    self._bad(e, "left it out")
            self._index = index
        return self._index

    def __len__(self) -> int:
        return len(self.index)

    def example(self, i: int, generator: torch.Generator | None = None) -> dict[str, Nested]:
        shard, offset = self.index[i]
        for example, _ in self.samples(shard, offset, limit=1):
            return example
        raise ShardError(f"shard {self.shards[shard]}: example {i} at byte {offset} cannot be read")


# ---------------------------------------------------------------------------------------
# The data kind
# ---------------------------------------------------------------------------------------
@DataConfig.register("webdataset")
@dataclass(kw_only=True)
class WebDatasetConfig(DataConfig):
    """WebDataset tar shards (``perceptio data to-shards`` writes them). ``urls``: the
    training shards, a brace pattern (``shards/train-{000000..000099}.tar``), a glob, or a
    list of them. ``val_urls`` / ``test_urls``: None: the val / test shards that
    ``info.json`` lists (``to-shards --split all``). ``info``: the ``info.json`` (None: the
    one beside the first training shard). ``val_fraction`` / ``test_fraction`` do not apply:
    splits are shards."""

    urls: str | list[str]
    val_urls: str | list[str] | None = None
    test_urls: str | list[str] | None = None
    info: str | None = None
    shuffle_buffer: int = 1000  # examples each reader holds to shuffle (1: shard order only)
    max_shift: int = 0  # training augmentation of image inputs: random shifts of up to this many pixels
    on_error: Literal["error", "skip"] = "error"  # a missing / unreadable shard or a bad sample
    # field name -> member suffix, for shards of other tools (KEY.jpg, KEY.cls): {inputs: jpg, targets: cls};
    # None: the fields info.json lists
    members: dict[str, str] | None = None

    def validate(self) -> None:
        super().validate()
        check_positive(self, "shuffle_buffer")
        if self.max_shift < 0:
            raise ConfigError(f"data.max_shift must be >= 0, got {self.max_shift}")
        if isinstance(self.urls, list) and not self.urls:
            raise ConfigError("data.urls is empty; give a brace pattern such as shards/train-{000000..000009}.tar")

    def describe(self) -> str:
        return f"data (kind=webdataset, urls={self.urls!r})"

    def load(self) -> Splits:
        train = resolve_urls(self.urls, "data.urls")
        info_path = Path(self.info).expanduser() if self.info else Path(train[0]).parent / INFO_FILE
        record = read_info(info_path, "data.info" if self.info else "data.urls")
        listed = record.get("splits", {})
        fields = listed.get("train", {}).get("fields")  # what to-shards wrote: {name: extension}
        members = dict(self.members) if self.members else (
            {name: f"{name}.{ext}" for name, ext in fields.items()} if fields else None)

        def counts(names: list[str], split: str) -> list[int] | None:
            entry = listed.get(split, {})
            by_name = dict(zip(entry.get("shards", []), entry.get("examples", [])))
            found = [by_name.get(Path(n).name) for n in names]
            same_dir = all(Path(n).parent == info_path.parent for n in names)
            return found if same_dir and None not in found else None

        def split(name: str, urls) -> ShardExamples:
            if urls is None:
                entry = listed.get(name)
                if not entry or not entry.get("shards"):
                    raise ValueError(f"data.{name}_urls: {info_path} lists no {name} shards; write them with "
                                     f"`perceptio data to-shards ... --split all` or give data.{name}_urls")
                names = [str(info_path.parent / n) for n in entry["shards"]]
            else:
                names = resolve_urls(urls, f"data.{name}_urls")
            return ShardExamples(names, members, counts(names, name), self.on_error)

        if members is not None and "inputs" not in {name.split(".")[0] for name in members}:
            source = record.get("source", {}).get("kind", "?")
            raise ValueError(f"{self.describe()}: the shards' examples have the fields {sorted(members)}, no "
                             f"'inputs'; name the members with data.members ({{inputs: jpg, targets: cls}}), or, for "
                             f"shards written from kind {source!r}: they hold its examples without its random "
                             "transform (e.g. the masking of bytes_mlm), which kind webdataset does not apply")
        stream = ShardStream(train, members, counts(train, "train"), self.shuffle_buffer, self.on_error,
                             self.max_shift)
        saved = record["info"]
        info = DataInfo(saved["objective"], saved.get("classes"), saved.get("extras") or {})
        return Splits(stream, split("val", self.val_urls), split("test", self.test_urls), info)


# ---------------------------------------------------------------------------------------
# Training batches from a stream (the trainer's stream path)
# ---------------------------------------------------------------------------------------
class _Readers(torch.utils.data.IterableDataset):
    """What each DataLoader worker runs: its reader of the stream, cut into micro-batches.
    DataLoader worker ``i`` plays reader ``(i + phase) % num_workers``: the loader asks
    its workers in turn from worker 0, so a resumed loader continues the same rotation."""

    def __init__(self, stream: StreamDataset, seed: int, rank: int, world_size: int, num_workers: int,
                 states: list[dict | None], phase: int, size: int) -> None:
        self.stream, self.seed, self.rank, self.world_size = stream, seed, rank, world_size
        self.num_workers, self.states, self.phase, self.size = num_workers, states, phase, size

    def __iter__(self) -> Iterator[tuple[Batch, int, dict]]:
        info = torch.utils.data.get_worker_info()
        worker = ((info.id if info is not None else 0) + self.phase) % self.num_workers
        items = self.stream.stream(self.seed, self.rank, self.world_size, worker, self.num_workers,
                                   self.states[worker])
        collate = getattr(self.stream, "collate", nested_stack)
        while True:  # warnings (a skipped shard) and errors travel with the batch to the main process
            chunk, noted = read_noting_warnings(lambda: list(itertools.islice(items, self.size)))
            if chunk is None:  # an error in a worker: the main process raises it (loader.deliver)
                yield None, worker, None, noted
                return
            if len(chunk) < self.size:
                deliver(noted, set())
                return
            yield collate([example for example, _ in chunk]), worker, chunk[-1][1], noted


class StreamBatches:
    """The micro-batches of ``size`` examples that one process trains on, read from a
    :class:`StreamDataset` by ``num_workers`` DataLoader workers (0: in this process),
    each worker one reader. A micro-batch is one worker's; workers take turns.

    :meth:`state` is the position after the last micro-batch *taken* (not those the
    workers prefetched), per reader; a loader built from it continues exactly where this
    one stopped, without reading what was taken. The batch-level ``transform`` of the
    stream (random shifts) is applied by the caller with the step's generator."""

    def __init__(self, stream: StreamDataset, size: int, seed: int, rank: int = 0, world_size: int = 1,
                 options: LoaderOptions = LoaderOptions(), state: dict[str, Any] | None = None) -> None:
        num_workers = options.num_workers
        readers = max(1, num_workers)
        if state is not None and len(state["readers"]) != readers:
            raise ValueError(f"the checkpoint's stream position has {len(state['readers'])} readers per process, "
                             f"this run {readers}: resume with train.num_workers={len(state['readers'])}")
        self.readers = list(state["readers"]) if state is not None else [None] * readers
        self.phase = int(state["phase"]) if state is not None else 0
        source = _Readers(stream, seed, rank, world_size, readers, list(self.readers), self.phase, size)
        if num_workers == 0:
            self._items = iter(source)
        else:
            # one iterator for the whole run; its own generator: starting it draws no number from the global
            # RNG (dropout), which a resumed run restores before this
            kwargs = {**options.dataloader_kwargs(), "persistent_workers": False,
                      "generator": torch.Generator().manual_seed(seed)}
            self._items = iter(torch.utils.data.DataLoader(source, batch_size=None, collate_fn=unchanged, **kwargs))
        self.size, self.transform = size, getattr(stream, "transform", None)
        self._seen: set[str] = set()

    def next(self, generator: torch.Generator | None = None) -> Batch:
        """The next micro-batch, the stream's batch-level ``transform`` applied with ``generator``."""
        try:
            batch, reader, position, noted = next(self._items)
        except StopIteration:
            raise ValueError("the training stream ended; a stream must be endless (the webdataset kind is)") from None
        deliver(noted, self._seen)
        self.readers[reader] = position
        self.phase = (reader + 1) % len(self.readers)
        if self.transform is not None:
            batch = self.transform(batch, generator or torch.Generator().manual_seed(0))
        return batch

    def state(self) -> dict[str, Any]:
        """JSON-serialisable: ``{"phase": next reader, "readers": [position or None, ...]}``."""
        return {"phase": self.phase, "readers": list(self.readers)}

    def close(self) -> None:
        self._items = None


def first_batch(stream: StreamDataset, n: int) -> Batch:
    """``n`` examples from the start of ``stream``, collated (to check that the model fits the data)."""
    if isinstance(stream, ShardStream):  # the first shard's first examples, without filling a shuffle buffer
        examples = [example for example, _ in stream.samples(0, limit=n)]
    else:
        examples = [example for example, _ in itertools.islice(stream.stream(0, 0, 1, 0, 1, None), n)]
    if not examples:
        raise ValueError("the training stream yields no example")
    return getattr(stream, "collate", nested_stack)(examples)

