"""Position features of modality adapters (the reference ``build_position_encoding``
and ``_build_network_inputs`` of its image and audio preprocessors).

An adapter turns raw inputs into features on an index grid ``[B, *index_dims, C]``;
:class:`NetworkInputs` flattens them to ``[B, M, C]`` and adds position features:

* ``fourier``: Fourier features of the grid (no parameters; ``max_resolution``
  defaults to the grid itself, as in the reference);
* ``trainable``: a learned table ``[prod(index_dims), num_channels]``, so the grid
  size is fixed;

optionally projected by a linear layer (``project_pos_dim``), optionally refined by
``num_extra_mlp`` residual linear layers (``pos += Linear(pos)``, ReLU between), then
concatenated to the features (``combine="concat"``) or added to them (``"add"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config, ConfigError, check_positive
from ..layers.position import FourierPositionEncoding, TrainablePositionEncoding, fourier_features, fourier_num_channels
from ..layers.position import grid_positions


@dataclass(kw_only=True)
class PositionEncodingConfig(Config):
    encoding: Literal["fourier", "trainable"] = "fourier"
    # fourier
    num_bands: int = 64
    max_resolution: list[int] | None = None  # None: the index dims of the input
    concat_pos: bool = True
    sine_only: bool = False
    # trainable
    num_channels: int = 128
    init_scale: float = 0.02
    # both
    project_pos_dim: int | None = None
    num_extra_mlp: int = 0
    combine: Literal["concat", "add"] = "concat"

    def validate(self) -> None:
        check_positive(self, "num_bands", "num_channels", "project_pos_dim")
        if self.num_extra_mlp < 0:
            raise ConfigError(f"PositionEncodingConfig.num_extra_mlp must be >= 0, got {self.num_extra_mlp}")
        if self.max_resolution is not None and any(r <= 0 for r in self.max_resolution):
            raise ConfigError(f"PositionEncodingConfig.max_resolution must be positive, got {self.max_resolution}")

    def check_index_dims(self, index_dims: Sequence[int], owner: str) -> None:
        """Raise ConfigError if this encoding cannot describe a grid ``index_dims``."""
        if self.encoding == "fourier" and self.max_resolution is not None and len(self.max_resolution) != len(index_dims):
            raise ConfigError(
                f"{owner}: position max_resolution {self.max_resolution} needs one entry per index dim "
                f"of the features {list(index_dims)}"
            )

    def base_channels(self, num_dims: int) -> int:
        if self.encoding == "fourier":
            return fourier_num_channels(num_dims, self.num_bands, self.concat_pos, self.sine_only)
        return self.num_channels

    def channels(self, num_dims: int) -> int:
        """Width of the position features of a ``num_dims``-d grid."""
        return self.project_pos_dim or self.base_channels(num_dims)


class NetworkInputs(nn.Module):
    """Features ``[B, *index_dims, C]`` -> ``(inputs [B, M, C + P] or [B, M, C], inputs_without_pos [B, M, C])``.

    ``index_dims`` is the grid the adapter is built for: trainable tables have that
    size; Fourier features of it are cached, other grids are encoded on the fly.
    """

    def __init__(self, config: PositionEncodingConfig, index_dims: Sequence[int], feature_channels: int) -> None:
        super().__init__()
        self.config = config
        self.index_dims = tuple(index_dims)
        pos_channels = config.channels(len(self.index_dims))
        if config.combine == "add" and pos_channels != feature_channels:
            raise ConfigError(
                f"position combine='add' needs position features as wide as the input features: "
                f"{pos_channels} != {feature_channels}; set project_pos_dim={feature_channels} or combine='concat'"
            )
        self.num_channels = feature_channels + pos_channels if config.combine == "concat" else feature_channels
        if config.encoding == "fourier":
            self.fourier = FourierPositionEncoding(
                self.index_dims, config.num_bands, config.max_resolution, config.concat_pos, config.sine_only
            )
        else:
            self.trainable = TrainablePositionEncoding(math.prod(self.index_dims), config.num_channels, config.init_scale)
        base = config.base_channels(len(self.index_dims))
        self.projector = nn.Linear(base, config.project_pos_dim) if config.project_pos_dim else None
        self.mlp = nn.ModuleList(nn.Linear(pos_channels, pos_channels) for _ in range(config.num_extra_mlp))

    def check(self, index_dims: Sequence[int], what: str) -> None:
        """Raise ValueError if the features' grid ``index_dims`` cannot be encoded."""
        if tuple(index_dims) == self.index_dims:
            return
        if self.config.encoding == "trainable":
            raise ValueError(
                f"{what}: trainable positions were built for a feature grid {list(self.index_dims)}, "
                f"got {list(index_dims)}; give inputs of the configured size"
            )
        if len(index_dims) != len(self.index_dims):
            raise ValueError(f"{what}: feature grid {list(index_dims)} has the wrong number of dims, expected "
                             f"{len(self.index_dims)} like {list(self.index_dims)}")

    def positions(self, index_dims: Sequence[int]) -> Tensor:
        """Position features ``[prod(index_dims), P]`` of the grid."""
        if self.config.encoding == "fourier":
            if tuple(index_dims) == self.index_dims:
                pos = self.fourier.grid_rows()
            else:
                device = self.fourier.grid.device
                resolution = self.config.max_resolution or index_dims
                pos = fourier_features(grid_positions(index_dims, device=device), self.config.num_bands, resolution,
                                       self.config.concat_pos, self.config.sine_only)
        else:
            pos = self.trainable.pos_embs
        if self.projector is not None:
            pos = self.projector(pos)
        for i, layer in enumerate(self.mlp):
            pos = pos + layer(pos)
            if i < len(self.mlp) - 1:
                pos = F.relu(pos)
        return pos

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        b, index_dims = features.shape[0], features.shape[1:-1]
        flat = features.reshape(b, math.prod(index_dims), features.shape[-1])
        pos = self.positions(index_dims).to(flat.dtype).expand(b, -1, -1)
        combined = torch.cat([flat, pos], dim=-1) if self.config.combine == "concat" else flat + pos
        return combined, flat
