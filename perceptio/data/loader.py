"""Batches read in parallel: DataLoader worker processes for training and evaluation.

The trainer asks :func:`step_batches` for the micro-batches of every step from the resume
step on. Each item of the DataLoader is one whole micro-batch, keyed by ``(step, micro)``:
the worker that builds it computes its indices with the :class:`~perceptio.data.Sampler`
(a function of the step), reads the examples (``example_generator(seed, step, index)``
seeds their random transforms) and applies the batch-level transform with
``step_generator(seed, step, micro, rank)``. A batch therefore depends on neither the
number of workers nor which worker built it, and ``--resume`` stays exact. Each DDP
process reads only its own slice of the global batch.

Warnings raised while reading (a skipped file, say) are carried back to the main process
and shown once each, whichever worker met them.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.utils.data

from .base import (ArrayDataset, Batch, DataConfig, ExampleDataset, Nested, Sampler, Splits, StreamDataset,
                   step_generator)
from .streams import IterableStream, user_example


@dataclass(frozen=True)
class LoaderOptions:
    """How batches are read: ``num_workers`` processes (0: in the main process), each
    keeping ``prefetch_factor`` batches ready (None: torch's default, 2), workers kept
    between evaluations (``persistent_workers``), batches in pinned memory (CUDA)."""

    num_workers: int = 0
    prefetch_factor: int | None = None
    persistent_workers: bool = True
    pin_memory: bool = False

    def dataloader_kwargs(self) -> dict[str, Any]:
        # a generator of its own: the workers' base seed is then not drawn from torch's global
        # generator, whose state (dropout) must not depend on the number of workers
        return {"num_workers": self.num_workers, "prefetch_factor": self.prefetch_factor,
                "persistent_workers": self.persistent_workers, "pin_memory": self.pin_memory,
                "generator": torch.Generator().manual_seed(0)}


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_num_workers(dataset: Any) -> int:
    """0 for data in memory (:class:`ArrayDataset`: a batch is one gather, workers only
    cost), else ``min(4, cpus - 1)``: one CPU stays with the model step."""
    if isinstance(dataset, ArrayDataset):
        return 0
    return max(0, min(4, available_cpus() - 1))


def loader_options(dataset: Any, num_workers: int | None, prefetch_factor: int | None, persistent_workers: bool,
                   device: torch.device) -> LoaderOptions:
    """The options of ``train.num_workers`` etc. (None: :func:`default_num_workers`); pinned
    memory on CUDA."""
    workers = default_num_workers(dataset) if num_workers is None else num_workers
    return LoaderOptions(workers, prefetch_factor, persistent_workers, device.type == "cuda")


Noted = tuple[list[tuple[type[Warning], str]], tuple[type[BaseException], str] | None]


def read_noting_warnings(read: Callable[[], Batch]) -> tuple[Batch | None, Noted]:
    """``read()``, with the warnings it raised and (in a worker) the error, for the main
    process to show as they are: a worker's error would otherwise reach the user wrapped
    in torch's "Caught ValueError in DataLoader worker process 0" and a traceback."""
    batch, error = None, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            batch = read()
        except Exception as e:  # noqa: BLE001 - re-raised by the main process (deliver)
            if torch.utils.data.get_worker_info() is None:
                raise
            error = (type(e), str(e))
    return batch, ([(w.category, str(w.message)) for w in caught], error)


def unchanged(item: Any) -> Any:
    """The DataLoader's collate: items are whole batches already."""
    return item


class StepBatches(torch.utils.data.Dataset):
    """Item ``(step, micro)``: this process's micro-batch ``micro`` of training step ``step``."""

    def __init__(self, dataset: ExampleDataset, sampler: Sampler, seed: int, grad_accum: int, rank: int,
                 world_size: int) -> None:
        self.dataset, self.sampler, self.seed = dataset, sampler, seed
        self.grad_accum, self.rank, self.world_size = grad_accum, rank, world_size

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int, Batch | None, Noted]:
        step, micro = key
        idx = self.sampler.indices(step, self.rank, self.world_size, micro, self.grad_accum)
        generator = step_generator(self.seed, step, micro, self.rank)
        batch, noted = read_noting_warnings(lambda: self.dataset.batch(idx, generator, seed=self.seed, step=step))
        return step, micro, batch, noted


class StepKeys(torch.utils.data.Sampler):
    """``(step, micro)`` for every step of ``[start, stop)`` (stop None: without end)."""

    def __init__(self, start: int, stop: int | None, grad_accum: int) -> None:
        self.start, self.stop, self.grad_accum = start, stop, grad_accum

    def __iter__(self) -> Iterator[tuple[int, int]]:
        steps = itertools.count(self.start) if self.stop is None else range(self.start, self.stop)
        return ((step, micro) for step in steps for micro in range(self.grad_accum))


def deliver(noted: Noted, seen: set[str]) -> None:
    """Show a batch's warnings (each message once: ``seen``) and raise its worker's error."""
    shown, error = noted
    for category, message in shown:
        if message not in seen:
            seen.add(message)
            warnings.warn(message, category, stacklevel=3)
    if error is not None:
        kind, message = error
        try:
            raised = kind(message)
        except Exception:  # noqa: BLE001 - an exception class that takes other arguments
            raised = RuntimeError(f"{kind.__name__}: {message}")
        raise raised


def step_batches(dataset: ExampleDataset, sampler: Sampler, *, seed: int, start: int, stop: int | None,
                 grad_accum: int = 1, rank: int = 0, world_size: int = 1,
                 options: LoaderOptions = LoaderOptions()) -> Iterator[tuple[int, int, Batch]]:
    """``(step, micro, batch)`` of every micro-batch of the steps ``[start, stop)``, read in
    ``options.num_workers`` worker processes (0: here)."""
    source = StepBatches(dataset, sampler, seed, grad_accum, rank, world_size)
    keys = StepKeys(start, stop, grad_accum)
    if options.num_workers == 0:
        items: Any = map(source.__getitem__, keys)
    else:
        items = torch.utils.data.DataLoader(source, sampler=keys, batch_size=None, collate_fn=unchanged,
                                            **options.dataloader_kwargs())
    seen: set[str] = set()
    for step, micro, batch, noted in items:
        deliver(noted, seen)
        yield step, micro, batch


class EvalBatches(torch.utils.data.Dataset):
    """Item ``b``: examples ``[b * batch_size, (b + 1) * batch_size)`` of ``dataset``, its
    batch-level transform seeded by ``step_generator(seed, b)``."""

    def __init__(self, dataset: ExampleDataset, batch_size: int, seed: int) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __getitem__(self, b: int) -> tuple[Batch | None, Noted]:
        idx = torch.arange(b * self.batch_size, min((b + 1) * self.batch_size, len(self.dataset)))
        return read_noting_warnings(lambda: self.dataset.batch(idx, step_generator(self.seed, b)))


class EvalLoaders:
    """The batches of evaluation splits; the DataLoader of each split (with its workers,
    if ``options.persistent_workers``) is kept until :meth:`close`, so evaluating every
    few hundred steps does not start new workers each time."""

    def __init__(self, options: LoaderOptions = LoaderOptions()) -> None:
        self.options = options
        self.loaders: dict[int, tuple[tuple, ExampleDataset, torch.utils.data.DataLoader]] = {}

    def batches(self, dataset: ExampleDataset, batch_size: int, generator: torch.Generator,
                seed: int = 0) -> Iterator[Batch]:
        """The batches of ``dataset`` in order, each of at most ``batch_size`` examples.

        Data in memory (:class:`ArrayDataset`) is gathered here, the batch-level transforms
        drawing from ``generator`` in turn (the numbers of earlier versions). Other data is
        read in ``options.num_workers`` processes, batch ``b``'s transform seeded by
        ``step_generator(seed, b)``: the same batches for any number of workers."""
        if isinstance(dataset, ArrayDataset):
            for start in range(0, len(dataset), batch_size):
                yield dataset.batch(torch.arange(start, min(start + batch_size, len(dataset))), generator)
            return
        source = EvalBatches(dataset, batch_size, seed)
        if self.options.num_workers == 0:
            items: Any = map(source.__getitem__, range(len(source)))
        else:
            key = (batch_size, seed)
            cached = self.loaders.get(id(dataset))
            if cached is None or cached[0] != key or cached[1] is not dataset:
                loader = torch.utils.data.DataLoader(source, batch_size=None, shuffle=False, collate_fn=unchanged,
                                                     **self.options.dataloader_kwargs())
                self.loaders[id(dataset)] = cached = (key, dataset, loader)
            items = cached[2]
        seen: set[str] = set()
        for batch, noted in items:
            deliver(noted, seen)
            yield batch

    def close(self) -> None:
        """Stop the kept workers."""
        self.loaders.clear()


# ---------------------------------------------------------------------------------------
# Your own torch.utils.data.Dataset
# ---------------------------------------------------------------------------------------
class TorchExamples(ExampleDataset):
    """A user's map-style ``torch.utils.data.Dataset`` as an :class:`ExampleDataset`.

    ``dataset[i]``: a dict of tensors (or numbers, arrays; nested dicts allowed) keyed as
    the objective reads them (``inputs``, ``targets``, ...), or a pair ``(inputs, targets)``
    as torchvision data sets give. Random transforms that draw from torch's global
    generator (torchvision's) are seeded by ``example_generator(seed, step, i)`` (on a
    forked generator: training's dropout draws are untouched), so runs resume exactly
    whatever the number of workers. ``collate(examples) -> batch``: None stacks them."""

    def __init__(self, dataset: torch.utils.data.Dataset, collate: Callable[[list], Batch] | None = None,
                 name: str = "data") -> None:
        try:
            self.size = len(dataset)
        except TypeError:
            raise TypeError(f"{name}: a map-style torch Dataset needs __len__; {type(dataset).__name__} has none "
                            "(an IterableDataset streams: see docs/data.md)") from None
        self.dataset, self.user_collate, self.name = dataset, collate, name

    def __len__(self) -> int:
        return self.size

    def example(self, i: int, generator: torch.Generator | None = None) -> dict[str, Nested]:
        with torch.random.fork_rng(devices=[]):
            if generator is not None:
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            item = self.dataset[i]
        return user_example(item, f"{self.name}[{i}]", self.user_collate is None)

    def collate(self, examples: list[dict[str, Nested]]) -> Batch:
        return self.user_collate(examples) if self.user_collate is not None else super().collate(examples)


def as_split(data: Any, collate: Callable[[list], Batch] | None, name: str) -> ExampleDataset | StreamDataset:
    """A user's data set as a split: the one place where map-style and iterable data part."""
    if isinstance(data, (ExampleDataset, StreamDataset)):
        return data
    if isinstance(data, torch.utils.data.IterableDataset):  # streamed: perceptio.train.streaming
        return IterableStream(data, collate, name)
    if not isinstance(data, torch.utils.data.Dataset) and not hasattr(type(data), "__getitem__"):
        raise TypeError(f"{name}: expected a torch.utils.data.Dataset (len and [i]), got {type(data).__name__}")
    return TorchExamples(data, collate, name)


@DataConfig.register("python")
@dataclass(kw_only=True)
class PythonDataConfig(DataConfig):
    """The data of a run trained from Python (:func:`perceptio.train.fit`): the data sets
    were objects, not a config, so they cannot be loaded again from ``experiment.yaml``."""

    description: str = ""

    def load(self) -> Splits:
        raise ValueError(f"this run's data came from Python ({self.description or 'perceptio.train.fit'}); pass the "
                         "data sets again: perceptio.train.fit(..., resume=True) or evaluate_run(run_dir, splits=...)")

    def describe(self) -> str:
        return f"data (from Python: {self.description})" if self.description else "data (from Python)"
