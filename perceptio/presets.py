"""Named presets of the published Perceiver IO models (a timm-style registry).

    model = create_model("language-perceiver")          # the published size: 201,108,230 parameters
    small = create_model("language-perceiver", num_latents=8, num_latent_channels=64,
                         num_self_attends_per_block=2, max_seq_len=64)
    config = preset_config("vision-perceiver-conv", **{"encoder.num_blocks": 2})

A preset is a dict of *size fields* with their published values and a function
building a :class:`~perceptio.model.PerceiverConfig` from them (given as attributes:
``s.num_latents``). Overrides address the config in two ways:

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

from .adapters.audio import AudioAdapterConfig, AudioOutputConfig
from .adapters.flow import FlowAdapterConfig, FlowOutputConfig
from .adapters.heads import ClassificationOutputConfig, ProjectionOutputConfig
from .adapters.image import ImageAdapterConfig
from .adapters.label import OneHotAdapterConfig
from .adapters.multimodal import MultimodalAdapterConfig, MultimodalOutputConfig
from .adapters.positions import PositionEncodingConfig
from .adapters.text import TextAdapterConfig, TiedEmbeddingOutputConfig
from .config import ConfigError, set_by_path
from .decoder import CrossAttentionDecoderConfig
from .queries import FourierQueriesConfig, InputQueriesConfig, MultimodalQueriesConfig, TrainableQueriesConfig
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
    """Reference ``masked_language_modelling`` config (HF ``PerceiverForMaskedLM``): byte
    embedding + learned positions of width ``d_model``; one learned query per position,
    decoded to ``d_model`` channels (``decoder_v_channels`` defaults to it) and projected on
    the tied byte embedding."""
    return PerceiverConfig(
        input_adapter=TextAdapterConfig(vocab_size=s.vocab_size, max_seq_len=s.max_seq_len, num_channels=s.d_model),
        encoder=_encoder(s),
        decoder=CrossAttentionDecoderConfig(
            queries=TrainableQueriesConfig(num_queries=s.max_seq_len, num_channels=s.d_model),
            num_heads=s.num_decoder_heads,
            qk_channels=s.decoder_qk_channels,
            v_channels=s.decoder_v_channels or s.d_model,
        ),
        output_adapter=TiedEmbeddingOutputConfig(),
    )


# ImageNet classifiers (reference ``imagenet_classification`` colab, HF ``PerceiverForImageClassification*``):
# 512 x 1024 latents, 8 blocks of 6 self-attends (weights shared across blocks), one
# learned query of 1024 channels cross-attending with a query residual, 1000 classes.
IMAGENET_SIZES = dict(
    image_size=224, num_classes=1000,
    num_latents=512, num_latent_channels=1024, num_blocks=8, num_self_attends_per_block=6,
    num_self_attend_heads=8, num_cross_attend_heads=1, qk_channels=None, v_channels=None, num_decoder_heads=1,
)


def _image_classifier(s: SimpleNamespace, **adapter: Any) -> PerceiverConfig:
    return PerceiverConfig(
        input_adapter=ImageAdapterConfig(image_shape=[s.image_size, s.image_size, 3], **adapter),
        encoder=_encoder(s),
        decoder=CrossAttentionDecoderConfig(
            queries=TrainableQueriesConfig(num_queries=1, num_channels=s.num_latent_channels),
            num_heads=s.num_decoder_heads,
            use_query_residual=True,
            output_channels=s.num_classes,
        ),
        output_adapter=ClassificationOutputConfig(),
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
    """Pixels -> 1x1 conv to ``num_channels``, concatenated with a learned table of
    ``image_size**2`` positions (projected to ``num_position_channels``)."""
    return _image_classifier(
        s, prep_type="conv1x1", spatial_downsample=1, num_channels=s.num_channels,
        position=PositionEncodingConfig(encoding="trainable", num_channels=s.num_position_channels,
                                        project_pos_dim=s.num_position_channels),
    )


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
    """Every pixel with ``num_bands`` Fourier bands per axis up to the image resolution."""
    return _image_classifier(
        s, prep_type="pixels", spatial_downsample=1,
        position=PositionEncodingConfig(num_bands=s.num_bands, max_resolution=[s.image_size, s.image_size]),
    )


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
    """7x7/2 conv (``num_channels``) + batch norm + ReLU + 3x3/2 max-pool: a grid of
    ``image_size / 4`` squared, with Fourier features up to that resolution."""
    grid = -(-s.image_size // 4)
    return _image_classifier(
        s, prep_type="conv", spatial_downsample=4, num_channels=s.num_channels,
        position=PositionEncodingConfig(num_bands=s.num_bands, max_resolution=[grid, grid]),
    )


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
    """Reference optical_flow colab: 3x3 patches of both frames, linear to
    ``num_channels``, Fourier features up to ``train_size``; every preprocessed pixel is a
    decoder query, projected to (u, v) and divided by 100."""
    height, width = s.train_size
    return PerceiverConfig(
        input_adapter=FlowAdapterConfig(
            image_shape=[height, width, 3], num_channels=s.num_channels,
            position=PositionEncodingConfig(num_bands=s.num_bands, max_resolution=[height, width]),
        ),
        encoder=_encoder(s),
        decoder=CrossAttentionDecoderConfig(queries=InputQueriesConfig(with_position=True), output_channels=2),
        output_adapter=FlowOutputConfig(rescale_factor=100.0),
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
    """Reference video_autoencoding colab (HF ``PerceiverForMultimodalAutoencoding``):
    ``num_frames`` RGB frames as ``image_patch_size``-pixel patches with Fourier features,
    ``num_frames * audio_samples_per_frame`` audio samples as patches of
    ``samples_per_patch``, and a one-hot label that is always replaced by the mask token
    (so the label output classifies the clip). One shared decoder reconstructs every
    pixel, every audio patch and the label from Fourier / learned queries. As in the
    colab, the image Fourier features of inputs and queries both use the patch grid
    (16 x 56 x 56) as their maximum resolution, although the queries are per pixel."""
    video = [s.num_frames, s.image_size, s.image_size]
    patch_grid = [s.num_frames, s.image_size // s.image_patch_size, s.image_size // s.image_patch_size]
    num_samples = s.num_frames * s.audio_samples_per_frame
    return PerceiverConfig(
        input_adapter=MultimodalAdapterConfig(
            modalities={
                "audio": AudioAdapterConfig(
                    num_samples=num_samples, samples_per_patch=s.samples_per_patch,
                    position=PositionEncodingConfig(num_bands=s.num_audio_bands, max_resolution=[num_samples]),
                ),
                "image": ImageAdapterConfig(
                    image_shape=[*video, 3], prep_type="patches", spatial_downsample=s.image_patch_size,
                    temporal_downsample=1,
                    position=PositionEncodingConfig(num_bands=s.num_image_bands, max_resolution=patch_grid),
                ),
                "label": OneHotAdapterConfig(num_classes=s.num_classes),
            },
            min_padding_size=4,
            mask_probs={"audio": 0.0, "image": 0.0, "label": 1.0},
        ),
        encoder=_encoder(s),
        decoder=CrossAttentionDecoderConfig(
            queries=MultimodalQueriesConfig(modalities={
                "audio": FourierQueriesConfig(index_dims=[num_samples // s.samples_per_patch],
                                              num_bands=s.num_audio_bands, max_resolution=[num_samples]),
                "image": FourierQueriesConfig(index_dims=video, num_bands=s.num_image_bands,
                                              max_resolution=patch_grid),
                "label": TrainableQueriesConfig(num_queries=1, num_channels=s.label_query_channels),
            }),
            output_channels=s.decoder_channels,
        ),
        output_adapter=MultimodalOutputConfig(modalities={
            "audio": AudioOutputConfig(samples_per_patch=s.samples_per_patch),
            "image": ProjectionOutputConfig(num_outputs=3),
            "label": ClassificationOutputConfig(num_classes=s.num_classes),
        }),
    )
