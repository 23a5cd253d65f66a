"""Class labels as one-hot (or soft) vectors, one input row per example (the reference
``OneHotPreprocessor``): ``[B, num_classes] -> [B, 1, num_classes]``, no positions."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..config import check_positive
from .base import AdapterOutput, InputAdapter, InputAdapterConfig


@InputAdapterConfig.register("one_hot")
@dataclass(kw_only=True)
class OneHotAdapterConfig(InputAdapterConfig):
    num_classes: int = 1000

    def validate(self) -> None:
        check_positive(self, "num_classes")

    def build(self) -> OneHotInputAdapter:
        return OneHotInputAdapter(self)


class OneHotInputAdapter(InputAdapter):
    def __init__(self, config: OneHotAdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.num_channels = self.num_channels_without_pos = config.num_classes

    def check(self, inputs: Tensor) -> tuple[int, int]:
        k = self.config.num_classes
        if not isinstance(inputs, Tensor):
            raise TypeError(f"label inputs must be a tensor [B, {k}] of one-hot vectors, got {type(inputs).__name__}")
        if not inputs.is_floating_point():
            raise TypeError(f"label inputs must be floating point one-hot vectors [B, {k}], got dtype {inputs.dtype}")
        if inputs.dim() != 2 or inputs.shape[1] != k:
            raise ValueError(f"label inputs must have shape [B, num_classes={k}], got shape {tuple(inputs.shape)}")
        if inputs.shape[0] == 0:
            raise ValueError(f"label inputs are empty: shape {tuple(inputs.shape)}")
        return inputs.shape[0], 1

    def forward(self, inputs: Tensor) -> AdapterOutput:
        x = inputs[:, None, :]
        return AdapterOutput(x, x)
