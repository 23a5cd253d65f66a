"""Text as raw UTF-8 bytes: token embedding plus added learned positions, and the
tied-embedding output head of the masked language model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import check_positive
from ..layers.position import TrainablePositionEncoding, init_table
from .base import AdapterOutput, InputAdapter, InputAdapterConfig, OutputAdapterConfig


@InputAdapterConfig.register("text")
@dataclass(kw_only=True)
class TextAdapterConfig(InputAdapterConfig):
    vocab_size: int = 262
    max_seq_len: int = 2048
    num_channels: int = 768  # d_model
    init_scale: float = 0.02

    def validate(self) -> None:
        check_positive(self, "vocab_size", "max_seq_len", "num_channels")

    def build(self) -> TextInputAdapter:
        return TextInputAdapter(self)


class TextInputAdapter(InputAdapter):
    """Token ids ``[B, L]`` (L <= max_seq_len) -> ``embed(ids) + pos[:L]``, ``[B, L, num_channels]``
    (``pos`` a learned table of ``max_seq_len`` rows)."""

    def __init__(self, config: TextAdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.num_channels = config.num_channels
        self.embedding = nn.Embedding(config.vocab_size, config.num_channels)
        init_table(self.embedding.weight.data, config.init_scale)
        self.position = TrainablePositionEncoding(config.max_seq_len, config.num_channels, config.init_scale)

    def check(self, inputs: Tensor) -> tuple[int, int]:
        if not isinstance(inputs, Tensor):
            raise TypeError(f"text inputs must be a tensor of token ids [B, L], got {type(inputs).__name__}")
        if inputs.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"text inputs must be integer token ids, got dtype {inputs.dtype}")
        if inputs.dim() != 2:
            raise ValueError(f"text inputs must have shape [batch, length], got shape {tuple(inputs.shape)}")
        length = inputs.shape[1]
        if length == 0 or inputs.shape[0] == 0:
            raise ValueError(f"text inputs are empty: shape {tuple(inputs.shape)}")
        if length > self.config.max_seq_len:
            raise ValueError(
                f"sequence length {length} exceeds the model's max_seq_len={self.config.max_seq_len}"
            )
        if inputs.device.type == "meta":  # shapes only (e.g. inferring sizes): no values to check
            return inputs.shape[0], length
        # A check of the values needs them: not while torch.compile / torch.export trace the model.
        if not torch.compiler.is_compiling():
            lo, hi = int(inputs.min()), int(inputs.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got values in [{lo}, {hi}]")
        return inputs.shape[0], length

    def forward(self, inputs: Tensor) -> AdapterOutput:
        x = self.embedding(inputs.long()) + self.position.pos_embs[: inputs.shape[1]]
        return AdapterOutput(x)


@OutputAdapterConfig.register("tied_embedding")
@dataclass(kw_only=True)
class TiedEmbeddingOutputConfig(OutputAdapterConfig):
    """Logits ``out @ embedding.T + bias`` with the text adapter's embedding (the reference
    ``EmbeddingDecoder``): ``[B, O, num_channels] -> [B, O, vocab_size]``."""


    def build(self, in_channels: int, input_adapter: InputAdapter) -> nn.Module:
        if not isinstance(input_adapter, TextInputAdapter):
            raise ValueError("the tied_embedding output adapter needs a text input adapter")
        if in_channels != input_adapter.num_channels:
            raise ValueError(
                f"tied_embedding: decoder outputs {in_channels} channels but the embedding has "
                f"{input_adapter.num_channels}; set decoder output_channels to {input_adapter.num_channels}"
            )
        return TiedEmbeddingOutput(input_adapter.embedding)


class TiedEmbeddingOutput(nn.Module):
    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self._embedding = [embedding]  # not registered: the weight belongs to the input adapter
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self._embedding[0].weight.T + self.bias
