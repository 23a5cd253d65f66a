"""The trainer's stream path: training batches read from a :class:`~perceptio.data.StreamDataset`
(the ``webdataset`` kind, or your own ``IterableDataset``) instead of indexed by the sampler.

Each process reads its own part of the stream (its readers: one per DataLoader worker)
and takes ``batch_size / (processes x grad_accum)`` examples per micro-batch. A
checkpoint holds, for every process, the stream position after the last micro-batch it
trained on (``trainer_state["stream"]``); ``--resume`` continues from there, so a resumed
run sees the same batches as an uninterrupted one (with the same number of processes and
workers). There is no epoch count in the loop: a stream is endless, and ``train.steps``
bounds the run; steps per epoch = examples in the training shards // ``train.batch_size``
(docs/data.md)."""

from __future__ import annotations

from typing import Any

from ..data.base import StreamDataset
from ..data.loader import LoaderOptions
from ..data.shards import StreamBatches
from .experiment import TrainConfig


def open_stream(stream: StreamDataset, tc: TrainConfig, rank: int, world_size: int, options: LoaderOptions,
                state: dict[str, Any] | None) -> StreamBatches:
    """The micro-batches of process ``rank`` of ``world_size``, read by ``options.num_workers``
    DataLoader workers (``train.num_workers``), resumed from the checkpoint's trainer
    ``state`` (None: from the start)."""
    parts = world_size * tc.grad_accum
    if tc.batch_size % parts:
        raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by processes x grad_accum "
                         f"= {world_size} x {tc.grad_accum}")
    examples = getattr(stream, "num_examples", None)
    if examples is not None and examples < tc.batch_size:
        raise ValueError(f"train.batch_size={tc.batch_size} is larger than the training stream ({examples} "
                         "examples per epoch); lower train.batch_size")
    positions = state.get("stream") if state is not None else None
    if positions is not None and len(positions) != world_size:
        raise ValueError(f"the checkpoint's stream positions are for {len(positions)} processes, this run has "
                         f"{world_size}: resume a stream with the same number of processes")
    return StreamBatches(stream, tc.batch_size // parts, tc.seed, rank, world_size, options,
                         positions[rank] if positions is not None else None)
