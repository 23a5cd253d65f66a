"""Several modalities in one model (the reference ``MultimodalPreprocessor``,
``MultimodalDecoder`` and ``MultimodalPostprocessor``), e.g. video + audio + label.

Encoder side (:class:`MultimodalInputAdapter`): each modality is preprocessed by its
own adapter to ``[B, M_m, C_m]``, padded with a learned vector ``padding[m]`` to the
common width ``max_m C_m + min_padding_size``, optionally replaced row by row by a
learned ``mask_token[m]`` with probability ``mask_probs[m]`` (Bernoulli per row; the
reference masks at inference too: 0 never, 1 always), and the modalities are
concatenated in sorted-name order: ``[B, sum_m M_m, C]``.

Decoder side (:class:`MultimodalQueries`): each modality builds its own queries
(Fourier for image/audio, trainable for the label, ...), padded with a learned vector
to a common width; one shared cross-attention decoder decodes the concatenation and
its output is split back per modality. ``points`` is a dict ``{modality: flat indices}``
(reference subsampling; a modality that is absent or None is decoded in full), ``rows``
a dict ``{modality: rows of its full query array}`` (absent: not decoded). Heads per
modality turn the decoded rows into outputs (:class:`MultimodalOutputConfig`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..config import ConfigError
from ..decoder import QueryBuilder, QueryConfig
from ..layers.position import TrainablePositionEncoding
from .base import AdapterOutput, InputAdapter, InputAdapterConfig, OutputAdapterConfig


def _check_modalities(owner: str, modalities: Mapping[str, Any], min_padding_size: int) -> None:
    if not modalities:
        raise ConfigError(f"{owner}.modalities needs at least one modality")
    if min_padding_size < 0:
        raise ConfigError(f"{owner}.min_padding_size must be >= 0, got {min_padding_size}")


def _paddings(names: list[str], widths: Mapping[str, int], common: int, init_scale: float) -> nn.ModuleDict:
    """One learned row ``[1, common - width]`` per modality."""
    return nn.ModuleDict({m: TrainablePositionEncoding(1, common - widths[m], init_scale) for m in names})


def _pad(x: Tensor, padding: TrainablePositionEncoding) -> Tensor:
    """``[B, n, C_m]`` -> ``[B, n, C]`` with the learned padding row."""
    return torch.cat([x, padding.pos_embs.to(x.dtype).expand(x.shape[0], x.shape[1], -1)], dim=-1)


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------
@InputAdapterConfig.register("multimodal")
@dataclass(kw_only=True)
class MultimodalAdapterConfig(InputAdapterConfig):
    kind: Literal["multimodal"] = "multimodal"
    modalities: dict[str, InputAdapterConfig] = field(default_factory=dict)
    min_padding_size: int = 2
    mask_probs: dict[str, float] | None = None  # None: no mask tokens
    init_scale: float = 0.02

    def validate(self) -> None:
        _check_modalities("MultimodalAdapterConfig", self.modalities, self.min_padding_size)
        for name, sub in self.modalities.items():
            if isinstance(sub, MultimodalAdapterConfig):
                raise ConfigError(f"MultimodalAdapterConfig.modalities.{name}: modalities cannot be multimodal")
        if self.mask_probs is not None:
            if set(self.mask_probs) != set(self.modalities):
                raise ConfigError(
                    f"MultimodalAdapterConfig.mask_probs needs one probability per modality "
                    f"{sorted(self.modalities)}, got {sorted(self.mask_probs)}"
                )
            for name, p in self.mask_probs.items():
                if not 0.0 <= p <= 1.0:
                    raise ConfigError(f"MultimodalAdapterConfig.mask_probs.{name} must be in [0, 1], got {p}")

    def build(self) -> MultimodalInputAdapter:
        return MultimodalInputAdapter(self)


class MultimodalInputAdapter(InputAdapter):
    """``{modality: raw input}`` -> ``[B, sum_m M_m, C]`` (modalities in sorted order)."""

    def __init__(self, config: MultimodalAdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.names = sorted(config.modalities)
        self.modalities = nn.ModuleDict({m: config.modalities[m].build() for m in self.names})
        widths = {m: a.num_channels for m, a in self.modalities.items()}
        self.num_channels = max(widths.values()) + config.min_padding_size
        self.padding = _paddings(self.names, widths, self.num_channels, config.init_scale)
        self.mask_token = (
            nn.ModuleDict({m: TrainablePositionEncoding(1, self.num_channels, config.init_scale) for m in self.names})
            if config.mask_probs is not None
            else None
        )

    def check(self, inputs: Mapping[str, Any]) -> tuple[int, int]:
        if not isinstance(inputs, Mapping):
            raise TypeError(f"multimodal inputs must be a dict {{modality: tensor}} with keys {self.names}, "
                            f"got {type(inputs).__name__}")
        missing, unexpected = sorted(set(self.names) - set(inputs)), sorted(set(inputs) - set(self.names))
        if missing or unexpected:
            raise ValueError(f"multimodal inputs must have the keys {self.names}; missing {missing}, "
                             f"unexpected {unexpected}")
        shapes = {m: self.modalities[m].check(inputs[m]) for m in self.names}
        batch = {m: b for m, (b, _) in shapes.items()}
        if len(set(batch.values())) != 1:
            raise ValueError(f"multimodal inputs must share the batch size, got {batch}")
        return next(iter(batch.values())), sum(n for _, n in shapes.values())

    def forward(self, inputs: Mapping[str, Any]) -> AdapterOutput:
        padded, without_pos, sizes = [], {}, {}
        for m in self.names:
            out = self.modalities[m](inputs[m])
            x = _pad(out.inputs, self.padding[m])
            if self.mask_token is not None:
                x = self._mask(x, m)
            padded.append(x)
            without_pos[m] = out.inputs_without_pos
            sizes[m] = x.shape[1]
        return AdapterOutput(torch.cat(padded, dim=1), without_pos, sizes)

    def _mask(self, x: Tensor, modality: str) -> Tensor:
        p = self.config.mask_probs[modality]
        if p <= 0.0:
            return x
        token = self.mask_token[modality].pos_embs.to(x.dtype)  # [1, C]
        if p >= 1.0:
            return token.expand_as(x)
        mask = torch.rand(x.shape[:2], device=x.device)[..., None] < p
        return torch.where(mask, token, x)


# ---------------------------------------------------------------------------------------
# Decoder queries
# ---------------------------------------------------------------------------------------
@QueryConfig.register("multimodal")
@dataclass(kw_only=True)
class MultimodalQueriesConfig(QueryConfig):
    kind: Literal["multimodal"] = "multimodal"
    modalities: dict[str, QueryConfig] = field(default_factory=dict)
    min_padding_size: int = 2
    init_scale: float = 0.02

    def validate(self) -> None:
        _check_modalities("MultimodalQueriesConfig", self.modalities, self.min_padding_size)
        for name, sub in self.modalities.items():
            if isinstance(sub, MultimodalQueriesConfig):
                raise ConfigError(f"MultimodalQueriesConfig.modalities.{name}: modalities cannot be multimodal")

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
        self.padding = _paddings(self.names, widths, self.num_channels, config.init_scale)

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
            parts.append(_pad(q, self.padding[m]))
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


# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------
@OutputAdapterConfig.register("multimodal")
@dataclass(kw_only=True)
class MultimodalOutputConfig(OutputAdapterConfig):
    """One output head per modality; modalities without a head pass through."""

    kind: Literal["multimodal"] = "multimodal"
    modalities: dict[str, OutputAdapterConfig] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.modalities:
            raise ConfigError("MultimodalOutputConfig.modalities needs at least one modality head")

    def build(self, in_channels: int, input_adapter: InputAdapter | None) -> nn.Module:
        subs = input_adapter.modalities if isinstance(input_adapter, MultimodalInputAdapter) else {}
        return MultimodalOutput(
            {m: cfg.build(in_channels, subs[m] if m in subs else None) for m, cfg in sorted(self.modalities.items())}
        )


class MultimodalOutput(nn.Module):
    """``{modality: [B, O_m, E]}`` -> ``{modality: output}``; modalities decoded with no
    rows are left out."""

    def __init__(self, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(heads)

    def forward(self, decoded: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if not isinstance(decoded, Mapping):
            raise TypeError("the multimodal output adapter needs a multimodal decoder (MultimodalQueriesConfig)")
        return {
            m: self.heads[m](x) if m in self.heads else x
            for m, x in decoded.items()
            if x.shape[1] > 0
        }
