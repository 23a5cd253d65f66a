"""Data read on access: the shared protocol (ExampleDataset, ArrayDataset, example_generator),
the lazy file kinds, the DataLoader path and the Python entry point."""

from __future__ import annotations

import pytest
import torch

from perceptio.data import ArrayDataset, ExampleDataset, StreamDataset, example_generator
from perceptio.data.base import random_splits, DataInfo


class Squares(ExampleDataset):
    """Example i: inputs [i, i^2] plus a random offset drawn from the example's generator."""

    def __init__(self, n: int) -> None:
        self.n, self.reads = n, 0

    def __len__(self) -> int:
        return self.n

    def example(self, i, generator=None):
        self.reads += 1
        if not 0 <= i < self.n:
            raise IndexError(i)
        noise = torch.rand(1, generator=generator) if generator is not None else torch.zeros(1)
        return {"inputs": torch.tensor([float(i), float(i * i)]) + noise, "targets": torch.tensor(i % 2)}


# -- the protocol -----------------------------------------------------------------------------
def test_example_generator_is_a_function_of_seed_step_and_index():
    draw = lambda *key: torch.rand(3, generator=example_generator(*key))  # noqa: E731
    assert torch.equal(draw(1, 2, 3), draw(1, 2, 3))
    assert len({tuple(draw(*key).tolist()) for key in [(1, 2, 3), (2, 2, 3), (1, 3, 3), (1, 2, 4), (0, 0, 0)]}) == 5


def test_example_dataset_batch_is_independent_of_batch_composition():
    data = Squares(10)
    both = data.batch(torch.tensor([3, 7]), seed=5, step=2)
    assert both["inputs"].shape == (2, 2) and both["targets"].tolist() == [1, 1]
    alone = data.batch(torch.tensor([7]), seed=5, step=2)
    assert torch.equal(both["inputs"][1], alone["inputs"][0])  # example 7 draws the same wherever it sits
    assert not torch.equal(data.batch(torch.tensor([7]), seed=5, step=3)["inputs"], alone["inputs"])
    assert torch.equal(data[4]["inputs"], torch.tensor([4.0, 16.0]))  # __getitem__: no random transform


def test_subset_is_lazy_and_splits_index_only():
    data = Squares(50)
    splits = random_splits(data, DataInfo("classification", ["even", "odd"]), 0.2, 0.2, seed=0)
    assert data.reads == 0  # splitting read nothing
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 10)
    seen = sorted(int(splits.get(name)[i]["inputs"][0]) for name in ("train", "val", "test")
                  for i in range(len(splits.get(name))))
    assert seen == list(range(50))  # disjoint and complete
    nested = splits.train.subset(torch.tensor([2, 0]))
    assert torch.equal(nested[0]["inputs"], splits.train[2]["inputs"])
    assert torch.equal(nested.batch(torch.tensor([1]))["inputs"], splits.train.batch(torch.tensor([0]))["inputs"])


def test_batch_of_examples_of_different_shapes_names_the_key():
    class Ragged(Squares):
        def example(self, i, generator=None):
            return {"inputs": {"image": torch.zeros(i + 1)}, "targets": torch.tensor(0)}

    with pytest.raises(ValueError, match=r"different shapes for 'inputs.image': \[\(1,\), \(2,\)\]"):
        Ragged(3).batch(torch.tensor([0, 1]))


def test_array_dataset_satisfies_the_example_interface():
    fields = {"inputs": {"a": torch.arange(12.0).reshape(6, 2), "b": torch.arange(6)}, "targets": torch.arange(6) % 3}
    data = ArrayDataset(fields)
    assert isinstance(data, ExampleDataset) and isinstance(data, torch.utils.data.Dataset)
    idx = torch.tensor([4, 1, 5])
    via_examples = ExampleDataset.batch(data, idx)  # the generic collation path
    fast = data.batch(idx)
    assert torch.equal(via_examples["inputs"]["a"], fast["inputs"]["a"])
    assert torch.equal(via_examples["inputs"]["b"], fast["inputs"]["b"])
    assert torch.equal(via_examples["targets"], fast["targets"])
    assert data[1]["inputs"]["a"].tolist() == [2.0, 3.0] and data[1]["targets"].shape == ()
    assert isinstance(data.subset(idx), ArrayDataset)


def test_stream_dataset_is_declared_iterable():
    assert issubclass(StreamDataset, torch.utils.data.IterableDataset)
    with pytest.raises(NotImplementedError):
        next(iter(StreamDataset().stream(0, 0, 1, 0, 1, None)))
