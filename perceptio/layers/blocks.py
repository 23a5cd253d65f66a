"""The two Perceiver blocks: cross-attention and (latent) self-attention.

Both are pre-norm transformer blocks as in the official code: layer norm (eps 1e-5)
before attention and before the MLP, residual connections around both, dropout on
the block outputs. The cross-attention block normalises queries and keys/values
separately and may drop the query residual (decoders usually do).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiHeadAttention, zero_masked
from .linear import Linear
from .recompute import norm_mlp

_ACTIVATIONS = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # the reference's jax.nn.gelu
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "sq_relu": lambda x: F.relu(x).square(),  # Perceiver AR's default (So et al., Primer)
}
# The names, written once (above); configs annotated with it accept only these.
Activation = Literal[tuple(_ACTIVATIONS)]  # type: ignore[valid-type]


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; allowed: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def layer_norm(channels: int) -> nn.LayerNorm:
    return nn.LayerNorm(channels, eps=1e-5)


class MLP(nn.Module):
    """``[..., C] -> [..., C]``: Linear(C, C * widening_factor), activation, Linear, dropout.

    ``mlp(x, norm)`` is ``mlp(norm(x))``, the pre-norm sublayer, computed keeping less for
    backward (:mod:`.recompute`)."""

    def __init__(
        self,
        channels: int,
        widening_factor: int = 1,
        dropout: float = 0.0,
        activation: Activation = "gelu_tanh",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.fc1 = Linear(channels, channels * widening_factor, bias=bias)
        self.fc2 = Linear(channels * widening_factor, channels, bias=bias)
        self.activation = get_activation(activation)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, norm: nn.LayerNorm | None = None) -> Tensor:
        if norm is None:
            return self.dropout(self.fc2(self.activation(self.fc1(x))))
        return self.dropout(norm_mlp(x, norm, self.fc1, self.fc2, self.activation))


class CrossAttention(nn.Module):
    """Queries ``[B, Tq, q_channels]`` attend to ``inputs_kv [B, Tk, kv_channels]``.

    Output ``[B, Tq, q_channels]``. ``qk_channels`` defaults to ``kv_channels``
    (``shape_for_attn="kv"``) or ``q_channels`` (``"q"``), ``v_channels`` to ``qk_channels``.
    """

    def __init__(
        self,
        q_channels: int,
        kv_channels: int,
        num_heads: int = 1,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        widening_factor: int = 1,
        use_query_residual: bool = True,
        shape_for_attn: Literal["kv", "q"] = "kv",
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        activation: Activation = "gelu_tanh",
    ) -> None:
        super().__init__()
        if qk_channels is None:
            qk_channels = kv_channels if shape_for_attn == "kv" else q_channels
        self.q_norm = layer_norm(q_channels)
        self.kv_norm = layer_norm(kv_channels)
        self.attention = MultiHeadAttention(
            q_channels, kv_channels, num_heads, qk_channels, v_channels, q_channels, attention_dropout
        )
        self.dropout = nn.Dropout(dropout)
        self.use_query_residual = use_query_residual
        self.mlp_norm = layer_norm(q_channels)
        self.mlp = MLP(q_channels, widening_factor, dropout, activation)

    def forward(
        self,
        inputs_q: Tensor,
        inputs_kv: Tensor,
        key_mask: Tensor | None = None,
        query_mask: Tensor | None = None,
    ) -> Tensor:
        return self.finish(inputs_q, self.attend(inputs_q, inputs_kv, key_mask, query_mask))

    def attend(self, inputs_q: Tensor, inputs_kv: Tensor, key_mask: Tensor | None = None,
               query_mask: Tensor | None = None) -> Tensor:
        """The block's attention sublayer: ``attention(q_norm(inputs_q), kv_norm(inputs_kv))``
        ``[B, Tq, q_channels]``, before dropout, residual and MLP."""
        inputs_kv = zero_masked(inputs_kv, key_mask)  # before the norm: NaN padding reaches no gradient
        folds = self.attention.folds(inputs_q.shape[1], inputs_kv.shape[1])
        if all(folds) and self.attention.recorder is None:
            # The norm's affine goes into the attention's folded products (on [Tq, C], not [Tk, C]):
            # inputs that need no gradient (pixels, Fourier features) then need no [Tk, C] backward.
            norm = self.kv_norm
            normed = F.layer_norm(inputs_kv, norm.normalized_shape, None, None, norm.eps)
            return self.attention(inputs_q, normed, key_mask, query_mask, norm.weight, norm.bias, q_norm=self.q_norm)
        if any(folds) and self.attention.recorder is None:  # one projection folded: on the normalised inputs
            return self.attention(inputs_q, self.kv_norm(inputs_kv), key_mask, query_mask, q_norm=self.q_norm)
        return self.attention(inputs_q, inputs_kv, key_mask, query_mask, q_norm=self.q_norm, kv_norm=self.kv_norm)

    def finish(self, inputs_q: Tensor, attended: Tensor) -> Tensor:
        """The block after its attention: dropout, the query residual (if used), then the MLP."""
        attended = self.dropout(attended)
        x = inputs_q + attended if self.use_query_residual else attended
        return x + self.mlp(x, self.mlp_norm)


class SelfAttention(nn.Module):
    """Pre-norm self-attention block: ``[B, T, channels] -> [B, T, channels]``."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        widening_factor: int = 1,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        activation: Activation = "gelu_tanh",
    ) -> None:
        super().__init__()
        self.norm = layer_norm(channels)
        self.attention = MultiHeadAttention(
            channels, channels, num_heads, qk_channels, v_channels, channels, attention_dropout
        )
        self.dropout = nn.Dropout(dropout)
        self.mlp_norm = layer_norm(channels)
        self.mlp = MLP(channels, widening_factor, dropout, activation)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        return self.finish(x, self.attention(x, x, key_mask, q_norm=self.norm, kv_norm=self.norm))

    def finish(self, x: Tensor, attended: Tensor) -> Tensor:
        """The block after its attention: dropout and residual, then the MLP."""
        x = x + self.dropout(attended)
        return x + self.mlp(x, self.mlp_norm)
