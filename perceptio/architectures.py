"""One builder per published Perceiver IO architecture.

Every architecture is written once, here. The presets (:mod:`perceptio.presets`), the
DeepMind importer (:func:`perceptio.interop.deepmind.config_from_reference`) and the
``transformers`` importer (each wrapper's ``perceiver_config``) only translate their own
argument names into these keywords::

    config = classifier(encoder=EncoderConfig(...), inputs=conv_stem(224), num_classes=1000)

*Model builders* return a :class:`~perceptio.model.PerceiverConfig`:
:func:`masked_language_model`, :func:`classifier` (ImageNet, or text for
``transformers``' sequence classification), :func:`optical_flow`,
:func:`multimodal_autoencoder` (any set of modalities, as the reference allows) and
:func:`video_audio_label_autoencoder` (the published Kinetics model).
*Component builders* return one part: :func:`text_inputs`, the three ImageNet stems
:func:`learned_stem`, :func:`fourier_stem`, :func:`conv_stem`, and
:func:`fourier_positions`.

The encoder is given whole (an :class:`~perceptio.encoder.EncoderConfig`), since it is the
same in every architecture; every model builder takes the decoder keywords of
:class:`DecoderKeywords`. Keyword defaults are the DeepMind reference; every place where
the ``transformers`` port differs is one keyword, whose docstring names the item of
docs/transformers.md that describes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal, TypedDict

from .adapters.audio import AudioAdapterConfig, AudioOutputConfig
from .adapters.base import InputAdapterConfig, OutputAdapterConfig
from .adapters.flow import FlowAdapterConfig, FlowOutputConfig
from .adapters.heads import ClassificationOutputConfig, ProjectionOutputConfig
from .adapters.image import ImageAdapterConfig
from .adapters.label import OneHotAdapterConfig
from .adapters.multimodal import MultimodalAdapterConfig, MultimodalOutputConfig
from .adapters.positions import PositionEncodingConfig
from .adapters.text import TextAdapterConfig, TiedEmbeddingOutputConfig
from .config import ConfigError
from .decoder import CrossAttentionDecoderConfig
from .encoder import EncoderConfig
from .layers.blocks import Activation
from .model import PerceiverConfig
from .queries import (
    FourierQueriesConfig,
    InputQueriesConfig,
    MultimodalQueriesConfig,
    QueryConfig,
    TrainableQueriesConfig,
)

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; annotations are not evaluated
    from typing import Unpack


# ---------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------
def fourier_positions(num_bands: int, max_resolution: Sequence[int]) -> PositionEncodingConfig:
    """Fourier features of ``num_bands`` bands per axis, up to ``max_resolution`` (one entry
    per axis of the grid), concatenated with the positions."""
    return PositionEncodingConfig(encoding="fourier", num_bands=num_bands, max_resolution=list(max_resolution))


def text_inputs(*, vocab_size: int, max_seq_len: int, d_model: int) -> TextAdapterConfig:
    """Token ids ``[B, L <= max_seq_len]`` -> embedding + learned positions ``[B, L, d_model]``."""
    return TextAdapterConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, num_channels=d_model)


def learned_stem(image_size: int, *, num_channels: int = 256, num_position_channels: int = 256) -> ImageAdapterConfig:
    """Images ``[B, image_size, image_size, 3]`` -> 1x1 conv to ``num_channels``, concatenated
    with a learned table of ``image_size**2`` positions projected to ``num_position_channels``."""
    return ImageAdapterConfig(
        image_shape=[image_size, image_size, 3], prep_type="conv1x1", spatial_downsample=1, num_channels=num_channels,
        position=PositionEncodingConfig(encoding="trainable", num_channels=num_position_channels,
                                        project_pos_dim=num_position_channels),
    )


def fourier_stem(
    image_size: int, *, num_bands: int = 64, max_resolution: Sequence[int] | None = None
) -> ImageAdapterConfig:
    """Every pixel of ``[B, image_size, image_size, 3]`` with 2-D Fourier features.

    ``max_resolution``: None is the image size (the reference); ``transformers`` fixes
    ``(224, 224)`` whatever the image size (docs/transformers.md, 8)."""
    return ImageAdapterConfig(
        image_shape=[image_size, image_size, 3], prep_type="pixels", spatial_downsample=1,
        position=fourier_positions(num_bands, max_resolution or (image_size, image_size)),
    )


def conv_stem(
    image_size: int,
    *,
    num_channels: int = 64,
    num_bands: int = 64,
    conv_padding: Literal["same", "symmetric"] = "same",
    max_resolution: Sequence[int] | None = None,
) -> ImageAdapterConfig:
    """7x7/2 conv to ``num_channels`` + batch norm + ReLU + 3x3/2 max-pool: a grid of
    ``ceil(image_size / 4)`` squared (SAME padding), with 2-D Fourier features.

    ``conv_padding``: ``"same"`` is the reference (TensorFlow SAME); ``transformers`` pads
    symmetrically, ``"symmetric"`` (docs/transformers.md, 7). ``max_resolution``: None is the
    reference's feature grid; ``transformers`` fixes ``(56, 56)`` whatever the image size (7)."""
    grid = -(-image_size // 4)
    return ImageAdapterConfig(
        image_shape=[image_size, image_size, 3], prep_type="conv", spatial_downsample=4, num_channels=num_channels,
        conv_padding=conv_padding, position=fourier_positions(num_bands, max_resolution or (grid, grid)),
    )


class DecoderKeywords(TypedDict, total=False):
    """The decoder keywords every model builder takes (defaults: the reference).

    ``decoder_heads``, ``decoder_qk_channels``, ``decoder_v_channels``,
    ``decoder_query_residual``: the reference ``BasicDecoder``'s ``num_heads`` (1),
    ``qk_channels`` (None: the latents' width), ``v_channels`` (None: ``qk_channels``) and
    ``use_query_residual`` (False), unless the architecture says otherwise.
    ``decoder_activation``, ``decoder_attention_dropout``: the reference decoder uses tanh
    GELU and no dropout; ``transformers`` takes both from its one config (``hidden_act``,
    ``attention_probs_dropout_prob``) for every layer (docs/transformers.md, 2).
    ``decoder_qk_follows_encoder``: ``transformers``' default ``qk_channels`` follows the
    encoder's ``cross_attention_shape_for_attn``: the queries' width for ``"q"``
    (docs/transformers.md, 3)."""

    decoder_heads: int
    decoder_qk_channels: int | None
    decoder_v_channels: int | None
    decoder_query_residual: bool
    decoder_activation: Activation
    decoder_attention_dropout: float
    decoder_qk_follows_encoder: bool


def _perceiver(
    inputs: InputAdapterConfig,
    queries: QueryConfig,
    outputs: OutputAdapterConfig,
    *,
    encoder: EncoderConfig,
    output_channels: int | None,
    decoder_heads: int = 1,
    decoder_qk_channels: int | None = None,
    decoder_v_channels: int | None = None,
    decoder_query_residual: bool = False,
    decoder_activation: Activation = "gelu_tanh",
    decoder_attention_dropout: float = 0.0,
    decoder_qk_follows_encoder: bool = False,
) -> PerceiverConfig:
    """``inputs`` -> ``encoder`` -> a cross-attention decoder from ``queries`` (projected to
    ``output_channels``; None: no projection) -> ``outputs``. The decoder keywords are
    those of :class:`DecoderKeywords`."""
    qk_channels = decoder_qk_channels
    if decoder_qk_follows_encoder and qk_channels is None and encoder.cross_attention_shape_for_attn == "q":
        adapter = inputs.build()  # the query width can depend on the inputs' (input queries)
        qk_channels = queries.build(adapter.num_channels, adapter.num_channels_without_pos).num_channels
    decoder = CrossAttentionDecoderConfig(
        queries=queries, num_heads=decoder_heads, qk_channels=qk_channels, v_channels=decoder_v_channels,
        use_query_residual=decoder_query_residual, output_channels=output_channels,
        activation=decoder_activation, attention_dropout=decoder_attention_dropout,
    )
    return PerceiverConfig(input_adapter=inputs, encoder=encoder, decoder=decoder, output_adapter=outputs)


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------
def masked_language_model(
    *,
    encoder: EncoderConfig,
    vocab_size: int,
    max_seq_len: int,
    d_model: int,
    num_queries: int | None = None,
    decoder_output_channels: int | None = None,
    **decoder: Unpack[DecoderKeywords],
) -> PerceiverConfig:
    """Token ids ``[B, L]`` -> logits ``[B, num_queries, vocab_size]`` (reference
    ``masked_language_modelling``, ``transformers`` ``PerceiverForMaskedLM``).

    Byte embedding + learned positions of width ``d_model``; ``num_queries`` (None:
    ``max_seq_len``, one per position) learned queries of ``d_model`` channels, decoded by
    8 heads with ``qk_channels`` 256 to ``decoder_v_channels`` (None: ``d_model``) and
    projected on the tied embedding. ``decoder_output_channels``: the reference's optional
    ``final_project`` (the published model has none)."""
    inputs = text_inputs(vocab_size=vocab_size, max_seq_len=max_seq_len, d_model=d_model)
    queries = TrainableQueriesConfig(num_queries=num_queries or max_seq_len, num_channels=d_model)
    decoder = {"decoder_heads": 8, "decoder_qk_channels": 256, **decoder}
    decoder["decoder_v_channels"] = decoder.get("decoder_v_channels") or d_model
    return _perceiver(inputs, queries, TiedEmbeddingOutputConfig(), encoder=encoder,
                      output_channels=decoder_output_channels, **decoder)


def classifier(
    *,
    encoder: EncoderConfig,
    inputs: InputAdapterConfig,
    num_classes: int,
    query_channels: int | None = None,
    **decoder: Unpack[DecoderKeywords],
) -> PerceiverConfig:
    """``inputs`` -> logits ``[B, num_classes]`` (reference ``imagenet_classification`` with
    one of the stems above; ``transformers`` ``PerceiverForImageClassification*`` and, with
    :func:`text_inputs`, ``PerceiverForSequenceClassification``).

    One learned query of ``query_channels`` (None: the latents' width) cross-attends with
    a query residual (by default) and is projected to ``num_classes``."""
    queries = TrainableQueriesConfig(num_queries=1, num_channels=query_channels or encoder.num_latent_channels)
    return _perceiver(inputs, queries, ClassificationOutputConfig(), encoder=encoder, output_channels=num_classes,
                      **{"decoder_query_residual": True, **decoder})


def optical_flow(
    *,
    encoder: EncoderConfig,
    train_size: Sequence[int],
    num_channels: int = 64,
    num_bands: int = 64,
    image_channels: int = 3,
    position: PositionEncodingConfig | None = None,
    input_format: Literal["frames", "patches"] = "frames",
    rescale_factor: float = 100.0,
    output_channels: int = 2,
    **decoder: Unpack[DecoderKeywords],
) -> PerceiverConfig:
    """Two frames ``[B, 2, H, W, image_channels]``, ``(H, W) = train_size`` -> flow
    ``[B, H, W, output_channels]`` (reference ``optical_flow``, ``transformers``
    ``PerceiverForOpticalFlow``).

    3x3 patches of both frames, linear to ``num_channels``, with ``position`` (None:
    ``num_bands`` Fourier bands up to ``train_size``); every preprocessed pixel is a
    decoder query, projected and divided by ``rescale_factor``. ``input_format``:
    ``"frames"`` (the reference extracts the patches); ``transformers`` takes the patches,
    ``"patches"`` (docs/transformers.md, 9)."""
    if len(train_size) != 2:
        raise ConfigError(f"optical_flow: train_size must be (height, width), got {train_size!r}")
    height, width = train_size
    inputs = FlowAdapterConfig(
        image_shape=[height, width, image_channels], num_channels=num_channels, input_format=input_format,
        position=position or fourier_positions(num_bands, (height, width)),
    )
    return _perceiver(inputs, InputQueriesConfig(with_position=True), FlowOutputConfig(rescale_factor=rescale_factor),
                      encoder=encoder, output_channels=output_channels, **decoder)


def multimodal_autoencoder(
    *,
    encoder: EncoderConfig,
    inputs: Mapping[str, InputAdapterConfig],
    queries: Mapping[str, QueryConfig],
    outputs: Mapping[str, OutputAdapterConfig],
    decoder_channels: int,
    mask_probs: Mapping[str, float] | None = None,
    input_padding: int = 2,
    query_padding: int = 2,
    **decoder: Unpack[DecoderKeywords],
) -> PerceiverConfig:
    """A reference ``MultimodalPreprocessor`` / ``MultimodalDecoder`` model: ``{modality:
    inputs}`` -> ``{modality: outputs}``.

    Each modality's input is padded to a common width (at least ``input_padding`` learned
    channels) and masked with probability ``mask_probs[modality]``; one shared decoder of
    ``decoder_channels`` decodes the queries of every modality (padded by at least
    ``query_padding``), and ``outputs[modality]`` turns its rows into that output."""
    adapter = MultimodalAdapterConfig(
        modalities=dict(inputs), min_padding_size=input_padding,
        mask_probs=dict(mask_probs) if mask_probs is not None else None,
    )
    return _perceiver(
        adapter, MultimodalQueriesConfig(modalities=dict(queries), min_padding_size=query_padding),
        MultimodalOutputConfig(modalities=dict(outputs)), encoder=encoder, output_channels=decoder_channels, **decoder,
    )


def video_audio_label_autoencoder(
    *,
    encoder: EncoderConfig,
    num_frames: int,
    image_size: int,
    image_patch_size: int,
    audio_samples_per_frame: int,
    samples_per_patch: int,
    num_classes: int,
    num_image_bands: int,
    num_audio_bands: int,
    label_query_channels: int,
    decoder_channels: int,
    image_query_shape: Sequence[int] | None = None,
    image_resolution: Literal["patches", "pixels"] = "patches",
    **decoder: Unpack[DecoderKeywords],
) -> PerceiverConfig:
    """The Kinetics-700 autoencoder of the reference ``video_autoencoding`` colab
    (``transformers`` ``PerceiverForMultimodalAutoencoding``).

    ``num_frames`` RGB frames of ``image_size`` squared as ``image_patch_size``-pixel patches,
    ``num_frames * audio_samples_per_frame`` audio samples as patches of
    ``samples_per_patch``, both with Fourier features, and a one-hot label that is always
    replaced by the mask token (so the label output classifies the clip). The decoder
    reconstructs every pixel of ``image_query_shape`` (None: the whole video), every audio
    patch and the label, from Fourier queries and one learned label query.

    ``image_resolution``: the ``max_resolution`` of the image Fourier features, of inputs and
    queries alike: ``"patches"`` is the colab's patch grid (``num_frames x image_size /
    image_patch_size`` squared), ``"pixels"`` the video's own size, as in ``transformers``
    (docs/transformers.md, 14)."""
    if image_resolution not in ("patches", "pixels"):
        raise ConfigError(f"video_audio_label_autoencoder: image_resolution must be 'patches' or 'pixels', "
                          f"got {image_resolution!r}")
    video = [num_frames, image_size, image_size]
    grid = [num_frames, image_size // image_patch_size, image_size // image_patch_size]
    resolution = grid if image_resolution == "patches" else video
    num_samples = num_frames * audio_samples_per_frame
    return multimodal_autoencoder(
        encoder=encoder,
        inputs={
            "audio": AudioAdapterConfig(num_samples=num_samples, samples_per_patch=samples_per_patch,
                                        position=fourier_positions(num_audio_bands, [num_samples])),
            "image": ImageAdapterConfig(image_shape=[*video, 3], prep_type="patches",
                                        spatial_downsample=image_patch_size, temporal_downsample=1,
                                        position=fourier_positions(num_image_bands, resolution)),
            "label": OneHotAdapterConfig(num_classes=num_classes),
        },
        queries={
            "audio": FourierQueriesConfig(index_dims=[num_samples // samples_per_patch], num_bands=num_audio_bands,
                                          max_resolution=[num_samples]),
            "image": FourierQueriesConfig(index_dims=list(image_query_shape or video), num_bands=num_image_bands,
                                          max_resolution=list(resolution)),
            "label": TrainableQueriesConfig(num_queries=1, num_channels=label_query_channels),
        },
        outputs={
            "audio": AudioOutputConfig(samples_per_patch=samples_per_patch),
            "image": ProjectionOutputConfig(num_outputs=3),
            "label": ClassificationOutputConfig(num_classes=num_classes),
        },
        decoder_channels=decoder_channels,
        mask_probs={"audio": 0.0, "image": 0.0, "label": 1.0},
        input_padding=4,
        query_padding=2,
        **decoder,
    )
