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

from .base import ArrayDataset, Batch, ExampleDataset, Sampler, step_generator


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
        if self.num_workers == 0:
            return {"num_workers": 0, "pin_memory": self.pin_memory}
        return {"num_workers": self.num_workers, "prefetch_factor": self.prefetch_factor,
                "persistent_workers": self.persistent_workers, "pin_memory": self.pin_memory}


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


def read_noting_warnings(read: Callable[[], Batch]) -> tuple[Batch, list[tuple[type[Warning], str]]]:
    """``read()`` and the warnings it raised, to be shown by the main process."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = read()
    return batch, [(w.category, str(w.message)) for w in caught]


def unchanged(item: Any) -> Any:
    """The DataLoader's collate: items are whole batches already."""
    return item


class StepBatches(torch.utils.data.Dataset):
    """Item ``(step, micro)``: this process's micro-batch ``micro`` of training step ``step``."""

    def __init__(self, dataset: ExampleDataset, sampler: Sampler, seed: int, grad_accum: int, rank: int,
                 world_size: int) -> None:
        self.dataset, self.sampler, self.seed = dataset, sampler, seed
        self.grad_accum, self.rank, self.world_size = grad_accum, rank, world_size

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int, Batch, list]:
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


def show_once(noted: list[tuple[type[Warning], str]], seen: set[str]) -> None:
    for category, message in noted:
        if message not in seen:
            seen.add(message)
            warnings.warn(message, category, stacklevel=3)


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
        show_once(noted, seen)
        yield step, micro, batch


class EvalBatches(torch.utils.data.Dataset):
    """Item ``b``: examples ``[b * batch_size, (b + 1) * batch_size)`` of ``dataset``, its
    batch-level transform seeded by ``step_generator(seed, b)``."""

    def __init__(self, dataset: ExampleDataset, batch_size: int, seed: int) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __getitem__(self, b: int) -> tuple[Batch, list]:
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
            show_once(noted, seen)
            yield batch

    def close(self) -> None:
        """Stop the kept workers."""
        self.loaders.clear()
