"""The contract between modality adapters and the Perceiver core.

An *input adapter* turns raw inputs (bytes, images, audio, ...) into the flat input
array the encoder attends to, ``[B, M, C]`` with position features included. It also
hands the decoder what query builders may need: the array without position features
and, for several modalities, how many rows each one has.

An *output adapter* turns the decoder's output ``[B, O, E]`` into the task's output
(logits, flow fields, reconstructions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from ..config import Config


@dataclass
class AdapterOutput:
    """What an input adapter produces.

    inputs: ``[B, M, C]``, the encoder's input array (features + positions).
    inputs_without_pos: ``[B, M, C']`` or, for multimodal inputs, a dict of them; may be None.
    modality_sizes: number of rows of ``inputs`` per modality, in order; None for one modality.
    """

    inputs: Tensor
    inputs_without_pos: Tensor | dict[str, Tensor] | None = None
    modality_sizes: dict[str, int] | None = None


@dataclass(kw_only=True)
class InputAdapterConfig(Config):
    """Polymorphic base: ``kind`` selects the adapter."""

    _registry: ClassVar[dict[str, type[Config]]] = {}

    def build(self) -> InputAdapter:
        raise NotImplementedError


@dataclass(kw_only=True)
class OutputAdapterConfig(Config):
    """Polymorphic base: ``kind`` selects the adapter."""

    _registry: ClassVar[dict[str, type[Config]]] = {}

    def build(self, in_channels: int, input_adapter: InputAdapter) -> nn.Module:
        raise NotImplementedError


class InputAdapter(nn.Module):
    """Base class: subclasses set ``num_channels`` (C of the encoder input) and
    ``num_channels_without_pos`` (C' of the array without positions, or None), and
    implement ``check(inputs)`` (before any tensor math) and ``forward``."""

    num_channels_without_pos: int | None = None

    num_channels: int

    def check(self, inputs: Any) -> tuple[int, int]:
        """Raise a clear ValueError/TypeError if ``inputs`` do not fit this adapter;
        else return ``(B, M)``, the leading shape of the encoder input array."""
        raise NotImplementedError

    def forward(self, inputs: Any) -> AdapterOutput:
        raise NotImplementedError
