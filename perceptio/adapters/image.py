"""Images and videos (channels last): the reference ``ImagePreprocessor``.

Images ``[B, H, W, C]`` or videos ``[B, T, H, W, C]`` become features on a grid, then
position features are added (:mod:`.positions`). ``prep_type`` selects the features:

* ``pixels``: the pixels, strided by ``spatial_downsample`` / ``temporal_downsample``;
* ``conv1x1``: a 1x1 convolution with stride ``spatial_downsample`` (per frame);
* ``conv``: ``log4(spatial_downsample)`` layers of 7x7/2 convolution (no bias), batch
  norm, ReLU and 3x3/2 max-pool (per frame), with TensorFlow ``SAME`` padding: the
  output has ``ceil(n / stride)`` positions and an odd total padding puts the extra
  row/column at the end (max-pool pads with -inf); ``conv_padding="symmetric"`` is the
  ``transformers`` port instead: the convolution zero-padded by 3 on every side, the
  max-pool unpadded (``floor((n - 3) / 2) + 1`` positions);
* ``patches``: space-to-depth blocks of ``temporal x spatial x spatial`` pixels
  (channels ordered ``(dt, dh, dw, c)``), optionally followed by a linear layer
  (``conv_after_patching``). A video left with a single time step is squeezed to an
  image grid, as in the reference (this is how the two frames of optical flow merge).

Batch norm uses its stored statistics in ``eval()`` mode (reference inference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError, check_positive
from .base import AdapterOutput, InputAdapter, InputAdapterConfig
from .positions import NetworkInputs, PositionEncodingConfig

# ImageNet statistics of RGB pixels in [0, 255] used by the reference classifiers.
IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def imagenet_normalize(images: Tensor) -> Tensor:
    """RGB pixels in [0, 255], channels last ``[..., 3]`` -> ``(x - mean) / std`` per channel."""
    if images.shape[-1] != 3:
        raise ValueError(f"imagenet_normalize expects RGB channels last [..., 3], got shape {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN_RGB, dtype=images.dtype, device=images.device)
    std = torch.tensor(IMAGENET_STDDEV_RGB, dtype=images.dtype, device=images.device)
    return (images - mean) / std


# ---------------------------------------------------------------------------------------
# TensorFlow "SAME" padding
# ---------------------------------------------------------------------------------------
def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of one dim for TF ``SAME``: output ``ceil(size / stride)``,
    the odd pixel of the total padding goes at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel: int, stride: int, value: float = 0.0) -> Tensor:
    """Pad the two last dims of ``x [N, C, H, W]`` for a ``kernel``/``stride`` window, TF ``SAME``."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    return F.pad(x, (left, right, top, bottom), value=value)


def same_output_size(size: int, stride: int) -> int:
    return -(-size // stride)


class Conv2DDownsample(nn.Module):
    """``num_layers`` x (7x7/2 conv without bias, batch norm, ReLU, 3x3/2 max-pool), all
    TF-``SAME``: ``[N, C_in, H, W] -> [N, C, H / 4^num_layers (rounded up per step), ...]``
    (``padding="symmetric"``: the ``transformers`` padding, see the module docstring)."""

    def __init__(
        self, num_layers: int, in_channels: int, num_channels: int, use_batchnorm: bool = True,
        padding: Literal["same", "symmetric"] = "same",
    ) -> None:
        super().__init__()
        self.padding = padding
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else num_channels, num_channels, 7, stride=2, bias=False)
            for i in range(num_layers)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(num_channels, eps=1e-5, momentum=0.1) for _ in range(num_layers)
                                   ) if use_batchnorm else None

    def forward(self, x: Tensor) -> Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(pad_same(x, 7, 2) if self.padding == "same" else F.pad(x, (3, 3, 3, 3)))
            if self.norms is not None:
                x = self.norms[i](x)
            x = F.relu(x)
            x = F.max_pool2d(pad_same(x, 3, 2, float("-inf")) if self.padding == "same" else x, 3, stride=2)
        return x

    @staticmethod
    def output_size(size: int, num_layers: int, padding: str = "same") -> int:
        for _ in range(num_layers):
            size = same_output_size(size, 2)  # the convolution: ceil(n / 2) with either padding
            size = same_output_size(size, 2) if padding == "same" else (size - 3) // 2 + 1
        return size


# ---------------------------------------------------------------------------------------
# Space to depth
# ---------------------------------------------------------------------------------------
def space_to_depth(x: Tensor, temporal_block_size: int = 1, spatial_block_size: int = 1) -> Tensor:
    """``[B, H, W, C] -> [B, H/s, W/s, s*s*C]`` or ``[B, T, H, W, C] -> [B, T/t, H/s, W/s, t*s*s*C]``,
    channels ordered ``(dt, dh, dw, c)``."""
    s, t = spatial_block_size, temporal_block_size
    if x.dim() == 4:
        b, h, w, c = x.shape
        x = x.reshape(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h // s, w // s, s * s * c)
    b, tt, h, w, c = x.shape
    x = x.reshape(b, tt // t, t, h // s, s, w // s, s, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, tt // t, h // s, w // s, t * s * s * c)


# ---------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------
@InputAdapterConfig.register("image")
@dataclass(kw_only=True)
class ImageAdapterConfig(InputAdapterConfig):
    """``image_shape``: ``[H, W, C]`` (images) or ``[T, H, W, C]`` (videos) the model is
    built for. With Fourier positions other sizes are accepted (they must still fit the
    downsampling); trainable positions fix the size. ``num_channels``: output width of
    ``conv``/``conv1x1``/``patches`` + ``conv_after_patching``."""

    image_shape: list[int] = field(default_factory=lambda: [224, 224, 3])
    prep_type: Literal["conv", "conv1x1", "patches", "pixels"] = "conv"
    spatial_downsample: int = 4
    temporal_downsample: int = 1
    num_channels: int = 64
    conv_after_patching: bool = False
    conv_use_batchnorm: bool = True
    conv_padding: Literal["same", "symmetric"] = "same"
    position: PositionEncodingConfig = field(default_factory=PositionEncodingConfig)

    def validate(self) -> None:
        check_positive(self, "spatial_downsample", "temporal_downsample", "num_channels")
        if len(self.image_shape) not in (3, 4) or any(d <= 0 for d in self.image_shape):
            raise ConfigError(
                f"ImageAdapterConfig.image_shape must be [H, W, C] or [T, H, W, C] of positive sizes, "
                f"got {self.image_shape}"
            )
        if self.prep_type == "conv":
            layers = math.log(self.spatial_downsample, 4)
            if abs(layers - round(layers)) > 1e-9 or self.temporal_downsample != 1:
                raise ConfigError(
                    f"ImageAdapterConfig: prep_type='conv' downsamples by powers of 4 in space and not in time; "
                    f"got spatial_downsample={self.spatial_downsample}, temporal_downsample={self.temporal_downsample}"
                )
        if self.prep_type == "conv1x1" and self.temporal_downsample != 1:
            raise ConfigError("ImageAdapterConfig: prep_type='conv1x1' does not downsample in time; "
                              f"set temporal_downsample=1, got {self.temporal_downsample}")
        if self.prep_type == "patches":
            _check_patch_fit(self, self.image_shape, ConfigError, "ImageAdapterConfig.image_shape")
        self.position.check_index_dims(self.index_dims(), "ImageAdapterConfig")

    @property
    def is_video(self) -> bool:
        return len(self.image_shape) == 4

    @property
    def conv_layers(self) -> int:
        return round(math.log(self.spatial_downsample, 4))

    def index_dims(self, shape: Sequence[int] | None = None) -> tuple[int, ...]:
        """Feature grid of an input of ``shape`` (without batch; the configured one by default)."""
        *lead, h, w, _ = self.image_shape if shape is None else shape
        s, t = self.spatial_downsample, self.temporal_downsample
        if self.prep_type == "conv":
            h, w = (Conv2DDownsample.output_size(n, self.conv_layers, self.conv_padding) for n in (h, w))
        elif self.prep_type == "patches":
            h, w, lead = h // s, w // s, [n // t for n in lead]
            if lead == [1]:  # a single time step is squeezed (reference; merges flow frames)
                lead = []
        else:  # pixels and conv1x1 stride
            h, w = same_output_size(h, s), same_output_size(w, s)
            if self.prep_type == "pixels":
                lead = [same_output_size(n, t) for n in lead]
        return (*lead, h, w)

    def feature_channels(self) -> int:
        c = self.image_shape[-1]
        if self.prep_type in ("conv", "conv1x1") or (self.prep_type == "patches" and self.conv_after_patching):
            return self.num_channels
        if self.prep_type == "patches":
            return c * self.spatial_downsample**2 * (self.temporal_downsample if self.is_video else 1)
        return c

    def build(self) -> ImageInputAdapter:
        return ImageInputAdapter(self)


def _check_patch_fit(config: ImageAdapterConfig, shape: Sequence[int], error: type[Exception], what: str) -> None:
    *lead, h, w, _ = shape
    s, t = config.spatial_downsample, config.temporal_downsample
    if h % s or w % s:
        raise error(f"{what}: spatial size {h}x{w} is not divisible by the patch size spatial_downsample={s}")
    if lead and lead[0] % t:
        raise error(f"{what}: {lead[0]} frames are not divisible by temporal_downsample={t}")


class ImageInputAdapter(InputAdapter):
    """``[B, H, W, C]`` or ``[B, T, H, W, C]`` -> ``[B, M, num_channels]`` (see module docstring)."""

    def __init__(self, config: ImageAdapterConfig) -> None:
        super().__init__()
        self.config = config
        c_in = config.image_shape[-1]
        if config.prep_type == "conv":
            self.conv = Conv2DDownsample(
                config.conv_layers, c_in, config.num_channels, config.conv_use_batchnorm, config.conv_padding
            )
        elif config.prep_type == "conv1x1":
            self.conv1x1 = nn.Conv2d(c_in, config.num_channels, 1, stride=config.spatial_downsample)
        elif config.prep_type == "patches" and config.conv_after_patching:
            patch_channels = c_in * config.spatial_downsample**2 * (config.temporal_downsample if config.is_video else 1)
            self.patches_linear = nn.Linear(patch_channels, config.num_channels)
        self.num_channels_without_pos = config.feature_channels()
        self.network_inputs = NetworkInputs(config.position, config.index_dims(), self.num_channels_without_pos)
        self.num_channels = self.network_inputs.num_channels

    def check(self, inputs: Tensor) -> tuple[int, int]:
        cfg = self.config
        layout = "[B, T, H, W, C]" if cfg.is_video else "[B, H, W, C]"
        if not isinstance(inputs, Tensor):
            raise TypeError(f"image inputs must be a tensor {layout}, got {type(inputs).__name__}")
        if not inputs.is_floating_point():
            raise TypeError(f"image inputs must be floating point, got dtype {inputs.dtype}")
        if inputs.dim() != len(cfg.image_shape) + 1:
            raise ValueError(f"image inputs must have rank {len(cfg.image_shape) + 1} {layout} (channels last), "
                             f"got shape {tuple(inputs.shape)}")
        if inputs.shape[-1] != cfg.image_shape[-1]:
            raise ValueError(f"image inputs must have {cfg.image_shape[-1]} channels (last dim), "
                             f"got {inputs.shape[-1]} in shape {tuple(inputs.shape)}")
        if 0 in inputs.shape:
            raise ValueError(f"image inputs are empty: shape {tuple(inputs.shape)}")
        if cfg.prep_type == "patches":
            _check_patch_fit(cfg, inputs.shape[1:], ValueError, "image inputs")
        index_dims = cfg.index_dims(inputs.shape[1:])
        self.network_inputs.check(index_dims, f"image inputs of shape {tuple(inputs.shape)}")
        return inputs.shape[0], math.prod(index_dims)

    def features(self, x: Tensor) -> Tensor:
        """Raw inputs -> features on the grid ``[B, *index_dims, C']``."""
        cfg = self.config
        if cfg.prep_type in ("conv", "conv1x1"):
            lead = x.shape[:-3]  # [B] or [B, T]: convolve each frame
            frames = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)
            out = self.conv(frames) if cfg.prep_type == "conv" else self.conv1x1(frames)
            return out.permute(0, 2, 3, 1).reshape(*lead, *out.shape[-2:], out.shape[1])
        s, t = cfg.spatial_downsample, cfg.temporal_downsample
        if cfg.prep_type == "pixels":
            return x[:, ::s, ::s] if x.dim() == 4 else x[:, ::t, ::s, ::s]
        x = space_to_depth(x, t, s)
        if x.dim() == 5 and x.shape[1] == 1:
            x = x.squeeze(1)
        return self.patches_linear(x) if cfg.conv_after_patching else x

    def forward(self, inputs: Tensor) -> AdapterOutput:
        with_pos, without_pos = self.network_inputs(self.features(inputs))
        return AdapterOutput(with_pos, without_pos)
