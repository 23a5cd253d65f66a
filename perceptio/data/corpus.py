"""A text corpus of any size for masked-byte modelling, read on access (kind ``text_files``).

The files are joined (in order, a blank line ``\\n\\n`` between two) into one virtual byte
string of ``C`` bytes that is never loaded: :class:`ByteCorpus` reads the bytes of a
window with ``os.pread`` (positioned reads of the open files), so memory does not grow
with ``C``. Not ``numpy.memmap``: the pages of a mapped file that a process touches count
in its resident memory, and the kernel maps them in blocks of up to 2 MB (large folios),
so 20 training steps on random windows of a mapped 2 GB file peaked at 1215 MiB of RSS
against 470 MiB on a 2 MB file (benchmarks/data_loading.py memory); positioned reads go
through the page cache, which is not the process's memory.

The corpus is cut into ``B`` blocks of ``block_size`` bytes (the last one may be shorter),
and the blocks are split into train / val / test (``val_fraction``, ``test_fraction``,
``split_seed``; indices only). What an example and an epoch are:

* training example ``i``: a window of ``seq_len`` bytes at a random offset inside training
  block ``i``, the offset drawn from ``example_generator(seed, step, i)`` (the same window
  for any number of workers; a new one each time the block is visited). An epoch visits
  every training block once.
* validation / test example ``j``: window ``j`` of the consecutive ``seq_len``-byte windows
  of the split's blocks (all of their text, at fixed places).

With ``block_size == seq_len`` (the default up to 2**20 sequences) the blocks are exactly
the sequences of the in-memory kind: every sequence once per epoch, no random offsets.
Masking (BERT's 80/10/10) is drawn per example from the same generator.

UTF-8 is checked once per file, in 1 MB chunks (so also without memory), and the result
(with the file's byte counts, for the unigram baseline) is cached with the file's size
and modification time (:func:`text_index`).
"""

from __future__ import annotations

import codecs
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..tokenizer import NUM_SPECIAL_TOKENS
from .base import ExampleDataset, Nested, example_generator
from .builtin import mask_tokens

SEPARATOR = b"\n\n"
CHUNK = 1 << 20  # bytes read at once when a file is checked (bincount makes an 8-byte copy of each)
MAX_BLOCKS = 1 << 20  # default block_size: at most this many blocks (index memory: 8 bytes each)


@dataclass
class FileCheck:
    """What a pass over a file found: the offset of its first non-UTF-8 byte (-1: none) and
    its byte counts ``[256]``."""

    size: int
    mtime_ns: int
    bad_at: int
    counts: np.ndarray


def check_file(path: Path) -> FileCheck:
    """Read ``path`` once in chunks: UTF-8 validity and byte counts."""
    stat = path.stat()
    decoder = codecs.getincrementaldecoder("utf-8")()
    counts = np.zeros(256, np.int64)
    bad_at, offset = -1, 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            counts += np.bincount(np.frombuffer(chunk, np.uint8), minlength=256)
            if bad_at < 0:
                pending = len(decoder.getstate()[0])
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as e:
                    bad_at = offset - pending + e.start
            offset += len(chunk)
    if bad_at < 0:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            bad_at = offset - len(decoder.getstate()[0])
    return FileCheck(stat.st_size, stat.st_mtime_ns, bad_at, counts)


def text_index(files: list[Path], at: Path | None) -> list[FileCheck]:
    """:func:`check_file` of every file, from the cache file ``at`` for files of unchanged
    size and modification time (None: checked every run)."""
    known: dict[str, FileCheck] = {}
    if at is not None and at.is_file():
        try:
            with np.load(at, allow_pickle=False) as z:
                known = {p.decode(): FileCheck(int(s), int(t), int(b), c.copy()) for p, s, t, b, c in
                         zip(z["paths"], z["sizes"], z["mtimes"], z["bad_at"], z["counts"])}
        except (OSError, ValueError, KeyError):  # torn or of another format: checked again
            known = {}
    checks, changed = [], False
    for f in files:
        stat = f.stat()
        old = known.get(str(f))
        if old is None or (old.size, old.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            old, changed = check_file(f), True
        checks.append(old)
    if at is not None and changed:
        try:
            tmp = at.with_name(f"{at.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as out:
                np.savez(out, paths=np.array([str(f).encode() for f in files], "S"),
                         sizes=np.array([c.size for c in checks]), mtimes=np.array([c.mtime_ns for c in checks]),
                         bad_at=np.array([c.bad_at for c in checks]), counts=np.stack([c.counts for c in checks]))
            os.replace(tmp, at)
        except OSError as e:
            warnings.warn(f"could not write the text index {at} ({e}); the files are checked again next run",
                          stacklevel=2)
    return checks


class ByteCorpus:
    """The files joined by :data:`SEPARATOR`, read with ``os.pread`` from files opened on
    first use (DataLoader workers open their own: positioned reads share no file offset).
    ``replace``: files whose non-UTF-8 bytes are replaced (U+FFFD) in every window read
    from them."""

    def __init__(self, files: list[Path], sizes: list[int], replace: list[bool]) -> None:
        self.files, self.sizes, self.replace = files, np.array(sizes, np.int64), np.array(replace, bool)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes + len(SEPARATOR))[:-1]]).astype(np.int64)
        self.size = int(self.starts[-1] + self.sizes[-1]) if len(files) else 0
        self.open_files: dict[int, int] = {}  # file number -> descriptor

    def __getstate__(self) -> dict:
        return {**self.__dict__, "open_files": {}}  # a spawned worker opens the files itself

    def __del__(self) -> None:
        for fd in self.open_files.values():
            os.close(fd)

    def pread(self, k: int, length: int, offset: int) -> bytes:
        if k not in self.open_files:
            self.open_files[k] = os.open(self.files[k], os.O_RDONLY)
        data = os.pread(self.open_files[k], length, offset)
        if len(data) != length:
            raise ValueError(f"{self.files[k]}: {len(data)} bytes at offset {offset}, expected {length}; was the file "
                             "changed while training?")
        return data

    def read(self, start: int, length: int) -> np.ndarray:
        """Bytes ``[start, start + length)`` of the joined text, ``[length]`` uint8."""
        out = np.full(length, SEPARATOR[0], np.uint8)
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        fix = False
        for k in range(max(first, 0), len(self.files)):
            lo, hi = max(start, int(self.starts[k])), min(start + length, int(self.starts[k] + self.sizes[k]))
            if int(self.starts[k]) >= start + length:
                break
            if hi > lo:
                out[lo - start:hi - start] = np.frombuffer(self.pread(k, hi - lo, lo - int(self.starts[k])), np.uint8)
                fix |= bool(self.replace[k])
        if fix:  # U+FFFD is 3 bytes: never shorter than the window
            out = np.frombuffer(out.tobytes().decode("utf-8", "replace").encode("utf-8")[:length], np.uint8)
        return out


class TextWindows(ExampleDataset):
    """Masked-byte examples of ``seq_len`` bytes from the blocks ``blocks`` ``[K]`` of a
    corpus (see the module docstring): ``random`` windows (training, one per block) or every
    window of the blocks (``all``: evaluation). Example: ``{inputs, targets, mask}``
    ``[seq_len]`` (byte ids; ``mask``: the predicted positions)."""

    def __init__(self, corpus: ByteCorpus, blocks: Tensor, block_size: int, seq_len: int, mask_prob: float,
                 mode: Literal["random", "all"]) -> None:
        self.corpus, self.blocks, self.block_size = corpus, blocks, block_size
        self.seq_len, self.mask_prob, self.mode = seq_len, mask_prob, mode
        lengths = np.minimum(block_size, corpus.size - blocks.numpy().astype(np.int64) * block_size)
        # examples of each block (random: one; all: its windows), cumulated
        self.ends = np.cumsum(np.ones_like(lengths) if mode == "random" else lengths // seq_len)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def window(self, i: int, generator: torch.Generator) -> int:
        """The start of example ``i``'s window in the corpus."""
        k = int(np.searchsorted(self.ends, i, side="right"))
        start = int(self.blocks[k]) * self.block_size
        if self.mode == "all":
            return start + (i - int(self.ends[k - 1] if k else 0)) * self.seq_len
        length = min(self.block_size, self.corpus.size - start)
        return start + int(torch.randint(length - self.seq_len + 1, (1,), generator=generator))

    def example(self, i: int, generator: torch.Generator | None = None) -> dict[str, Nested]:
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} of {len(self)}")
        generator = generator or example_generator(0, 0, i)
        raw = self.corpus.read(self.window(i, generator), self.seq_len)
        ids = torch.from_numpy(raw.astype(np.int64)) + NUM_SPECIAL_TOKENS
        return {k: v[0] for k, v in mask_tokens(ids[None], self.mask_prob, generator).items()}


def block_layout(total: int, seq_len: int, block_size: int | None) -> tuple[int, int]:
    """``(block_size, number of blocks)`` of a corpus of ``total`` bytes: ``block_size`` None
    is ``seq_len`` times the smallest factor that keeps the blocks under :data:`MAX_BLOCKS`;
    a shorter last block counts if it holds one sequence."""
    if block_size is None:
        block_size = seq_len * max(1, -(-(total // seq_len) // MAX_BLOCKS))
    n = total // block_size + (total % block_size >= seq_len)
    return block_size, n
