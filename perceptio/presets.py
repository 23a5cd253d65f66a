"""Named presets of the published Perceiver IO models (a timm-style registry).

    model = create_model("language-perceiver")          # the published size: 201,108,230 parameters
    small = create_model("language-perceiver", num_latents=8, num_latent_channels=64,
                         num_self_attends_per_block=2, max_seq_len=64)
    config = preset_config("vision-perceiver-conv", **{"encoder.num_blocks": 2})

A preset is a function whose keyword arguments are its *size fields*, with the
published sizes as defaults, returning a :class:`~perceptio.model.PerceiverConfig`.
Overrides address the config in two ways:

* a flat name is one of those size fields. The preset derives every field that
  depends on it, so coupled fields stay consistent (``max_seq_len`` sizes both the
  text position table and the decoder's queries);
* a dotted path (``encoder.num_blocks``, ``decoder.num_heads``,
  ``decoder.queries.init_scale``) sets one field of the built config, which is then
  validated again. Use it for anything that is not a size field.

Unknown names are rejected with the allowed ones. ``Preset.num_params`` is the
published parameter count; ``count_parameters`` counts a config's parameters on the
``meta`` device (no memory is allocated), and the tests check that they agree.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .adapters.text import TextAdapterConfig, TiedEmbeddingOutputConfig
from .config import ConfigError, _to_plain
from .decoder import CrossAttentionDecoderConfig, TrainableQueriesConfig
from .encoder import EncoderConfig
from .model import Perceiver, PerceiverConfig

TASKS = ("fill-mask", "image-classification", "optical-flow", "multimodal-autoencoding")


@dataclass(frozen=True)
class Preset:
    """A published model: how to build it and where its weights come from."""

    name: str
    build: Callable[..., PerceiverConfig]
    description: str
    task: str
    num_params: int  # the published parameter count of the full-size model
    huggingface: str | None = None  # Hugging Face hub id of the converted weights
    deepmind: str | None = None  # file name of the released DeepMind checkpoint

    @property
    def size_fields(self) -> dict[str, Any]:
        """The flat override names and their published values."""
        return {
            p.name: p.default for p in inspect.signature(self.build).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    def config(self, **overrides: Any) -> PerceiverConfig:
        """The preset's config with ``overrides`` (flat size fields and dotted paths) applied."""
        sizes = self.size_fields
        flat = {k: v for k, v in overrides.items() if "." not in k}
        dotted = {k: v for k, v in overrides.items() if "." in k}
        unknown = [k for k in flat if k not in sizes]
        if unknown:
            name = unknown[0]
            close = difflib.get_close_matches(name, list(sizes), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{self.name}: unknown override {name!r}{hint}; size fields: {sorted(sizes)}; "
                "any other field can be set by its dotted path into the config, e.g. 'encoder.num_blocks'"
            )
        config = self.build(**flat)
        return apply_overrides(config, dotted) if dotted else config


def apply_overrides(config: PerceiverConfig, overrides: dict[str, Any]) -> PerceiverConfig:
    """Set fields of ``config`` by dotted path (``{"encoder.num_blocks": 2}``); the result
    is rebuilt from its dict, so it is validated like any loaded config."""
    data = config.to_dict()
    for path, value in overrides.items():
        node, keys = data, path.split(".")
        for depth, key in enumerate(keys):
            where = ".".join(keys[:depth]) or "the config"
            if not isinstance(node, dict):
                raise ConfigError(f"override {path!r}: {where} is a value, not a section")
            if key not in node:
                raise ConfigError(f"override {path!r}: {where} has no field {key!r}; fields: {sorted(node)}")
            if depth == len(keys) - 1:
                node[key] = _to_plain(value)
            else:
                node = node[key]
    return PerceiverConfig.from_dict(data)


_PRESETS: dict[str, Preset] = {}


def register_preset(
    name: str,
    *,
    description: str,
    task: str,
    num_params: int,
    huggingface: str | None = None,
    deepmind: str | None = None,
) -> Callable[[Callable[..., PerceiverConfig]], Callable[..., PerceiverConfig]]:
    """Decorator registering a config builder (keyword-only size fields) as preset ``name``."""
    if task not in TASKS:
        raise ValueError(f"preset {name!r}: unknown task {task!r}; allowed: {list(TASKS)}")

    def wrap(build: Callable[..., PerceiverConfig]) -> Callable[..., PerceiverConfig]:
        if name in _PRESETS:
            raise ValueError(f"preset {name!r} is already registered")
        positional = [p.name for p in inspect.signature(build).parameters.values()
                      if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        if positional:
            raise TypeError(f"preset {name!r}: size fields must be keyword-only, got {positional}")
        _PRESETS[name] = Preset(name, build, description, task, num_params, huggingface, deepmind)
        return build

    return wrap


def list_presets() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str) -> Preset:
    if name not in _PRESETS:
        close = difflib.get_close_matches(name, list(_PRESETS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown preset {name!r}{hint}; available: {list_presets()}")
    return _PRESETS[name]


def preset_config(name: str, **overrides: Any) -> PerceiverConfig:
    return get_preset(name).config(**overrides)


def create_model(name: str, **overrides: Any) -> Perceiver:
    """A randomly initialised model of preset ``name`` (see the module docstring for overrides)."""
    return Perceiver(preset_config(name, **overrides))


def count_parameters(model_or_config: nn.Module | PerceiverConfig) -> int:
    """Number of parameters (shared ones once); a config is built on the ``meta`` device."""
    if isinstance(model_or_config, PerceiverConfig):
        with torch.device("meta"):
            model_or_config = Perceiver(model_or_config)
    return sum(p.numel() for p in model_or_config.parameters())


# ---------------------------------------------------------------------------------------
# The published models
# ---------------------------------------------------------------------------------------
def _encoder(**kwargs: Any) -> EncoderConfig:
    return EncoderConfig(**kwargs)


@register_preset(
    "language-perceiver",
    description="masked language model on UTF-8 bytes (C4 + Wikipedia)",
    task="fill-mask",
    num_params=201_108_230,
    huggingface="deepmind/language-perceiver",
    deepmind="language_perceiver_io_bytes.pickle",
)
def language_perceiver(
    *,
    max_seq_len: int = 2048,
    vocab_size: int = 262,
    d_model: int = 768,
    num_latents: int = 256,
    num_latent_channels: int = 1280,
    num_blocks: int = 1,
    num_self_attends_per_block: int = 26,
    num_self_attend_heads: int = 8,
    num_cross_attend_heads: int = 8,
    qk_channels: int = 256,
    v_channels: int = 1280,
    num_decoder_heads: int = 8,
    decoder_qk_channels: int = 256,
    decoder_v_channels: int | None = None,
) -> PerceiverConfig:
    """Reference ``masked_language_modelling`` config (HF ``PerceiverForMaskedLM``): byte
    embedding + learned positions of width ``d_model``; one learned query per position,
    decoded to ``d_model`` channels (``decoder_v_channels`` defaults to it) and projected on
    the tied byte embedding."""
    return PerceiverConfig(
        input_adapter=TextAdapterConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, num_channels=d_model),
        encoder=_encoder(
            num_latents=num_latents, num_latent_channels=num_latent_channels, num_blocks=num_blocks,
            num_self_attends_per_block=num_self_attends_per_block, num_self_attend_heads=num_self_attend_heads,
            num_cross_attend_heads=num_cross_attend_heads, qk_channels=qk_channels, v_channels=v_channels,
        ),
        decoder=CrossAttentionDecoderConfig(
            queries=TrainableQueriesConfig(num_queries=max_seq_len, num_channels=d_model),
            num_heads=num_decoder_heads,
            qk_channels=decoder_qk_channels,
            v_channels=decoder_v_channels or d_model,
        ),
        output_adapter=TiedEmbeddingOutputConfig(),
    )
