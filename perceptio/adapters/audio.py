"""Raw audio as patches of consecutive samples (the reference ``AudioPreprocessor`` and
``AudioPostprocessor``).

Input ``[B, N, C]`` (or ``[B, N]`` for mono): the ``N * C`` samples, in memory order,
are cut into patches of ``samples_per_patch`` -> ``[B, N * C / samples_per_patch,
samples_per_patch]``, then position features are added (:mod:`.positions`).
The output head maps each decoded patch back to ``samples_per_patch`` samples and
flattens: ``[B, O, E] -> [B, O * samples_per_patch]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ..config import ConfigError, check_positive
from .base import AdapterOutput, InputAdapter, InputAdapterConfig, OutputAdapterConfig
from .positions import NetworkInputs, PositionEncodingConfig


@InputAdapterConfig.register("audio")
@dataclass(kw_only=True)
class AudioAdapterConfig(InputAdapterConfig):
    """``num_samples`` per example (and ``num_input_channels``) the model is built for;
    with Fourier positions other lengths are accepted, trainable positions fix it."""

    num_samples: int = 30720
    num_input_channels: int = 1
    samples_per_patch: int = 96
    position: PositionEncodingConfig = field(default_factory=PositionEncodingConfig)

    def validate(self) -> None:
        check_positive(self, "num_samples", "num_input_channels", "samples_per_patch")
        total = self.num_samples * self.num_input_channels
        if total % self.samples_per_patch:
            raise ConfigError(
                f"AudioAdapterConfig: num_samples * num_input_channels = {total} is not divisible by "
                f"samples_per_patch={self.samples_per_patch}"
            )
        self.position.check_index_dims([self.num_patches], "AudioAdapterConfig")

    @property
    def num_patches(self) -> int:
        return self.num_samples * self.num_input_channels // self.samples_per_patch

    def build(self) -> AudioInputAdapter:
        return AudioInputAdapter(self)


class AudioInputAdapter(InputAdapter):
    """``[B, N, C]`` / ``[B, N]`` -> ``[B, N * C / samples_per_patch, samples_per_patch + P]``."""

    def __init__(self, config: AudioAdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.num_channels_without_pos = config.samples_per_patch
        self.network_inputs = NetworkInputs(config.position, [config.num_patches], config.samples_per_patch)
        self.num_channels = self.network_inputs.num_channels

    def check(self, inputs: Tensor) -> tuple[int, int]:
        cfg = self.config
        if not isinstance(inputs, Tensor):
            raise TypeError(f"audio inputs must be a tensor [B, N, C], got {type(inputs).__name__}")
        if not inputs.is_floating_point():
            raise TypeError(f"audio inputs must be floating point samples, got dtype {inputs.dtype}")
        if inputs.dim() == 2 and cfg.num_input_channels == 1:
            channels = 1
        elif inputs.dim() == 3:
            channels = inputs.shape[2]
        else:
            raise ValueError(f"audio inputs must have shape [B, N, C={cfg.num_input_channels}]"
                             f"{' or [B, N]' if cfg.num_input_channels == 1 else ''}, got shape {tuple(inputs.shape)}")
        if channels != cfg.num_input_channels:
            raise ValueError(f"audio inputs must have {cfg.num_input_channels} channels (last dim), got {channels}")
        total = inputs.shape[1] * channels
        if inputs.shape[0] == 0 or total == 0:
            raise ValueError(f"audio inputs are empty: shape {tuple(inputs.shape)}")
        if total % cfg.samples_per_patch:
            raise ValueError(f"audio inputs: {inputs.shape[1]} samples x {channels} channels = {total} is not "
                             f"divisible by samples_per_patch={cfg.samples_per_patch}")
        num_patches = total // cfg.samples_per_patch
        self.network_inputs.check([num_patches], f"audio inputs of shape {tuple(inputs.shape)}")
        return inputs.shape[0], num_patches

    def forward(self, inputs: Tensor) -> AdapterOutput:
        patches = inputs.reshape(inputs.shape[0], -1, self.config.samples_per_patch)
        with_pos, without_pos = self.network_inputs(patches)
        return AdapterOutput(with_pos, without_pos)


@OutputAdapterConfig.register("audio")
@dataclass(kw_only=True)
class AudioOutputConfig(OutputAdapterConfig):
    """``[B, O, E] -> Linear -> [B, O, samples_per_patch] -> [B, O * samples_per_patch]``."""

    samples_per_patch: int = 96

    def validate(self) -> None:
        check_positive(self, "samples_per_patch")

    def build(self, in_channels: int, input_adapter: InputAdapter | None) -> nn.Module:
        return AudioOutput(in_channels, self.samples_per_patch)


class AudioOutput(nn.Module):
    def __init__(self, in_channels: int, samples_per_patch: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels, samples_per_patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).flatten(1)
