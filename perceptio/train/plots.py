"""PNG plots of a run (matplotlib, optional): learning curves from ``metrics.csv``, the
encoder's cross-attention maps (which input positions each latent reads) of one test
example, for inputs on a 1-d or 2-d grid, and for ponder models the mean halting steps
per difficulty (a data set's ``difficulty`` field) or per class (``ponder_steps.png``,
with the numbers in ``ponder_steps.json``)."""

from __future__ import annotations

import csv
import math
import warnings
from collections import defaultdict
from pathlib import Path

import torch

from ..data import ArrayDataset, Splits
from ..model import Perceiver
from ..pretrained import atomic_write, atomic_write_json, load_pretrained
from . import checkpoint as ckpt
from .experiment import ExperimentConfig
from .ponder import steps_by_group


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, plt, run_dir: Path, name: str) -> Path:
    fig.tight_layout()
    out = Path(run_dir) / "plots" / name
    out.parent.mkdir(exist_ok=True)
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return out


def read_metrics(run_dir: Path) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """``{(split, name): [(step, value), ...]}`` from ``metrics.csv``."""
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    with (Path(run_dir) / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            series[(row["split"], row["name"])].append((int(row["step"]), float(row["value"])))
    return series


def plot_learning_curves(run_dir: Path, plt) -> Path:
    series = read_metrics(run_dir)
    names = sorted({n for (s, n) in series if s in ("train", "val") and n not in ("lr", "samples_per_s")})
    cols = min(len(names), 3) or 1
    rows = math.ceil(len(names) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for split in ("train", "val"):
            if (split, name) in series:
                steps, values = zip(*series[(split, name)])
                ax.plot(steps, values, label=split, marker="o" if split == "val" else None, markersize=3)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend()
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return _save(fig, plt, run_dir, "learning_curves.png")


def attention_grid(model) -> tuple[int, ...] | None:
    """The grid of encoder input positions, if the input adapter has one."""
    adapter = model.input_adapter
    network_inputs = getattr(adapter, "network_inputs", None) or getattr(getattr(adapter, "image", None),
                                                                        "network_inputs", None)
    network_inputs = network_inputs or getattr(getattr(adapter, "grid", None), "network_inputs", None)
    return tuple(network_inputs.index_dims) if network_inputs is not None else None


def plot_cross_attention(run_dir: Path, splits: Splits, plt, num_latents: int = 8) -> Path | None:
    """Cross-attention ``[heads, N, M]`` of the first test example (mean over heads) for
    the first ``num_latents`` latents, drawn on the input grid."""
    checkpoint = ckpt.best_checkpoint(run_dir) or ckpt.latest_checkpoint(run_dir)
    if checkpoint is None:
        return None
    model = load_pretrained(checkpoint).eval()
    if not isinstance(model, Perceiver):  # a Perceiver AR: no input grid to draw on
        return None
    grid = attention_grid(model)
    if grid is None or len(grid) > 3:
        return None
    example = splits.test.batch(torch.arange(1), torch.Generator().manual_seed(0))["inputs"]
    with torch.no_grad():
        out = model(example, return_attention=True)
    attn = out.attentions["cross"][0][0].mean(0)  # [N, M]
    k = min(num_latents, attn.shape[0])
    fig, axes = plt.subplots(1, k, figsize=(2.0 * k, 2.2), squeeze=False)
    for i, ax in enumerate(axes.flat):
        a = attn[i]
        if len(grid) == 1:
            ax.plot(a.numpy())
        else:
            a = a.reshape(grid)
            ax.imshow((a.mean(0) if len(grid) == 3 else a).numpy(), cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(f"latent {i}", fontsize=8)
    fig.suptitle("cross-attention of latents to input positions (test example 0)", fontsize=9)
    return _save(fig, plt, run_dir, "cross_attention.png")


def plot_ponder_steps(run_dir: Path, splits: Splits, plt, batch_size: int = 256) -> Path | None:
    """Mean halting steps (and accuracy) of the test split and the further splits, per
    difficulty if the data set has one, else per class."""
    checkpoint = ckpt.best_checkpoint(run_dir) or ckpt.latest_checkpoint(run_dir)
    if checkpoint is None:
        return None
    model = Perceiver.from_pretrained(checkpoint).eval()
    if (model.encoder.halting is None or not isinstance(splits.test, ArrayDataset)  # data in memory only
            or not isinstance(splits.test.fields.get("targets"), torch.Tensor)):
        return None
    group = "difficulty" if "difficulty" in splits.test.fields else "targets"
    if group == "targets" and splits.info.objective != "classification":
        return None
    tables = {name: steps_by_group(model, splits.get(name), group, batch_size)
              for name in ["test", *splits.more] if group in splits.get(name).fields}
    atomic_write_json(Path(run_dir) / "ponder_steps.json", {"group": group, **tables})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, table in tables.items():
        keys = sorted(table)
        axes[0].plot(keys, [table[k]["steps_mean"] for k in keys], marker="o", label=name)
        if all("accuracy" in table[k] for k in keys):
            axes[1].plot(keys, [table[k]["accuracy"] for k in keys], marker="o", label=name)
    label = "number of non-zero entries (difficulty)" if group == "difficulty" else "class"
    if group == "targets" and splits.info.classes:
        for ax in axes:
            ax.set_xticks(range(len(splits.info.classes)), splits.info.classes)
    for ax, title in zip(axes, ("mean halting steps", "accuracy")):
        ax.set_xlabel(label)
        ax.set_title(title)
        ax.legend()
    return _save(fig, plt, run_dir, "ponder_steps.png")


def save_plots(run_dir: Path, experiment: ExperimentConfig, splits: Splits) -> list[Path]:
    plt = _pyplot()
    if plt is None:
        warnings.warn("logging.plots needs matplotlib (pip install matplotlib); no PNG plots written", stacklevel=2)
        return []
    made = [plot_learning_curves(run_dir, plt)]
    attention = plot_cross_attention(run_dir, splits, plt)
    steps = plot_ponder_steps(run_dir, splits, plt, experiment.train.eval_batch_size)
    return made + [p for p in (attention, steps) if p is not None]
