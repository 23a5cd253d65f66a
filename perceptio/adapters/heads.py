"""Generic output adapters."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..config import check_positive
from .base import InputAdapter, OutputAdapterConfig


@OutputAdapterConfig.register("classification")
@dataclass(kw_only=True)
class ClassificationOutputConfig(OutputAdapterConfig):
    """Logits of the first query: ``[B, O, E] -> [B, num_classes]``.

    ``num_classes=None``: the decoder's final projection already produced the logits
    (reference ``ClassificationDecoder``); otherwise a linear layer to ``num_classes``
    comes first (reference ``ClassificationPostprocessor``)."""

    num_classes: int | None = None

    def validate(self) -> None:
        check_positive(self, "num_classes")

    def build(self, in_channels: int, input_adapter: InputAdapter | None) -> nn.Module:
        return FirstQuery(nn.Linear(in_channels, self.num_classes) if self.num_classes else None)


class FirstQuery(nn.Module):
    def __init__(self, projection: nn.Linear | None = None) -> None:
        super().__init__()
        self.projection = projection

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, 0]
        return self.projection(x) if self.projection is not None else x


@OutputAdapterConfig.register("projection")
@dataclass(kw_only=True)
class ProjectionOutputConfig(OutputAdapterConfig):
    """A linear layer per query: ``[B, O, E] -> [B, O, num_outputs]`` (reference
    ``ProjectionPostprocessor``, e.g. the pixels of a video autoencoder)."""

    num_outputs: int = 3

    def validate(self) -> None:
        check_positive(self, "num_outputs")

    def build(self, in_channels: int, input_adapter: InputAdapter | None) -> nn.Module:
        return nn.Linear(in_channels, self.num_outputs)
