"""Several classification tasks over one shared encoder (the Perceiver IO paper's multitask GLUE).

    data:
      kind: multitask
      tasks:                                   # task name -> any classification data config
        topic:  {kind: python_docs, max_length: 64}
        review: {kind: text_table, path: reviews.csv, max_length: 64}
      sampling: proportional                   # or uniform

The model decodes one learned query per task (``decoder.queries: {kind: trainable,
num_queries: NUMBER_OF_TASKS}``, in the order of ``tasks``) to ``output_channels`` >= the
largest number of classes; task ``t`` reads the first ``len(classes_t)`` logits of query ``t``
(the ``multitask`` objective of perceptio.train.objectives). Every training step draws one
task (seeded by the step, so resuming stays exact) and a batch of it
(:class:`TaskSampler`); validation and test report the metrics of every task.

The tasks' examples are concatenated with a ``task`` field [N] of task indices, so their
inputs must have the same shape (e.g. text tasks of the same ``max_length``). Each task
keeps its own splits and random transforms (augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ..config import ConfigError
from .base import ArrayDataset, Batch, DataConfig, DataInfo, Sampler, Splits, nested_index


class TaskSampler(Sampler):
    """One task per step (drawn from ``(seed, step)`` with probabilities ``weights``), then
    that task's batch of the step from its own per-epoch permutation: a function of the step."""

    def __init__(self, sizes: list[int], batch_size: int, seed: int, weights: list[float]) -> None:
        small = [i for i, n in enumerate(sizes) if n < batch_size]
        if small:
            raise ValueError(f"train.batch_size={batch_size} is larger than the training set of task {small[0]} "
                             f"({sizes[small[0]]} examples); lower train.batch_size")
        super().__init__(sum(sizes), batch_size, seed)
        self.offsets = torch.tensor([0, *sizes]).cumsum(0)[:-1].tolist()
        self.tasks = [Sampler(n, batch_size, seed * 7919 + t) for t, n in enumerate(sizes)]
        self.weights = torch.tensor(weights, dtype=torch.float64)

    def task(self, step: int) -> int:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 17)
        return int(torch.multinomial(self.weights, 1, generator=gen))

    def global_batch(self, step: int) -> Tensor:
        t = self.task(step)
        return self.offsets[t] + self.tasks[t].global_batch(step)


def concatenate(datasets: list[ArrayDataset], names: list[str]) -> ArrayDataset:
    """One data set of all tasks' examples, with a ``task`` field; each task's transform is
    applied to its own rows of a batch."""
    for name, d in zip(names, datasets):
        if not isinstance(d, ArrayDataset):
            raise ValueError(f"data.tasks.{name}: multitask takes data sets held in memory (the text kinds); this "
                             f"one reads its files on access ({type(d).__name__})")
    keys = [sorted(d.fields) for d in datasets]
    for name, k, d in zip(names, keys, datasets):
        if k != keys[0]:
            raise ValueError(f"data.tasks.{name}: its examples have fields {k}, those of {names[0]} {keys[0]}; "
                             "multitask data need tasks of one input kind")
        shape, first = tuple(d.fields["inputs"].shape[1:]), tuple(datasets[0].fields["inputs"].shape[1:])
        if shape != first:
            raise ValueError(f"data.tasks.{name}: inputs of shape {shape}, but {names[0]} has {first}; give the "
                             "tasks the same input size (e.g. the same max_length)")
    fields = {k: torch.cat([d.fields[k] for d in datasets]) for k in keys[0]}
    fields["task"] = torch.cat([torch.full((len(d),), t, dtype=torch.long) for t, d in enumerate(datasets)])
    transforms = [d.transform for d in datasets]

    def transform(batch: Batch, generator: torch.Generator) -> Batch:
        for t, task_transform in enumerate(transforms):
            rows = (batch["task"] == t).nonzero().squeeze(1)
            if task_transform is None or not len(rows):
                continue
            part = task_transform(nested_index({k: v for k, v in batch.items()}, rows), generator)
            batch = {k: v.index_copy(0, rows, part[k]) if k in part else v for k, v in batch.items()}
        return batch

    return ArrayDataset(fields, transform if any(transforms) else None)


@DataConfig.register("multitask")
@dataclass(kw_only=True)
class MultitaskConfig(DataConfig):
    """``tasks``: task name -> a classification data config (each with its own splits)."""

    tasks: dict[str, DataConfig] = field(default_factory=dict)
    sampling: Literal["proportional", "uniform"] = "proportional"  # how often each task is drawn

    def validate(self) -> None:
        super().validate()
        if len(self.tasks) < 2:
            raise ConfigError(f"data.tasks needs two or more tasks (name -> data config), got {sorted(self.tasks)}")

    def describe(self) -> str:
        return f"data (kind=multitask, tasks={list(self.tasks)})"

    def load(self) -> Splits:
        names = list(self.tasks)
        loaded = [self.tasks[n].load() for n in names]
        for name, s in zip(names, loaded):
            if s.info.objective != "classification":
                raise ValueError(f"data.tasks.{name}: a {s.info.objective} data set; multitask takes classification "
                                 "tasks")
        split = {part: concatenate([s.get(part) for s in loaded], names) for part in ("train", "val", "test")}
        extras = {k: v for k, v in loaded[0].info.extras.items() if k in ("text", "max_length")}
        extras["tasks"] = {n: list(s.info.classes or []) for n, s in zip(names, loaded)}
        sizes = [len(s.train) for s in loaded]
        weights = [float(n) for n in sizes] if self.sampling == "proportional" else [1.0] * len(sizes)
        return Splits(split["train"], split["val"], split["test"], DataInfo("multitask", None, extras),
                      sampler=lambda batch_size, seed: TaskSampler(sizes, batch_size, seed, weights))
