"""Decoders: latents ``[B, N, D]`` -> outputs ``[B, O, E]``.

A Perceiver IO decoder cross-attends from an output *query array* ``[B, O, Cq]`` (made
by a query builder, :mod:`perceptio.queries`) to the latents (one head and
``qk_channels = D`` by default, no query residual, as in the reference
``BasicDecoder``) and optionally projects to ``output_channels``.

The original Perceiver instead classifies from the mean of the latents (``latent_mean``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from .adapters.base import AdapterOutput
from .config import Config, ConfigError, check_positive
from .layers.blocks import Activation, CrossAttention, layer_norm
from .queries import QueryConfig, TrainableQueriesConfig


# ---------------------------------------------------------------------------------------
# Decoders
# ---------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class DecoderConfig(Config):
    """Polymorphic base: ``cross_attention`` (Perceiver IO) or ``latent_mean`` (Perceiver)."""

    _registry: ClassVar[dict[str, type[Config]]] = {}

    def build(self, latent_channels: int, input_channels: int, input_channels_without_pos: int | None) -> nn.Module:
        raise NotImplementedError


@DecoderConfig.register("cross_attention")
@dataclass(kw_only=True)
class CrossAttentionDecoderConfig(DecoderConfig):
    queries: QueryConfig = field(default_factory=TrainableQueriesConfig)
    num_heads: int = 1
    qk_channels: int | None = None
    v_channels: int | None = None
    widening_factor: int = 1
    use_query_residual: bool = False
    output_channels: int | None = None  # width of the final projection; None: no projection
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation: Activation = "gelu_tanh"

    def validate(self) -> None:
        check_positive(self, "num_heads", "qk_channels", "v_channels", "widening_factor", "output_channels")

    def build(self, latent_channels: int, input_channels: int, input_channels_without_pos: int | None) -> nn.Module:
        return PerceiverDecoder(self, latent_channels, input_channels, input_channels_without_pos)


class PerceiverDecoder(nn.Module):
    """Cross-attends queries ``[B, O, Cq]`` to latents ``[B, N, D]`` -> ``[B, O, E]``
    (``E = output_channels`` if set, else ``Cq``)."""

    def __init__(
        self,
        config: CrossAttentionDecoderConfig,
        latent_channels: int,
        input_channels: int,
        input_channels_without_pos: int | None,
    ) -> None:
        super().__init__()
        self.query_builder = config.queries.build(input_channels, input_channels_without_pos)
        q_channels = self.query_builder.num_channels
        for name in ("qk_channels", "v_channels"):
            value = getattr(config, name) or (latent_channels if name == "qk_channels" else config.qk_channels)
            if value is not None and value % config.num_heads:
                raise ConfigError(
                    f"CrossAttentionDecoderConfig.{name}={value} is not divisible by num_heads={config.num_heads}"
                )
        self.cross_attend = CrossAttention(
            q_channels,
            latent_channels,
            config.num_heads,
            config.qk_channels,
            config.v_channels,
            config.widening_factor,
            config.use_query_residual,
            "kv",
            config.dropout,
            config.attention_dropout,
            config.activation,
        )
        self.output = nn.Linear(q_channels, config.output_channels) if config.output_channels else None
        self.output_channels = config.output_channels or q_channels

    def queries(
        self,
        batch_size: int,
        context: AdapterOutput | None = None,
        points: Tensor | None = None,
        rows: Tensor | None = None,
    ) -> Tensor:
        if rows is not None:
            return self.query_builder.rows(batch_size, context, rows)
        return self.query_builder(batch_size, context, points)

    def forward(
        self,
        latents: Tensor,
        queries: Tensor,
        query_mask: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        out = self.cross_attend(queries, latents, query_mask=query_mask, return_attention=return_attention)
        out, probs = out if return_attention else (out, None)
        if self.output is not None:
            out = self.output(out)
        return (out, probs) if return_attention else out


@DecoderConfig.register("latent_mean")
@dataclass(kw_only=True)
class LatentMeanDecoderConfig(DecoderConfig):
    """The original Perceiver head: mean over latents, layer norm, linear -> ``[B, 1, E]``."""

    output_channels: int = 1000

    def validate(self) -> None:
        check_positive(self, "output_channels")

    def build(self, latent_channels: int, input_channels: int, input_channels_without_pos: int | None) -> nn.Module:
        return LatentMeanDecoder(latent_channels, self.output_channels)


class LatentMeanDecoder(nn.Module):
    def __init__(self, latent_channels: int, output_channels: int) -> None:
        super().__init__()
        self.norm = layer_norm(latent_channels)
        self.output = nn.Linear(latent_channels, output_channels)
        self.output_channels = output_channels

    def queries(self, batch_size: int, context=None, points=None, rows=None) -> None:
        return None

    def forward(self, latents: Tensor, queries: None = None, query_mask=None, return_attention: bool = False):
        out = self.output(self.norm(latents.mean(dim=1, keepdim=True)))
        return (out, None) if return_attention else out
