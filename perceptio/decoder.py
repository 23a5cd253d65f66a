"""Decoders: latents ``[B, N, D]`` -> outputs ``[B, O, E]``.

A Perceiver IO decoder cross-attends from an output *query array* ``[B, O, Cq]`` (made
by a query builder, :mod:`perceptio.queries`) to the latents (one head and
``qk_channels = D`` by default, no query residual, as in the reference
``BasicDecoder``) and optionally projects to ``output_channels``.

The original Perceiver instead classifies from the mean of the latents (``latent_mean``).

Both implement :class:`Decoder`, the interface :class:`perceptio.Perceiver` uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .adapters.base import AdapterOutput
from .config import Config, ConfigError, check_positive
from .layers.blocks import Activation, CrossAttention, layer_norm
from .queries import QueryConfig, TrainableQueriesConfig


class Decoder(nn.Module):
    """What the model needs of a decoder: latents ``[B, N, D]`` -> outputs ``[B, O, E]``.

    ``output_channels``: ``E``. ``supports_selection``: whether outputs can be selected,
    that is decoded for ``points`` (reference-subsampled flat output indices) or ``rows``
    (exact rows of the full query array), masked with a ``query_mask [B, O]``, and
    decoded in chunks; a decoder without it raises a ``ValueError`` naming the operation.

    A selection is ``None`` (all outputs), ``points`` or ``rows`` (1-d index tensors, or
    for multimodal decoders dicts ``{modality: indices}``).
    """

    output_channels: int
    supports_selection: ClassVar[bool] = True

    def queries(
        self, batch_size: int, context: AdapterOutput | None = None, points: Any = None, rows: Any = None
    ) -> Tensor | None:
        """The query array ``[B, O, Cq]`` of a selection (None: the decoder takes no queries)."""
        raise NotImplementedError

    def forward(self, latents: Tensor, queries: Tensor | None, query_mask: Tensor | None = None) -> Tensor:
        """``latents [B, N, D]``, ``queries [B, O, Cq]``, ``query_mask [B, O]`` -> ``[B, O, E]``."""
        raise NotImplementedError

    def check_selection(self, context: AdapterOutput | None, indices: Any, what: str,
                        device: torch.device | None = None) -> Any:
        """A selection (``points`` or ``rows``) validated once, on ``device``: integer,
        1-d, within the number of outputs (:func:`perceptio.queries.check_indices`)."""
        return indices

    def all_points(self, context: AdapterOutput | None = None, device: torch.device | None = None) -> Any:
        """Every output as ``points`` (``[O]``, or ``{modality: [O_m]}``): the whole output
        with the reference's subsampled positions, as when training on subsampled points."""
        raise NotImplementedError

    def chunks(
        self, context: AdapterOutput | None, chunk_size: int, points: Any = None, device: torch.device | None = None
    ) -> Iterator[dict[str, Any]]:
        """Selections (``{"rows": ...}`` or ``{"points": ...}``) of at most ``chunk_size``
        queries each that cover all outputs (or all ``points``) in order."""
        raise NotImplementedError

    def split(self, out: Tensor, context: AdapterOutput | None = None, points: Any = None, rows: Any = None) -> Any:
        """Decoder output ``[B, O, E]`` for a selection -> what the output adapter takes
        (per-modality views for multimodal decoders)."""
        return out

    def merge(self, parts: list[Any]) -> Any:
        """Join the :meth:`split` outputs of consecutive chunks."""
        return torch.cat(parts, dim=1)


# ---------------------------------------------------------------------------------------
# Decoders
# ---------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class DecoderConfig(Config):
    """Polymorphic base: ``cross_attention`` (Perceiver IO) or ``latent_mean`` (Perceiver)."""

    _registry: ClassVar[dict[str, type[Config]]] = {}

    def build(self, latent_channels: int, input_channels: int, input_channels_without_pos: int | None) -> Decoder:
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

    def build(self, latent_channels: int, input_channels: int, input_channels_without_pos: int | None) -> Decoder:
        return PerceiverDecoder(self, latent_channels, input_channels, input_channels_without_pos)


class PerceiverDecoder(Decoder):
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
        self, batch_size: int, context: AdapterOutput | None = None, points: Any = None, rows: Any = None
    ) -> Tensor:
        if rows is not None:
            if points is not None:
                raise ValueError("give points (reference-subsampled outputs) or rows (rows of the full query "
                                 "array), not both")
            return self.query_builder.rows(batch_size, context, rows)
        return self.query_builder(batch_size, context, points)

    def forward(self, latents: Tensor, queries: Tensor | None, query_mask: Tensor | None = None) -> Tensor:
        if queries is None:
            raise ValueError("the cross-attention decoder needs queries [B, O, Cq]; make them with .queries()")
        out = self.cross_attend(queries, latents, query_mask=query_mask)
        return self.output(out) if self.output is not None else out

    def check_selection(self, context: AdapterOutput | None, indices: Any, what: str,
                        device: torch.device | None = None) -> Any:
        return self.query_builder.check_selection(context, indices, what, device)

    def chunks(
        self, context: AdapterOutput | None, chunk_size: int, points: Any = None, device: torch.device | None = None
    ) -> Iterator[dict[str, Any]]:
        return self.query_builder.chunks(context, chunk_size, points, device=device)

    def all_points(self, context: AdapterOutput | None = None, device: torch.device | None = None) -> Any:
        return self.query_builder.all_points(context, device=device)

    def split(self, out: Tensor, context: AdapterOutput | None = None, points: Any = None, rows: Any = None) -> Any:
        return self.query_builder.split(out, context, points, rows)

    def merge(self, parts: list[Any]) -> Any:
        return self.query_builder.merge(parts)


@DecoderConfig.register("latent_mean")
@dataclass(kw_only=True)
class LatentMeanDecoderConfig(DecoderConfig):
    """The original Perceiver head: mean over latents, layer norm, linear -> ``[B, 1, E]``."""

    output_channels: int = 1000

    def validate(self) -> None:
        check_positive(self, "output_channels")

    def build(self, latent_channels: int, input_channels: int, input_channels_without_pos: int | None) -> Decoder:
        return LatentMeanDecoder(latent_channels, self.output_channels)


class LatentMeanDecoder(Decoder):
    """The original Perceiver's head: ``latents [B, N, D]`` -> ``[B, 1, output_channels]``
    from the layer-normed mean of the latents. It has no output queries, so no selection."""

    supports_selection: ClassVar[bool] = False

    def __init__(self, latent_channels: int, output_channels: int) -> None:
        super().__init__()
        self.norm = layer_norm(latent_channels)
        self.output = nn.Linear(latent_channels, output_channels)
        self.output_channels = output_channels

    @staticmethod
    def unsupported(what: str) -> ValueError:
        return ValueError(
            f"{what} is not supported by the latent_mean decoder (the original Perceiver's head): it outputs one "
            "vector per example, from the mean of all latents, and has no output queries to select, mask or "
            "decode in chunks; decode the whole output, model.decode(latents)"
        )

    def queries(
        self, batch_size: int, context: AdapterOutput | None = None, points: Any = None, rows: Any = None
    ) -> None:
        if points is not None:
            raise self.unsupported("points")
        if rows is not None:
            raise self.unsupported("rows")
        return None

    def forward(self, latents: Tensor, queries: Tensor | None = None, query_mask: Tensor | None = None) -> Tensor:
        if queries is not None:
            raise self.unsupported("queries")
        if query_mask is not None:
            raise self.unsupported("query_mask")
        return self.output(self.norm(latents.mean(dim=1, keepdim=True)))

    def chunks(
        self, context: AdapterOutput | None, chunk_size: int, points: Any = None, device: torch.device | None = None
    ) -> Iterator[dict[str, Any]]:
        raise self.unsupported("decode_chunked")

    def all_points(self, context: AdapterOutput | None = None, device: torch.device | None = None) -> Any:
        raise self.unsupported("all_points")
