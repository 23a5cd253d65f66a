"""Class predictions from logits: the top-k step shared by every classifying task
(ImageNet images, clip labels of the multimodal model, classification runs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor


@dataclass
class Prediction:
    index: int
    label: str | None
    score: float  # softmax probability


def check_top_k(top_k: int) -> None:
    """Called by the tasks before any work, so a bad ``top_k`` fails before the model runs."""
    if not isinstance(top_k, int) or top_k <= 0:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")


def top_predictions(logits: Tensor, top_k: int, labels: Sequence[str] | None = None) -> list[list[Prediction]]:
    """``logits [B, num_classes]`` -> for each row the ``top_k`` classes, most likely first
    (``labels[index]`` names them when given)."""
    check_top_k(top_k)
    if logits.dim() != 2:
        raise ValueError(f"expected logits [B, num_classes], got shape {tuple(logits.shape)}")
    num_classes = logits.shape[-1]
    if labels is not None and len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels given for a model with {num_classes} classes")
    scores, indices = logits.float().softmax(dim=-1).cpu().topk(min(top_k, num_classes), dim=-1)
    return [[Prediction(i, labels[i] if labels is not None else None, s) for s, i in zip(row_s, row_i)]
            for row_s, row_i in zip(scores.tolist(), indices.tolist())]
