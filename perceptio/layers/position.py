"""Position encodings: N-d Fourier features and trainable tables.

Fourier features follow the reference ``generate_fourier_features``: for positions
``p`` in ``[-1, 1]^d`` and ``num_bands`` frequencies ``f_k`` linearly spaced in
``[1, max_resolution_d / 2]``, the features are
``[p (optional), sin(pi p_d f_k) for all d, k, cos(pi p_d f_k) for all d, k (optional)]``
(dimension-major within the sin and cos groups).

The reference places output positions with two formulas, and so do we:
the full grid uses ``linspace(-1, 1, n)`` per dimension (:func:`grid_positions`), while
decoding an arbitrary subset of flat indices uses ``-1 + 2 * i / n``
(:func:`subsampled_positions`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..limits import FEATURES_SIZE, format_bytes

# Full-grid features up to this many elements are cached as a buffer; larger grids
# (whole videos) are computed per chunk so that memory stays bounded.
_CACHE_LIMIT = 1 << 24


def grid_positions(index_dims: Sequence[int], device=None, dtype=torch.float32) -> Tensor:
    """Positions of the full grid, ``[prod(index_dims), len(index_dims)]`` in ``[-1, 1]``."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) for n in index_dims]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(index_dims))


def grid_positions_at(indices: Tensor, index_dims: Sequence[int], dtype=torch.float32) -> Tensor:
    """Rows ``indices`` of :func:`grid_positions` without building the whole grid."""
    coords = torch.stack(torch.unravel_index(indices, tuple(index_dims)), dim=-1).to(dtype)
    dims = torch.tensor(index_dims, dtype=dtype, device=indices.device)
    # linspace(-1, 1, n)[i] == -1 + 2 i / (n - 1); a single point sits at -1.
    return torch.where(dims > 1, -1.0 + 2.0 * coords / (dims - 1).clamp(min=1), -1.0)


def subsampled_positions(indices: Tensor, index_dims: Sequence[int], dtype=torch.float32) -> Tensor:
    """Reference positions of flat output ``indices [N]``: ``-1 + 2 * coord / dim``, ``[N, d]``."""
    coords = torch.stack(torch.unravel_index(indices, tuple(index_dims)), dim=-1).to(dtype)
    return -1.0 + 2.0 * coords / torch.tensor(index_dims, dtype=dtype, device=indices.device)


def fourier_features(
    positions: Tensor,
    num_bands: int,
    max_resolution: Sequence[int],
    concat_pos: bool = True,
    sine_only: bool = False,
) -> Tensor:
    """``positions [..., N, d]`` -> features ``[..., N, C]`` (see module docstring).

    Refuses (ValueError) features above ``PERCEPTIO_MAX_FEATURES_GB`` before computing them."""
    d = positions.shape[-1]
    if len(max_resolution) != d:
        raise ValueError(f"max_resolution has {len(max_resolution)} entries, positions have {d} dims")
    if positions.device.type != "meta":
        check_features_size(math.prod(positions.shape[:-1]), d, num_bands, concat_pos, sine_only,
                            positions.element_size())
    bands = torch.stack(
        [torch.linspace(1.0, res / 2, num_bands, dtype=positions.dtype, device=positions.device) for res in max_resolution]
    )  # [d, K]
    scaled = (positions[..., :, None] * bands).flatten(-2) * math.pi  # [..., N, d*K]
    parts = [positions] if concat_pos else []
    parts.append(torch.sin(scaled))
    if not sine_only:
        parts.append(torch.cos(scaled))
    return torch.cat(parts, dim=-1)


def check_features_size(rows: int, num_dims: int, num_bands: int, concat_pos: bool = True, sine_only: bool = False,
                        itemsize: int = 4) -> None:
    """Refuse (ValueError) Fourier features ``[rows, C]`` above ``PERCEPTIO_MAX_FEATURES_GB``."""
    size = rows * (fourier_num_channels(num_dims, num_bands, concat_pos, sine_only) + num_dims) * itemsize
    if size > FEATURES_SIZE.value():
        raise ValueError(
            f"Fourier features of {rows:,} positions x {num_dims} dims x num_bands={num_bands} would take "
            f"{format_bytes(size)}, above {FEATURES_SIZE.describe()}: decode fewer outputs at a time "
            f"(decode_chunked, or points), use fewer bands, or raise the limit")


def fourier_num_channels(num_dims: int, num_bands: int, concat_pos: bool = True, sine_only: bool = False) -> int:
    return num_dims * num_bands * (1 if sine_only else 2) + (num_dims if concat_pos else 0)


class FourierPositionEncoding(nn.Module):
    """Fourier features of a fixed grid ``index_dims``, or of positions given as data
    (``index_dims=None``: point clouds); no parameters. Every Fourier position feature of
    the model (input grids, decoder queries, point coordinates) is made by one of these.

    ``forward(batch_size)`` -> ``[B, prod(index_dims), num_channels]``;
    ``forward(batch_size, positions=[N, d] or [B, N, d])`` encodes given positions.
    """

    def __init__(
        self,
        index_dims: Sequence[int] | None,
        num_bands: int,
        max_resolution: Sequence[int] | None = None,
        concat_pos: bool = True,
        sine_only: bool = False,
    ) -> None:
        super().__init__()
        if index_dims is None and max_resolution is None:
            raise ValueError("positions without a grid (index_dims=None) need a max_resolution per dimension")
        self.index_dims = None if index_dims is None else tuple(index_dims)
        self.num_bands = num_bands
        self.max_resolution = tuple(max_resolution or index_dims)
        if self.index_dims is not None and len(self.max_resolution) != len(self.index_dims):
            raise ValueError(
                f"max_resolution {self.max_resolution} must have one entry per index dim {self.index_dims}"
            )
        self.concat_pos, self.sine_only = concat_pos, sine_only
        self.num_channels = fourier_num_channels(len(self.max_resolution), num_bands, concat_pos, sine_only)
        self.num_positions = 0 if self.index_dims is None else math.prod(self.index_dims)
        self._cached = self.index_dims is not None and self.num_positions * self.num_channels <= _CACHE_LIMIT
        grid = self.encode(grid_positions(self.index_dims)) if self._cached else torch.empty(0)
        self.register_buffer("grid", grid, persistent=False)

    def encode(self, positions: Tensor) -> Tensor:
        return fourier_features(positions, self.num_bands, self.max_resolution, self.concat_pos, self.sine_only)

    def grid_rows(self, indices: Tensor | None = None) -> Tensor:
        """Rows of the full-grid features, ``[N, C]`` (all rows when ``indices`` is None)."""
        if self.index_dims is None:
            raise ValueError("this encoding has no grid (index_dims=None); encode positions with .encode()")
        if self._cached:
            return self.grid if indices is None else self.grid[indices]
        if indices is None:
            check_features_size(self.num_positions, len(self.index_dims), self.num_bands, self.concat_pos,
                                self.sine_only)  # before the grid positions are made
            return self.encode(grid_positions(self.index_dims, device=self.grid.device))
        return self.encode(grid_positions_at(indices, self.index_dims))

    def forward(self, batch_size: int, positions: Tensor | None = None) -> Tensor:
        feats = self.grid_rows() if positions is None else self.encode(positions)
        return feats.expand(batch_size, *feats.shape[-2:]) if feats.dim() == 2 else feats


def init_table(table: Tensor, init_scale: float) -> Tensor:
    """The reference's ``TruncatedNormal(stddev=init_scale)``: normal, cut at two standard
    deviations. (``nn.init.trunc_normal_``'s default cut is at +-2 absolute, which for a
    scale of 0.02 is no cut at all.)"""
    return nn.init.trunc_normal_(table, std=init_scale, a=-2 * init_scale, b=2 * init_scale)


class TrainablePositionEncoding(nn.Module):
    """A learned table ``pos_embs [index_dim, num_channels]``; ``forward(B)`` -> ``[B, index_dim, C]``.

    Every learned table of the model is one of these: latents, trainable queries and
    positions, text positions, multimodal paddings and mask tokens."""

    def __init__(self, index_dim: int, num_channels: int, init_scale: float = 0.02) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.pos_embs = nn.Parameter(init_table(torch.empty(index_dim, num_channels), init_scale))

    def grid_rows(self, indices: Tensor | None = None) -> Tensor:
        return self.pos_embs if indices is None else self.pos_embs[indices]

    def forward(self, batch_size: int) -> Tensor:
        return self.pos_embs.expand(batch_size, -1, -1)


def sinusoidal_table(num_positions: int, num_channels: int) -> Tensor:
    """The fixed sinusoidal table ``[num_positions, num_channels]`` of Perceiver AR's absolute
    positions: with ``h = C // 2`` and ``div_j = 10000^(-j / (h - 1))``, row ``p`` is
    ``[sin(p div_j) for j < h, cos(p div_j) for j < h]`` (sin half, then cos half)."""
    h = num_channels // 2
    div = 10000.0 ** (-torch.arange(h, dtype=torch.float64) / max(h - 1, 1))
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * div
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


class RotaryEncoding(nn.Module):
    """Rotary position encoding (Su et al.) of per-head queries or keys as Perceiver AR applies it:
    ``forward(x [B, H, T, d], positions [B, T]) -> [B, H, T, d]``.

    Only the first ``floor(fraction_heads_to_rotate * H)`` heads and, in them, the first
    ``r = 2 floor(d * fraction_to_rotate / 2)`` channels are rotated; the rest pass through.
    The ``n = r / 2`` frequencies are ``max_wavelength^(-j / (n - 1))`` (wavelengths 1 ...
    ``max_wavelength``), and channel pairs ``(2j, 2j + 1)`` are interleaved ("rotate every two").
    Angles are computed in float64 from the integer positions, so large positions lose nothing
    and a constant shift of all positions changes every ``q . k`` by rounding only."""

    def __init__(self, head_channels: int, num_heads: int, fraction_to_rotate: float = 1.0,
                 fraction_heads_to_rotate: float = 1.0, max_wavelength: float = 10000.0) -> None:
        super().__init__()
        self.num_rotated_heads = math.floor(fraction_heads_to_rotate * num_heads)
        self.num_rotated_channels = 2 * math.floor(head_channels * fraction_to_rotate / 2)
        n = self.num_rotated_channels // 2
        exponents = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
        self.register_buffer("inv_freq", float(max_wavelength) ** -exponents, persistent=False)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        hr, r = self.num_rotated_heads, self.num_rotated_channels
        if hr == 0 or r == 0:
            return x
        theta = positions.to(torch.float64)[:, None, :, None] * self.inv_freq  # [B, 1, T, r/2]
        cos, sin = theta.cos().to(x.dtype), theta.sin().to(x.dtype)
        pairs = x[:, :hr, :, :r].unflatten(-1, (r // 2, 2))
        a, b = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
        if hr == x.shape[1] and r == x.shape[-1]:
            return rotated
        heads = torch.cat([rotated, x[:, :hr, :, r:]], dim=-1)
        return torch.cat([heads, x[:, hr:]], dim=1)
