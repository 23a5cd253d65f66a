"""Optical flow (the reference flow model): two frames in, one flow vector per pixel out.

Input ``[B, 2, H, W, C]``: each frame is zero-padded by 1 and cut into the 3x3 patch
around every pixel (``patches_for_flow``: ``[B, 2, H, W, 9 C]``, channels ordered
``(dh, dw, c)``); both frames are stacked per pixel (space-to-depth with temporal
block 2: ``[B, H, W, 18 C]``), linearly projected and given Fourier features. The
decoder queries are these preprocessed inputs (``InputQueriesConfig``), and the
output head divides by ``rescale_factor`` and reshapes to ``[B, H, W, E]``.

``input_format="patches"`` takes the patches instead of the frames, ``[B, 2, H, W, 9 C]``
(what ``transformers``' ``PerceiverForOpticalFlow`` takes, there channels first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError, check_positive
from .base import AdapterOutput, InputAdapter, InputAdapterConfig, OutputAdapterConfig
from .image import ImageAdapterConfig, ImageInputAdapter
from .positions import PositionEncodingConfig

PATCH_SIZE = 3


def patches_for_flow(frames: Tensor) -> Tensor:
    """``[B, T, H, W, C] -> [B, T, H, W, 9 C]``: the zero-padded 3x3 neighbourhood of every
    pixel of every frame, channels ordered ``(dh, dw, c)``."""
    b, t, h, w, c = frames.shape
    x = frames.reshape(b * t, h, w, c).permute(0, 3, 1, 2)
    patches = F.unfold(F.pad(x, (1, 1, 1, 1)), PATCH_SIZE)  # [B*T, C*3*3, H*W], ordered (c, dh, dw)
    patches = patches.reshape(b, t, c, PATCH_SIZE * PATCH_SIZE, h, w).permute(0, 1, 4, 5, 3, 2)
    return patches.reshape(b, t, h, w, PATCH_SIZE * PATCH_SIZE * c)


@InputAdapterConfig.register("flow")
@dataclass(kw_only=True)
class FlowAdapterConfig(InputAdapterConfig):
    """``image_shape``: ``[H, W, C]`` of each frame (the reference's training size: the
    flow is reshaped to it). ``num_channels``: width of the linear patch projection."""

    image_shape: list[int] = field(default_factory=lambda: [368, 496, 3])
    num_channels: int = 64
    input_format: Literal["frames", "patches"] = "frames"
    position: PositionEncodingConfig = field(default_factory=PositionEncodingConfig)

    def validate(self) -> None:
        check_positive(self, "num_channels")
        if len(self.image_shape) != 3 or any(d <= 0 for d in self.image_shape):
            raise ConfigError(f"FlowAdapterConfig.image_shape must be [H, W, C] of positive sizes, got {self.image_shape}")
        self.image_config()  # validates the position settings against the grid

    def image_config(self) -> ImageAdapterConfig:
        """The image preprocessing applied to the stacked patches of the two frames."""
        h, w, c = self.image_shape
        return ImageAdapterConfig(
            image_shape=[2, h, w, PATCH_SIZE * PATCH_SIZE * c], prep_type="patches", spatial_downsample=1,
            temporal_downsample=2, num_channels=self.num_channels, conv_after_patching=True, position=self.position,
        )

    def build(self) -> FlowInputAdapter:
        return FlowInputAdapter(self)


class FlowInputAdapter(InputAdapter):
    """Frame pairs ``[B, 2, H, W, C]`` -> ``[B, H * W, num_channels + P]``."""

    def __init__(self, config: FlowAdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.image = ImageInputAdapter(config.image_config())
        self.num_channels = self.image.num_channels
        self.num_channels_without_pos = self.image.num_channels_without_pos

    def check(self, inputs: Tensor) -> tuple[int, int]:
        h, w, c = self.config.image_shape
        if self.config.input_format == "patches":
            c *= PATCH_SIZE * PATCH_SIZE
        if not isinstance(inputs, Tensor):
            raise TypeError(f"flow inputs must be a tensor [B, 2, H, W, C], got {type(inputs).__name__}")
        if not inputs.is_floating_point():
            raise TypeError(f"flow inputs must be floating point, got dtype {inputs.dtype}")
        if inputs.dim() != 5 or inputs.shape[1] != 2:
            raise ValueError(f"flow inputs must be two frames [B, 2, H, W, C] (channels last), "
                             f"got shape {tuple(inputs.shape)}")
        if tuple(inputs.shape[2:]) != (h, w, c):
            raise ValueError(f"flow frames must have shape [H, W, C] = {[h, w, c]} (the model's image_shape), "
                             f"got {list(inputs.shape[2:])}")
        if inputs.shape[0] == 0:
            raise ValueError(f"flow inputs are empty: shape {tuple(inputs.shape)}")
        return inputs.shape[0], h * w

    def forward(self, inputs: Tensor) -> AdapterOutput:
        return self.image(inputs if self.config.input_format == "patches" else patches_for_flow(inputs))


@OutputAdapterConfig.register("flow")
@dataclass(kw_only=True)
class FlowOutputConfig(OutputAdapterConfig):
    """``[B, H * W, E] -> [B, H, W, E] / rescale_factor`` (reference ``FlowDecoder``)."""

    rescale_factor: float = 100.0

    def validate(self) -> None:
        if self.rescale_factor == 0:
            raise ConfigError("FlowOutputConfig.rescale_factor must be non-zero")

    def build(self, in_channels: int, input_adapter: InputAdapter) -> nn.Module:
        if not isinstance(input_adapter, FlowInputAdapter):
            raise ConfigError(f"the flow output adapter needs a flow input adapter, got {type(input_adapter).__name__}")
        h, w, _ = input_adapter.config.image_shape
        return FlowOutput(self.rescale_factor, (h, w))


class FlowOutput(nn.Module):
    def __init__(self, rescale_factor: float, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.rescale_factor, self.image_size = rescale_factor, image_size

    def forward(self, x: Tensor) -> Tensor:
        h, w = self.image_size
        if x.shape[1] != h * w:
            raise ValueError(f"the flow output needs one query per pixel ({h}x{w}={h * w}), got {x.shape[1]}; "
                             "decode all queries (flow does not support subsampled points)")
        return (x / self.rescale_factor).reshape(x.shape[0], *self.image_size, x.shape[-1])
