"""Perceiver AR (Hawthorne et al., ICML 2022), faithful to the official code
(google-research/perceiver-ar, ``PerceiverAR``; tests/fixtures/perceiver_ar/README.md states
the semantics this module follows).

    ids [B, N] --embed--> e [B, N, D]
    latents on the last U positions: q0 = z_linear(e[last U]) [B, z, C]   (z = U * K)
    x = CrossAttend(q0 -> e, causal) ; L x (SelfAttend(x, causal) [+ CrossAttend]) ; LN
    logits [B, U, V]: row j predicts the token after input latent_last_steps[j]

Cost is O(z N + L z^2), so the context N can be long while the latents stay few. Token 0 is
padding; a row's length is the index of its first 0. Positions are terminal-relative (the last
real token is 0) unless ``use_positions_from_data``; rotary positions enter every attention.

The attention of this model differs from Perceiver IO's in three ways, all the reference's:
full causal masks ``[B, z, N]`` (not an outer product), a query with no allowed key averages
*all* keys (the reference fills masked scores with -1e30), and optional per-layer key/value
memories (:class:`KVMemory`) for cached generation (perceptio/generation.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from .config import Config, ConfigError, check_divisible, check_positive
from .generation import KVMemory, generate, iter_generate
from .layers.attention import MultiHeadAttention, attend
from .layers.blocks import Activation, CrossAttention, SelfAttention, get_activation, layer_norm
from .layers.linear import Linear
from .layers.position import (RotaryEncoding, TrainablePositionEncoding, fourier_features, grid_positions,
                              init_table, sinusoidal_table)
from .pretrained import load_weights, read_config_dict, register_architecture, save_model_dir

ARCHITECTURE = "perceiver_ar"


@dataclass(kw_only=True)
class PerceiverARConfig(Config):
    """A Perceiver AR model; field names are the reference's ``PerceiverAR`` arguments
    (activations use perceptio's names: the reference's ``'gelu'`` is ``'gelu_tanh'``)."""

    architecture: Literal["perceiver_ar"] = ARCHITECTURE  # how config.json names the model class
    num_classes: int = 259  # vocabulary: 0 PAD, 1 EOS, 2 SOS, byte b = b + 3
    max_context_length: int = 1024  # N: the longest input
    input_embed_dim: int = 256  # D
    num_z_channels: int = 256  # C
    z_index_dim: int = 128  # z: latents (U = z / K positions)
    num_latents_per_position: int = 1  # K
    num_transformers_per_block: int = 4  # latent self-attention layers
    num_cross_attend_heads: int = 4
    num_transformer_heads: int = 4
    cross_attend_widening_factor: int = 4
    transformer_widening_factor: int = 4
    cross_attention_shape_for_attn: Literal["kv", "q"] = "kv"  # cross-attention q/k width: D or C
    encoder_use_query_residual: bool = True
    include_initial_cross_attention: bool = True
    additional_cross_attend_after_layers: list[int] = field(default_factory=list)
    activation_name: Activation = "sq_relu"
    # positions
    position_encoding_type: Literal["absolute", "rotary"] = "rotary"
    position_encoding: Literal["random", "sinusoidal", "fourier"] = "sinusoidal"  # absolute tables
    learnable_position_embeddings: bool = False
    input_idx_size: list[int] = field(default_factory=lambda: [-1])  # rows per index dim; -1: max_context_length
    use_positions_from_data: bool = False
    use_negative_rotary_positions: bool = False
    fraction_to_rotate: float = 0.25
    fraction_heads_to_rotate: float = 1.0
    max_wavelength: int | None = None  # None: max_context_length
    # initial latents
    initial_query_embed_style: Literal["none", "learned", "mlp"] = "none"
    share_learned_initial_query: bool = False
    initial_query_embed_activation_name: Activation = "sq_relu"
    initial_query_embed_num_layers: int = 2
    initial_query_offsetting: bool = False
    z_pos_enc_init_scale: float = 0.02
    # training
    dropout_prob: float = 0.0  # after every attention and MLP
    encoder_dropout_prob: float = 0.0  # prefix dropout: drop this fraction of the inputs before the latents
    final_layer_init_zeros: bool = True

    def validate(self) -> None:
        check_positive(self, "num_classes", "max_context_length", "input_embed_dim", "num_z_channels", "z_index_dim",
                       "num_latents_per_position", "num_transformers_per_block", "num_cross_attend_heads",
                       "num_transformer_heads", "cross_attend_widening_factor", "transformer_widening_factor",
                       "max_wavelength")
        name = type(self).__name__
        check_divisible(self, "num_z_channels", "num_transformer_heads")
        check_divisible(self, "input_embed_dim" if self.cross_attention_shape_for_attn == "kv" else "num_z_channels",
                        "num_cross_attend_heads")
        if self.z_index_dim % self.num_latents_per_position:
            raise ConfigError(f"{name}.z_index_dim={self.z_index_dim} must be a multiple of "
                              f"num_latents_per_position={self.num_latents_per_position}")
        if self.z_index_dim // self.num_latents_per_position > self.max_context_length:
            raise ConfigError(f"{name}: {self.z_index_dim // self.num_latents_per_position} latent positions do not "
                              f"fit max_context_length={self.max_context_length}; lower z_index_dim")
        bad = [i for i in self.additional_cross_attend_after_layers if not 0 <= i < self.num_transformers_per_block]
        if bad:
            raise ConfigError(f"{name}.additional_cross_attend_after_layers={bad}: layers are 0 .. "
                              f"{self.num_transformers_per_block - 1} (num_transformers_per_block)")
        for f in ("fraction_to_rotate", "fraction_heads_to_rotate"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ConfigError(f"{name}.{f} must be in [0, 1], got {getattr(self, f)}")
        if not 0.0 <= self.dropout_prob < 1.0 or not 0.0 <= self.encoder_dropout_prob < 1.0:
            raise ConfigError(f"{name}.dropout_prob and encoder_dropout_prob must be in [0, 1)")
        if not self.input_idx_size or any(s != -1 and s <= 0 for s in self.input_idx_size):
            raise ConfigError(f"{name}.input_idx_size={self.input_idx_size}: one positive size (or -1) per index dim")
        if self.use_positions_from_data and not self.rotary and -1 in self.input_idx_size:
            raise ConfigError(f"{name}.input_idx_size={self.input_idx_size}: with use_positions_from_data every "
                              "position table needs its size (-1 means max_context_length only for terminal-relative positions)")
        if not self.use_positions_from_data and len(self.input_idx_size) != 1:
            raise ConfigError(f"{name}.input_idx_size has {len(self.input_idx_size)} dims; terminal-relative positions "
                              "have one (set use_positions_from_data for several)")
        if self.num_latents_per_position > 1 and (self.initial_query_embed_style == "learned" or self.rotary):
            raise ConfigError(f"{name}.num_latents_per_position > 1 needs absolute positions and queries from the "
                              "inputs (the reference has no such combination)")
        if self.rotary:
            if len(self.input_idx_size) != 1:
                raise ConfigError(f"{name}: rotary positions need exactly one index dim, got input_idx_size="
                                  f"{self.input_idx_size}")
            if self.wavelength < self.max_context_length:
                raise ConfigError(f"{name}.max_wavelength={self.max_wavelength} must be >= max_context_length="
                                  f"{self.max_context_length}")
        if self.initial_query_embed_style == "mlp":
            check_positive(self, "initial_query_embed_num_layers")

    @property
    def rotary(self) -> bool:
        return self.position_encoding_type == "rotary"

    @property
    def wavelength(self) -> int:
        """The rotary ``max_wavelength`` every attention uses (+1 with ``initial_query_offsetting``)."""
        base = self.max_context_length if self.max_wavelength is None else self.max_wavelength
        return base + int(self.initial_query_offsetting)

    @property
    def num_latent_positions(self) -> int:
        return self.z_index_dim // self.num_latents_per_position

    @property
    def num_cross_attends(self) -> int:
        return int(self.include_initial_cross_attention) + len(self.additional_cross_attend_after_layers)


@dataclass
class PerceiverAROutput:
    """``logits [B, U, V]`` (row j predicts the token after input ``latent_last_steps[:, j]``),
    ``latent_last_steps [B, U]`` (-1: an invalid latent, before the start of its row)."""

    logits: Tensor
    latent_last_steps: Tensor

    @property
    def valid_latents(self) -> Tensor:
        return self.latent_last_steps >= 0


def causal_attention(attn: MultiHeadAttention, rotary: RotaryEncoding | None, inputs_q: Tensor, inputs_kv: Tensor,
                     q_positions: Tensor | None, kv_positions: Tensor | None, mask: Tensor | None,
                     memory: KVMemory | None = None) -> Tensor:
    """Attention of ``inputs_q [B, Tq, Cq]`` to ``inputs_kv [B, Tk, Ckv]`` (and, with ``memory``,
    to every key the layer has kept) -> ``[B, Tq, C]``.

    ``mask [B, Tq, Tk']`` (True = may attend) covers the last ``Tk'`` keys; older memory entries
    are allowed where valid. Positions ``[B, T]`` rotate q and k when ``rotary`` is given."""
    q = attn.split_heads(attn.q(inputs_q))
    k = attn.split_heads(attn.k(inputs_kv))
    v = attn.split_heads(attn.v(inputs_kv))
    if rotary is not None:
        q, k = rotary(q, q_positions), rotary(k, kv_positions)
    if memory is not None:
        memory.append(k, v)
        k, v, valid = memory.ordered() if mask is not None else (memory.k, memory.v, memory.valid)
        keep = valid[:, None, :].expand(-1, q.shape[2], -1)
        if mask is not None:
            keep = torch.cat([keep[..., : keep.shape[-1] - mask.shape[-1]], keep[..., -mask.shape[-1]:] & mask], -1)
        mask = keep
    if mask is None:
        return attn.merge_heads(attend(q, k, v))
    empty = ~mask.any(-1, keepdim=True)  # [B, Tq, 1]
    if not bool(empty.any()):
        return attn.merge_heads(attend(q, k, v, attn_mask=mask[:, None]))
    # The reference fills masked scores with -1e30, so a query with no allowed key (an invalid
    # latent) gets equal weights on all keys: the mean of the values.
    out = attend(q, k, v, attn_mask=(mask | empty)[:, None])
    out = torch.where(empty[:, None], v.mean(2, keepdim=True), out)
    return attn.merge_heads(out)


class PerceiverAR(nn.Module):
    """Perceiver AR from a :class:`PerceiverARConfig`; ``forward(inputs [B, N]) -> PerceiverAROutput``."""

    def __init__(self, config: PerceiverARConfig) -> None:
        super().__init__()
        self.config = c = config
        d, ch = c.input_embed_dim, c.num_z_channels
        self.token_embedding = nn.Embedding(c.num_classes, d)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.position_tables = nn.ParameterList()
        if not c.rotary:
            for size in self.table_sizes:  # the reference's stop-gradient unless learnable
                self.position_tables.append(nn.Parameter(position_table(c.position_encoding, size, d),
                                                         requires_grad=c.learnable_position_embeddings))
        if c.initial_query_embed_style == "learned":
            rows = 1 if c.share_learned_initial_query else c.z_index_dim
            self.q_embed_learned = nn.Parameter(init_table(torch.empty(rows, ch), 0.02))
        else:
            self.z_linear = Linear(d, ch)
        self.query_mlp = nn.ModuleList(
            [Linear(ch, ch) for _ in range(c.initial_query_embed_num_layers if c.initial_query_embed_style == "mlp" else 0)]
        )
        self.query_activation = get_activation(c.initial_query_embed_activation_name)
        if c.num_latents_per_position > 1:
            self.z_pos_enc = TrainablePositionEncoding(c.num_latents_per_position, ch, c.z_pos_enc_init_scale)
        self.cross_attends = nn.ModuleList([
            CrossAttention(ch, d, c.num_cross_attend_heads, widening_factor=c.cross_attend_widening_factor,
                           use_query_residual=c.encoder_use_query_residual,
                           shape_for_attn=c.cross_attention_shape_for_attn, dropout=c.dropout_prob,
                           activation=c.activation_name)
            for _ in range(c.num_cross_attends)
        ])
        self.self_attends = nn.ModuleList([
            SelfAttention(ch, c.num_transformer_heads, widening_factor=c.transformer_widening_factor,
                          dropout=c.dropout_prob, activation=c.activation_name)
            for _ in range(c.num_transformers_per_block)
        ])
        self.final_norm = layer_norm(ch)
        self.logits = Linear(ch, c.num_classes)
        if c.final_layer_init_zeros:
            nn.init.zeros_(self.logits.weight)
            nn.init.zeros_(self.logits.bias)
        self.cross_rotary = self.self_rotary = None
        if c.rotary:
            qk = d if c.cross_attention_shape_for_attn == "kv" else ch
            rotate = (c.fraction_to_rotate, c.fraction_heads_to_rotate, c.wavelength)
            self.cross_rotary = RotaryEncoding(qk // c.num_cross_attend_heads, c.num_cross_attend_heads, *rotate)
            self.self_rotary = RotaryEncoding(ch // c.num_transformer_heads, c.num_transformer_heads, *rotate)

    @property
    def table_sizes(self) -> list[int]:
        return [self.config.max_context_length if s == -1 else s for s in self.config.input_idx_size]

    # -- inputs ------------------------------------------------------------------------
    def check_inputs(self, inputs: Tensor, input_idxs: Tensor | None, num_latents: int | None) -> int:
        """Raise on malformed inputs before any tensor math; returns the number of latents z."""
        c = self.config
        if not isinstance(inputs, Tensor) or inputs.dim() != 2 or inputs.dtype.is_floating_point:
            got = f"{inputs.dtype} tensor of shape {tuple(inputs.shape)}" if isinstance(inputs, Tensor) else type(inputs).__name__
            raise TypeError(f"inputs must be an integer tensor [batch, length] of token ids, got {got}")
        b, n = inputs.shape
        if n == 0 or b == 0:
            raise ValueError(f"inputs must hold at least one token per row, got shape {tuple(inputs.shape)}")
        if n > c.max_context_length:
            raise ValueError(f"inputs have {n} tokens, more than max_context_length={c.max_context_length}; "
                             "keep the last max_context_length tokens")
        lo, hi = int(inputs.min()), int(inputs.max())
        if lo < 0 or hi >= c.num_classes:
            raise ValueError(f"token ids must be in [0, {c.num_classes}) (num_classes), got ids in [{lo}, {hi}]")
        if c.use_positions_from_data:
            dims = len(c.input_idx_size)
            if input_idxs is None or tuple(input_idxs.shape) != (b, n, dims) or input_idxs.dtype.is_floating_point:
                got = None if input_idxs is None else f"{input_idxs.dtype} {tuple(input_idxs.shape)}"
                raise ValueError(f"use_positions_from_data: input_idxs must be integers of shape {(b, n, dims)}, got {got}")
            if not c.rotary:
                for i, size in enumerate(self.table_sizes):
                    if int(input_idxs[..., i].min()) < 0 or int(input_idxs[..., i].max()) >= size:
                        raise ValueError(f"input_idxs[..., {i}] must be in [0, {size}) (input_idx_size)")
        elif input_idxs is not None:
            raise ValueError("input_idxs given, but the model has use_positions_from_data=False")
        z = c.z_index_dim if num_latents is None else num_latents
        if z <= 0 or z % c.num_latents_per_position or z // c.num_latents_per_position > n:
            raise ValueError(f"num_latents={z} must be a positive multiple of num_latents_per_position="
                             f"{c.num_latents_per_position} with at most {n} (the input length) positions")
        if c.initial_query_embed_style == "learned" and not c.share_learned_initial_query and z != c.z_index_dim:
            raise ValueError(f"learned unshared initial queries exist for z_index_dim={c.z_index_dim} latents, "
                             f"not {z}")
        return z

    def positions(self, inputs: Tensor, input_idxs: Tensor | None = None) -> Tensor:
        """``[B, N, dims]`` position indices: ``input_idxs`` as given, or terminal-relative
        (``L - 1 - t`` for real tokens, ``N - 1 + L - t`` for padding)."""
        if self.config.use_positions_from_data:
            return input_idxs.long()
        n = inputs.shape[1]
        t = torch.arange(n, device=inputs.device)
        length = sequence_lengths(inputs)[:, None]
        return torch.where(t < length, length - 1 - t, n - 1 + length - t)[..., None]

    def rotary_positions(self, positions: Tensor) -> Tensor | None:
        """The rotary positions ``[B, N]`` of ``positions [B, N, 1]`` (None without rotary)."""
        c = self.config
        if not c.rotary:
            return None
        pos = positions[..., 0]
        return -pos if c.use_negative_rotary_positions and not c.use_positions_from_data else pos

    def embed(self, inputs: Tensor, positions: Tensor) -> Tensor:
        """``e [B, N, D]``: token embeddings plus the absolute position tables (none with rotary)."""
        e = self.token_embedding(inputs)
        for i, table in enumerate(self.position_tables):
            e = e + table[positions[..., i]]
        return e

    def latent_last_steps(self, inputs: Tensor, num_latents: int) -> Tensor:
        """``[B, U]``: the input each latent position sits on, ``max(L - U + j, -1)``;
        one latent (``num_latents == 1``) always sits on the last column."""
        b, n = inputs.shape
        u = num_latents // self.config.num_latents_per_position
        if num_latents == 1:
            return torch.full((b, 1), n - 1, dtype=torch.long, device=inputs.device)
        steps = sequence_lengths(inputs)[:, None] - u + torch.arange(u, device=inputs.device)
        return steps.clamp(min=-1)

    def masks(self, last_steps: Tensor, key_index: Tensor, key_valid: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder mask ``[B, z, M]`` (latent i sees the valid keys of token index <= p_i) and
        processor mask ``[B, z, z]`` (latent j with 0 <= p_j <= p_i, and itself)."""
        p = last_steps.repeat_interleave(self.config.num_latents_per_position, dim=1)  # [B, z]
        encoder = (key_index[:, None, :] <= p[..., None]) & key_valid[:, None, :]
        processor = (p[:, None, :] <= p[:, :, None]) & (p >= 0)[:, None, :]
        processor = processor | torch.eye(p.shape[1], dtype=torch.bool, device=p.device)
        return encoder, processor

    def initial_query(self, e: Tensor, last_steps: Tensor, num_latents: int) -> Tensor:
        """``q0 [B, z, C]`` from the embeddings at the latent positions (index -1 wraps to N - 1)."""
        c = self.config
        b, n, _ = e.shape
        if c.initial_query_embed_style == "learned":
            rows = self.q_embed_learned.expand(num_latents, -1) if c.share_learned_initial_query else self.q_embed_learned
            return rows.expand(b, -1, -1)
        gathered = e.gather(1, (last_steps % n)[..., None].expand(-1, -1, e.shape[-1]))
        q = self.z_linear(gathered)
        k = c.num_latents_per_position
        if k > 1:
            q = q.repeat_interleave(k, dim=1) + self.z_pos_enc.pos_embs.repeat(q.shape[1], 1)
        for layer in self.query_mlp:
            q = self.query_activation(layer(q))
        return q

    def latent_positions(self, rotary_positions: Tensor | None, last_steps: Tensor) -> Tensor | None:
        """Rotary positions of the latents ``[B, U]`` (+1 with ``initial_query_offsetting``)."""
        if rotary_positions is None:
            return None
        pos = rotary_positions.gather(1, last_steps % rotary_positions.shape[1])
        return pos + int(self.config.initial_query_offsetting)

    # -- the network -------------------------------------------------------------------
    def latent_stack(self, x: Tensor, e: Tensor, kv_positions: Tensor | None, q_positions: Tensor | None,
                     encoder_mask: Tensor | None, processor_mask: Tensor | None,
                     memory: list[KVMemory | None] | None = None, skip_initial: bool = False) -> Tensor:
        """The attention blocks, in the reference's order, from ``x = q0 [B, z, C]`` -> ``[B, z, C]``.

        ``memory``: one :class:`KVMemory` (or None) per attention layer in execution order;
        ``skip_initial``: ``x`` is already the output of the initial cross-attention (cached decoding)."""
        c = self.config
        memories = iter(memory if memory is not None else [None] * (c.num_cross_attends + c.num_transformers_per_block))
        crosses = iter(range(c.num_cross_attends))

        def cross(x: Tensor) -> Tensor:
            return self.cross_attend(next(crosses), x, e, q_positions, kv_positions, encoder_mask, next(memories))

        if c.include_initial_cross_attention and skip_initial:
            next(crosses), next(memories)
        elif c.include_initial_cross_attention:
            x = cross(x)
        extra = set(c.additional_cross_attend_after_layers)
        for i, block in enumerate(self.self_attends):
            h = block.norm(x)
            x = block.finish(x, causal_attention(block.attention, self.self_rotary, h, h, q_positions, q_positions,
                                                 processor_mask, next(memories)))
            if i in extra:
                x = cross(x)
        return x

    def cross_attend(self, index: int, x: Tensor, e: Tensor, q_positions: Tensor | None, kv_positions: Tensor | None,
                     encoder_mask: Tensor | None, memory: KVMemory | None = None) -> Tensor:
        """Cross-attention block ``index`` (in call order) from latents ``x [B, Tq, C]`` to ``e [B, N, D]``."""
        block = self.cross_attends[index]
        attended = causal_attention(block.attention, self.cross_rotary, block.q_norm(x), block.kv_norm(e),
                                    q_positions, kv_positions, encoder_mask, memory)
        return block.finish(x, attended)

    def head(self, x: Tensor) -> Tensor:
        """Final layer norm, the mean of each position's K latents, logits: ``[B, z, C] -> [B, U, V]``."""
        y = self.final_norm(x)
        k = self.config.num_latents_per_position
        if k > 1:
            y = y.unflatten(1, (y.shape[1] // k, k)).mean(2)
        return self.logits(y)

    def forward(self, inputs: Tensor, input_idxs: Tensor | None = None, num_latents: int | None = None,
                memory: list[KVMemory | None] | None = None) -> PerceiverAROutput:
        """``inputs [B, N]`` token ids (0 = padding, right-padded); ``input_idxs [B, N, dims]``
        with ``use_positions_from_data``; ``num_latents`` overrides ``z_index_dim`` (1: a single
        latent on the last column and no masks); ``memory``: per-layer key/value memories
        (cached decoding), updated in place."""
        z = self.check_inputs(inputs, input_idxs, num_latents)
        positions = self.positions(inputs, input_idxs)
        e = self.embed(inputs, positions)
        rotary = self.rotary_positions(positions)
        last = self.latent_last_steps(inputs, z)
        encoder_mask = processor_mask = None
        if z > 1:
            key_index = torch.arange(inputs.shape[1], device=inputs.device).expand_as(inputs)
            encoder_mask, processor_mask = self.masks(last, key_index, inputs > 0)
            encoder_mask = self.prefix_dropout(encoder_mask)
        x = self.initial_query(e, last, z)
        x = self.latent_stack(x, e, rotary, self.latent_positions(rotary, last), encoder_mask, processor_mask, memory)
        return PerceiverAROutput(self.head(x), last)

    def prefix_dropout(self, encoder_mask: Tensor) -> Tensor:
        """In training, hide each input from every cross-attention with probability
        ``encoder_dropout_prob`` (the reference's encoder dropout, one draw per row and input)."""
        p = self.config.encoder_dropout_prob
        if not self.training or p == 0.0:
            return encoder_mask
        b, _, n = encoder_mask.shape
        keep = torch.rand(b, n, device=encoder_mask.device) >= p
        return encoder_mask & keep[:, None, :]

    is_causal = True  # generation (perceptio.generation) runs on it

    def generate(self, prompt_ids: Tensor | list, max_new_tokens: int, **options) -> list[list[int]]:
        """The new tokens of each prompt (``[B, P]`` right-padded with 0, or lists of ids of any
        lengths). Options: ``greedy``, ``temperature``, ``top_k``, ``top_p``, ``stop_tokens``,
        ``seed``, ``cache`` (``"exact"``, ``"reference"``, ``"none"``), ``truncate``
        (``"left"``: cut long prompts with a warning, ``"error"``); see perceptio.generation."""
        return generate(self, prompt_ids, max_new_tokens, **options)

    def stream(self, prompt_ids: Tensor | list, max_new_tokens: int, **options):
        """Yield each step's new tokens ``[B]`` (-1 for stopped rows); options as :meth:`generate`."""
        return iter_generate(self, prompt_ids, max_new_tokens, **options)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- persistence -------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (perceptio.pretrained)."""
        save_model_dir(directory, self.state_dict(), self.config)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str = "cpu") -> PerceiverAR:
        model = cls(PerceiverARConfig.from_dict(read_config_dict(directory)))
        load_weights(model, directory, map_location)
        return model


register_architecture(ARCHITECTURE, PerceiverAR)


def position_table(kind: str, num_positions: int, channels: int) -> Tensor:
    """An absolute position table ``[num_positions, channels]``: ``"random"`` (truncated normal,
    0.02), ``"sinusoidal"`` (sin half, cos half) or ``"fourier"`` (features of ``linspace(-1, 1)``)."""
    if kind == "random":
        return init_table(torch.empty(num_positions, channels), 0.02)
    if kind == "sinusoidal":
        return sinusoidal_table(num_positions, channels)
    return fourier_features(grid_positions([num_positions]), channels // 2, [num_positions], concat_pos=False)


def sequence_lengths(inputs: Tensor) -> Tensor:
    """``[B]``: the index of each row's first padding token 0, or N without one."""
    is_pad = inputs == 0
    n = inputs.shape[1]
    return torch.where(is_pad.any(1), is_pad.int().argmax(1), torch.full_like(is_pad[:, 0], n, dtype=torch.long))

