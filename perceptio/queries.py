"""Query builders: the output query arrays ``[B, O, Cq]`` that decoders cross-attend from.

* ``trainable``: a learned table ``[O, C]``;
* ``fourier``: Fourier features of output positions on a grid ``index_dims``;
* ``inputs``: the encoder inputs themselves (with or without position features);
* ``concat``: several of these, concatenated along channels;
* ``multimodal``: one builder per modality, padded to a common width and concatenated
  along rows (the reference ``MultimodalDecoder``).

Every builder returns the full query array, or the queries of a subset of flat output
indices ``points`` (training on a random subset, decoding in chunks). For Fourier
queries the reference places subsampled points with ``-1 + 2 i / n`` but the full grid
with ``linspace(-1, 1, n)``; ``points`` follows the former for parity, while
``rows`` returns exact rows of the full-grid array (so chunked decoding of the full
grid equals one full decode).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .adapters.base import AdapterOutput
from .adapters.multimodal import check_modalities, pad_with, padding_rows
from .config import Config, ConfigError, check_positive
from .layers.position import FourierPositionEncoding, TrainablePositionEncoding, subsampled_positions


def check_indices(indices: Any, num_outputs: int, what: str, device=None) -> Tensor:
    """Output indices ``[n]`` checked once, before they index anything: a 1-d integer
    tensor with values in ``[0, num_outputs)`` (no wrap-around of negative indices, no
    positions beyond the grid); returned on ``device``. Raises TypeError / ValueError
    naming ``what`` (e.g. ``points``), the expected range and what was given."""
    expected = f"{what} must be a 1-d integer tensor of output indices in [0, {num_outputs})"
    if not isinstance(indices, Tensor):
        raise TypeError(f"{expected}, got {type(indices).__name__}; e.g. torch.tensor([0, 5, 9])")
    if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
        raise TypeError(f"{expected}, got dtype {indices.dtype}; use .long() for indices, or .nonzero() of a mask")
    if indices.dim() != 1:
        raise ValueError(f"{expected}, got shape {tuple(indices.shape)}; flatten it with .flatten()")
    if indices.numel() and indices.device.type != "meta":
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= num_outputs:
            raise ValueError(f"{expected} (the decoder has {num_outputs} outputs), got values in [{lo}, {hi}]")
    return indices if device is None else indices.to(device)


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

    def check_selection(self, context: AdapterOutput | None, indices: Any, what: str, device=None) -> Any:
        """``indices`` (``points`` or ``rows``) checked against the output count and moved
        to ``device``; see :func:`check_indices`."""
        return None if indices is None else check_indices(indices, self.num_queries(context), what, device)

    # -- decoding in chunks (builders of several modalities override these) -------------
    def all_points(self, context: AdapterOutput | None = None, device=None) -> Tensor:
        """Every flat output index, as ``points`` ``[O]``: decoding them gives the whole
        output with the reference's subsampled positions."""
        return torch.arange(self.num_queries(context), device=device)

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
# Decoder queries
# ---------------------------------------------------------------------------------------
@QueryConfig.register("multimodal")
@dataclass(kw_only=True)
class MultimodalQueriesConfig(QueryConfig):
    modalities: dict[str, QueryConfig] = field(default_factory=dict)
    min_padding_size: int = 2
    init_scale: float = 0.02

    def validate(self) -> None:
        check_modalities(self)

    def build(self, input_channels: int, input_channels_without_pos: int | None) -> QueryBuilder:
        # Per-modality "inputs" queries see that modality's padded encoder inputs.
        return MultimodalQueries(self, input_channels)


class MultimodalQueries(QueryBuilder):
    """Per-modality queries padded to ``num_channels`` and concatenated in sorted order."""

    def __init__(self, config: MultimodalQueriesConfig, input_channels: int) -> None:
        super().__init__()
        self.names = sorted(config.modalities)
        self.builders = nn.ModuleDict({m: config.modalities[m].build(input_channels, None) for m in self.names})
        widths = {m: b.num_channels for m, b in self.builders.items()}
        self.num_channels = max(widths.values()) + config.min_padding_size
        self.padding = padding_rows(self.names, widths, self.num_channels, config.init_scale)

    # -- per-modality contexts and selections ------------------------------------------
    def _contexts(self, context: AdapterOutput | None) -> dict[str, AdapterOutput | None]:
        if context is None or context.modality_sizes is None:
            return dict.fromkeys(self.names)
        without = context.inputs_without_pos if isinstance(context.inputs_without_pos, Mapping) else {}
        out, start = {}, 0
        for m in sorted(context.modality_sizes):
            n = context.modality_sizes[m]
            out[m] = AdapterOutput(context.inputs[:, start : start + n], without.get(m))
            start += n
        return {m: out.get(m) for m in self.names}

    def _check_selection(self, selection: Any, what: str) -> dict[str, Tensor | None] | None:
        if selection is None:
            return None
        if not isinstance(selection, Mapping):
            raise TypeError(f"multimodal {what} must be a dict {{modality: 1-d index tensor}} over {self.names}, "
                            f"got {type(selection).__name__}")
        unknown = sorted(set(selection) - set(self.names))
        if unknown:
            raise ValueError(f"multimodal {what}: unknown modalities {unknown}; the decoder has {self.names}")
        for m, idx in selection.items():
            if idx is not None and (not isinstance(idx, Tensor) or idx.dim() != 1 or idx.is_floating_point()):
                raise TypeError(f"multimodal {what}[{m!r}] must be a 1-d integer tensor, got "
                                f"{tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__}")
        return dict(selection)

    def check_selection(self, context: AdapterOutput | None, indices: Any, what: str, device=None) -> Any:
        selection = self._check_selection(indices, what)
        if selection is None:
            return None
        contexts = self._contexts(context)
        return {m: None if idx is None else self.builders[m].check_selection(contexts[m], idx, f"{what}[{m!r}]", device)
                for m, idx in selection.items()}

    def sizes(self, context: AdapterOutput | None, points: Any = None, rows: Any = None) -> dict[str, int]:
        """Number of queries of each modality for a selection."""
        rows = self._check_selection(rows, "rows")
        if rows is not None:
            return {m: len(rows[m]) if rows.get(m) is not None else 0 for m in self.names}
        points = self._check_selection(points, "points") or {}
        contexts = self._contexts(context)
        return {
            m: len(points[m]) if points.get(m) is not None else self.builders[m].num_queries(contexts[m])
            for m in self.names
        }

    def all_points(self, context: AdapterOutput | None = None, device=None) -> dict[str, Tensor]:
        """Every flat output index of every modality, as ``points``: decoding them gives the
        whole output with the reference's subsampled positions (how its colab decodes a
        whole video, chunk by chunk)."""
        return {m: torch.arange(n, device=device) for m, n in self.sizes(context).items()}

    # -- QueryBuilder ---------------------------------------------------------------------
    def _queries(self, batch_size: int, context: AdapterOutput | None, points: Any, rows: Any) -> Tensor:
        rows = self._check_selection(rows, "rows")
        points = self._check_selection(points, "points") or {}
        contexts = self._contexts(context)
        parts = []
        for m in self.names:
            builder = self.builders[m]
            if rows is not None:
                if rows.get(m) is None or len(rows[m]) == 0:
                    continue
                q = builder.rows(batch_size, contexts[m], rows[m])
            elif points.get(m) is not None:
                if len(points[m]) == 0:
                    continue
                q = builder(batch_size, contexts[m], points[m])
            else:
                q = builder(batch_size, contexts[m])
            parts.append(pad_with(q, self.padding[m]))
        if not parts:
            return self.padding[self.names[0]].pos_embs.new_zeros(batch_size, 0, self.num_channels)
        return torch.cat(parts, dim=1)

    def forward(self, batch_size: int, context: AdapterOutput | None = None, points: Any = None) -> Tensor:
        return self._queries(batch_size, context, points, None)

    def rows(self, batch_size: int, context: AdapterOutput | None, indices: Any) -> Tensor:
        if indices is None:
            raise TypeError(f"multimodal rows must be a dict {{modality: row indices}} over {self.names}")
        return self._queries(batch_size, context, None, indices)

    def num_queries(self, context: AdapterOutput | None = None) -> int:
        return sum(self.sizes(context).values())

    def split(self, out: Tensor, context: AdapterOutput | None = None, points: Any = None, rows: Any = None):
        """``[B, O, E]`` -> ``{modality: [B, O_m, E]}``."""
        sizes = self.sizes(context, points, rows)
        return dict(zip(self.names, out.split([sizes[m] for m in self.names], dim=1)))

    def merge(self, parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        return {m: torch.cat([p[m] for p in parts], dim=1) for m in self.names}

    def chunks(
        self, context: AdapterOutput | None, chunk_size: int, points: Any = None, device=None
    ) -> Iterator[dict[str, dict[str, Tensor]]]:
        """First the modalities with explicit ``points`` (reference subsampling), then the
        others in full (exact rows of their full query arrays); every selection names
        every modality, with an empty index tensor where it has nothing in that chunk."""
        points = self._check_selection(points, "points") or {}
        subsampled = {m: points[m] for m in self.names if points.get(m) is not None}
        contexts = self._contexts(context)
        full = {
            m: torch.arange(self.builders[m].num_queries(contexts[m]), device=device)
            for m in self.names if m not in subsampled
        }
        empty = torch.zeros(0, dtype=torch.long, device=device)
        for mode, selected in (("points", subsampled), ("rows", full)):
            total = sum(len(idx) for idx in selected.values())
            for start in range(0, total, chunk_size):
                end, offset, chunk = min(start + chunk_size, total), 0, {}
                for m in self.names:
                    idx = selected.get(m, empty)
                    lo, hi = max(start - offset, 0), min(end - offset, len(idx))
                    chunk[m] = idx[lo:hi] if lo < hi else empty
                    offset += len(idx)
                yield {mode: chunk}
