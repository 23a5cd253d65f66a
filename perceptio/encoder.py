"""The Perceiver encoder: inputs ``[B, M, C]`` -> latents ``[B, N, D]``.

Perceiver IO (``num_cross_attends=1``): one cross-attend from the learned latent array
to the inputs, then ``num_blocks`` applications of one block of
``num_self_attends_per_block`` self-attention layers (the block's weights are shared
across its applications).

The original Perceiver (``num_cross_attends > 1``): cross-attend and latent block
alternate ``num_cross_attends`` times. As in the paper, the first cross-attend and the
first latent block have their own weights and all later ones share one set
(``share_cross_attend_weights`` / ``share_latent_block_weights`` turn this off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .config import Config, ConfigError, check_divisible, check_positive
from .layers.attention import checkpoint_block
from .layers.blocks import Activation, CrossAttention, SelfAttention
from .layers.position import TrainablePositionEncoding


@dataclass(kw_only=True)
class EncoderConfig(Config):
    num_latents: int = 256
    num_latent_channels: int = 1280
    num_blocks: int = 1
    num_self_attends_per_block: int = 26
    num_self_attend_heads: int = 8
    num_cross_attend_heads: int = 8
    qk_channels: int | None = None
    v_channels: int | None = None
    cross_attend_widening_factor: int = 1
    self_attend_widening_factor: int = 1
    use_query_residual: bool = True
    cross_attention_shape_for_attn: Literal["kv", "q"] = "kv"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    latent_init_scale: float = 0.02
    num_cross_attends: int = 1
    share_cross_attend_weights: bool = True
    share_latent_block_weights: bool = True
    activation: Activation = "gelu_tanh"
    activation_checkpointing: bool = False

    def validate(self) -> None:
        check_positive(
            self, "num_latents", "num_latent_channels", "num_blocks", "num_self_attends_per_block",
            "num_self_attend_heads", "num_cross_attend_heads", "qk_channels", "v_channels",
            "cross_attend_widening_factor", "self_attend_widening_factor", "num_cross_attends",
        )
        check_divisible(self, "num_latent_channels", "num_self_attend_heads")
        check_divisible(self, "qk_channels", "num_self_attend_heads")
        check_divisible(self, "v_channels", "num_self_attend_heads")
        check_divisible(self, "qk_channels", "num_cross_attend_heads")
        check_divisible(self, "v_channels", "num_cross_attend_heads")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"EncoderConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    def build(self, input_channels: int) -> PerceiverEncoder:
        return PerceiverEncoder(self, input_channels)


    def weight_sets(self) -> tuple[int, int]:
        """Number of distinct (cross-attends, latent blocks) with their own weights: the
        first of each and one shared set for all later ones, unless sharing is off."""
        n = self.num_cross_attends
        return (min(n, 2) if self.share_cross_attend_weights else n,
                min(n, 2) if self.share_latent_block_weights else n)

    def num_layers(self) -> int:
        """Attention layers with their own weights (cross-attends and self-attends)."""
        num_ca, num_lb = self.weight_sets()
        return num_ca + num_lb * self.num_self_attends_per_block


class LatentBlock(nn.Module):
    """``num_self_attends_per_block`` self-attention layers: ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SelfAttention(
                config.num_latent_channels,
                config.num_self_attend_heads,
                config.qk_channels,
                config.v_channels,
                config.self_attend_widening_factor,
                config.dropout,
                config.attention_dropout,
                config.activation,
            )
            for _ in range(config.num_self_attends_per_block)
        )

    def forward(self, z: Tensor) -> Tensor:
        for layer in self.layers:
            z = layer(z)
        return z


class PerceiverEncoder(nn.Module):
    """Encodes ``inputs [B, M, input_channels]`` (mask ``[B, M]``, True = valid) to ``[B, N, D]``."""

    def __init__(self, config: EncoderConfig, input_channels: int) -> None:
        super().__init__()
        self.config = config
        self.latents = TrainablePositionEncoding(
            config.num_latents, config.num_latent_channels, config.latent_init_scale
        )

        def cross_attend() -> CrossAttention:
            return CrossAttention(
                config.num_latent_channels,
                input_channels,
                config.num_cross_attend_heads,
                config.qk_channels,
                config.v_channels,
                config.cross_attend_widening_factor,
                config.use_query_residual,
                config.cross_attention_shape_for_attn,
                config.dropout,
                config.attention_dropout,
                config.activation,
            )

        n = config.num_cross_attends
        # Module lists hold the distinct weight sets; `_*_index` maps each step to one.
        num_ca, num_lb = config.weight_sets()
        self.cross_attends = nn.ModuleList(cross_attend() for _ in range(num_ca))
        self.latent_blocks = nn.ModuleList(LatentBlock(config) for _ in range(num_lb))
        self._ca_index = [min(i, num_ca - 1) for i in range(n)]
        self._lb_index = [min(i, num_lb - 1) for i in range(n)]

    def forward(self, inputs: Tensor, input_mask: Tensor | None = None) -> Tensor:
        """Returns latents ``[B, N, D]``. Attention maps: :func:`.layers.attention.collect_attention`."""
        z = self.latents(inputs.shape[0])
        use_checkpoint = self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        for step in range(self.config.num_cross_attends):
            z = self.cross_attends[self._ca_index[step]](z, inputs, key_mask=input_mask)
            block = self.latent_blocks[self._lb_index[step]]
            for _ in range(self.config.num_blocks):
                z = checkpoint_block(block, z) if use_checkpoint else block(z)
        return z
