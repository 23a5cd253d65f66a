"""Datasets for training: examples read on access, splits, and a resumable sampler.

A :class:`DataConfig` (chosen by ``kind`` in the experiment YAML) loads a :class:`Splits`
whose parts share one interface, :class:`ExampleDataset` (a map-style
``torch.utils.data.Dataset``): ``len(dataset)``, ``dataset.example(i, generator)`` (one
example, no batch axis: tensors nested in dicts for multimodal data) and
``dataset.batch(indices, generator, seed=, step=)`` (examples collated, then the
dataset's batch-level random transform applied with ``generator``). Two implementations:

* :class:`ArrayDataset`: tensors in memory with a leading example axis (the built-in
  sets; a batch is one gather);
* subclasses of :class:`ExampleDataset` that read and decode each example on access
  (folders of files, text read by windows), so a data set of any size costs no memory.

Random per-example transforms (crops, sequence offsets) draw from
:func:`example_generator` ``(seed, step, index)``, batch-level ones from
:func:`step_generator`: a batch depends only on its indices, the seed and the step,
whatever the number of DataLoader workers. :class:`StreamDataset` declares the iterable
alternative (shards read in order, resumable from a position).

:class:`Sampler` maps a training step to the indices of its global batch with a fresh
permutation per epoch drawn from ``(seed, epoch)``: the data order is a pure function
of the step, which makes resuming exact without storing iterator state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.utils.data
from torch import Tensor

from ..config import Config, ConfigError

Nested = Tensor | Mapping[str, "Nested"]
Batch = dict[str, Any]


def nested_index(x: Nested, indices: Tensor) -> Nested:
    if isinstance(x, Mapping):
        return {k: nested_index(v, indices) for k, v in x.items()}
    return x[indices]


def nested_len(x: Nested) -> int:
    if isinstance(x, Mapping):
        return nested_len(next(iter(x.values())))
    return x.shape[0]


def nested_to(x: Any, device: torch.device | str) -> Any:
    if isinstance(x, Mapping):
        return {k: nested_to(v, device) for k, v in x.items()}
    return x.to(device) if isinstance(x, Tensor) else x


def nested_stack(examples: Sequence[Mapping[str, Nested]], where: str = "") -> dict[str, Nested]:
    """Examples (dicts of tensors without a batch axis, nested) -> one batch ``[B, ...]``.
    Examples of different shapes are an error naming the key and both shapes."""
    first = examples[0]
    out: dict[str, Nested] = {}
    for key, value in first.items():
        values = [e[key] for e in examples]
        name = f"{where}.{key}" if where else key
        if isinstance(value, Mapping):
            out[key] = nested_stack(values, name)
            continue
        shapes = {tuple(torch.as_tensor(v).shape) for v in values}
        if len(shapes) > 1:
            raise ValueError(f"examples of one batch have different shapes for {name!r}: {sorted(shapes)[:4]}; "
                             "every example must have the same shape (resize the data, or set data.resize: true "
                             "where the kind has it)")
        out[key] = torch.stack([torch.as_tensor(v) for v in values])
    return out


def example_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The random generator of one example's transforms (crop, offset, masking) when it is
    read for training step ``step``: a function of ``(seed, step, index)`` only, so a batch
    is the same whatever the number of workers, processes or micro-batches."""
    value = (((seed * 1_000_003 + step) * 1_000_000_007) + index) * 2 + 1
    return torch.Generator().manual_seed(value % (2**63))


class ExampleDataset(torch.utils.data.Dataset):
    """A map-style data set whose examples are read (decoded) on access.

    Subclasses implement ``__len__`` and ``example(i, generator)``: example ``i`` as a dict
    of tensors without a batch axis (nested dicts allowed), keyed as the objective reads
    them (``inputs``, ``targets``, ``input_mask``, ...). ``generator`` drives the example's
    random transforms (None: none, or a fixed draw for evaluation). ``transform(batch,
    generator) -> batch`` is an optional batch-level random transform applied after
    collation (masking, as :class:`ArrayDataset` has it)."""

    transform: Callable[[Batch, torch.Generator], Batch] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def example(self, i: int, generator: torch.Generator | None = None) -> dict[str, Nested]:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, Nested]:
        return self.example(int(i))

    def collate(self, examples: list[dict[str, Nested]]) -> Batch:
        """Examples -> one batch (stacked along a new first axis)."""
        return nested_stack(examples)

    def gather(self, indices: Tensor, *, seed: int = 0, step: int = 0) -> Batch:
        """The examples ``indices`` ``[B]`` collated into a batch ``[B, ...]``, example ``i``
        read with :func:`example_generator` ``(seed, step, i)``; no batch-level transform.
        Subclasses that read a batch faster than example by example override this."""
        examples = [self.example(int(i), example_generator(seed, step, int(i))) for i in indices]
        if not examples:
            raise ValueError("a batch needs at least one index")
        return self.collate(examples)

    def batch(self, indices: Tensor, generator: torch.Generator | None = None, *, seed: int = 0,
              step: int = 0) -> Batch:
        """:meth:`gather` ``(indices)``, then this data set's batch-level ``transform``
        applied with ``generator`` (None: a fixed seed, for evaluation)."""
        out = self.gather(indices, seed=seed, step=step)
        if self.transform is not None:
            out = self.transform(out, generator or torch.Generator().manual_seed(0))
        return out

    def subset(self, indices: Tensor) -> ExampleDataset:
        """A lazy view of the examples ``indices`` (nothing is read)."""
        return SubsetDataset(self, torch.as_tensor(indices, dtype=torch.long))


class SubsetDataset(ExampleDataset):
    """Examples ``indices`` of ``parent``, read on access (``parent.subset(indices)``).
    An example draws its random transforms with its index in ``parent``, so it is read
    alike in every view of it. The view starts with the parent's batch-level
    ``transform``; setting its own (augmentation of a training split only) leaves the
    parent's untouched."""

    def __init__(self, parent: ExampleDataset, indices: Tensor) -> None:
        self.parent, self.indices = parent, indices
        self.transform = parent.transform

    def __len__(self) -> int:
        return len(self.indices)

    def example(self, i: int, generator: torch.Generator | None = None) -> dict[str, Nested]:
        return self.parent.example(int(self.indices[i]), generator)

    def gather(self, indices: Tensor, *, seed: int = 0, step: int = 0) -> Batch:
        return self.parent.gather(self.indices[torch.as_tensor(indices, dtype=torch.long)], seed=seed, step=step)

    def subset(self, indices: Tensor) -> ExampleDataset:
        view = SubsetDataset(self.parent, self.indices[torch.as_tensor(indices, dtype=torch.long)])
        view.transform = self.transform
        return view


class ArrayDataset(ExampleDataset):
    """Examples held in memory: ``fields`` maps names (``inputs``, ``targets``, ...) to
    tensors ``[N, ...]`` or dicts of them. ``transform(batch, generator) -> batch`` is
    applied to every gathered batch (random masking, augmentation). ``example(i)`` is row
    ``i`` of every field (no transform: it is batch-level)."""

    def __init__(self, fields: dict[str, Nested], transform: Callable[[Batch, torch.Generator], Batch] | None = None):
        sizes = {k: nested_len(v) for k, v in fields.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"dataset fields must have the same number of examples, got {sizes}")
        self.fields, self.transform = fields, transform
        self.size = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self.size

    def example(self, i: int, generator: torch.Generator | None = None) -> dict[str, Nested]:
        return {k: nested_index(v, i) for k, v in self.fields.items()}

    def gather(self, indices: Tensor, *, seed: int = 0, step: int = 0) -> Batch:
        return {k: nested_index(v, indices) for k, v in self.fields.items()}

    def subset(self, indices: Tensor) -> ArrayDataset:
        return ArrayDataset({k: nested_index(v, indices) for k, v in self.fields.items()}, self.transform)


class StreamDataset(torch.utils.data.IterableDataset):
    """A data set read in order (tar shards, a network stream), too large or too slow to
    index: the iterable alternative to :class:`ExampleDataset` (kind ``webdataset``).

    ``stream(seed, rank, world_size, worker, num_workers, state)`` yields ``(item,
    position)`` pairs: ``item`` an example (a dict of tensors without a batch axis, keyed
    as in :class:`ExampleDataset`) or a collated batch; ``position`` a JSON-serialisable
    dict (e.g. ``{"epoch": 0, "shard": 3, "offset": 118}``) saying where the stream stands
    *after* that item. Process ``rank`` of ``world_size`` and worker ``worker`` of
    ``num_workers`` read a disjoint part of the data (together: all of it each epoch); the
    order is a function of ``seed`` and the epoch. ``state``: the positions of what was
    consumed (as saved in a checkpoint), from which the stream resumes without re-reading
    what was seen; None: from the start."""

    def stream(self, seed: int, rank: int, world_size: int, worker: int, num_workers: int,
               state: dict[str, Any] | None) -> Iterator[tuple[Batch, dict[str, Any]]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        """The items of one process from the start (seed 0), split across DataLoader workers."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return (item for item, _ in self.stream(0, 0, 1, worker, workers, None))


@dataclass
class DataInfo:
    """What the trainer and ``predict`` need to know about a data set.

    objective: ``classification``, ``mlm``, ``dense`` or ``multimodal`` (perceptio.train.objectives).
    classes: class names (classification). extras: objective settings and baselines."""

    objective: str
    classes: list[str] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Splits:
    """``more``: further evaluation splits by name (e.g. ``extrapolation``: harder examples
    than any in training), evaluated with val and test at the end of a run."""

    train: ExampleDataset | StreamDataset  # StreamDataset: train only (and val/test where a kind streams them)
    val: ExampleDataset | StreamDataset
    test: ExampleDataset | StreamDataset
    info: DataInfo
    # ``sampler(batch_size, seed)``: the training batches (None: a plain :class:`Sampler`;
    # multitask data draw one task per step)
    sampler: Callable[[int, int], Sampler] | None = None
    more: dict[str, ExampleDataset] = field(default_factory=dict)

    @property
    def eval_names(self) -> list[str]:
        """The splits a finished run is evaluated on: val, test and ``more``."""
        return ["val", "test", *self.more]

    def get(self, name: str) -> ExampleDataset | StreamDataset:
        if name in self.more:
            return self.more[name]
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; allowed: {sorted(['train', 'val', 'test', *self.more])}")
        return getattr(self, name)

    def limit_train(self, examples: int | None) -> Splits:
        """Keep only the first ``examples`` training examples (few-shot transfer); None: all."""
        if examples is not None:
            self.train = self.train.subset(torch.arange(min(examples, len(self.train))))
        return self

    def make_sampler(self, batch_size: int, seed: int) -> Sampler:
        if self.sampler is not None:
            return self.sampler(batch_size, seed)
        return Sampler(len(self.train), batch_size, seed)


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A seeded random split of ``range(n)`` into train / val / test indices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    if n - n_test - n_val <= 0:
        raise ValueError(f"{n} examples leave nothing to train on with val_fraction={val_fraction}, "
                         f"test_fraction={test_fraction}")
    return perm[n_test + n_val:], perm[n_test : n_test + n_val], perm[:n_test]


def random_splits(dataset: ExampleDataset, info: DataInfo, val_fraction: float, test_fraction: float,
                  seed: int) -> Splits:
    train, val, test = split_indices(len(dataset), val_fraction, test_fraction, seed)
    return Splits(dataset.subset(train), dataset.subset(val), dataset.subset(test), info)


@dataclass(kw_only=True)
class DataConfig(Config):
    """Polymorphic base of the ``data`` section: ``kind`` selects the data set."""

    _registry: ClassVar[dict[str, type[Config]]] = {}

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    # Data read from files (npy, npy_folder, csv_points): an example holding NaN or an
    # infinite value is an error naming the file and row ("error"), or is left out with a
    # warning naming them ("skip").
    on_nonfinite: Literal["error", "skip"] = "error"

    def validate(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"data.{name} must be in [0, 1), got {getattr(self, name)}")

    def load(self) -> Splits:
        raise NotImplementedError

    def describe(self) -> str:
        """Where the data comes from, for error messages."""
        return f"data (kind={self.kind})"


class Sampler:
    """The global batch of every step: ``batch_size`` indices of a per-epoch permutation
    (seeded by ``(seed, epoch)``; the incomplete last batch of an epoch is dropped).

    ``indices(step, rank, world_size, micro, num_micro)`` is the slice one process uses
    for one micro-batch: the global batch is cut into ``world_size`` contiguous parts,
    each into ``num_micro`` micro-batches."""

    def __init__(self, num_examples: int, batch_size: int, seed: int) -> None:
        if batch_size > num_examples:
            raise ValueError(f"train.batch_size={batch_size} is larger than the training set ({num_examples} "
                             f"examples); lower train.batch_size")
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self.steps_per_epoch = num_examples // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def global_batch(self, step: int) -> Tensor:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm[pos * self.batch_size:(pos + 1) * self.batch_size]

    def indices(self, step: int, rank: int = 0, world_size: int = 1, micro: int = 0, num_micro: int = 1) -> Tensor:
        parts = world_size * num_micro
        if self.batch_size % parts:
            raise ValueError(f"train.batch_size={self.batch_size} must be divisible by processes x grad_accum "
                             f"= {world_size} x {num_micro}")
        size = self.batch_size // parts
        start = (rank * num_micro + micro) * size
        return self.global_batch(step)[start:start + size]


def step_generator(seed: int, step: int, micro: int = 0, rank: int | None = None) -> torch.Generator:
    """The random generator of one micro-batch: a function of (seed, step, micro[, rank]) only."""
    value = ((seed * 1_000_003 + step) * 64 + micro) * 1024 + (0 if rank is None else rank + 1)
    return torch.Generator().manual_seed(value % (2**63))
