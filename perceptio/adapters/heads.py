"""Generic output adapters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from .base import InputAdapter, OutputAdapterConfig


@OutputAdapterConfig.register("classification")
@dataclass(kw_only=True)
class ClassificationOutputConfig(OutputAdapterConfig):
    """Logits of the single query: ``[B, 1, num_classes] -> [B, num_classes]``. The decoder's
    final projection produces the logits (reference ``ClassificationDecoder``)."""

    kind: Literal["classification"] = "classification"

    def build(self, in_channels: int, input_adapter: InputAdapter) -> nn.Module:
        return FirstQuery()


class FirstQuery(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x[:, 0]
