"""Training objectives: loss and metrics of a batch, and evaluation over a data set.

An objective is chosen by the data set (``DataInfo.objective``):

* ``classification``: cross-entropy (with label smoothing) of ``logits [B, K]``; accuracy;
* ``mlm``: cross-entropy of the masked byte positions; masked-byte accuracy, and the
  accuracy of always guessing the most frequent training byte (unigram baseline);
* ``dense``: one output vector per input element (optical flow): training decodes only
  ``num_points`` random output points per step (``points``), evaluation decodes all of
  them in chunks; end-point error (EPE), and the EPE of predicting zero flow;
* ``clm``: causal language modelling (Perceiver AR): cross-entropy of the next token at the
  latent positions only; bits per byte, and those of the training bytes' unigram frequencies;
* ``token_classification``: one label per input byte (cross-entropy over the bytes);
  accuracy, per-label precision / recall / F1, their macro F1;
* ``multitask``: classification tasks sampled per step over one encoder, one query per
  task (perceptio.data.multitask); accuracy and loss per task, their mean accuracy;
* ``multimodal``: autoencoding of ``{video, audio, label}`` with per-modality subsampled
  outputs; MSE per signal modality (and the MSE of predicting zeros), label accuracy.

``loss(model, batch, generator)`` returns the loss to minimise and a dict of metric
*sums* with a ``count`` per metric, so that metrics average exactly over uneven batches.
An objective runs the model (``run``) and scores its outputs (``score``, with optional
per-example weights); ``loss`` joins the two, through :func:`.ponder.ponder_loss`, so
that every objective trains ponder models (PonderNet) and reports their halting steps
(``multitask`` calls it once per task).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.base import DataInfo, ExampleDataset, nested_to
from ..data.loader import EvalLoaders
from ..model import PerceiverOutput
from .ponder import ponder_config, ponder_loss, steps_sums

Sums = dict[str, tuple[float, int]]  # metric -> (sum, count)


def add_sums(total: Sums, new: Sums) -> Sums:
    """Add the (sum, count) pairs of ``new`` into ``total`` (metric by metric)."""
    for k, (s, n) in new.items():
        s0, n0 = total.get(k, (0.0, 0))
        total[k] = (s0 + s, n0 + n)
    return total


def means(sums: Sums) -> dict[str, float]:
    return {k: s / n for k, (s, n) in sums.items() if n}


def cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0, weight: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of ``logits [B, K]`` against ``targets [B]``; ``weight [B]``
    scales each example's loss (the halting probabilities of one ponder step)."""
    if weight is None:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    return (F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction="none") * weight).mean()


class Objective:
    main_metric = "loss"
    higher_is_better = False

    def __init__(self, info: DataInfo, label_smoothing: float = 0.0) -> None:
        self.info, self.label_smoothing = info, label_smoothing

    def run(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> tuple[PerceiverOutput, Any]:
        """The model's output on a training batch, and what ``score`` needs to know of the
        selection made (e.g. the decoded points)."""
        raise NotImplementedError

    def score(self, logits: Any, batch: dict[str, Any], selection: Any, weight: Tensor | None = None
              ) -> tuple[Tensor, Sums]:
        """Loss and metric sums of ``logits``; ``weight [B]``: each example's loss is scaled
        by it (the halting probabilities of one ponder step), None: unweighted."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> tuple[Tensor, Sums]:
        out, selection = self.run(model, batch, generator)
        return ponder_loss(out, lambda logits, weight: self.score(logits, batch, selection, weight),
                           ponder_config(model))

    def eval_batch(self, model: nn.Module, batch: dict[str, Any]) -> Sums:
        """Metric sums of a batch in evaluation (all outputs decoded)."""
        _, sums = self.loss(model, batch, torch.Generator().manual_seed(0))
        return sums

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: ExampleDataset, batch_size: int, device: torch.device,
                 autocast: Callable[[], Any], seed: int = 0, loaders: EvalLoaders | None = None) -> dict[str, float]:
        """Mean metrics over ``dataset`` (random masking etc. seeded by ``seed``; so are the
        draws of sampled ponder halting, on a forked global generator that training's
        dropout does not see), read batch by batch (in ``loaders``' worker processes)."""
        was_training = model.training
        model.eval()
        total: Sums = {}
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for batch in (loaders or EvalLoaders()).batches(dataset, batch_size, gen, seed):
                batch = nested_to(batch, device)
                with autocast():
                    add_sums(total, self.eval_batch(model, batch))
        model.train(was_training)
        return means(total)

    def predict(self, model: nn.Module, inputs: Any) -> Any:
        """Outputs of a batch of inputs for ``perceptio predict``."""
        return model(inputs).logits


class Classification(Objective):
    main_metric, higher_is_better = "accuracy", True

    def run(self, model, batch, generator):
        return model(batch["inputs"], input_mask=batch.get("input_mask")), None

    def score(self, logits, batch, selection, weight=None):
        logits, targets = logits.float(), batch["targets"]
        loss = cross_entropy(logits, targets, self.label_smoothing, weight)
        n = targets.shape[0]
        correct = (logits.argmax(-1) == targets).sum().item()
        return loss, {"loss": (loss.item() * n, n), "accuracy": (correct, n)}


class TokenClassification(Objective):
    """One label per input byte: ``logits [B, O, K]`` (one query per input position, O >= L)
    against ``targets [B, L]`` (``-100`` on padding). Metrics: byte accuracy, and per label
    precision, recall and F1 over the bytes (``f1_macro``: their mean over the labels other
    than ``O``, the main metric)."""

    main_metric, higher_is_better = "f1_macro", True

    def run(self, model, batch, generator):
        return model(batch["inputs"], input_mask=batch.get("input_mask")), None

    def score(self, logits, batch, selection, weight=None):
        targets = batch["targets"]
        logits = logits.float()[:, : targets.shape[1]]
        valid = targets != -100
        if weight is None:
            loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100,
                                   label_smoothing=self.label_smoothing)
        else:  # each byte weighed by its example's weight, mean over the labelled bytes
            losses = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100,
                                     label_smoothing=self.label_smoothing, reduction="none")
            loss = (losses * weight[:, None])[valid].sum() / valid.sum().clamp_min(1)
        pred, gold = logits.argmax(-1)[valid], targets[valid]
        n = int(gold.numel())
        sums = {"loss": (loss.item() * n, n), "accuracy": ((pred == gold).sum().item(), n)}
        for k, name in enumerate(self.info.classes or []):
            tp = int(((pred == k) & (gold == k)).sum())
            sums[f"{name}_precision"] = (tp, int((pred == k).sum()))
            sums[f"{name}_recall"] = (tp, int((gold == k).sum()))
        return loss, sums

    def evaluate(self, model, dataset, batch_size, device, autocast, seed=0, loaders=None):
        metrics = super().evaluate(model, dataset, batch_size, device, autocast, seed, loaders)
        f1 = []
        for name in self.info.classes or []:
            p, r = metrics.get(f"{name}_precision", 0.0), metrics.get(f"{name}_recall", 0.0)
            metrics[f"{name}_f1"] = 2 * p * r / (p + r) if p + r else 0.0
            if name != "O":
                f1.append(metrics[f"{name}_f1"])
        metrics["f1_macro"] = sum(f1) / max(len(f1), 1)
        return metrics


class Multitask(Objective):
    """Classification tasks over one encoder: task ``t`` (``batch["task"]``) decodes query
    ``t`` (``points``) and reads the first ``len(classes_t)`` logits. Metrics per task
    (``NAME_accuracy``, ``NAME_loss``), and over all examples; the main metric is the mean
    of the tasks' accuracies (``task_mean_accuracy``), so that a small task counts as much
    as a large one."""

    main_metric, higher_is_better = "task_mean_accuracy", True

    def loss(self, model, batch, generator):
        tasks = self.info.extras["tasks"]
        names = list(tasks)
        mask, targets = batch.get("input_mask"), batch["targets"]
        total, sums, ponder = 0.0, {}, ponder_config(model)
        for t in batch["task"].unique().tolist():
            rows = (batch["task"] == t).nonzero().squeeze(1)
            inputs = batch["inputs"][rows]
            out = model(inputs, input_mask=None if mask is None else mask[rows],
                        points=torch.tensor([t], device=rows.device))
            wanted, classes = targets[rows], len(tasks[names[t]])

            def score(logits, weight, wanted=wanted, classes=classes):
                logits = logits.float()[:, :classes]
                loss, n = cross_entropy(logits, wanted, self.label_smoothing, weight), len(wanted)
                return loss, {"loss": (loss.item() * n, n), "accuracy": ((logits.argmax(-1) == wanted).sum().item(), n)}

            loss, task_sums = ponder_loss(out, score, ponder)
            total = total + loss * len(rows) / targets.shape[0]
            task_sums[f"{names[t]}_loss"] = task_sums.pop("loss")
            task_sums[f"{names[t]}_accuracy"] = task_sums["accuracy"]
            add_sums(sums, task_sums)
        sums["loss"] = (float(total.detach()) * targets.shape[0], targets.shape[0])
        return total, sums

    def evaluate(self, model, dataset, batch_size, device, autocast, seed=0, loaders=None):
        metrics = super().evaluate(model, dataset, batch_size, device, autocast, seed, loaders)
        accuracies = [metrics[f"{name}_accuracy"] for name in self.info.extras["tasks"] if f"{name}_accuracy" in metrics]
        metrics["task_mean_accuracy"] = sum(accuracies) / max(len(accuracies), 1)
        return metrics


class MaskedLanguageModel(Objective):
    main_metric, higher_is_better = "masked_accuracy", True

    def run(self, model, batch, generator):
        return model(batch["inputs"]), None

    def score(self, logits, batch, selection, weight=None):
        logits = logits.float()  # [B, L, V]
        mask, targets = batch["mask"], batch["targets"]
        picked, wanted = logits[mask], targets[mask]
        n = int(wanted.numel())
        if n == 0:  # nothing masked in this (tiny) batch
            zero = logits.sum() * 0.0
            return zero, {}
        if weight is None:
            loss = F.cross_entropy(picked, wanted, label_smoothing=self.label_smoothing)
        else:  # each masked position weighed by its example's weight
            losses = F.cross_entropy(picked, wanted, label_smoothing=self.label_smoothing, reduction="none")
            loss = (losses * weight[:, None].expand_as(mask)[mask]).mean()
        correct = (picked.argmax(-1) == wanted).sum().item()
        top = self.info.extras.get("unigram_top_id")
        sums = {"loss": (loss.item() * n, n), "masked_accuracy": (correct, n)}
        if top is not None:
            sums["unigram_baseline_accuracy"] = ((wanted == top).sum().item(), n)
        return loss, sums


class Dense(Objective):
    """Targets ``[B, *grid, E]``; model outputs ``[B, O, E]`` with ``O = prod(grid)``."""

    main_metric, higher_is_better = "epe", False

    def __init__(self, info: DataInfo, label_smoothing: float = 0.0, num_points: int | None = 512,
                 eval_chunk_size: int = 4096) -> None:
        super().__init__(info, label_smoothing)
        self.num_points, self.eval_chunk_size = num_points, eval_chunk_size

    def _sums(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> tuple[Tensor, Sums]:
        err = (pred.float() - target).norm(dim=-1)  # [B, n]
        loss = err.mean() if weight is None else (err * weight[:, None]).mean()
        n = err.numel()
        zero = target.norm(dim=-1).sum().item()
        return loss, {"loss": (loss.item() * n, n), "epe": (err.sum().item(), n), "zero_flow_epe": (zero, n)}

    def run(self, model, batch, generator):
        total = batch["targets"].flatten(1, -2).shape[1]  # targets [B, O, E]
        # Always ``points`` (all of them when not subsampling): Fourier queries place
        # ``points`` at -1 + 2i/n but the full grid at linspace(-1, 1, n), and evaluation
        # decodes every point as ``points`` too.
        device = batch["targets"].device
        if self.num_points is not None and self.num_points < total:
            points = torch.randperm(total, generator=generator)[: self.num_points].to(device)
        else:
            points = torch.arange(total, device=device)
        return model(batch["inputs"], points=points), points

    def score(self, logits, batch, selection, weight=None):
        return self._sums(logits, batch["targets"].flatten(1, -2)[:, selection], weight)

    def eval_batch(self, model, batch):
        target = batch["targets"].flatten(1, -2)
        pred, steps = decode_all_points(model, batch["inputs"], self.eval_chunk_size)
        return with_steps(self._sums(pred, target)[1], model, steps)

    def predict(self, model, inputs):
        """All outputs, decoded ``eval_chunk_size`` points at a time with the same ``points``
        positions as in training."""
        return decode_all_points(model, inputs, self.eval_chunk_size)[0]


class Multimodal(Objective):
    """Autoencoding of a dict of modalities; ``num_points`` output points per signal
    modality per training step; ``weights`` per modality loss; labels by cross-entropy."""

    main_metric, higher_is_better = "loss", False

    def __init__(self, info: DataInfo, label_smoothing: float = 0.0, num_points: dict[str, int] | None = None,
                 weights: dict[str, float] | None = None, label_key: str = "label", eval_chunk_size: int = 4096) -> None:
        super().__init__(info, label_smoothing)
        self.num_points, self.weights, self.label_key = num_points or {}, weights or {}, label_key
        self.eval_chunk_size = eval_chunk_size

    def _loss(self, outputs: dict[str, Tensor], batch, points: dict[str, Tensor],
              weight: Tensor | None = None) -> tuple[Tensor, Sums]:
        total, sums = 0.0, {}
        for m, out in sorted(outputs.items()):
            target = batch["targets"][m]
            if m == self.label_key:
                out = out.float()
                loss = cross_entropy(out, target, self.label_smoothing, weight)
                n = target.shape[0]
                sums[f"{m}_accuracy"] = ((out.argmax(-1) == target).sum().item(), n)
            else:
                target = target.reshape(target.shape[0], -1)  # flat output elements
                out = out.reshape(out.shape[0], -1).float()
                if m in points:
                    target = self._pick(target, points[m], out.shape[1])
                if weight is None:
                    loss = F.mse_loss(out, target)
                else:
                    loss = ((out - target).pow(2) * weight[:, None]).mean()
                n = target.numel()
                sums[f"{m}_zero_mse"] = (float(target.float().pow(2).sum()), n)  # baseline: predict zeros
            sums[f"{m}_loss"] = (loss.item() * n, n)
            total = total + self.weights.get(m, 1.0) * loss
        n = batch["targets"][self.label_key].shape[0]
        sums["loss"] = (float(total.detach()) * n, n)
        return total, sums

    @staticmethod
    def _pick(target: Tensor, points: Tensor, width: int) -> Tensor:
        """Targets of the decoded output points; each point may carry several values (a patch)."""
        per_point = width // points.numel()
        flat = (points[:, None] * per_point + torch.arange(per_point, device=points.device)).flatten()
        return target[:, flat]

    def run(self, model, batch, generator):
        module = getattr(model, "module", model)
        queries = module.decoder.query_builder
        sizes = queries.sizes(None)
        # every modality as ``points`` (all of them when not subsampled), as in evaluation
        points = {}
        for m, size in sizes.items():
            k = self.num_points.get(m, size)
            idx = torch.randperm(size, generator=generator)[:k].sort().values if k < size else torch.arange(size)
            points[m] = idx.to(batch["targets"][m].device)
        subsampled = {m: idx for m, idx in points.items() if len(idx) < sizes[m]}
        return model(batch["inputs"], points=points), subsampled

    def score(self, logits, batch, selection, weight=None):
        return self._loss(logits, batch, selection, weight)

    def eval_batch(self, model, batch):
        outputs, steps = decode_all_points(model, batch["inputs"], self.eval_chunk_size)
        return with_steps(self._loss(outputs, batch, {})[1], model, steps)

    def predict(self, model, inputs):
        return decode_all_points(model, inputs, self.eval_chunk_size)[0]


class CausalLanguageModel(Objective):
    """``inputs [B, N]`` and ``targets [B, N]`` (``targets[t]`` follows ``inputs[t]``). The model
    scores latent row j against ``targets[latent_last_steps[j]]``; invalid latents (< 0) and
    padding targets (0) are out of the loss, as in the reference. (A Perceiver AR does not
    ponder: ``loss`` is computed here, not through ``run``/``score``.)"""

    main_metric, higher_is_better = "bits_per_byte", False

    def loss(self, model, batch, generator):
        out = model(batch["inputs"])
        last = out.latent_last_steps  # [B, U]
        targets = batch["targets"].gather(1, last.clamp(min=0))
        keep = (last >= 0) & (targets > 0)
        wanted = targets[keep]
        n = int(wanted.numel())
        if n == 0:
            return out.logits.sum() * 0.0, {}
        logits = out.logits[keep].float()
        loss = F.cross_entropy(logits, wanted, label_smoothing=self.label_smoothing)
        nats = F.cross_entropy(logits.detach(), wanted, reduction="sum").item()  # unsmoothed
        sums = {"loss": (loss.item() * n, n), "bits_per_byte": (nats / math.log(2), n)}
        unigram = self.info.extras.get("unigram_bits")
        if unigram is not None:
            sums["unigram_bits_per_byte"] = (float(torch.tensor(unigram)[wanted.cpu()].sum()), n)
        return loss, sums

    def predict(self, model, inputs):
        return model(inputs).logits


def decode_all_points(model: nn.Module, inputs: Any, chunk_size: int) -> tuple[Any, Tensor | None]:
    """Encode once, then decode every output as ``points`` (the positions used when training
    on subsampled points), ``chunk_size`` queries at a time. Returns the outputs and, for a
    ponder model, the halting steps ``[B]`` (else None)."""
    module = getattr(model, "module", model)
    context, _ = module.adapt(inputs)
    if module.encoder.halting is not None:
        state = module.encoder.ponder(context.inputs)
        latents, steps = state.latents, state.steps
    else:
        latents, steps = module.encoder(context.inputs), None
    points = module.decoder.all_points(context, latents.device)  # [O], or {modality: [O_m]}
    return module.decode_chunked(latents, context, chunk_size, points=points), steps


def with_steps(sums: Sums, model: nn.Module, steps: Tensor | None) -> Sums:
    """``sums`` plus the halting-step metrics of a ponder model."""
    config = ponder_config(model)
    return sums if steps is None else {**sums, **steps_sums(steps, config.max_steps)}


OBJECTIVES: dict[str, type[Objective]] = {
    "classification": Classification, "mlm": MaskedLanguageModel, "dense": Dense, "multimodal": Multimodal,
    "token_classification": TokenClassification, "multitask": Multitask,
    "clm": CausalLanguageModel,
}


def build_objective(info: DataInfo, label_smoothing: float = 0.0, num_points: int | None = 512,
                    modality_points: dict[str, int] | None = None, weights: dict[str, float] | None = None,
                    eval_chunk_size: int = 4096) -> Objective:
    if info.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {info.objective!r}; allowed: {sorted(OBJECTIVES)}")
    if info.objective == "dense":
        return Dense(info, label_smoothing, num_points, eval_chunk_size)
    if info.objective == "multimodal":
        return Multimodal(info, label_smoothing, modality_points, weights, eval_chunk_size=eval_chunk_size)
    return OBJECTIVES[info.objective](info, label_smoothing)

