"""Training on your own ``torch.utils.data.Dataset`` from Python (a script or a notebook).

    from perceptio.train import fit

    metrics = fit(model_config, train_data, val_data, objective="classification",
                  classes=["cat", "dog"], run_dir="runs/pets", steps=2000, batch_size=64,
                  num_workers=4, optim={"lr": 1e-3})

The same :class:`~perceptio.train.Trainer` as ``perceptio train``: objectives, checkpoints,
``metrics.csv``, best model, plots, Ctrl-C and exact ``resume=True``. The run directory
records the model, optimizer and train settings in ``experiment.yaml`` (the data as
``kind: python``: its objects cannot be written there).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from ..config import ConfigError
from ..data.base import Batch, DataInfo, Splits, StreamDataset, split_indices
from ..data.loader import as_split
from ..model import Perceiver, PerceiverConfig
from .experiment import ExperimentConfig, experiment_from_dict
from .trainer import Trainer


def model_section(model: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """The experiment's ``model`` section of ``model`` and the weights to start from."""
    if isinstance(model, Perceiver):
        return {"perceiver": model.config.to_dict()}, model.state_dict()
    if isinstance(model, PerceiverConfig):
        return {"perceiver": model.to_dict()}, None
    if isinstance(model, str):
        return {"preset": model}, None
    if isinstance(model, dict):
        return (model if {"perceiver", "perceiver_ar", "preset"} & set(model) else {"perceiver": model}), None
    raise TypeError(f"model: expected a Perceiver, a PerceiverConfig, a preset name or a model section dict, got "
                    f"{type(model).__name__}")


def fit(model: Perceiver | PerceiverConfig | str | dict[str, Any], train_data: Any, val_data: Any = None,
        test_data: Any = None, *, run_dir: str | os.PathLike, objective: str | DataInfo = "classification",
        classes: list[str] | None = None, collate: Callable[[list], Batch] | None = None,
        val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0,
        optim: dict[str, Any] | None = None, logging: dict[str, Any] | None = None,
        objective_settings: dict[str, Any] | None = None, name: str = "python", resume: bool = False,
        overwrite: bool = False, callbacks: list[Callable[[Trainer, int], None]] | None = None,
        **train: Any) -> dict[str, dict[str, float]]:
    """Train ``model`` on ``train_data`` into ``run_dir``; returns the final metrics
    (``{"val": {...}, "test": {...}}``, also in ``run_dir/metrics.json``).

    model: a :class:`Perceiver` (its config and weights), a :class:`PerceiverConfig`, a preset
        name, or an experiment ``model`` section (``{"preset": ..., "overrides": ...}``).
    train_data, val_data, test_data: map-style ``torch.utils.data.Dataset`` s (or perceptio
        data sets): ``data[i]`` a dict of tensors keyed as the objective reads them
        (classification: ``inputs`` and an integer ``targets``) or a pair ``(inputs, target)``.
        A missing val / test set is ``val_fraction`` / ``test_fraction`` of ``train_data``
        (indices only, seeded by ``split_seed``). ``train_data`` may also be an
        ``IterableDataset`` (streamed: :class:`~perceptio.data.streams.IterableStream`, with
        its ``state_dict()`` checkpointed if it has one); val_data and test_data are then needed.
    objective: ``classification``, ``mlm``, ``dense``, ``multimodal``, ... (perceptio.train
        .objectives), or a full :class:`DataInfo`. classes: class names (classification;
        default: ``train_data.classes`` if it has them, as torchvision's data sets do).
    collate: ``examples -> batch`` (None: stacked, nested dicts kept).
    optim, logging, objective_settings: the experiment sections of those names.
    train: any ``train`` key of the experiment (``steps``, ``batch_size``, ``num_workers``,
        ``eval_every``, ``precision``, ...).
    """
    info = objective if isinstance(objective, DataInfo) else DataInfo(objective, classes)
    if info.objective == "classification" and info.classes is None:
        info.classes = [str(c) for c in getattr(train_data, "classes", [])] or None
        if info.classes is None:
            raise ValueError("fit: objective 'classification' needs classes=[...] (class names in target order)")
    data = as_split(train_data, collate, "train_data")
    val = as_split(val_data, collate, "val_data") if val_data is not None else None
    test = as_split(test_data, collate, "test_data") if test_data is not None else None
    for where, split in (("val_data", val), ("test_data", test)):
        if isinstance(split, StreamDataset):
            raise TypeError(f"fit: {where} is an IterableDataset; evaluation reads map-style data sets (len and [i])")
    if isinstance(data, StreamDataset):  # an IterableDataset: trained on the stream path (perceptio.train.streaming)
        if val is None or test is None:
            raise ValueError("fit: train_data is an IterableDataset, which cannot be split by val_fraction / "
                             "test_fraction; give val_data and test_data (map-style)")
        splits = Splits(data, val, test, info)
    else:
        train_idx, val_idx, test_idx = split_indices(len(data), 0.0 if val is not None else val_fraction,
                                                     0.0 if test is not None else test_fraction, split_seed)
        if val is None and not len(val_idx) or test is None and not len(test_idx):
            raise ValueError("fit: give val_data and test_data, or val_fraction / test_fraction > 0 of train_data")
        splits = Splits(data.subset(train_idx) if len(val_idx) + len(test_idx) else data,
                        val if val is not None else data.subset(val_idx),
                        test if test is not None else data.subset(test_idx), info)
    section, weights = model_section(model)
    experiment = build_experiment(section, name, type(train_data).__name__, train, optim, logging, objective_settings)
    trainer = Trainer(experiment, run_dir, resume=resume, overwrite=overwrite, callbacks=callbacks, splits=splits,
                      weights=weights)
    return trainer.fit()


def build_experiment(model: dict[str, Any], name: str, description: str, train: dict[str, Any],
                     optim: dict[str, Any] | None, logging: dict[str, Any] | None,
                     objective: dict[str, Any] | None) -> ExperimentConfig:
    raw = {"name": name, "data": {"kind": "python", "description": description}, "model": model, "train": train,
           "optim": optim or {}, "logging": logging or {}, "objective": objective or {}}
    try:
        return experiment_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"fit: {e}") from None
