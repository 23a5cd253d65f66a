"""The whole model: input adapter -> encoder -> decoder -> output adapter.

    inputs --input adapter--> x [B, M, C] --encoder--> latents [B, N, D]
    queries [B, O, Cq] --decoder(latents)--> [B, O, E] --output adapter--> outputs

``Perceiver.encode`` and ``Perceiver.decode`` are public so that the latents can be
computed once and decoded for any set of output points, in chunks of bounded memory
(``decode_chunked``).

Where inputs enter (``encode``) they are checked once, before any tensor math: the
adapter checks their type and shape, the masks theirs; floating-point inputs are cast to
the model's dtype and every tensor is moved to the model's device; and (``check_finite``,
turned on by train / evaluate / predict) the encoder input array must be finite wherever
``input_mask`` keeps it.
Masked positions may hold anything, NaN included: they never reach the outputs.

A model is sized on the ``meta`` device before it is built (:func:`check_model_size`):
a config whose parameters and buffers exceed ``PERCEPTIO_MAX_MODEL_GB`` (default 4 GB,
:mod:`perceptio.limits`) is refused, naming the field and the size.

With ``encoder.ponder`` (PonderNet) the encoder's recurrence halts per example:
``forward`` returns the outputs at each example's halting step and ``steps``; with
``all_steps`` (the default in training mode) it also decodes the latents of every step
(``step_logits``) and returns the halting distribution ``halting [B, max_steps]`` that
the training objectives weigh them with.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn

from .adapters.base import AdapterOutput, InputAdapterConfig, OutputAdapterConfig
from .config import Config, ConfigError
from .decoder import CrossAttentionDecoderConfig, DecoderConfig
from .encoder import EncoderConfig
from .generation import generate
from .layers.attention import collect_attention
from .limits import LAYERS, MODEL_SIZE, format_bytes
from .pretrained import (CONFIG_NAME, DEFAULT_ARCHITECTURE, check_device, check_weights_file, load_weights,
                         read_config_dict, register_architecture, save_model_dir)
from .resampler import ResamplerConfig


@dataclass(kw_only=True)
class PerceiverConfig(Config):
    input_adapter: InputAdapterConfig
    # the Perceiver encoder, or Flamingo's Perceiver Resampler (perceptio/resampler.py)
    encoder: EncoderConfig | ResamplerConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=CrossAttentionDecoderConfig)
    output_adapter: OutputAdapterConfig | None = None


@dataclass
class PerceiverOutput:
    """``logits``: the task output; ``latents``: ``[B, N, D]``; ``attentions``: on request,
    ``{"cross": [...], "self": [...], "decoder": [...]}`` of ``[B, heads, Tq, Tk]``."""

    logits: Any
    latents: Tensor
    attentions: dict[str, list[Tensor]] | None = None
    # with encoder.ponder: steps [B] taken (1-based); with all_steps also the outputs of
    # every step (a list of max_steps logits) and the halting distribution p [B, max_steps]
    steps: Tensor | None = None
    step_logits: list[Any] | None = None
    halting: Tensor | None = None


# A pytree node, so that torch.export (and ONNX export) can return it.
torch.export.register_dataclass(PerceiverOutput, serialized_type_name="perceptio.model.PerceiverOutput")


class Perceiver(nn.Module):
    """A Perceiver / Perceiver IO model built from a :class:`PerceiverConfig`.

    ``max_gb``: refuse a config whose parameters and buffers would take more (counted on
    the meta device first); None: ``PERCEPTIO_MAX_MODEL_GB``, default 4 GB.

    ``check_finite`` (attribute, default False; ``perceptio train``, ``evaluate`` and
    ``predict`` turn it on): refuse inputs holding NaN/Inf where ``input_mask`` keeps them,
    with a ValueError naming the example and position (one reading pass over the encoder
    input array and a host sync; skipped while compiling or tracing). It is off
    by default because the check branches on data, which ``torch.func.vmap`` / ``grad``
    and graph capture do not allow."""

    check_finite: bool = False

    def __init__(self, config: PerceiverConfig, max_gb: float | None = None) -> None:
        super().__init__()
        check_layer_count(config)  # also on the meta device: a meta model of 10^6 layers takes minutes
        if torch.get_default_device().type != "meta":  # the meta probe itself is not sized again
            check_model_size(config, MODEL_SIZE.value() if max_gb is None else max_gb * 1e9)
        self.config = config
        self.input_adapter = config.input_adapter.build()
        in_channels = self.input_adapter.num_channels
        without_pos = self.input_adapter.num_channels_without_pos
        self.encoder = config.encoder.build(in_channels)
        self.decoder = config.decoder.build(config.encoder.num_latent_channels, in_channels, without_pos)
        self.output_adapter = (
            config.output_adapter.build(self.decoder.output_channels, self.input_adapter)
            if config.output_adapter is not None
            else None
        )

    # -- the three stages -------------------------------------------------------------
    def encode(self, inputs: Any, input_mask: Tensor | None = None) -> tuple[Tensor, AdapterOutput]:
        """Raw inputs -> (latents ``[B, N, D]``, adapter output for the query builders).
        With ``encoder.ponder`` the latents are those of each example's halting step."""
        context, input_mask = self.adapt(inputs, input_mask)
        return self.encoder(context.inputs, input_mask), context

    def adapt(self, inputs: Any, input_mask: Tensor | None = None) -> tuple[AdapterOutput, Tensor | None]:
        """Raw inputs -> (the input adapter's output, ``inputs [B, M, C]`` for the encoder,
        and ``input_mask`` on the model's device), checked as the module docstring says."""
        _check_mask(input_mask, self.input_adapter.check(inputs), "input_mask")
        weight = next(self.parameters())
        inputs = to_model(inputs, weight.device, weight.dtype)
        if input_mask is not None:
            input_mask = input_mask.to(weight.device)
            inputs = zero_masked_rows(inputs, input_mask)
        context = self.input_adapter(inputs)
        if self.check_finite:
            check_finite_inputs(context.inputs, input_mask, inputs)
        return context, input_mask

    def decode(
        self,
        latents: Tensor,
        context: AdapterOutput | None = None,
        points: Any = None,
        query_mask: Tensor | None = None,
        rows: Any = None,
        postprocess: bool = True,
    ) -> Any:
        """Latents -> outputs for all queries, the reference-subsampled ``points``, or the
        exact ``rows`` of the full query array."""
        points = self.decoder.check_selection(context, points, "points", latents.device)
        rows = self.decoder.check_selection(context, rows, "rows", latents.device)
        queries = self.decoder.queries(latents.shape[0], context, points=points, rows=rows)
        if queries is not None:
            _check_mask(query_mask, queries.shape[:2], "query_mask")
            query_mask = None if query_mask is None else query_mask.to(queries.device)
        out = self.decoder.split(self.decoder(latents, queries, query_mask), context, points, rows)
        return self.postprocess(out, context) if postprocess else out

    def postprocess(self, decoded: Any, context: AdapterOutput | None = None) -> Any:
        if self.output_adapter is None:
            return decoded
        return self.output_adapter(decoded)

    @torch.no_grad()
    def decode_chunked(
        self, latents: Tensor, context: AdapterOutput | None = None, chunk_size: int = 4096, points: Any = None
    ) -> Any:
        """Decode all queries (or the reference-subsampled ``points``, a dict per modality for
        multimodal models) ``chunk_size`` queries at a time; equals ``decode(latents, context,
        points)``. Queries are built per chunk, so peak memory is bounded by the chunk, not by
        the number of outputs; the latents are computed once, by the caller."""
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive integer (queries per chunk), got {chunk_size!r}")
        parts = [
            self.decode(latents, context, postprocess=False, **selection)
            for selection in self.decoder.chunks(context, chunk_size, points, device=latents.device)
        ]
        if not parts:  # nothing to decode (empty points)
            return self.decode(latents, context, points=points)
        return self.postprocess(self.decoder.merge(parts), context)

    def forward(
        self,
        inputs: Any,
        input_mask: Tensor | None = None,
        query_mask: Tensor | None = None,
        points: Any = None,
        return_attention: bool = False,
        all_steps: bool | None = None,
    ) -> PerceiverOutput:
        """``inputs`` as the input adapter takes them; masks ``[B, M]`` / ``[B, O]`` of bools
        (True = valid); ``points``: flat output indices to decode (all when None).

        ``return_attention``: also the attention maps, ``attentions = {"cross": [...],
        "self": [...], "decoder": [...]}`` of ``[B, heads, Tq, Tk]`` in call order (encoder
        cross-attends, latent self-attention layer applications, decoder cross-attend),
        recorded by :func:`perceptio.layers.attention.collect_attention`; they are part of
        the autograd graph.

        ``all_steps`` (``encoder.ponder`` only; default: ``self.training``): decode every
        step, not only each example's halting step (see the module docstring)."""
        if return_attention:
            with collect_attention(self) as maps:
                out = self.forward(inputs, input_mask, query_mask, points, all_steps=all_steps)
            out.attentions = {
                "cross": maps.under("encoder.cross_attends"),
                "self": maps.under("encoder.latent_blocks"),
                "decoder": maps.under("decoder"),
            }
            return out
        if self.encoder.halting is not None:
            return self._ponder(inputs, input_mask, query_mask, points, self.training if all_steps is None else all_steps)
        latents, context = self.encode(inputs, input_mask)
        return PerceiverOutput(self.decode(latents, context, points, query_mask), latents)

    def generate(self, prompt_ids: Any, max_new_tokens: int, **options: Any) -> list[list[int]]:
        """Raises ``TypeError``: a Perceiver (IO) is not causal; generation needs a ``PerceiverAR``."""
        return generate(self, prompt_ids, max_new_tokens, **options)

    def _ponder(self, inputs: Any, input_mask: Tensor | None, query_mask: Tensor | None, points: Any,
                all_steps: bool) -> PerceiverOutput:
        context, input_mask = self.adapt(inputs, input_mask)
        state = self.encoder.ponder(context.inputs, input_mask, all_steps)
        if not all_steps:  # halted examples left the batch in the encoder; decode once
            return PerceiverOutput(self.decode(state.latents, context, points, query_mask), state.latents,
                                   steps=state.steps)
        step_logits = [self.decode(z, context, points, query_mask) for z in state.step_latents]
        return PerceiverOutput(select_steps(step_logits, state.steps), state.latents, steps=state.steps,
                               step_logits=step_logits, halting=state.halting)

    # -- persistence ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (atomically;
        the format is :mod:`perceptio.pretrained`)."""
        save_model_dir(directory, self.state_dict(), self.config)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str = "cpu") -> Perceiver:
        """The model saved in ``directory`` by :meth:`save_pretrained` (strict: every
        parameter must be there with its shape and kind of dtype), or any other source a
        registered reader takes (:func:`register_pretrained_reader`; ``import perceptio``
        registers the reader of :mod:`perceptio.checkpoints`: Hugging Face directories, Hub ids
        such as ``"deepmind/language-perceiver"``, DeepMind checkpoints). The config is compared
        with the weights file's header on the meta device before any parameter is allocated."""
        check_device(map_location)
        for reader in PRETRAINED_READERS:
            model = reader(directory, map_location)
            if model is not None:
                return model
        try:
            config = PerceiverConfig.from_dict(read_config_dict(directory))
        except ConfigError as e:  # a hand-edited or damaged config.json: name the file
            raise ConfigError(f"{os.path.join(directory, CONFIG_NAME)}: {e}") from None
        with torch.device("meta"):
            probe = cls(config)
        check_model_size(config, MODEL_SIZE.value(), probe)  # the size first: it names the field
        check_weights_file(probe, directory)
        model = cls(config, max_gb=math.inf)  # sized above
        load_weights(model, directory, map_location)
        return model


register_architecture(DEFAULT_ARCHITECTURE, Perceiver)


def select_steps(step_outputs: list[Any], steps: Tensor) -> Any:
    """Example ``b`` of ``step_outputs[steps[b] - 1]``: outputs ``[B, ...]`` (or dicts of
    them, one per modality) of every step -> those of each example's halting step."""
    first = step_outputs[0]
    if isinstance(first, dict):
        return {k: select_steps([out[k] for out in step_outputs], steps) for k in first}
    return torch.stack(step_outputs)[steps - 1, torch.arange(steps.shape[0], device=steps.device)]


# Readers of sources other than a perceptio model directory: ``reader(source, map_location)``
# returns a model, or None when ``source`` is not its kind. They live above this module
# (perceptio.checkpoints converts other formats), so they register themselves here.
PretrainedReader = Callable[[str | os.PathLike, str], Perceiver | None]
PRETRAINED_READERS: list[PretrainedReader] = []


def register_pretrained_reader(reader: PretrainedReader) -> PretrainedReader:
    """Make :meth:`Perceiver.from_pretrained` try ``reader`` first (usable as a decorator)."""
    if reader not in PRETRAINED_READERS:
        PRETRAINED_READERS.append(reader)
    return reader


def _check_mask(mask: Tensor | None, shape: torch.Size, name: str) -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype torch.bool (True = valid), got {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} to match its array, got {tuple(mask.shape)}")


def to_model(inputs: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """``inputs`` (a tensor or a dict of them) on ``device``, floating-point ones cast to
    ``dtype`` (float64, float16 or bfloat16 inputs of a float32 model, say); integer
    tensors (token ids) keep their dtype. A no-op when they already match."""
    if isinstance(inputs, Mapping):
        return {k: to_model(v, device, dtype) for k, v in inputs.items()}
    if isinstance(inputs, Tensor):
        return inputs.to(device=device, dtype=dtype if inputs.is_floating_point() else None)
    return inputs


def zero_masked_rows(inputs: Any, mask: Tensor) -> Any:
    """Float ``inputs [B, M, ...]`` laid out like ``mask [B, M]``: masked rows set to 0, so
    that NaN padding reaches no gradient of the input adapter either (``0 * NaN``). Other
    layouts (images, token ids, several modalities) are returned as they are: the encoder
    zeroes their masked rows after the adapter."""
    if isinstance(inputs, Tensor) and inputs.is_floating_point() and tuple(inputs.shape[:2]) == tuple(mask.shape):
        return inputs.masked_fill(~mask.view(*mask.shape, *[1] * (inputs.dim() - 2)), 0.0)
    return inputs


def check_finite_inputs(x: Tensor, mask: Tensor | None, raw: Any) -> None:
    """Raise a ValueError if the encoder input array ``x [B, M, C]`` holds NaN or Inf at a
    position ``mask [B, M]`` keeps (masked positions may hold anything), naming the first
    one; ``raw`` (the adapter's inputs) is only inspected then, to say where it came from."""
    if x.device.type == "meta" or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return
    # One reading pass: a row sum is NaN/Inf if any of its values is (or, rarely, if huge
    # finite values overflow: the exact test below then clears them).
    bad = ~torch.isfinite(x.sum(dim=-1))  # [B, M]
    if mask is not None:
        bad &= mask
    if not bad.any():
        return
    bad &= ~torch.isfinite(x).all(dim=-1)
    if not bad.any():
        return
    b, m = bad.nonzero()[0].tolist()
    where = (f"example {b}, position {m} of the {x.shape[1]} positions of the encoder input array "
             f"({int(bad.sum())} positions in all)")
    # The raw value behind it: at (b, m) when the adapter maps inputs 1:1 to positions
    # (tokens, points), else anywhere in example b.
    raw_bad = []
    for name, t in _tensors(raw):
        if t.is_floating_point():
            lead = (b, m) if t.shape[:2] == x.shape[:2] else (b,) if t.shape[0] == x.shape[0] else ()
            found = (~torch.isfinite(t[lead])).nonzero()
            if len(found):
                raw_bad.append((name, t, lead + tuple(found[0].tolist())))
    if raw_bad:
        name, t, index = raw_bad[0]
        raise ValueError(f"inputs{name} hold NaN or infinite values (the first at index {list(index)}: "
                         f"{t[index].item()}), reaching {where}; expected finite values: replace them, or exclude "
                         f"their positions with input_mask=False")
    raise ValueError(f"the input adapter's output is not finite at {where}, although the inputs are finite: the "
                     f"model's weights hold NaN or infinite values (a diverged training run?)")


def _tensors(inputs: Any, name: str = "") -> list[tuple[str, Tensor]]:
    if isinstance(inputs, Mapping):
        return [item for k, v in inputs.items() for item in _tensors(v, f"{name}[{k!r}]")]
    return [(name, inputs)] if isinstance(inputs, Tensor) else []


# ---------------------------------------------------------------------------------------
# Sizing a config before it is built
# ---------------------------------------------------------------------------------------
def check_layer_count(config: PerceiverConfig) -> None:
    """Raise a :class:`ConfigError` if the model of ``config`` would have more attention
    layers with their own weights than ``PERCEPTIO_MAX_LAYERS`` (from the config alone)."""
    layers = config.encoder.num_layers()
    if layers > LAYERS.value():
        e = config.encoder
        if isinstance(e, ResamplerConfig):
            raise ConfigError(f"encoder.depth={e.depth} Resampler layers, above {LAYERS.describe()}; lower it, "
                              "or raise the limit")
        raise ConfigError(
            f"encoder.num_self_attends_per_block={e.num_self_attends_per_block} x {e.weight_sets()[1]} latent "
            f"block(s) with their own weights (encoder.num_cross_attends={e.num_cross_attends}) makes {layers:,} "
            f"attention layers, above {LAYERS.describe()}; lower them, or raise the limit")


def check_model_size(config: PerceiverConfig, max_bytes: float, probe: nn.Module | None = None) -> None:
    """Raise a :class:`ConfigError` if the parameters and buffers of the model of ``config``
    would take more than ``max_bytes``, counted on the meta device (``probe``: the model
    already built there; else it is built here), naming the field responsible."""
    if math.isinf(max_bytes):
        return
    if probe is None:
        with torch.device("meta"):
            probe = Perceiver(config)
    tensors = dict(chain(probe.named_parameters(), probe.named_buffers()))  # shared weights once
    sizes = {name: t.numel() * t.element_size() for name, t in tensors.items()}
    total = sum(sizes.values())
    if total <= max_bytes:
        return
    # The field that sizes most of the bytes: the one matching the dims of those tensors.
    by_cause: dict[str | None, list[str]] = {}
    for name, t in tensors.items():
        by_cause.setdefault(blame(config, name, list(t.shape)), []).append(name)
    cause, names = max(by_cause.items(), key=lambda item: sum(sizes[n] for n in item[1]))
    largest = max(names, key=sizes.__getitem__)
    what = f"{largest} {list(tensors[largest].shape)}"
    if cause is None or 2 * sum(sizes[n] for n in names) < total:
        head = f"the model's {len(sizes):,} parameter and buffer tensors (the largest: {what}, {format_bytes(sizes[largest])})"
    elif len(names) == 1:
        head = f"{cause} makes a {format_bytes(sizes[largest])} tensor {what}"
    else:
        head = (f"{cause} makes {format_bytes(sum(sizes[n] for n in names))} in {len(names)} tensors (the largest: "
                f"{what}, {format_bytes(sizes[largest])})")
    limit = f"{format_bytes(max_bytes)} (PERCEPTIO_MAX_MODEL_GB, or Perceiver(config, max_gb=...))"
    raise ConfigError(f"{head}: the model's parameters and buffers would take {format_bytes(total)}, above the "
                      f"limit of {limit}; lower {'the sizes' if cause is None else 'it'}, or raise the limit")


def blame(config: PerceiverConfig, tensor_name: str, shape: list[int]) -> str | None:
    """``"input_adapter.max_seq_len=100000000"``: the size field(s) whose value (or prefix
    product, for lists like ``index_dims``) is one of the dims of the tensor ``tensor_name``,
    the largest dim first, searched in the config section that built it, then in the whole
    config; None if none is."""
    section = tensor_name.split(".")[0]
    own = list(_size_fields(getattr(config, section, None), section))
    every = list(_size_fields(config, ""))  # a section's widths may come from another's (input channels)
    for candidates in (own, [(path.lstrip("."), value, size) for path, value, size in every]):
        for dim in sorted(set(shape), reverse=True):
            hits = [f"{path}={value}" for path, value, size in candidates if size == dim]
            if hits:
                return " / ".join(dict.fromkeys(hits))
    return None


def _size_fields(node: Any, path: str):
    """``(path, value, size)`` of the integer fields (and lists of them, sized by their
    prefix products) under the config ``node``."""
    if isinstance(node, Config):
        for f in fields(node):
            yield from _size_fields(getattr(node, f.name), f"{path}.{f.name}")
    elif isinstance(node, Mapping):
        for k, v in node.items():
            yield from _size_fields(v, f"{path}.{k}")
    elif isinstance(node, (list, tuple)) and node and all(isinstance(v, int) and not isinstance(v, bool) for v in node):
        for i in range(1, len(node) + 1):
            yield path, list(node), math.prod(node[:i])
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _size_fields(v, f"{path}[{i}]")
    elif isinstance(node, int) and not isinstance(node, bool):
        yield path, node, node
