"""Starting a model from the weights of another: ``model.init_from`` and ``model.init_modules``.

    model = Perceiver(classifier_config)
    report = init_from(model, "runs/bytes_mlm", modules=["input_adapter", "encoder"])
    print(report.summary())      # what was loaded, what is new, what was left out

The source is any model perceptio can read: a model directory, a training run directory
(its best model, else its latest), a DeepMind checkpoint, a Hugging Face Perceiver
directory or a Hub id (``deepmind/language-perceiver``; :mod:`perceptio.checkpoints`).
Parameters are matched by name (a converted checkpoint has perceptio's names) and shape:

* ``modules=None``: every parameter and buffer whose name and shape fit is loaded; the
  rest of the model keeps its fresh initialisation (a new head), and source tensors that
  do not fit are left out;
* ``modules=[...]``: only those modules (``input_adapter``, ``encoder``,
  ``encoder.cross_attends``, ...) are loaded, and each of their tensors must be in the
  source with its shape; otherwise the error names the parameter.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoints import load_checkpoint
from ..hub import is_hub_id
from .checkpoint import is_run_dir, run_checkpoint

SOURCES = ("a perceptio model directory, a training run directory, a DeepMind checkpoint, a Hugging Face "
           "Perceiver directory or a Hugging Face Hub id")


@dataclass
class TransferReport:
    """Tensor names: ``loaded`` from the source, ``new`` (kept as initialised), ``left_out``
    (source tensors not used, with why when their shape does not fit)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    mismatched: dict[str, str] = field(default_factory=dict)  # name -> "ours vs theirs" shapes

    def summary(self) -> str:
        lines = [f"init_from {self.source}:",
                 f"  loaded   {len(self.loaded)} tensors: {', '.join(module_groups(self.loaded)) or '-'}",
                 f"  new      {len(self.new)} tensors: {', '.join(module_groups(self.new)) or '-'}",
                 f"  left out {len(self.left_out)} tensors of the source: "
                 f"{', '.join(module_groups(self.left_out)) or '-'}"]
        lines += [f"    {name}: shape {shapes}" for name, shapes in sorted(self.mismatched.items())]
        return "\n".join(lines)


def module_groups(names: Sequence[str], depth: int = 2) -> list[str]:
    """Tensor names summarised by their module, ``depth`` levels deep, with counts:
    ``["encoder.cross_attends (12)", "input_adapter.embedding (1)"]``."""
    counts: dict[str, int] = {}
    for name in names:
        module = ".".join(name.split(".")[:-1][:depth]) or name
        counts[module] = counts.get(module, 0) + 1
    return [f"{m} ({n})" for m, n in sorted(counts.items())]


def source_directory(source: str | os.PathLike) -> str | os.PathLike:
    """A run directory's model directory (best, else latest); anything else unchanged."""
    return run_checkpoint(source) if is_run_dir(source) else source


def source_state(source: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict of ``source`` (any of :data:`SOURCES`), with perceptio's names."""
    text = str(source)
    hub = is_hub_id(text)
    if not hub and not Path(text).expanduser().exists():
        raise FileNotFoundError(f"model.init_from: {text} does not exist; expected {SOURCES}")
    try:
        model, _ = load_checkpoint(text if hub else source_directory(Path(text).expanduser()))
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"model.init_from: {text} is not a model perceptio can read ({e}); expected {SOURCES}") from None
    return model.state_dict()


def module_names(model: nn.Module) -> list[str]:
    """The names ``modules`` may use: every named submodule that holds tensors."""
    return [name for name, m in model.named_modules() if name and (next(m.parameters(), None) is not None
                                                                    or next(m.buffers(), None) is not None)]


def check_modules(model: nn.Module, modules: Sequence[str]) -> None:
    known = set(module_names(model))
    for name in modules:
        if name not in known:
            top = [n for n, _ in model.named_children() if n in known]
            raise ValueError(f"model.init_modules: the model has no module {name!r}; its modules are {top} "
                             "(or any dotted submodule of them, e.g. 'encoder.cross_attends')")


def transfer_state(model: nn.Module, source: dict[str, Tensor], modules: Sequence[str] | None = None,
                   source_name: str = "the source") -> TransferReport:
    """Copy the tensors of ``source`` that fit into ``model`` (see the module docstring)."""
    if modules is not None:
        check_modules(model, modules)
    ours = model.state_dict()
    report = TransferReport(source_name)

    def wanted(name: str) -> bool:
        return modules is None or any(name == m or name.startswith(m + ".") for m in modules)

    update: dict[str, Tensor] = {}
    for name, tensor in ours.items():
        theirs = source.get(name)
        if not wanted(name):
            report.new.append(name)
        elif theirs is None or theirs.shape != tensor.shape:
            if modules is not None:
                got = "missing from the source" if theirs is None else f"has shape {tuple(theirs.shape)} in the source"
                raise ValueError(f"model.init_modules: {name} (shape {tuple(tensor.shape)}) {got}; "
                                 f"init_from={source_name} does not fit module(s) {list(modules)}")
            if theirs is not None:
                report.mismatched[name] = f"{tuple(tensor.shape)} here vs {tuple(theirs.shape)} in the source"
            report.new.append(name)
        else:
            update[name] = theirs
            report.loaded.append(name)
    report.left_out = sorted(set(source) - set(update))
    if not update:
        raise ValueError(f"model.init_from: {source_name} fits none of the model's modules (no tensor with the "
                         f"same name and shape; the source has {module_groups(sorted(source), 1)}, the model "
                         f"{module_groups(sorted(ours), 1)})")
    with torch.no_grad():
        for name, tensor in update.items():
            ours[name].copy_(tensor.to(dtype=ours[name].dtype))
    return report


def init_from(model: nn.Module, source: str | os.PathLike, modules: Sequence[str] | None = None) -> TransferReport:
    """Load the fitting weights of ``source`` into ``model`` in place; the report says what happened."""
    if modules is not None:
        check_modules(model, modules)  # before reading a possibly large source
    return transfer_state(model, source_state(source), modules, str(source))
