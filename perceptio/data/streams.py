"""Your own ``torch.utils.data.IterableDataset`` as a :class:`~perceptio.data.StreamDataset`
(what :func:`perceptio.train.fit` trains on when it is given one; docs/data.md)."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.utils.data

from .base import Batch, Nested, StreamDataset, nested_stack


def as_tensors(item: Mapping[str, Any]) -> dict[str, Nested]:
    return {k: as_tensors(v) if isinstance(v, Mapping) else torch.as_tensor(v) for k, v in item.items()}


def user_example(item: Any, where: str, convert: bool = True) -> dict[str, Any]:
    """One item of a user's data set as an example: a dict (of tensors, numbers, arrays;
    nested dicts allowed) keyed as the objective reads them, or a pair ``(inputs,
    targets)`` as torchvision data sets give; ``convert``: values as tensors."""
    if isinstance(item, (tuple, list)) and len(item) == 2:
        item = {"inputs": item[0], "targets": item[1]}
    if not isinstance(item, Mapping):
        raise TypeError(f"{where} is a {type(item).__name__}; expected a dict of tensors keyed as the objective "
                        "reads them ({'inputs': ..., 'targets': ...}) or a pair (inputs, targets)")
    return as_tensors(item) if convert else dict(item)


class IterableStream(StreamDataset):
    """A ``torch.utils.data.IterableDataset`` of yours (examples: dicts of tensors without a
    batch axis) as a :class:`StreamDataset`. Each of the ``R`` readers (processes x
    DataLoader workers) iterates the whole data set and keeps examples ``g, g + R, ...``
    (so the readers' examples are disjoint and together all of them); when the data set
    ends, the next epoch iterates it again. Its order is its own (``seed`` is not used).

    Resumption: with ``state_dict()`` and ``load_state_dict(state)`` (torchdata's stateful
    protocol), the position holds ``dataset.state_dict()`` after each example and a resumed
    stream loads it and iterates on; without them the resumed stream fast-forwards, reading
    and dropping the examples it had consumed (a warning says how many). Items are
    examples as :func:`user_example` takes them; ``collate(examples) -> batch``: None
    stacks them."""

    def __init__(self, dataset: torch.utils.data.IterableDataset, collate: Callable[[list], Batch] | None = None,
                 name: str = "data") -> None:
        self.dataset, self.user_collate, self.name = dataset, collate, name
        self.stateful = callable(getattr(dataset, "state_dict", None)) and callable(
            getattr(dataset, "load_state_dict", None))

    def stream(self, seed: int, rank: int, world_size: int, worker: int, num_workers: int,
               state: dict[str, Any] | None) -> Iterator[tuple[dict[str, Nested], dict[str, Any]]]:
        readers, reader = world_size * num_workers, rank * num_workers + worker
        state = state or {}
        epoch, seen, skip = int(state.get("epoch", 0)), int(state.get("seen", 0)), 0
        if seen and self.stateful and state.get("dataset") is not None:
            self.dataset.load_state_dict(state["dataset"])
        elif seen:
            skip = seen
            warnings.warn(f"resuming {type(self.dataset).__name__} (an IterableDataset without state_dict / "
                          f"load_state_dict) by reading and dropping the {seen} examples it had consumed",
                          stacklevel=2)
        for epoch in itertools.count(epoch):
            n = seen if not skip else 0
            empty = True
            for item in self.dataset:
                empty = False
                n += 1
                if n <= skip or (n - 1) % readers != reader:
                    continue
                example = user_example(item, f"an item of {self.name}", self.user_collate is None)
                position = {"epoch": epoch, "seen": n}
                if self.stateful:
                    position["dataset"] = self.dataset.state_dict()
                yield example, position
            if empty and n == 0:
                raise ValueError(f"{type(self.dataset).__name__} yields no example")
            seen, skip = 0, 0

    def collate(self, examples: list[dict[str, Nested]]) -> Batch:
        return self.user_collate(examples) if self.user_collate is not None else nested_stack(examples)
