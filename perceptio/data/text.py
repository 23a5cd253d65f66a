"""Labelled text: whole texts with a class, and texts with labelled character spans.

Texts become UTF-8 bytes (the byte tokenizer of the language model, :mod:`perceptio.tokenizer`),
cut to their first ``max_length`` bytes or padded to it; ``input_mask`` [N, L] is True
on the bytes. Set ``max_length`` to the model's ``input_adapter.max_seq_len`` (or less).

* ``text_folder``: ``path/<class>/<file>``, one UTF-8 file per example (suffix ``.txt``,
  ``.md``, ``.rst`` or none), like ``image_folder``;
* ``text_table``: one file of rows with a ``text`` and a ``label`` column: CSV (``.csv``),
  TSV (``.tsv``) or JSON lines (``.jsonl``); ``test_path``: a separate test file of the same
  format (then the split is of ``path`` into train and val only);
* ``text_spans``: per-byte labels (token classification), JSON lines
  ``{"text": "Guido van Rossum wrote Python", "spans": [[0, 16, "PER"], [23, 29, "LANG"]]}``
  with ``[start, end)`` *character* offsets (Python string indices) and a label; bytes
  outside every span are ``O``. Targets ``[N, L]`` of label ids (``-100`` on padding);
* ``python_docs``: built in, no download: the docstrings of Python's standard library,
  labelled by the topic of their module (numbers, text, files, network, concurrency,
  formats), for the transfer demonstration of docs/training.md;
* ``pydoc_topics``: built in: the ``seq_len``-byte sequences of ``bytes_mlm`` (Python's
  documentation topics) that lie inside one of ``topics``, labelled with it, in the *same*
  train / val / test split as ``bytes_mlm`` with the same ``seq_len``, fractions and seed: a
  model pretrained by ``bytes_mlm`` has seen (unlabelled) the training sequences only, never
  the validation or test ones;


Every class must have training examples: a class that only the validation or test split
has is an error, as is an empty class folder, a row without a label, or a file that is
not UTF-8 (named, with the byte offset).
"""

from __future__ import annotations

import csv
import importlib
import inspect
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import check_positive
from ..tokenizer import NUM_SPECIAL_TOKENS, ByteTokenizer
from .base import ArrayDataset, DataConfig, DataInfo, Splits, random_splits, split_indices
from .builtin import BytesMLMConfig
from .files import FolderConfig, class_files, read_utf8

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", "")
IGNORE = -100  # targets of padding bytes (cross-entropy's ignore_index)


def encode_texts(texts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
    """Byte ids ``[N, max_length]`` (cut or padded) and the padding mask (True = a byte)."""
    return ByteTokenizer().batch_encode(texts, max_length, truncate=True)


def check_split_classes(splits: Splits, key: str) -> Splits:
    """Every class of the validation and test splits must be in the training split."""
    classes = splits.info.classes or []
    train = set(splits.train.fields["targets"].unique().tolist())
    for name in ("val", "test"):
        counts = Counter(splits.get(name).fields["targets"].tolist())
        only = sorted(c for c in counts if c not in train)
        if only:
            c = only[0]
            raise ValueError(f"{key}: class {classes[c]!r} is in the {name} split ({counts[c]} examples) but not in "
                             f"the training split; add examples of it, or change data.split_seed / the fractions")
    return splits


@dataclass(kw_only=True)
class TextClassificationConfig(DataConfig):
    """Base of the labelled-text kinds: ``max_length`` bytes per example."""

    max_length: int = 256
    train_examples: int | None = None  # keep only the first N training examples (few-shot transfer)

    def validate(self) -> None:
        super().validate()
        check_positive(self, "max_length", "train_examples")

    def info(self, classes: list[str]) -> DataInfo:
        return DataInfo("classification", classes, {"text": True, "max_length": self.max_length})

    def dataset(self, texts: list[str], labels: list[int]) -> ArrayDataset:
        ids, mask = encode_texts(texts, self.max_length)
        return ArrayDataset({"inputs": ids, "input_mask": mask, "targets": torch.tensor(labels, dtype=torch.long)})

    def splits(self, texts: list[str], labels: list[int], classes: list[str]) -> Splits:
        splits = random_splits(self.dataset(texts, labels), self.info(classes), self.val_fraction,
                               self.test_fraction, self.split_seed)
        return check_split_classes(splits.limit_train(self.train_examples), self.describe())


@dataclass(kw_only=True)
class TextPathConfig(TextClassificationConfig, FolderConfig):
    """A labelled-text kind read from ``data.path`` (a folder, or a file)."""


@DataConfig.register("text_folder")
@dataclass(kw_only=True)
class TextFolderConfig(TextPathConfig):
    def load(self) -> Splits:
        classes, files = class_files(self.path, TEXT_SUFFIXES)
        counts = Counter(label for _, label in files)
        empty = [c for i, c in enumerate(classes) if not counts[i]]
        if empty:
            raise ValueError(f"data.path: class folder {Path(self.path) / empty[0]} has no text files "
                             f"(suffixes {[s or 'none' for s in TEXT_SUFFIXES]}); add examples or remove it")
        return self.splits([read_utf8(f) for f, _ in files], [label for _, label in files], classes)


def read_rows(path: Path, key: str) -> list[dict[str, Any]]:
    """The rows of a CSV / TSV (header line) or JSON-lines file, as mappings."""
    if not path.is_file():
        raise FileNotFoundError(f"{key}: {path} does not exist")
    text = read_utf8(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {line_no} is not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {line_no} is a {type(row).__name__}, expected a JSON object")
            rows.append({"_line": line_no, **row})
        return rows
    if suffix not in (".csv", ".tsv"):
        raise ValueError(f"{key}: {path} has suffix {suffix!r}; expected .csv, .tsv or .jsonl")
    reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
    return [{"_line": i + 2, **row} for i, row in enumerate(reader)]


@DataConfig.register("text_table")
@dataclass(kw_only=True)
class TextTableConfig(TextPathConfig):
    """``path``: a .csv, .tsv or .jsonl file."""

    text: str = "text"  # column of the texts
    label: str = "label"  # column of the class names
    test_path: str | None = None  # a separate test file (else a random test split of path)

    def columns(self, path: str, key: str) -> tuple[list[str], list[str]]:
        rows = read_rows(Path(path).expanduser(), key)
        if not rows:
            raise ValueError(f"{key}: {path} has no rows")
        texts, labels = [], []
        for row in rows:
            for column in (self.text, self.label):
                if column not in row:
                    columns = sorted(k for k in row if k != "_line")
                    raise ValueError(f"{path}: line {row['_line']} has no column {column!r} (columns: {columns}); "
                                     f"set data.text / data.label")
            value = row[self.label]
            if value is None or str(value).strip() == "":
                raise ValueError(f"{path}: line {row['_line']}: missing value in label column {self.label!r}")
            if row[self.text] is None:
                raise ValueError(f"{path}: line {row['_line']}: missing value in text column {self.text!r}")
            texts.append(str(row[self.text]))
            labels.append(str(value))
        return texts, labels

    def load(self) -> Splits:
        texts, labels = self.columns(self.path, "data.path")
        if self.test_path is None:
            classes = sorted(set(labels))
            return self.splits(texts, [classes.index(c) for c in labels], classes)
        test_texts, test_labels = self.columns(self.test_path, "data.test_path")
        classes = sorted(set(labels) | set(test_labels))
        data = self.dataset(texts, [classes.index(c) for c in labels])
        train, val, _ = split_indices(len(data), self.val_fraction, 0.0, self.split_seed)
        test = self.dataset(test_texts, [classes.index(c) for c in test_labels])
        splits = Splits(data.subset(train), data.subset(val), test, self.info(classes))
        return check_split_classes(splits.limit_train(self.train_examples), self.describe())


# ---------------------------------------------------------------------------------------
# Per-byte labels
# ---------------------------------------------------------------------------------------
def byte_labels(text: str, spans: list[tuple[int, int, int]], max_length: int, where: str) -> list[int]:
    """Label ids of the first ``max_length`` UTF-8 bytes of ``text`` (0 outside the spans)
    from ``(start, end, label id)`` character spans."""
    offsets = [0]
    for ch in text:  # byte offset of every character boundary
        offsets.append(offsets[-1] + len(ch.encode("utf-8")))
    labels = [0] * offsets[-1]
    for start, end, label in spans:
        if not 0 <= start < end <= len(text):
            raise ValueError(f"{where}: span [{start}, {end}) is not inside the text of {len(text)} characters")
        for b in range(offsets[start], offsets[end]):
            if labels[b]:
                raise ValueError(f"{where}: span [{start}, {end}) overlaps another span")
            labels[b] = label
    return labels[:max_length]


@DataConfig.register("text_spans")
@dataclass(kw_only=True)
class TextSpansConfig(TextPathConfig):
    """``path``: a .jsonl file of ``{"text", "spans"}``."""

    def load(self) -> Splits:
        path = Path(self.path).expanduser()
        rows = read_rows(path, "data.path")
        if not rows:
            raise ValueError(f"data.path: {path} has no rows")
        parsed = []
        for row in rows:
            where = f"{path}: line {row['_line']}"
            if not isinstance(row.get("text"), str) or not isinstance(row.get("spans", []), list):
                raise ValueError(f"{where}: expected {{\"text\": STRING, \"spans\": [[START, END, LABEL], ...]}}")
            spans = []
            for span in row.get("spans", []):
                if isinstance(span, dict):
                    span = [span.get("start"), span.get("end"), span.get("label")]
                if (not isinstance(span, list) or len(span) != 3 or not all(isinstance(v, int) for v in span[:2])
                        or span[2] in (None, "")):
                    raise ValueError(f"{where}: span {span!r} is not [START, END, LABEL] with integer offsets")
                spans.append((span[0], span[1], str(span[2])))
            parsed.append((where, row["text"], spans))
        names = sorted({label for *_, spans in parsed for *_, label in spans})
        if not names:
            raise ValueError(f"data.path: {path} has no labelled spans")
        classes = ["O", *names]
        targets = torch.full((len(parsed), self.max_length), IGNORE, dtype=torch.long)
        for i, (where, text, spans) in enumerate(parsed):
            labels = byte_labels(text, [(s, e, classes.index(label)) for s, e, label in spans], self.max_length, where)
            targets[i, : len(labels)] = torch.tensor(labels, dtype=torch.long)
        ids, mask = encode_texts([text for _, text, _ in parsed], self.max_length)
        data = ArrayDataset({"inputs": ids, "input_mask": mask, "targets": targets})
        info = DataInfo("token_classification", classes, {"text": True, "max_length": self.max_length})
        splits = random_splits(data, info, self.val_fraction, self.test_fraction, self.split_seed)
        train = set(splits.train.fields["targets"].unique().tolist())
        for name in ("val", "test"):
            only = sorted(set(splits.get(name).fields["targets"].unique().tolist()) - train - {IGNORE})
            if only:
                raise ValueError(f"{self.describe()}: label {classes[only[0]]!r} is in the {name} split but not in "
                                 "the training split; add examples of it, or change data.split_seed")
        return splits


# ---------------------------------------------------------------------------------------
# Built in: the standard library's docstrings by topic
# ---------------------------------------------------------------------------------------
PYTHON_DOCS_TOPICS: dict[str, tuple[str, ...]] = {
    "numbers": ("math", "cmath", "decimal", "fractions", "statistics", "random", "numbers"),
    "text": ("string", "re", "textwrap", "difflib", "unicodedata", "codecs"),
    "files": ("os", "pathlib", "shutil", "glob", "tarfile", "zipfile", "tempfile", "io"),
    "network": ("socket", "ssl", "http.client", "http.server", "urllib.request", "urllib.parse", "smtplib",
                "ftplib", "ipaddress"),
    "concurrency": ("threading", "multiprocessing", "asyncio", "concurrent.futures", "queue", "subprocess", "sched"),
    "formats": ("json", "csv", "pickle", "xml.etree.ElementTree", "configparser", "email.message", "base64",
                "struct"),
}


def module_docstrings(name: str) -> list[str]:
    """Docstrings (whitespace collapsed) of a module's public functions, classes and their methods."""
    module = importlib.import_module(name)
    found = []
    for member, obj in sorted(vars(module).items()):
        if member.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
            continue
        items = [obj]
        if inspect.isclass(obj):
            items += [v for k, v in sorted(vars(obj).items()) if not k.startswith("_") and callable(v)]
        for item in items:
            doc = inspect.getdoc(item)
            if doc:
                found.append(" ".join(doc.split()))
    return found


@DataConfig.register("python_docs")
@dataclass(kw_only=True)
class PythonDocsConfig(TextClassificationConfig):
    """Docstrings of at least ``min_chars`` characters, each labelled with its module's topic
    (:data:`PYTHON_DOCS_TOPICS`); a docstring found under two topics is dropped."""

    max_length: int = 64
    min_chars: int = 40

    def load(self) -> Splits:
        per_topic = {t: list(dict.fromkeys(d for m in mods for d in module_docstrings(m)))
                     for t, mods in PYTHON_DOCS_TOPICS.items()}
        seen = Counter(d for docs in per_topic.values() for d in docs)
        classes = sorted(per_topic)
        texts, labels = [], []
        for i, topic in enumerate(classes):
            for doc in per_topic[topic]:
                if seen[doc] == 1 and len(doc) >= self.min_chars:
                    texts.append(doc)
                    labels.append(i)
        return self.splits(texts, labels, classes)


# Topics of pydoc_data.topics whose text no other topic repeats (e.g. "try" is a part of
# "compound", so neither is here), six of the largest.
PYDOC_TOPICS = ("debugger", "formatstrings", "string-methods", "strings", "types", "typesmapping")


@DataConfig.register("pydoc_topics")
@dataclass(kw_only=True)
class PydocTopicsConfig(TextClassificationConfig):
    """Sequences of ``max_length`` bytes of :class:`BytesMLMConfig`'s text (its ``seq_len``),
    each labelled with the topic it lies in; the split is ``bytes_mlm``'s."""

    max_length: int = 64
    topics: list[str] = field(default_factory=lambda: list(PYDOC_TOPICS))

    def load(self) -> Splits:
        from pydoc_data.topics import topics as texts

        unknown = sorted(set(self.topics) - set(texts))
        if unknown:
            raise ValueError(f"data.topics: {unknown} are not pydoc topics; some of them: {sorted(texts)[:12]}")
        mlm = BytesMLMConfig(seq_len=self.max_length, val_fraction=self.val_fraction,
                             test_fraction=self.test_fraction, split_seed=self.split_seed)
        data = mlm.text_bytes()
        starts, offset = {}, 0  # byte range of every topic in the joined text
        for key in sorted(texts):
            size = len(texts[key].encode("utf-8"))
            starts[key] = (offset, offset + size)
            offset += size + 2  # the "\n\n" between topics
        n = len(data) // self.max_length
        label = torch.full((n,), -1, dtype=torch.long)
        for i, key in enumerate(self.topics):
            lo, hi = starts[key]
            first, last = -(-lo // self.max_length), hi // self.max_length  # sequences wholly inside
            label[first:last] = i
        ids = torch.frombuffer(bytearray(data[: n * self.max_length]), dtype=torch.uint8).long()
        ids = ids.reshape(n, self.max_length) + NUM_SPECIAL_TOKENS
        dataset = ArrayDataset({"inputs": ids, "input_mask": torch.ones_like(ids, dtype=torch.bool), "targets": label})
        parts = [p[label[p] >= 0] for p in split_indices(n, self.val_fraction, self.test_fraction, self.split_seed)]
        splits = Splits(*(dataset.subset(p) for p in parts), self.info(list(self.topics)))
        return check_split_classes(splits.limit_train(self.train_examples), self.describe())

    def describe(self) -> str:
        return "data (kind=pydoc_topics, pydoc_data.topics)"
