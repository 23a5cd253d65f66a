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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ConfigError
from ..layers.position import TrainablePositionEncoding
from .base import AdapterOutput, InputAdapter, InputAdapterConfig, OutputAdapterConfig


def check_modalities(config: Any) -> None:
    """The checks every multimodal config (inputs, queries) shares: at least one modality,
    none of them multimodal itself, a padding size >= 0."""
    owner = type(config).__name__
    if not config.modalities:
        raise ConfigError(f"{owner}.modalities needs at least one modality")
    for name, sub in config.modalities.items():
        if isinstance(sub, type(config)):
            raise ConfigError(f"{owner}.modalities.{name}: modalities cannot be multimodal")
    if config.min_padding_size < 0:
        raise ConfigError(f"{owner}.min_padding_size must be >= 0, got {config.min_padding_size}")


def padding_rows(names: list[str], widths: Mapping[str, int], common: int, init_scale: float) -> nn.ModuleDict:
    """One learned row ``[1, common - width]`` per modality."""
    return nn.ModuleDict({m: TrainablePositionEncoding(1, common - widths[m], init_scale) for m in names})


def pad_with(x: Tensor, padding: TrainablePositionEncoding) -> Tensor:
    """``[B, n, C_m]`` -> ``[B, n, C]`` with the learned padding row."""
    return torch.cat([x, padding.pos_embs.to(x.dtype).expand(x.shape[0], x.shape[1], -1)], dim=-1)


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------
@InputAdapterConfig.register("multimodal")
@dataclass(kw_only=True)
class MultimodalAdapterConfig(InputAdapterConfig):
    modalities: dict[str, InputAdapterConfig] = field(default_factory=dict)
    min_padding_size: int = 2
    mask_probs: dict[str, float] | None = None  # None: no mask tokens
    init_scale: float = 0.02

    def validate(self) -> None:
        check_modalities(self)
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
        self.padding = padding_rows(self.names, widths, self.num_channels, config.init_scale)
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
            x = pad_with(out.inputs, self.padding[m])
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
# Outputs
# ---------------------------------------------------------------------------------------
@OutputAdapterConfig.register("multimodal")
@dataclass(kw_only=True)
class MultimodalOutputConfig(OutputAdapterConfig):
    """One output head per modality; modalities without a head pass through."""

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
