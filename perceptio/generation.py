"""Autoregressive generation for causal models (Perceiver AR): sampling, key/value memories
and the three decoding loops.

``cache`` chooses how each new token is computed:

* ``"exact"`` (default): the key/value memory of every cross-attention holds the whole
  context, so a new token costs one embedding and one projection per cross-attention, the
  initial cross-attention of the new latent only (while no window moves: the others see no new
  key), and the latent stack (z latents attend each other). The logits equal a full
  recompute (``"none"``) up to float rounding: positions enter only through rotary
  encodings, which depend on differences of positions only.
* ``"reference"``: the official sampler (``sample_utils``, ``memory_type='fixed_size_kv'``):
  one latent per step attends a rolling memory of the context and of earlier latents, and
  the latent memory is rebuilt with z/2 latents when it is full. A new token costs
  O(context + latents); the numbers differ from a full recompute (the reference's own
  cached sampling does), and its greedy fixtures are reproduced token for token.
* ``"none"``: run the model on the whole (left-cut) context at every step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .tokenizer import CausalByteTokenizer

# The reference's reserved ids (perceptio.tokenizer.CausalByteTokenizer); PAD and SOS are never sampled.
PAD_ID, EOS_ID, SOS_ID = CausalByteTokenizer.pad_id, CausalByteTokenizer.eos_id, CausalByteTokenizer.sos_id
Cache = Literal["exact", "reference", "none"]
CACHES = ("exact", "reference", "none")


@dataclass
class KVMemory:
    """The keys (already rotated), values ``[B, H, M, d]`` and validity ``[B, M]`` one attention
    layer has seen; :meth:`append` adds new entries and drops the oldest beyond ``capacity``
    (None: grow).

    A full memory of fixed capacity is a ring: new entries overwrite the oldest in place (no
    copy of the memory per token), so the stored order is rotated by ``start``. Attention does
    not depend on the order of its keys; :meth:`ordered` gives the oldest-first order."""

    k: Tensor
    v: Tensor
    valid: Tensor
    capacity: int | None = None
    start: int = 0  # where the oldest entry is stored

    @classmethod
    def zeros(cls, batch: int, heads: int, size: int, head_channels: int, capacity: int | None = None,
              like: Tensor | None = None) -> KVMemory:
        opts = {} if like is None else {"dtype": like.dtype, "device": like.device}
        k = torch.zeros(batch, heads, size, head_channels, **opts)
        return cls(k, k.clone(), torch.zeros(batch, size, dtype=torch.bool, device=k.device), capacity)

    def append(self, k: Tensor, v: Tensor, valid: Tensor | None = None) -> None:
        n = k.shape[2]
        if valid is None:
            valid = torch.ones(k.shape[0], n, dtype=torch.bool, device=k.device)
        if self.capacity is not None and self.size == self.capacity and n < self.capacity:
            slots = (self.start + torch.arange(n, device=k.device)) % self.capacity
            self.k[:, :, slots], self.v[:, :, slots], self.valid[:, slots] = k, v, valid
            self.start = (self.start + n) % self.capacity
            return
        self.k, self.v, self.valid = self.ordered()
        self.start = 0
        self.k, self.v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.valid = torch.cat([self.valid, valid], dim=1)
        if self.capacity is not None and self.size > self.capacity:
            self.keep_last(self.capacity)

    def ordered(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(k, v, valid)`` oldest entry first."""
        if self.start == 0:
            return self.k, self.v, self.valid
        return self.k.roll(-self.start, 2), self.v.roll(-self.start, 2), self.valid.roll(-self.start, 1)

    def keep_last(self, n: int) -> None:
        self.k, self.v, self.valid = self.ordered()
        self.start = 0
        self.k, self.v, self.valid = self.k[:, :, self.size - n:], self.v[:, :, self.size - n:], self.valid[:, self.size - n:]

    def left_pad(self, n: int) -> None:
        """Add ``n`` empty (invalid) entries before the oldest."""
        k, v, valid = self.ordered()
        b, h, _, d = k.shape
        pad = k.new_zeros(b, h, n, d)
        self.k, self.v = torch.cat([pad, k], 2), torch.cat([pad, v], 2)
        self.valid = torch.cat([valid.new_zeros(b, n), valid], 1)
        self.start = 0

    @property
    def size(self) -> int:
        return self.valid.shape[1]


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------
def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise on bad sampling settings, naming the argument and what is allowed."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not temperature > 0 or math.isinf(temperature):
        raise ValueError(f"temperature must be a finite number > 0 (use greedy=True for argmax), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None), got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] (or None), got {top_p!r}")


def next_tokens(logits: Tensor, greedy: bool = False, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """One token per row of ``logits [B, V]`` -> ``[B]``: argmax, or a sample at ``temperature``
    from the ``top_k`` most likely tokens and the smallest set whose probability reaches
    ``top_p`` (nucleus). PAD and SOS are never chosen."""
    logits = logits.float().clone()
    logits[:, [PAD_ID, SOS_ID]] = -math.inf
    if greedy:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the ones before it already reach top_p (the first is always kept)
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# ---------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------
def prompt_rows(prompt_ids: Tensor | Sequence[int] | Sequence[Sequence[int]], num_classes: int) -> list[list[int]]:
    """Prompts as lists of ids: a ``[B, P]`` tensor (right-padded with 0), one list of ids, or a
    list of them (any lengths). Empty prompts and ids outside ``[1, num_classes)`` are errors."""
    if isinstance(prompt_ids, Tensor):
        if prompt_ids.dim() == 1:
            prompt_ids = prompt_ids[None]
        if prompt_ids.dim() != 2 or prompt_ids.dtype.is_floating_point:
            raise TypeError(f"prompt_ids must be integer ids [batch, length], got {prompt_ids.dtype} "
                            f"{tuple(prompt_ids.shape)}")
        rows = []
        for row in prompt_ids.tolist():
            rows.append(row[: row.index(PAD_ID)] if PAD_ID in row else row)
    elif isinstance(prompt_ids, (list, tuple)) and prompt_ids and all(isinstance(i, int) for i in prompt_ids):
        rows = [list(prompt_ids)]
    elif isinstance(prompt_ids, (list, tuple)) and all(isinstance(r, (list, tuple)) for r in prompt_ids):
        rows = [list(r) for r in prompt_ids]
    else:
        raise TypeError("prompt_ids must be a [batch, length] tensor, a list of ids or a list of lists of ids, "
                        f"got {type(prompt_ids).__name__}")
    if not rows:
        raise ValueError("prompt_ids holds no prompt")
    for b, row in enumerate(rows):
        if not row:
            raise ValueError(f"prompt {b} is empty; give at least one token (the byte models start with SOS = {SOS_ID})")
        bad = [i for i in row if not isinstance(i, int) or not 0 < i < num_classes]
        if bad:
            raise ValueError(f"prompt {b}: token ids must be in [1, {num_classes}) (0 is padding), got {bad[:5]}")
    return rows


def fit_context(rows: list[list[int]], max_context_length: int, truncate: Literal["left", "error"]) -> list[list[int]]:
    """Cut prompts longer than the context from the left (with a warning), or refuse them."""
    if truncate not in ("left", "error"):
        raise ValueError(f"truncate must be 'left' or 'error', got {truncate!r}")
    long = [b for b, r in enumerate(rows) if len(r) > max_context_length]
    if not long:
        return rows
    b = long[0]
    message = (f"prompt {b} has {len(rows[b])} tokens, more than the model's max_context_length="
               f"{max_context_length}")
    if truncate == "error":
        raise ValueError(message + "; shorten it or pass truncate='left'")
    warnings.warn(message + f"; keeping its last {max_context_length} tokens", stacklevel=3)
    return [r[-max_context_length:] for r in rows]


def padded(rows: list[list[int]], device: torch.device) -> Tensor:
    """``[B, max length]`` right-padded with PAD."""
    out = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long, device=device)
    for b, r in enumerate(rows):
        out[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


# ---------------------------------------------------------------------------------------
# The decoding loops: each yields the logits [B, V] of the next token, and is sent the tokens chosen.
# ---------------------------------------------------------------------------------------
def recompute_steps(model: Any, rows: list[list[int]]) -> Iterator[Tensor]:
    """No cache: the model on each row's last ``max_context_length`` tokens at every step."""
    n_max = model.config.max_context_length
    device = model.logits.weight.device
    while True:
        windows = [r[-n_max:] for r in rows]
        ids = padded(windows, device)
        idxs = None
        if model.config.use_positions_from_data:
            idxs = data_positions(model, torch.arange(ids.shape[1], device=device).expand_as(ids))
        out = model(ids, idxs)
        tokens = yield out.logits[:, -1]
        for r, t in zip(rows, tokens.tolist()):
            r.append(t)


def data_positions(model: Any, token_index: Tensor) -> Tensor:
    """``input_idxs [B, T, 1]`` of a model with positions from data: the dataset's ``t + 1``."""
    if len(model.config.input_idx_size) != 1:
        raise ValueError("generation invents positions t + 1 for new tokens; a model with several index dims "
                         f"(input_idx_size={model.config.input_idx_size}) cannot be sampled")
    return (token_index + 1)[..., None]


def exact_steps(model: Any, rows: list[list[int]]) -> Iterator[Tensor]:
    """The exact cache: every cross-attention keeps the keys and values of all tokens of the
    window, tagged with their token index; the z latents are recomputed against them."""
    c = model.config
    if not c.rotary:
        raise ValueError("cache='exact' needs rotary positions: absolute positions of a token change with "
                         "every new token (terminal-relative); use cache='none'")
    device = model.logits.weight.device
    b = len(rows)
    lengths = torch.tensor([len(r) for r in rows], device=device)
    ids = padded(rows, device)  # [B, T]: every token so far (not cut), right-padded
    index = torch.arange(ids.shape[1], device=device).expand(b, -1)  # token index of each memory entry
    valid = ids > 0
    memory = [KVMemory.zeros(b, blk.attention.num_heads, 0, blk.attention.qk_channels // blk.attention.num_heads,
                             like=model.logits.weight) for blk in model.cross_attends]
    stack_memory = memory_in_call_order(model, memory)
    new_ids, new_index = ids, index
    reuse, start = None, (lengths - c.max_context_length).clamp(min=0)
    while True:
        e = model.embed(new_ids, absolute_positions(model, new_index))
        window = valid & (index >= start[:, None])
        logits, crossed = exact_latents(model, ids, lengths, index, window, e, new_index, stack_memory, reuse)
        tokens = yield logits
        # each row's token goes at its own length (the buffer grows when a row reaches its width)
        if int(lengths.max()) == ids.shape[1]:
            ids = torch.cat([ids, ids.new_zeros(b, 1)], 1)
        ids[torch.arange(b), lengths] = tokens
        new_ids, new_index = tokens[:, None], lengths[:, None].clone()
        index = torch.cat([index, new_index], 1)
        valid = torch.cat([valid, torch.ones_like(new_index, dtype=torch.bool)], 1)
        lengths = lengths + 1
        # While no window moves, the initial cross-attention of the latents but the new last one is unchanged.
        previous, start = start, (lengths - c.max_context_length).clamp(min=0)
        reuse = crossed if bool((start == previous).all()) else None
        # forget the oldest entries once no row's window reaches them
        live = (valid & (index >= start[:, None])).any(0)
        first = int(live.int().argmax())
        if first > 0:
            index, valid = index[:, first:], valid[:, first:]
            for m in memory:
                m.keep_last(m.size - first)


def memory_in_call_order(model: Any, cross_memory: list[KVMemory]) -> list[KVMemory | None]:
    """The cross-attention memories at their places in the attention order, None for the self-attentions."""
    c = model.config
    crosses = iter(cross_memory)
    order = [next(crosses)] if c.include_initial_cross_attention else []
    extra = set(c.additional_cross_attend_after_layers)
    for i in range(c.num_transformers_per_block):
        order.append(None)
        if i in extra:
            order.append(next(crosses))
    return order


def absolute_positions(model: Any, token_index: Tensor) -> Tensor:
    """``[B, T, 1]``: positions ``-t`` of token index t, which differ from the terminal-relative
    ``L - 1 - t`` by a constant per row (so rotary scores are the same), or the data positions ``t + 1``."""
    if model.config.use_positions_from_data:
        return data_positions(model, token_index)
    return -token_index[..., None]


def exact_latents(model: Any, ids: Tensor, lengths: Tensor, key_index: Tensor, key_valid: Tensor, e_new: Tensor,
                  new_index: Tensor, memory: list[KVMemory | None],
                  reuse: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Logits ``[B, V]`` of each row's last latent: the z latents on the last positions of
    every row, against the memory (entries ``key_index [B, M]``, ``key_valid``: in the window)
    after this call's new entries ``e_new [B, T, D]`` (token indices ``new_index``).

    Also returns the latents after the initial cross-attention ``[B, z, C]`` (None without one);
    given back as ``reuse`` at the next token (one position later, the same windows), only the
    new last latent's cross-attention is computed: the others see no new key."""
    c = model.config
    u = c.num_latent_positions
    last = (lengths[:, None] - u + torch.arange(u, device=ids.device)).clamp(min=-1)  # [B, U]
    encoder_mask, processor_mask = model.masks(last, key_index, key_valid)
    latent_index = last.clamp(min=0)  # invalid latents (-1) influence no valid one
    e_latents = model.embed(ids.gather(1, latent_index), absolute_positions(model, latent_index))
    columns = torch.arange(u, device=ids.device).expand_as(last)
    x = model.initial_query(e_latents, columns, c.z_index_dim)
    q_positions = model.latent_positions(model.rotary_positions(absolute_positions(model, latent_index)), columns)
    kv_positions = model.rotary_positions(absolute_positions(model, new_index))
    crossed = None
    if c.include_initial_cross_attention:
        rows = slice(None) if reuse is None else slice(-1, None)
        x = model.cross_attend(0, x[:, rows], e_new, q_positions[:, rows], kv_positions, encoder_mask[:, rows], memory[0])
        crossed = x = x if reuse is None else torch.cat([reuse[:, 1:], x], 1)
    x = model.latent_stack(x, e_new, kv_positions, q_positions, encoder_mask, processor_mask, memory,
                           skip_initial=True)
    return model.head(x)[:, -1], crossed


def reference_steps(model: Any, rows: list[list[int]], max_new_tokens: int) -> Iterator[Tensor]:
    """The official sampler's cached decoding (``sample_utils``, ``fixed_size_kv``), step for step."""
    c = model.config
    if not c.use_positions_from_data:
        raise ValueError("cache='reference' is the official sampler, which needs use_positions_from_data=True; "
                         "use cache='exact'")
    if c.additional_cross_attend_after_layers or not c.include_initial_cross_attention:
        raise ValueError("cache='reference': the official sampler supports one initial cross-attention and no "
                         "additional_cross_attend_after_layers")
    if len({len(r) for r in rows}) != 1:
        raise ValueError("cache='reference' runs all rows at one step: give prompts of one length")
    mc, mz = c.max_context_length, c.z_index_dim
    if mz % 2:
        raise ValueError(f"cache='reference' needs an even z_index_dim, got {mz}")
    s = len(rows[0])
    if s + max_new_tokens > mc + 1:
        raise ValueError(f"cache='reference' fills a buffer of max_context_length + 1 = {mc + 1} tokens: "
                         f"prompt {s} + max_new_tokens {max_new_tokens} do not fit")
    device = model.logits.weight.device
    b = len(rows)
    events = torch.zeros(b, mc + 1, dtype=torch.long, device=device)
    events[:, :s] = torch.tensor(rows, device=device)
    idxs = data_positions(model, torch.arange(mc + 1, device=device).expand(b, -1))
    like = model.logits.weight
    cross, selfs = model.cross_attends[0].attention, [blk.attention for blk in model.self_attends]

    def fresh(attn, size: int) -> KVMemory:
        return KVMemory.zeros(b, attn.num_heads, size, attn.qk_channels // attn.num_heads, size, like)

    memory = [fresh(cross, mc)] + [fresh(a, mz) for a in selfs]
    logits = model(events[:, :s], idxs[:, :s], num_latents=1, memory=memory).logits[:, -1]
    i = s
    while True:
        tokens = yield logits
        events[:, i] = tokens
        i += 1
        if i > mc:
            return
        if int(memory[1].valid[0].sum()) == mz:  # the first latent memory is full: reset
            memory = [fresh(cross, mc)] + [fresh(a, mz // 2) for a in selfs]
            logits = model(events[:, :-1], idxs[:, :-1], num_latents=mz // 2, memory=memory).logits[:, -1]
            m0 = memory[0]
            m0.k[:, :, i:], m0.v[:, :, i:], m0.valid[:, i:] = 0.0, 0.0, False
            m0.k, m0.v, m0.valid = m0.k.roll(-i, 2), m0.v.roll(-i, 2), m0.valid.roll(-i, 1)
            for m in memory[1:]:
                m.left_pad(mz - mz // 2)
                m.capacity = mz
        else:
            logits = model(events[:, i - 1:i], idxs[:, i - 1:i], num_latents=1, memory=memory).logits[:, -1]


def check_causal(model: Any) -> None:
    """Raise ``TypeError`` unless ``model`` is causal (autoregressive), as generation needs."""
    if not getattr(model, "is_causal", False):
        raise TypeError(f"{type(model).__name__} is not a causal (autoregressive) model: generate needs a PerceiverAR")


def iter_generate(model: Any, prompt_ids: Any, max_new_tokens: int, *, greedy: bool = False, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, stop_tokens: Sequence[int] = (),
                  seed: int | None = None, cache: Cache = "exact",
                  truncate: Literal["left", "error"] = "left") -> Iterator[Tensor]:
    """Yield the new token of every row at each step ``[B]`` (-1 for rows that have stopped);
    the arguments are those of :func:`generate`."""
    check_causal(model)
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {list(CACHES)}, got {cache!r}")
    rows = fit_context(prompt_rows(prompt_ids, model.config.num_classes), model.config.max_context_length, truncate)
    stop = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long)
    bad = [t for t in stop.tolist() if not 0 <= t < model.config.num_classes]
    if bad:
        raise ValueError(f"stop_tokens must be ids in [0, {model.config.num_classes}), got {bad}")
    if max_new_tokens == 0:
        return
    generator = torch.Generator(device=model.logits.weight.device)
    if seed is None:
        generator.seed()  # a fresh random seed, without touching the global generator
    else:
        generator.manual_seed(seed)
    if cache == "exact":
        steps = exact_steps(model, rows)
    elif cache == "reference":
        steps = reference_steps(model, rows, max_new_tokens)
    else:
        steps = recompute_steps(model, rows)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = next(steps)
            done = torch.zeros(len(rows), dtype=torch.bool, device=logits.device)
            for step in range(max_new_tokens):
                tokens = next_tokens(logits, greedy, temperature, top_k, top_p, generator)
                done = done | torch.isin(tokens, stop.to(tokens.device))
                yield torch.where(done, -1, tokens)
                if bool(done.all()) or step == max_new_tokens - 1:
                    return
                logits = steps.send(tokens)
    finally:
        model.train(was_training)


def generate(model: Any, prompt_ids: Any, max_new_tokens: int, **options: Any) -> list[list[int]]:
    """The new tokens of each prompt (stop tokens excluded); options as :func:`iter_generate`."""
    steps = list(iter_generate(model, prompt_ids, max_new_tokens, **options))
    if not steps:
        return [[] for _ in prompt_rows(prompt_ids, model.config.num_classes)]
    tokens = torch.stack(steps, 1).tolist()
    return [[t for t in row[: row.index(-1)]] if -1 in row else row for row in tokens]
