"""Decoders: latents ``[B, N, D]`` -> outputs ``[B, O, E]``, and the query builders.

A Perceiver IO decoder cross-attends from an output *query array* ``[B, O, Cq]`` to the
latents (one head and ``qk_channels = D`` by default, no query residual, as in the
reference ``BasicDecoder``) and optionally projects to ``output_channels``.

Query builders make the query array:

* ``trainable``: a learned table ``[O, C]``;
* ``fourier``: Fourier features of output positions on a grid ``index_dims``;
* ``inputs``: the encoder inputs themselves (with or without position features);
* ``concat``: several of these, concatenated along channels.

Every builder returns the full query array, or the queries of a subset of flat output
indices ``points`` (training on a random subset, decoding in chunks). For Fourier
queries the reference places subsampled points with ``-1 + 2 i / n`` but the full grid
with ``linspace(-1, 1, n)``; ``points`` follows the former for parity, while
``rows`` returns exact rows of the full-grid array (so chunked decoding of the full
grid equals one full decode).

The original Perceiver instead classifies from the mean of the latents (``latent_mean``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from .adapters.base import AdapterOutput
from .config import Config, ConfigError, check_choice, check_positive
from .layers.blocks import Activation, CrossAttention, layer_norm
from .layers.position import FourierPositionEncoding, TrainablePositionEncoding, subsampled_positions


# ---------------------------------------------------------------------------------------
# Query builders
# ---------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class QueryConfig(Config):
    """Polymorphic base: ``kind`` selects the query builder."""

    _registry: ClassVar[dict[str, type[Config]]] = {}

    def build(self, input_channels: int, input_channels_without_pos: int | None) -> QueryBuilder:
        raise NotImplementedError


class QueryBuilder(nn.Module):
    """Makes decoder queries ``[B, O, num_channels]``.

    ``forward(batch_size, context, points=None)``: all queries, or those of flat output
    indices ``points [n]`` (reference subsampling semantics).
    ``rows(batch_size, context, indices)``: rows ``indices`` of the full query array.
    """

    num_channels: int

    def forward(self, batch_size: int, context: AdapterOutput | None = None, points: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def rows(self, batch_size: int, context: AdapterOutput | None, indices: Tensor) -> Tensor:
        return self(batch_size, context, indices)

    def num_queries(self, context: AdapterOutput | None = None) -> int:
        raise NotImplementedError

    # -- decoding in chunks (builders of several modalities override these) -------------
    def chunks(
        self, context: AdapterOutput | None, chunk_size: int, points: Tensor | None = None, device=None
    ) -> Iterator[dict[str, Tensor]]:
        """Selections ``{"rows": ...}`` (full query array) or ``{"points": ...}`` of at most
        ``chunk_size`` queries each, covering all queries (or all ``points``) in order."""
        if points is not None:
            for start in range(0, len(points), chunk_size):
                yield {"points": points[start : start + chunk_size]}
            return
        total = self.num_queries(context)
        for start in range(0, total, chunk_size):
            yield {"rows": torch.arange(start, min(start + chunk_size, total), device=device)}

    def split(self, out: Tensor, context: AdapterOutput | None = None, points=None, rows=None):
        """Decoder output ``[B, O, E]`` for a selection -> what the output adapter takes."""
        return out

    def merge(self, parts: list):
        """Join the :meth:`split` outputs of consecutive chunks."""
        return torch.cat(parts, dim=1)


@QueryConfig.register("trainable")
@dataclass(kw_only=True)
class TrainableQueriesConfig(QueryConfig):
    kind: Literal["trainable"] = "trainable"
    num_queries: int = 1
    num_channels: int = 1024
    init_scale: float = 0.02

    def validate(self) -> None:
        check_positive(self, "num_queries", "num_channels")

    def build(self, input_channels: int, input_channels_without_pos: int | None) -> QueryBuilder:
        return TrainableQueries(self)


class TrainableQueries(QueryBuilder):
    def __init__(self, config: TrainableQueriesConfig) -> None:
        super().__init__()
        self.num_channels = config.num_channels
        self.queries = TrainablePositionEncoding(config.num_queries, config.num_channels, config.init_scale)

    def forward(self, batch_size: int, context: AdapterOutput | None = None, points: Tensor | None = None) -> Tensor:
        table = self.queries.grid_rows(points)
        return table.expand(batch_size, *table.shape)

    def num_queries(self, context: AdapterOutput | None = None) -> int:
        return self.queries.pos_embs.shape[0]


@QueryConfig.register("fourier")
@dataclass(kw_only=True)
class FourierQueriesConfig(QueryConfig):
    kind: Literal["fourier"] = "fourier"
    index_dims: list[int] = field(default_factory=lambda: [1])
    num_bands: int = 64
    max_resolution: list[int] | None = None
    concat_pos: bool = True
    sine_only: bool = False

    def validate(self) -> None:
        check_positive(self, "num_bands")
        if not self.index_dims or any(d <= 0 for d in self.index_dims):
            raise ConfigError(f"FourierQueriesConfig.index_dims must be positive sizes, got {self.index_dims}")
        if self.max_resolution is not None and len(self.max_resolution) != len(self.index_dims):
            raise ConfigError(
                f"FourierQueriesConfig.max_resolution {self.max_resolution} needs one entry per index dim "
                f"{self.index_dims}"
            )

    def build(self, input_channels: int, input_channels_without_pos: int | None) -> QueryBuilder:
        return FourierQueries(self)


class FourierQueries(QueryBuilder):
    def __init__(self, config: FourierQueriesConfig) -> None:
        super().__init__()
        self.encoding = FourierPositionEncoding(
            config.index_dims, config.num_bands, config.max_resolution, config.concat_pos, config.sine_only
        )
        self.num_channels = self.encoding.num_channels

    def forward(self, batch_size: int, context: AdapterOutput | None = None, points: Tensor | None = None) -> Tensor:
        if points is None:
            feats = self.encoding.grid_rows()
        else:
            feats = self.encoding.encode(subsampled_positions(points, self.encoding.index_dims))
        return feats.expand(batch_size, *feats.shape)

    def rows(self, batch_size: int, context: AdapterOutput | None, indices: Tensor) -> Tensor:
        feats = self.encoding.grid_rows(indices)
        return feats.expand(batch_size, *feats.shape)

    def num_queries(self, context: AdapterOutput | None = None) -> int:
        return self.encoding.num_positions


@QueryConfig.register("inputs")
@dataclass(kw_only=True)
class InputQueriesConfig(QueryConfig):
    """Use the encoder input array (``with_position=True``) or the adapter's array
    without position features as queries (e.g. optical flow: one query per pixel)."""

    kind: Literal["inputs"] = "inputs"
    with_position: bool = True

    def build(self, input_channels: int, input_channels_without_pos: int | None) -> QueryBuilder:
        channels = input_channels if self.with_position else input_channels_without_pos
        if channels is None:
            raise ConfigError("InputQueriesConfig.with_position=False needs an input adapter that exposes "
                              "its inputs without position features")
        return InputQueries(self.with_position, channels)


class InputQueries(QueryBuilder):
    def __init__(self, with_position: bool, num_channels: int) -> None:
        super().__init__()
        self.with_position, self.num_channels = with_position, num_channels

    def _source(self, context: AdapterOutput | None) -> Tensor:
        if context is None:
            raise ValueError("input queries need the adapter output of the same forward pass")
        source = context.inputs if self.with_position else context.inputs_without_pos
        if not isinstance(source, Tensor):
            raise ValueError("input queries need a single input array, got a multimodal dict")
        return source

    def forward(self, batch_size: int, context: AdapterOutput | None = None, points: Tensor | None = None) -> Tensor:
        source = self._source(context)
        return source if points is None else source[:, points]

    def num_queries(self, context: AdapterOutput | None = None) -> int:
        return self._source(context).shape[1]


@QueryConfig.register("concat")
@dataclass(kw_only=True)
class ConcatQueriesConfig(QueryConfig):
    """Queries of several builders concatenated along channels (same number of rows)."""

    kind: Literal["concat"] = "concat"
    parts: list[QueryConfig] = field(default_factory=list)

    def validate(self) -> None:
        if len(self.parts) < 2:
            raise ConfigError(f"ConcatQueriesConfig.parts needs at least 2 query configs, got {len(self.parts)}")

    def build(self, input_channels: int, input_channels_without_pos: int | None) -> QueryBuilder:
        return ConcatQueries([p.build(input_channels, input_channels_without_pos) for p in self.parts])


class ConcatQueries(QueryBuilder):
    def __init__(self, parts: list[QueryBuilder]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.num_channels = sum(p.num_channels for p in parts)

    def forward(self, batch_size: int, context: AdapterOutput | None = None, points: Tensor | None = None) -> Tensor:
        return torch.cat([p(batch_size, context, points) for p in self.parts], dim=-1)

    def rows(self, batch_size: int, context: AdapterOutput | None, indices: Tensor) -> Tensor:
        return torch.cat([p.rows(batch_size, context, indices) for p in self.parts], dim=-1)

    def num_queries(self, context: AdapterOutput | None = None) -> int:
        return self.parts[0].num_queries(context)


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
    kind: Literal["cross_attention"] = "cross_attention"
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
        check_choice(self, "activation", ("gelu_tanh", "gelu", "relu", "silu"))

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

    kind: Literal["latent_mean"] = "latent_mean"
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
