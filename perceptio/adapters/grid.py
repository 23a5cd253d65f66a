"""Generic N-d grids, point clouds and log-mel spectrograms as encoder inputs.

``grid``: any array on a regular grid, ``[B, *index_dims, C]`` (a time series ``[B, T, C]``,
a volume, a stack of sensor maps ...). It is optionally cut into non-overlapping N-d
patches, optionally projected linearly to ``num_channels`` and given position features
of the (patch) grid (:mod:`.positions`, shared with the image and audio adapters):

    [B, *index_dims, C] --patch--> [B, prod(index_dims / patch_size), C * prod(patch_size)]
        --linear (optional)--> [B, M, F] --concat positions--> [B, M, F + P]

``points``: a set of points ``[B, P, d + F]`` (coordinates first, then features) encoded by
Fourier features of the continuous coordinates (scaled to ``[-1, 1]`` by ``coord_scale``).

``spectrogram``: a waveform ``[B, T]`` turned into a log-mel spectrogram with ``torch.stft``
(Hann window, HTK mel scale, no parameters) that is then a ``[frames, mels, 1]`` grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..config import ConfigError, check_positive
from ..layers.position import FourierPositionEncoding
from .base import AdapterOutput, InputAdapter, InputAdapterConfig
from .positions import NetworkInputs, PositionEncodingConfig


def _check_float_tensor(inputs, what: str, shape_text: str) -> None:
    if not isinstance(inputs, Tensor):
        raise TypeError(f"{what} inputs must be a float tensor {shape_text}, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(f"{what} inputs must be a float tensor {shape_text}, got dtype {inputs.dtype}")


# ---------------------------------------------------------------------------------------
# N-d grids
# ---------------------------------------------------------------------------------------
@InputAdapterConfig.register("grid")
@dataclass(kw_only=True)
class GridAdapterConfig(InputAdapterConfig):
    """Any array on a regular N-d grid ``[B, *index_dims, C]``. Images and videos with the
    reference preprocessing have their own adapter (``image``); this one is for any rank."""

    index_dims: list[int] = field(default_factory=lambda: [8, 8])  # grid shape, without channels
    num_input_channels: int = 1  # C of the raw inputs [B, *index_dims, C]
    patch_size: list[int] | None = None  # one entry per index dim; None: every element is a token
    num_channels: int | None = None  # linear projection of the (patch) features; None: no projection
    position: PositionEncodingConfig = field(default_factory=lambda: PositionEncodingConfig(num_bands=16))

    def validate(self) -> None:
        check_positive(self, "num_input_channels", "num_channels")
        if not self.index_dims or any(d <= 0 for d in self.index_dims):
            raise ConfigError(f"GridAdapterConfig.index_dims must be positive sizes, got {self.index_dims}")
        if self.patch_size is not None:
            if len(self.patch_size) != len(self.index_dims):
                raise ConfigError(
                    f"GridAdapterConfig.patch_size {self.patch_size} needs one entry per index dim {self.index_dims}"
                )
            if any(p <= 0 or d % p for d, p in zip(self.index_dims, self.patch_size)):
                raise ConfigError(
                    f"GridAdapterConfig.patch_size {self.patch_size} must divide index_dims {self.index_dims}"
                )
        self.position.check_index_dims(self.index_dims, "GridAdapterConfig")

    @property
    def token_dims(self) -> list[int]:
        """The grid of tokens: ``index_dims`` divided by ``patch_size``."""
        patch = self.patch_size or [1] * len(self.index_dims)
        return [d // p for d, p in zip(self.index_dims, patch)]

    def build(self) -> GridInputAdapter:
        return GridInputAdapter(self)


def patchify(x: Tensor, patch_size: list[int]) -> Tensor:
    """``[B, *dims, C]`` -> ``[B, *(dims / patch), C * prod(patch)]``, channels ordered (patch..., c)."""
    b, dims, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    n = len(dims)
    grid = [d // p for d, p in zip(dims, patch_size)]
    x = x.reshape(b, *[s for g, p in zip(grid, patch_size) for s in (g, p)], c)
    # [B, g0, p0, g1, p1, ..., C] -> [B, g0, g1, ..., p0, p1, ..., C]
    x = x.permute([0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [1 + 2 * n])
    return x.reshape(b, *grid, -1)


class GridInputAdapter(InputAdapter):
    """``[B, *index_dims, C]`` -> ``[B, M, F + P]`` (see module docstring)."""

    def __init__(self, config: GridAdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_size = list(config.patch_size or [1] * len(config.index_dims))
        features = config.num_input_channels * math.prod(self.patch_size)
        self.project = nn.Linear(features, config.num_channels) if config.num_channels else None
        self.num_channels_without_pos = config.num_channels or features
        self.network_inputs = NetworkInputs(config.position, config.token_dims, self.num_channels_without_pos)
        self.num_channels = self.network_inputs.num_channels

    def check(self, inputs) -> tuple[int, int]:
        cfg = self.config
        expected = ", ".join(map(str, (*cfg.index_dims, cfg.num_input_channels)))
        _check_float_tensor(inputs, "grid", f"[B, {expected}]")
        if tuple(inputs.shape[1:]) != (*cfg.index_dims, cfg.num_input_channels) or inputs.shape[0] == 0:
            raise ValueError(
                f"grid inputs must have shape [B, {expected}] (index_dims={cfg.index_dims}, "
                f"num_input_channels={cfg.num_input_channels}), got {tuple(inputs.shape)}"
            )
        return inputs.shape[0], math.prod(cfg.token_dims)

    def forward(self, inputs: Tensor) -> AdapterOutput:
        x = patchify(inputs, self.patch_size)
        if self.project is not None:
            x = self.project(x)
        with_pos, without_pos = self.network_inputs(x)
        return AdapterOutput(with_pos, without_pos)


# ---------------------------------------------------------------------------------------
# Point clouds
# ---------------------------------------------------------------------------------------
@InputAdapterConfig.register("points")
@dataclass(kw_only=True)
class PointCloudAdapterConfig(InputAdapterConfig):
    num_coords: int = 3  # d: the first d input channels are coordinates
    num_features: int = 0  # F: per-point features after the coordinates
    coord_scale: float = 1.0  # coordinates are divided by this to lie in [-1, 1]
    num_bands: int = 16
    max_resolution: int = 32  # highest frequency is max_resolution / 2 (per unit of [-1, 1])
    num_channels: int | None = None  # linear projection of the point features; None: none

    def validate(self) -> None:
        check_positive(self, "num_coords", "coord_scale", "num_bands", "max_resolution", "num_channels")
        if self.num_features < 0:
            raise ConfigError(f"PointCloudAdapterConfig.num_features must be >= 0, got {self.num_features}")

    def build(self) -> PointCloudInputAdapter:
        return PointCloudInputAdapter(self)


class PointCloudInputAdapter(InputAdapter):
    """``[B, P, d + F]`` -> ``[B, P, F' + fourier(d)]``: coordinates encoded with Fourier
    features, features optionally projected. Padded points are masked with ``input_mask``."""

    def __init__(self, config: PointCloudAdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.project = (
            nn.Linear(config.num_features, config.num_channels) if config.num_channels and config.num_features else None
        )
        feats = (config.num_channels or config.num_features) if config.num_features else 0
        # The coordinates are the positions: the same Fourier encoding as every grid, of data.
        self.positions = FourierPositionEncoding(None, config.num_bands, [config.max_resolution] * config.num_coords)
        self.num_channels_without_pos = feats or None
        self.num_channels = feats + self.positions.num_channels

    def check(self, inputs) -> tuple[int, int]:
        c = self.config.num_coords + self.config.num_features
        _check_float_tensor(inputs, "point cloud", f"[B, P, {c}]")
        if inputs.dim() != 3 or inputs.shape[-1] != c or 0 in inputs.shape:
            raise ValueError(
                f"point cloud inputs must have shape [B, P, {c}] (num_coords={self.config.num_coords} + "
                f"num_features={self.config.num_features}), got {tuple(inputs.shape)}"
            )
        return inputs.shape[0], inputs.shape[1]

    def forward(self, inputs: Tensor) -> AdapterOutput:
        cfg = self.config
        coords, feats = inputs[..., : cfg.num_coords], inputs[..., cfg.num_coords:]
        pos = self.positions.encode(coords / cfg.coord_scale)
        if not cfg.num_features:
            return AdapterOutput(pos)
        if self.project is not None:
            feats = self.project(feats)
        return AdapterOutput(torch.cat([feats, pos], dim=-1), feats)


# ---------------------------------------------------------------------------------------
# Log-mel spectrograms
# ---------------------------------------------------------------------------------------
def mel_filterbank(num_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None) -> Tensor:
    """Triangular HTK mel filters ``[n_fft // 2 + 1, num_mels]``."""
    f_max = f_max or sample_rate / 2

    def to_mel(f):
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    # the end points on the CPU: the model may be built on the meta device (from_pretrained's check)
    lo, hi = (float(to_mel(torch.tensor(f, device="cpu"))) for f in (f_min, f_max))
    mels = torch.linspace(lo, hi, num_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, center, upper = hz[:-2], hz[1:-1], hz[2:]
    up = (freqs[:, None] - lower) / (center - lower)
    down = (upper - freqs[:, None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0)


@InputAdapterConfig.register("spectrogram")
@dataclass(kw_only=True)
class SpectrogramAdapterConfig(InputAdapterConfig):
    num_samples: int = 16000  # T of the waveforms [B, T]
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    num_mels: int = 64
    patch_size: list[int] = field(default_factory=lambda: [1, 64])  # (frames, mels) per token
    num_channels: int | None = None
    position: PositionEncodingConfig = field(default_factory=lambda: PositionEncodingConfig(num_bands=16))

    def validate(self) -> None:
        check_positive(self, "num_samples", "sample_rate", "n_fft", "hop_length", "num_mels", "num_channels")
        if len(self.patch_size) != 2 or self.num_frames % self.patch_size[0] or self.num_mels % self.patch_size[1]:
            raise ConfigError(
                f"SpectrogramAdapterConfig.patch_size {self.patch_size} must be [frames, mels] dividing "
                f"[{self.num_frames}, {self.num_mels}] (num_frames = 1 + num_samples // hop_length)"
            )

    @property
    def num_frames(self) -> int:
        return 1 + self.num_samples // self.hop_length  # torch.stft with center=True

    def grid(self) -> GridAdapterConfig:
        return GridAdapterConfig(
            index_dims=[self.num_frames, self.num_mels], num_input_channels=1, patch_size=list(self.patch_size),
            num_channels=self.num_channels, position=self.position,
        )

    def build(self) -> SpectrogramInputAdapter:
        return SpectrogramInputAdapter(self)


class SpectrogramInputAdapter(InputAdapter):
    """Waveforms ``[B, T]`` -> log-mel ``[B, frames, mels, 1]`` -> the grid adapter."""

    def __init__(self, config: SpectrogramAdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        self.register_buffer(
            "filters", mel_filterbank(config.num_mels, config.n_fft, config.sample_rate), persistent=False
        )
        self.grid = GridInputAdapter(config.grid())
        self.num_channels = self.grid.num_channels
        self.num_channels_without_pos = self.grid.num_channels_without_pos

    def check(self, inputs) -> tuple[int, int]:
        t = self.config.num_samples
        _check_float_tensor(inputs, "waveform", f"[B, {t}]")
        if inputs.dim() != 2 or inputs.shape[1] != t or inputs.shape[0] == 0:
            raise ValueError(f"waveform inputs must have shape [B, {t}] (num_samples), got {tuple(inputs.shape)}")
        return inputs.shape[0], math.prod(self.grid.config.token_dims)

    def log_mel(self, waveform: Tensor) -> Tensor:
        """``[B, T]`` -> ``[B, frames, mels]``."""
        cfg = self.config
        spec = torch.stft(waveform.float(), cfg.n_fft, cfg.hop_length, window=self.window, return_complex=True)
        power = spec.abs().pow(2).transpose(1, 2)  # [B, frames, freqs]
        return torch.log(power @ self.filters + 1e-6).to(waveform.dtype)

    def forward(self, inputs: Tensor) -> AdapterOutput:
        return self.grid(self.log_mel(inputs)[..., None])
