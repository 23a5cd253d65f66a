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
* ``multimodal``: autoencoding of ``{video, audio, label}`` with per-modality subsampled
  outputs; MSE per signal modality (and the MSE of predicting zeros), label accuracy.

``loss(model, batch, generator)`` returns the loss to minimise and a dict of metric
*sums* with a ``count`` per metric, so that metrics average exactly over uneven batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.base import ArrayDataset, DataInfo, nested_to

Sums = dict[str, tuple[float, int]]  # metric -> (sum, count)


def add_sums(total: Sums, new: Sums) -> Sums:
    """Add the (sum, count) pairs of ``new`` into ``total`` (metric by metric)."""
    for k, (s, n) in new.items():
        s0, n0 = total.get(k, (0.0, 0))
        total[k] = (s0 + s, n0 + n)
    return total


def means(sums: Sums) -> dict[str, float]:
    return {k: s / n for k, (s, n) in sums.items() if n}


class Objective:
    main_metric = "loss"
    higher_is_better = False

    def __init__(self, info: DataInfo, label_smoothing: float = 0.0) -> None:
        self.info, self.label_smoothing = info, label_smoothing

    def loss(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> tuple[Tensor, Sums]:
        raise NotImplementedError

    def eval_batch(self, model: nn.Module, batch: dict[str, Any]) -> Sums:
        """Metric sums of a batch in evaluation (all outputs decoded)."""
        _, sums = self.loss(model, batch, torch.Generator().manual_seed(0))
        return sums

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: ArrayDataset, batch_size: int, device: torch.device,
                 autocast: Callable[[], Any], seed: int = 0) -> dict[str, float]:
        """Mean metrics over ``dataset`` (random masking etc. seeded by ``seed``)."""
        was_training = model.training
        model.eval()
        total: Sums = {}
        gen = torch.Generator().manual_seed(seed)
        for start in range(0, len(dataset), batch_size):
            batch = nested_to(dataset.batch(torch.arange(start, min(start + batch_size, len(dataset))), gen), device)
            with autocast():
                add_sums(total, self.eval_batch(model, batch))
        model.train(was_training)
        return means(total)

    def predict(self, model: nn.Module, inputs: Any) -> Any:
        """Outputs of a batch of inputs for ``perceptio predict``."""
        return model(inputs).logits


class Classification(Objective):
    main_metric, higher_is_better = "accuracy", True

    def loss(self, model, batch, generator):
        logits = model(batch["inputs"], input_mask=batch.get("input_mask")).logits.float()
        targets = batch["targets"]
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        n = targets.shape[0]
        correct = (logits.argmax(-1) == targets).sum().item()
        return loss, {"loss": (loss.item() * n, n), "accuracy": (correct, n)}


class MaskedLanguageModel(Objective):
    main_metric, higher_is_better = "masked_accuracy", True

    def loss(self, model, batch, generator):
        logits = model(batch["inputs"]).logits.float()  # [B, L, V]
        mask, targets = batch["mask"], batch["targets"]
        picked, wanted = logits[mask], targets[mask]
        n = int(wanted.numel())
        if n == 0:  # nothing masked in this (tiny) batch
            zero = logits.sum() * 0.0
            return zero, {}
        loss = F.cross_entropy(picked, wanted, label_smoothing=self.label_smoothing)
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

    def _sums(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Sums]:
        err = (pred.float() - target).norm(dim=-1)  # [B, n]
        loss = err.mean()
        n = err.numel()
        zero = target.norm(dim=-1).sum().item()
        return loss, {"loss": (loss.item() * n, n), "epe": (err.sum().item(), n), "zero_flow_epe": (zero, n)}

    def loss(self, model, batch, generator):
        target = batch["targets"].flatten(1, -2)  # [B, O, E]
        total = target.shape[1]
        # Always ``points`` (all of them when not subsampling): Fourier queries place
        # ``points`` at -1 + 2i/n but the full grid at linspace(-1, 1, n), and evaluation
        # decodes every point as ``points`` too.
        if self.num_points is not None and self.num_points < total:
            points = torch.randperm(total, generator=generator)[: self.num_points].to(target.device)
            target = target[:, points]
        else:
            points = torch.arange(total, device=target.device)
        pred = model(batch["inputs"], points=points).logits
        return self._sums(pred, target)

    def eval_batch(self, model, batch):
        target = batch["targets"].flatten(1, -2)
        pred = self.predict(model, batch["inputs"])
        return self._sums(pred, target)[1]

    def predict(self, model, inputs):
        """All outputs, decoded ``eval_chunk_size`` points at a time with the same ``points``
        positions as in training."""
        return decode_all_points(model, inputs, self.eval_chunk_size)


class Multimodal(Objective):
    """Autoencoding of a dict of modalities; ``num_points`` output points per signal
    modality per training step; ``weights`` per modality loss; labels by cross-entropy."""

    main_metric, higher_is_better = "loss", False

    def __init__(self, info: DataInfo, label_smoothing: float = 0.0, num_points: dict[str, int] | None = None,
                 weights: dict[str, float] | None = None, label_key: str = "label", eval_chunk_size: int = 4096) -> None:
        super().__init__(info, label_smoothing)
        self.num_points, self.weights, self.label_key = num_points or {}, weights or {}, label_key
        self.eval_chunk_size = eval_chunk_size

    def _loss(self, outputs: dict[str, Tensor], batch, points: dict[str, Tensor]) -> tuple[Tensor, Sums]:
        total, sums = 0.0, {}
        for m, out in sorted(outputs.items()):
            target = batch["targets"][m]
            if m == self.label_key:
                out = out.float()
                loss = F.cross_entropy(out, target, label_smoothing=self.label_smoothing)
                n = target.shape[0]
                sums[f"{m}_accuracy"] = ((out.argmax(-1) == target).sum().item(), n)
            else:
                target = target.reshape(target.shape[0], -1)  # flat output elements
                out = out.reshape(out.shape[0], -1).float()
                if m in points:
                    target = self._pick(target, points[m], out.shape[1])
                loss = F.mse_loss(out, target)
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

    def loss(self, model, batch, generator):
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
        outputs = model(batch["inputs"], points=points).logits
        return self._loss(outputs, batch, subsampled)

    def eval_batch(self, model, batch):
        return self._loss(self.predict(model, batch["inputs"]), batch, {})[1]

    def predict(self, model, inputs):
        return decode_all_points(model, inputs, self.eval_chunk_size)


class CausalLanguageModel(Objective):
    """``inputs [B, N]`` and ``targets [B, N]`` (``targets[t]`` follows ``inputs[t]``). The model
    scores latent row j against ``targets[latent_last_steps[j]]``; invalid latents (< 0) and
    padding targets (0) are out of the loss, as in the reference."""

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


def decode_all_points(model: nn.Module, inputs: Any, chunk_size: int) -> Any:
    """Encode once, then decode every output as ``points`` (the positions used when training
    on subsampled points), ``chunk_size`` queries at a time."""
    module = getattr(model, "module", model)
    latents, context = module.encode(inputs)
    points = module.decoder.all_points(context, latents.device)  # [O], or {modality: [O_m]}
    return module.decode_chunked(latents, context, chunk_size, points=points)


OBJECTIVES: dict[str, type[Objective]] = {
    "classification": Classification, "mlm": MaskedLanguageModel, "dense": Dense, "multimodal": Multimodal,
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

