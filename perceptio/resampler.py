"""The Perceiver Resampler of Flamingo (Alayrac et al., 2022, section 3.1.1).

A fixed number of learned latents ``[N, D]`` summarise a variable number of media
features ``[B, T, n, D]`` (``T`` frames of ``n`` visual tokens): a learned time embedding
is added to each frame, then ``depth`` times

    latents = latents + Attention(q = LN(latents), kv = [LN(media); LN(latents)])
    latents = latents + MLP(LN(latents))

and a final layer norm. Unlike the Perceiver's cross-attend, the keys and values are the
media features *concatenated with the latents themselves*, and there are no biases. This
is the block that open_flamingo, IDEFICS and Idefics2 copy; this one equals
``flamingo-pytorch``'s ``PerceiverResampler`` (0.1.2) given the same weights
(:func:`resampler_state_from_flamingo_pytorch`; tests/test_resampler.py), where each frame
is resampled on its own (``[B, T, N, D]`` out).

``media_mask [B, T, n]`` (True = valid; flamingo-pytorch has none) removes padding tokens
from the keys: a masked token changes nothing, exactly as if it were not there. The
latents are always attended to, so a fully masked frame still has a defined output.

As the encoder of a :class:`~perceptio.model.Perceiver` (``PerceiverConfig(encoder=
ResamplerConfig(...))``) the input adapter's array ``[B, M, C]`` is one frame (``C`` must
be ``num_latent_channels``) and its mask the media mask; the decoder reads the latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .config import Config, ConfigError, check_positive
from .layers.attention import MultiHeadAttention, checkpoint_block
from .layers.blocks import MLP, Activation, layer_norm
from .layers.position import TrainablePositionEncoding


@dataclass(kw_only=True)
class ResamplerConfig(Config):
    """Sizes of a :class:`PerceiverResampler` (flamingo-pytorch names in brackets):
    ``num_latents`` [num_latents], ``num_latent_channels`` [dim] (media and latents),
    ``depth`` [depth] (layers), ``num_heads`` [heads], ``head_channels`` [dim_head],
    ``widening_factor`` [ff_mult], ``num_media_embeds`` [num_media_embeds] (the most
    frames ``T``)."""

    num_latents: int = 64
    num_latent_channels: int = 1024
    depth: int = 6
    num_heads: int = 8
    head_channels: int = 64
    widening_factor: int = 4
    num_media_embeds: int = 4
    activation: Activation = "gelu"
    latent_init_scale: float = 1.0  # flamingo-pytorch draws latents and time embeddings from N(0, 1)
    activation_checkpointing: bool = False  # recompute each layer in backward (training only)
    # No adaptive depth: PonderNet halting (``EncoderConfig.ponder``) is the Perceiver encoder's.
    ponder: ClassVar[None] = None

    def validate(self) -> None:
        check_positive(
            self, "num_latents", "num_latent_channels", "depth", "num_heads", "head_channels",
            "widening_factor", "num_media_embeds",
        )
        if self.latent_init_scale <= 0:
            raise ConfigError(f"ResamplerConfig.latent_init_scale must be positive, got {self.latent_init_scale}")

    def num_layers(self) -> int:
        """Attention layers with their own weights (as :meth:`EncoderConfig.num_layers`)."""
        return self.depth

    def build(self, input_channels: int | None = None) -> PerceiverResampler:
        """The block; ``input_channels`` (the width of a Perceiver's input array) must be
        ``num_latent_channels``: the media features are not projected."""
        if input_channels is not None and input_channels != self.num_latent_channels:
            raise ConfigError(
                f"ResamplerConfig.num_latent_channels={self.num_latent_channels} must equal the input adapter's "
                f"num_channels={input_channels}: the Resampler attends to the media features unprojected"
            )
        return PerceiverResampler(self)


class ResamplerLayer(nn.Module):
    """One attention + MLP layer: ``latents [B, N, D]``, ``media [B, n, D]`` -> ``[B, N, D]``."""

    def __init__(self, config: ResamplerConfig) -> None:
        super().__init__()
        d, inner = config.num_latent_channels, config.num_heads * config.head_channels
        self.media_norm = layer_norm(d)
        self.latent_norm = layer_norm(d)
        self.attention = MultiHeadAttention(
            d, d, config.num_heads, qk_channels=inner, v_channels=inner, output_channels=d, bias=False
        )
        self.mlp_norm = layer_norm(d)
        self.mlp = MLP(d, config.widening_factor, activation=config.activation, bias=False)

    def forward(self, latents: Tensor, media: Tensor, media_mask: Tensor | None = None) -> Tensor:
        z = self.latent_norm(latents)
        kv = torch.cat([self.media_norm(media), z], dim=1)  # [B, n + N, D]: the latents attend to themselves too
        key_mask = None
        if media_mask is not None:
            key_mask = torch.cat([media_mask, media_mask.new_ones(z.shape[:2])], dim=1)
        latents = latents + self.attention(z, kv, key_mask=key_mask)
        return latents + self.mlp(latents, self.mlp_norm)


class PerceiverResampler(nn.Module):
    """``media [B, T, n, D]`` (or one frame ``[B, n, D]``), ``media_mask [B, T, n]`` /
    ``[B, n]`` (True = valid) -> latents ``[B, T, N, D]`` (``[B, N, D]`` for one frame).

    Attention maps: :func:`perceptio.layers.attention.collect_attention` (``[B * T, heads,
    N, n + N]`` per layer, ``cross_attends.{i}.attention``)."""

    halting = None  # no PonderNet halting unit (see ResamplerConfig.ponder)

    def __init__(self, config: ResamplerConfig) -> None:
        super().__init__()
        self.config = config
        d = config.num_latent_channels
        self.latents = TrainablePositionEncoding(config.num_latents, d, config.latent_init_scale)
        self.time_embeddings = TrainablePositionEncoding(config.num_media_embeds, d, config.latent_init_scale)
        # each layer is a cross-attend (to the media and the latents): named as the encoder's, so
        # Perceiver(..., return_attention=True) reports their maps under "cross"
        self.cross_attends = nn.ModuleList(ResamplerLayer(config) for _ in range(config.depth))
        self.norm = layer_norm(d)

    def check(self, media: Tensor, media_mask: Tensor | None) -> None:
        """Raise naming what was expected before any tensor math."""
        d, most = self.config.num_latent_channels, self.config.num_media_embeds
        if not isinstance(media, Tensor) or not media.is_floating_point():
            got = f"dtype {media.dtype}" if isinstance(media, Tensor) else type(media).__name__
            raise TypeError(f"media must be a float tensor [B, T, n, {d}] or [B, n, {d}], got {got}")
        if media.dim() not in (3, 4) or media.shape[-1] != d:
            raise ValueError(
                f"media must be [B, T, n, {d}] (T frames of n tokens) or [B, n, {d}] (one frame), with "
                f"num_latent_channels={d} features, got shape {tuple(media.shape)}"
            )
        if media.dim() == 4 and media.shape[1] > most:
            raise ValueError(f"media has {media.shape[1]} frames, more than num_media_embeds={most}")
        if media_mask is not None:
            if not isinstance(media_mask, Tensor) or media_mask.dtype != torch.bool:
                got = media_mask.dtype if isinstance(media_mask, Tensor) else type(media_mask).__name__
                raise TypeError(f"media_mask must be a bool tensor (True = valid), got {got}")
            if tuple(media_mask.shape) != tuple(media.shape[:-1]):
                raise ValueError(
                    f"media_mask must have shape {tuple(media.shape[:-1])} (the media's leading dims "
                    f"{'[B, T, n]' if media.dim() == 4 else '[B, n]'}), got {tuple(media_mask.shape)}"
                )

    def forward(self, media: Tensor, media_mask: Tensor | None = None) -> Tensor:
        self.check(media, media_mask)
        one_frame = media.dim() == 3
        if one_frame:
            media = media[:, None]
            media_mask = None if media_mask is None else media_mask[:, None]
        b, t, n, d = media.shape
        media = media + self.time_embeddings.pos_embs[:t, None, :]  # one embedding per frame
        media = media.reshape(b * t, n, d)  # each frame is resampled on its own
        mask = None if media_mask is None else media_mask.reshape(b * t, n)
        latents = self.latents(b * t)
        use_checkpoint = self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.cross_attends:
            latents = checkpoint_block(layer, latents, media, mask) if use_checkpoint else layer(latents, media, mask)
        latents = self.norm(latents).reshape(b, t, -1, d)
        return latents[:, 0] if one_frame else latents


def resampler_state_from_flamingo_pytorch(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The state dict of ``flamingo_pytorch.PerceiverResampler`` -> ours (its fused
    ``to_kv`` split into keys and values; its ``media_pos_emb [T, 1, D]`` squeezed).
    Raises ValueError naming missing or unexpected names."""
    depth = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("layers.")), default=-1)
    out = {
        "latents.pos_embs": state.get("latents"),
        "time_embeddings.pos_embs": None if "media_pos_emb" not in state else state["media_pos_emb"][:, 0],
        "norm.weight": state.get("norm.weight"),
        "norm.bias": state.get("norm.bias"),
    }
    used = {"latents", "media_pos_emb", "norm.weight", "norm.bias"}
    for i in range(depth):
        theirs, ours = f"layers.{i}", f"cross_attends.{i}"
        names = {
            f"{theirs}.0.norm_media": f"{ours}.media_norm",
            f"{theirs}.0.norm_latents": f"{ours}.latent_norm",
            f"{theirs}.1.0": f"{ours}.mlp_norm",
        }
        for a, b in names.items():
            for p in ("weight", "bias"):
                out[f"{b}.{p}"] = state.get(f"{a}.{p}")
                used.add(f"{a}.{p}")
        kv = state.get(f"{theirs}.0.to_kv.weight")
        k, v = kv.chunk(2, dim=0) if kv is not None else (None, None)
        out |= {
            f"{ours}.attention.q.weight": state.get(f"{theirs}.0.to_q.weight"),
            f"{ours}.attention.k.weight": k,
            f"{ours}.attention.v.weight": v,
            f"{ours}.attention.o.weight": state.get(f"{theirs}.0.to_out.weight"),
            f"{ours}.mlp.fc1.weight": state.get(f"{theirs}.1.1.weight"),
            f"{ours}.mlp.fc2.weight": state.get(f"{theirs}.1.3.weight"),
        }
        used |= {f"{theirs}.0.{n}.weight" for n in ("to_q", "to_kv", "to_out")}
        used |= {f"{theirs}.1.{n}.weight" for n in (1, 3)}
    missing = sorted(k for k, v in out.items() if v is None)
    unexpected = sorted(set(state) - used)
    if missing or unexpected or depth == 0:
        raise ValueError(
            "not a flamingo_pytorch PerceiverResampler state dict: "
            f"missing (ours) {missing or ('every layer' if depth == 0 else [])}, unexpected {unexpected}"
        )
    return {k: v.detach() for k, v in out.items()}


def resampler_from_flamingo_pytorch(model: nn.Module) -> PerceiverResampler:
    """A ``flamingo_pytorch.PerceiverResampler`` -> the equal :class:`PerceiverResampler`
    (its sizes read from the weights; own parameters, same device and dtype)."""
    state = model.state_dict()
    state_ours = resampler_state_from_flamingo_pytorch(state)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
    heads = model.layers[0][0].heads
    latents, dim = state["latents"].shape
    inner = state["layers.0.0.to_q.weight"].shape[0]
    hidden = state["layers.0.1.1.weight"].shape[0]
    if hidden % dim:
        raise ValueError(f"the MLP width {hidden} is not a multiple of dim={dim}: perceptio's MLP widens by an integer")
    config = ResamplerConfig(
        num_latents=latents, num_latent_channels=dim, depth=depth, num_heads=heads,
        head_channels=inner // heads, widening_factor=hidden // dim, num_media_embeds=state["media_pos_emb"].shape[0],
    )
    ours = PerceiverResampler(config)
    ours.load_state_dict(state_ours, strict=True)
    like = state["latents"]
    return ours.to(device=like.device, dtype=like.dtype)
