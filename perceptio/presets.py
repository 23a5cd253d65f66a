"""Named presets of the published Perceiver IO models (a timm-style registry).

    model = create_model("language-perceiver")          # the published size: 201,108,230 parameters
    small = create_model("language-perceiver", num_latents=8, num_latent_channels=64,
                         num_self_attends_per_block=2, max_seq_len=64)
    config = preset_config("vision-perceiver-conv", **{"encoder.num_blocks": 2})

A preset is a dict of *size fields* with their published values and a function
building a :class:`~perceptio.model.PerceiverConfig` from them (given as attributes:
``s.num_latents``) by calling a builder of :mod:`perceptio.architectures`. Overrides address the config in two ways:

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
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from . import architectures
from .adapters.image import ImageAdapterConfig
from .config import ConfigError, set_by_path
from .encoder import EncoderConfig
from .model import Perceiver, PerceiverConfig

TASKS = ("fill-mask", "image-classification", "optical-flow", "multimodal-autoencoding")


@dataclass(frozen=True)
class Preset:
    """A published model: how to build it and where its weights come from."""

    name: str
    build: Callable[[SimpleNamespace], PerceiverConfig]
    sizes: dict[str, Any] = field(repr=False)  # size field -> published value
    description: str
    task: str
    num_params: int  # the published parameter count of the full-size model
    huggingface: str | None = None  # Hugging Face hub id of the converted weights
    deepmind: str | None = None  # file name of the released DeepMind checkpoint

    @property
    def size_fields(self) -> dict[str, Any]:
        """The flat override names and their published values."""
        return dict(self.sizes)

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
        for name, value in flat.items():
            _check_size(self.name, name, value, sizes[name])
        config = self.build(SimpleNamespace(**{**sizes, **flat}))
        return apply_overrides(config, dotted) if dotted else config


def _check_size(preset: str, name: str, value: Any, published: Any) -> None:
    """A size field takes the type of its published value (an int where that is None)."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if published is None or is_int(published):
        ok, expected = is_int(value) or (published is None and value is None), "an integer"
    elif isinstance(published, (tuple, list)):
        ok = isinstance(value, (tuple, list)) and len(value) == len(published) and all(map(is_int, value))
        expected = f"{len(published)} integers"
    else:
        ok, expected = isinstance(value, type(published)), type(published).__name__
    if not ok:
        raise ConfigError(f"{preset}: size field {name} must be {expected} (published: {published!r}), got {value!r}")


def apply_overrides(config: PerceiverConfig, overrides: dict[str, Any]) -> PerceiverConfig:
    """Set fields of ``config`` by dotted path (``{"encoder.num_blocks": 2}``); the result
    is rebuilt from its dict, so it is validated like any loaded config."""
    data = config.to_dict()
    for path, value in overrides.items():
        set_by_path(data, path, value)
    return PerceiverConfig.from_dict(data)


_PRESETS: dict[str, Preset] = {}


def register_preset(
    name: str,
    *,
    sizes: dict[str, Any],
    description: str,
    task: str,
    num_params: int,
    huggingface: str | None = None,
    deepmind: str | None = None,
) -> Callable[[Callable[..., PerceiverConfig]], Callable[..., PerceiverConfig]]:
    """Decorator registering ``build(s) -> PerceiverConfig`` as preset ``name``; ``s`` has one
    attribute per entry of ``sizes`` (the published values, or the user's overrides)."""
    if task not in TASKS:
        raise ValueError(f"preset {name!r}: unknown task {task!r}; allowed: {list(TASKS)}")
    dotted = [k for k in sizes if "." in k]
    if dotted:
        raise ValueError(f"preset {name!r}: size field names cannot contain dots, got {dotted}")

    def wrap(build: Callable[[SimpleNamespace], PerceiverConfig]) -> Callable[[SimpleNamespace], PerceiverConfig]:
        if name in _PRESETS:
            raise ValueError(f"preset {name!r} is already registered")
        _PRESETS[name] = Preset(name, build, dict(sizes), description, task, num_params, huggingface, deepmind)
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


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> Perceiver:
    """A randomly initialised model of preset ``name`` (see the module docstring for overrides),
    or with ``pretrained=True`` the published weights, from the preset's Hugging Face Hub id
    through ``Perceiver.from_pretrained`` (the local cache; ``HF_HUB_OFFLINE=1``: the cache only)."""
    if not pretrained:
        return Perceiver(preset_config(name, **overrides))
    preset = get_preset(name)
    if overrides:
        raise ValueError(f"create_model({name!r}, pretrained=True) loads the published weights, whose sizes are "
                         f"fixed; drop the overrides {sorted(overrides)}, or build the smaller model and start it "
                         "from the weights that fit (model.init_from / perceptio.train.transfer.init_from)")
    if preset.huggingface is None:
        raise ValueError(f"{name}: no published Hugging Face weights; convert the DeepMind checkpoint "
                         f"({preset.deepmind}) with `perceptio convert`")
    return Perceiver.from_pretrained(preset.huggingface)


def count_parameters(model_or_config: nn.Module | PerceiverConfig) -> int:
    """Number of parameters (shared ones once); a config is built on the ``meta`` device."""
    if isinstance(model_or_config, PerceiverConfig):
        with torch.device("meta"):
            model_or_config = Perceiver(model_or_config)
    return sum(p.numel() for p in model_or_config.parameters())


# ---------------------------------------------------------------------------------------
# The published models: their size fields and a call of their builder (perceptio/architectures.py)
# ---------------------------------------------------------------------------------------
ENCODER_FIELDS = (
    "num_latents", "num_latent_channels", "num_blocks", "num_self_attends_per_block",
    "num_self_attend_heads", "num_cross_attend_heads", "qk_channels", "v_channels",
)


def _encoder(s: SimpleNamespace) -> EncoderConfig:
    return EncoderConfig(**{name: getattr(s, name) for name in ENCODER_FIELDS})


@register_preset(
    "language-perceiver",
    sizes=dict(
        max_seq_len=2048, vocab_size=262, d_model=768,
        num_latents=256, num_latent_channels=1280, num_blocks=1, num_self_attends_per_block=26,
        num_self_attend_heads=8, num_cross_attend_heads=8, qk_channels=256, v_channels=1280,
        num_decoder_heads=8, decoder_qk_channels=256, decoder_v_channels=None,
    ),
    description="masked language model on UTF-8 bytes (C4 + Wikipedia)",
    task="fill-mask",
    num_params=201_108_230,
    huggingface="deepmind/language-perceiver",
    deepmind="language_perceiver_io_bytes.pickle",
)
def language_perceiver(s: SimpleNamespace) -> PerceiverConfig:
    """One learned query per position (``max_seq_len``); ``decoder_v_channels`` defaults to
    ``d_model``."""
    return architectures.masked_language_model(
        encoder=_encoder(s), vocab_size=s.vocab_size, max_seq_len=s.max_seq_len, d_model=s.d_model,
        decoder_heads=s.num_decoder_heads, decoder_qk_channels=s.decoder_qk_channels,
        decoder_v_channels=s.decoder_v_channels,
    )


# ImageNet classifiers (reference ``imagenet_classification`` colab): 512 x 1024 latents,
# 8 blocks of 6 self-attends (weights shared across blocks), one learned query of 1024
# channels cross-attending with a query residual, 1000 classes.
IMAGENET_SIZES = dict(
    image_size=224, num_classes=1000,
    num_latents=512, num_latent_channels=1024, num_blocks=8, num_self_attends_per_block=6,
    num_self_attend_heads=8, num_cross_attend_heads=1, qk_channels=None, v_channels=None, num_decoder_heads=1,
)


def _imagenet(s: SimpleNamespace, stem: ImageAdapterConfig) -> PerceiverConfig:
    return architectures.classifier(
        encoder=_encoder(s), inputs=stem, num_classes=s.num_classes, decoder_heads=s.num_decoder_heads
    )


@register_preset(
    "vision-perceiver-learned",
    sizes=dict(IMAGENET_SIZES, num_channels=256, num_position_channels=256),
    description="ImageNet classifier: 1x1 conv + learned positions",
    task="image-classification",
    num_params=62_255_848,
    huggingface="deepmind/vision-perceiver-learned",
    deepmind="imagenet_learned_position_encoding.pystate",
)
def vision_perceiver_learned(s: SimpleNamespace) -> PerceiverConfig:
    stem = architectures.learned_stem(s.image_size, num_channels=s.num_channels,
                                      num_position_channels=s.num_position_channels)
    return _imagenet(s, stem)


@register_preset(
    "vision-perceiver-fourier",
    sizes=dict(IMAGENET_SIZES, num_bands=64),
    description="ImageNet classifier: raw pixels + 2-D Fourier features",
    task="image-classification",
    num_params=48_440_627,
    huggingface="deepmind/vision-perceiver-fourier",
    deepmind="imagenet_fourier_position_encoding.pystate",
)
def vision_perceiver_fourier(s: SimpleNamespace) -> PerceiverConfig:
    return _imagenet(s, architectures.fourier_stem(s.image_size, num_bands=s.num_bands))


@register_preset(
    "vision-perceiver-conv",
    sizes=dict(IMAGENET_SIZES, num_channels=64, num_bands=64),
    description="ImageNet classifier: conv + max-pool stem, Fourier features",
    task="image-classification",
    num_params=48_646_522,
    huggingface="deepmind/vision-perceiver-conv",
    deepmind="imagenet_conv_preprocessing.pystate",
)
def vision_perceiver_conv(s: SimpleNamespace) -> PerceiverConfig:
    return _imagenet(s, architectures.conv_stem(s.image_size, num_channels=s.num_channels, num_bands=s.num_bands))


@register_preset(
    "optical-flow-perceiver",
    sizes=dict(
        train_size=(368, 496), num_channels=64, num_bands=64,
        num_latents=2048, num_latent_channels=512, num_blocks=1, num_self_attends_per_block=24,
        num_self_attend_heads=16, num_cross_attend_heads=1, qk_channels=None, v_channels=None,
    ),
    description="optical flow from two frames (AutoFlow), 368x496 tiles",
    task="optical-flow",
    num_params=41_057_134,
    huggingface="deepmind/optical-flow-perceiver",
    deepmind="optical_flow_checkpoint.pystate",
)
def optical_flow_perceiver(s: SimpleNamespace) -> PerceiverConfig:
    return architectures.optical_flow(
        encoder=_encoder(s), train_size=s.train_size, num_channels=s.num_channels, num_bands=s.num_bands
    )


@register_preset(
    "multimodal-perceiver",
    sizes=dict(
        num_frames=16, image_size=224, image_patch_size=4, audio_samples_per_frame=1920, samples_per_patch=16,
        num_classes=700, num_image_bands=32, num_audio_bands=192, label_query_channels=1024, decoder_channels=512,
        num_latents=784, num_latent_channels=512, num_blocks=1, num_self_attends_per_block=8,
        num_self_attend_heads=8, num_cross_attend_heads=1, qk_channels=None, v_channels=None,
    ),
    description="Kinetics-700 video + audio + label autoencoder",
    task="multimodal-autoencoding",
    num_params=19_858_855,
    huggingface="deepmind/multimodal-perceiver",
    deepmind="video_autoencoding_checkpoint.pystate",
)
def multimodal_perceiver(s: SimpleNamespace) -> PerceiverConfig:
    """As in the colab, the image Fourier features of inputs and queries both use the patch
    grid (16 x 56 x 56) as their maximum resolution, although the queries are per pixel."""
    return architectures.video_audio_label_autoencoder(
        encoder=_encoder(s), num_frames=s.num_frames, image_size=s.image_size, image_patch_size=s.image_patch_size,
        audio_samples_per_frame=s.audio_samples_per_frame, samples_per_patch=s.samples_per_patch,
        num_classes=s.num_classes, num_image_bands=s.num_image_bands, num_audio_bands=s.num_audio_bands,
        label_query_channels=s.label_query_channels, decoder_channels=s.decoder_channels,
    )
