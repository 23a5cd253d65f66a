"""One architecture, three front ends: every published preset, the DeepMind reference's
constructor arguments of that model and the ``transformers`` config of its port build the
same :class:`PerceiverConfig`, except the keywords that are known differences of the port
(docs/transformers.md)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from perceptio import ConfigError, EncoderConfig, Perceiver
from perceptio import architectures, presets
from perceptio.interop import deepmind
from perceptio.interop import transformers as hf_interop
from perceptio.interop.deepmind import config_from_reference
from perceptio.presets import list_presets, preset_config


def reference_encoder(**sizes: Any) -> dict[str, Any]:
    """A reference ``PerceiverEncoder``'s kwargs as the colabs write them."""
    return dict(
        cross_attend_widening_factor=1, self_attend_widening_factor=1, dropout_prob=0.0,
        use_query_residual=True, cross_attention_shape_for_attn="kv", **sizes,
    )


IMAGENET_ENCODER = reference_encoder(
    z_index_dim=512, num_z_channels=1024, num_blocks=8, num_self_attends_per_block=6,
    num_self_attend_heads=8, num_cross_attend_heads=1,
)
IMAGENET_DECODER = dict(
    num_classes=1000, use_query_residual=True, position_encoding_type="trainable",
    trainable_position_encoding_kwargs=dict(num_channels=1024, init_scale=0.02),
)


def fourier(num_bands: int, *max_resolution: int) -> dict[str, Any]:
    return dict(num_bands=num_bands, max_resolution=list(max_resolution), concat_pos=True, sine_only=False)


# The constructor arguments of the DeepMind colabs, in the fixtures' format.
REFERENCE = {
    "language-perceiver": dict(
        model="masked_language_model", d_model=768, max_seq_len=2048, vocab_size=262,
        encoder=reference_encoder(z_index_dim=256, num_z_channels=1280, num_blocks=1, num_self_attends_per_block=26,
                                  num_self_attend_heads=8, num_cross_attend_heads=8, qk_channels=256,
                                  v_channels=1280),
        decoder=dict(output_index_dims=2048, output_num_channels=768, num_heads=8, qk_channels=256, v_channels=768,
                     final_project=False, use_query_residual=False),
    ),
    "vision-perceiver-learned": dict(
        model="image_classifier", image_shape=[224, 224, 3], encoder=IMAGENET_ENCODER, decoder=IMAGENET_DECODER,
        preprocessor=dict(prep_type="conv1x1", spatial_downsample=1, num_channels=256, project_pos_dim=256,
                          position_encoding_type="trainable",
                          trainable_position_encoding_kwargs=dict(num_channels=256, init_scale=0.02)),
    ),
    "vision-perceiver-fourier": dict(
        model="image_classifier", image_shape=[224, 224, 3], encoder=IMAGENET_ENCODER, decoder=IMAGENET_DECODER,
        preprocessor=dict(prep_type="pixels", spatial_downsample=1, position_encoding_type="fourier",
                          fourier_position_encoding_kwargs=fourier(64, 224, 224)),
    ),
    "vision-perceiver-conv": dict(
        model="image_classifier", image_shape=[224, 224, 3], encoder=IMAGENET_ENCODER, decoder=IMAGENET_DECODER,
        preprocessor=dict(prep_type="conv", position_encoding_type="fourier",
                          fourier_position_encoding_kwargs=fourier(64, 56, 56)),
    ),
    "optical-flow-perceiver": dict(
        model="optical_flow", frames_shape=[2, 368, 496, 3], train_size=[368, 496],
        preprocessor=dict(prep_type="patches", spatial_downsample=1, temporal_downsample=2, conv_after_patching=True,
                          num_channels=64, position_encoding_type="fourier",
                          fourier_position_encoding_kwargs=fourier(64, 368, 496)),
        encoder=reference_encoder(z_index_dim=2048, num_z_channels=512, num_blocks=1, num_self_attends_per_block=24,
                                  num_self_attend_heads=16, num_cross_attend_heads=1),
        decoder=dict(output_num_channels=2, use_query_residual=False, rescale_factor=100.0),
    ),
    "multimodal-perceiver": dict(
        model="multimodal_autoencoder", num_frames=16, image_size=224, audio_samples_per_frame=1920,
        samples_per_patch=16, num_classes=700,
        encoder=reference_encoder(z_index_dim=784, num_z_channels=512, num_blocks=1, num_self_attends_per_block=8,
                                  num_self_attend_heads=8, num_cross_attend_heads=1),
        preprocessor=dict(
            min_padding_size=4, mask_probs=dict(image=0.0, audio=0.0, label=1.0),
            audio=dict(prep_type="patches", samples_per_patch=16, fourier=fourier(192, 30720)),
            image=dict(prep_type="patches", spatial_downsample=4, temporal_downsample=1,
                       fourier=fourier(32, 16, 56, 56)),
            label={},
        ),
        decoder=dict(
            shared_decoder=dict(output_num_channels=512, use_query_residual=False, min_padding_size=2),
            audio=dict(index_dims=[1920], fourier=fourier(192, 30720)),
            image=dict(index_dims=[16, 224, 224], fourier=fourier(32, 16, 56, 56)),
            label=dict(trainable_query_channels=1024),
        ),
        postprocessor=dict(audio="Linear(samples_per_patch)", image="Linear(3)", label="Linear(num_classes)"),
    ),
}

IMAGENET_HF = dict(num_latents=512, d_latents=1024, d_model=322, num_blocks=8, num_self_attends_per_block=6,
                   num_self_attention_heads=8, num_cross_attention_heads=1, image_size=224, num_labels=1000)

# preset -> (transformers class, its config as published on the hub: transformers' defaults
# for everything else, hidden_act="gelu" and attention_probs_dropout_prob=0.1 included).
TRANSFORMERS = {
    "language-perceiver": ("PerceiverForMaskedLM", dict(qk_channels=256, v_channels=1280)),
    "vision-perceiver-learned": ("PerceiverForImageClassificationLearned", IMAGENET_HF),
    "vision-perceiver-fourier": ("PerceiverForImageClassificationFourier", IMAGENET_HF),
    "vision-perceiver-conv": ("PerceiverForImageClassificationConvProcessing", IMAGENET_HF),
    "optical-flow-perceiver": ("PerceiverForOpticalFlow", dict(
        num_latents=2048, d_latents=512, d_model=322, num_blocks=1, num_self_attends_per_block=24,
        num_self_attention_heads=16, num_cross_attention_heads=1, train_size=[368, 496])),
    "multimodal-perceiver": ("PerceiverForMultimodalAutoencoding", dict(
        num_latents=784, d_latents=512, d_model=704, num_blocks=1, num_self_attends_per_block=8,
        num_self_attention_heads=8, num_cross_attention_heads=1, num_labels=700, image_size=224, num_frames=16,
        audio_samples_per_frame=1920, samples_per_patch=16, output_shape=[1, 16, 224, 224],
        output_num_channels=512, _label_trainable_num_channels=1024)),
}

# Where the transformers port differs from the published model (docs/transformers.md).
EVERY_LAYER = {  # one hidden_act ("gelu", exact; 2) and attention dropout (0.1) for every layer
    "encoder.activation", "decoder.activation", "encoder.attention_dropout", "decoder.attention_dropout",
}
KNOWN_DIFFERENCES = {
    "language-perceiver": set(),
    "vision-perceiver-learned": set(),
    "vision-perceiver-fourier": set(),  # max_resolution fixed at 224 x 224 (8): the same at 224
    "vision-perceiver-conv": {"input_adapter.conv_padding"},  # 7; max_resolution fixed at 56 x 56
    "optical-flow-perceiver": {"input_adapter.input_format"},  # 9: patches
    "multimodal-perceiver": {  # 14: the video's size, not the patch grid
        "input_adapter.modalities.image.position.max_resolution", "decoder.queries.modalities.image.max_resolution",
    },
}


def differences(a: Any, b: Any, path: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted paths where two config dicts differ -> (value in a, value in b)."""
    if isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b):
        out: dict[str, tuple[Any, Any]] = {}
        for key in a:
            out |= differences(a[key], b[key], f"{path}.{key}" if path else key)
        return out
    return {} if a == b else {path: (a, b)}


def test_every_preset_has_its_reference_and_transformers_arguments():
    assert set(REFERENCE) == set(TRANSFORMERS) == set(KNOWN_DIFFERENCES) == set(list_presets())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_preset_is_the_deepmind_reference_model(name):
    assert config_from_reference(REFERENCE[name]).to_dict() == preset_config(name).to_dict()


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_preset_is_the_transformers_model_but_for_the_known_differences(name):
    transformers = pytest.importorskip("transformers")
    hf_class, hf_values = TRANSFORMERS[name]
    ported = hf_interop.WRAPPERS[hf_class].perceiver_config(transformers.PerceiverConfig(**hf_values))
    published = preset_config(name)
    found = differences(published.to_dict(), ported.to_dict())
    assert set(found) == EVERY_LAYER | KNOWN_DIFFERENCES[name], found
    # The differences are all there is: setting them on the preset gives the port's config.
    assert preset_config(name, **{path: theirs for path, (_, theirs) in found.items()}) == ported


def test_importers_and_presets_do_not_assemble_models_themselves():
    for module in (presets, deepmind, hf_interop):
        source = inspect.getsource(module)
        for name in ("PerceiverConfig(", "CrossAttentionDecoderConfig(", "MultimodalQueriesConfig("):
            assert name not in source, f"{module.__name__} builds {name[:-1]} itself; use perceptio.architectures"


def small_encoder(**overrides: Any) -> EncoderConfig:
    return EncoderConfig(**{**dict(num_latents=4, num_latent_channels=32, num_blocks=1, num_self_attends_per_block=1,
                                   num_self_attend_heads=2, num_cross_attend_heads=1), **overrides})


def test_decoder_qk_follows_the_encoder_only_where_asked_and_only_for_q():
    q_encoder = small_encoder(cross_attention_shape_for_attn="q")
    ported = architectures.optical_flow(encoder=q_encoder, train_size=(6, 8), num_channels=8, num_bands=4,
                                        decoder_qk_follows_encoder=True)
    queries_width = Perceiver(ported).input_adapter.num_channels  # the flow queries are the inputs
    assert ported.decoder.qk_channels == queries_width != q_encoder.num_latent_channels
    reference = architectures.optical_flow(encoder=q_encoder, train_size=(6, 8), num_channels=8, num_bands=4)
    assert reference.decoder.qk_channels is None  # the latents' width, as the reference BasicDecoder
    kv = architectures.optical_flow(encoder=small_encoder(), train_size=(6, 8), num_channels=8, num_bands=4,
                                    decoder_qk_follows_encoder=True)
    assert kv.decoder.qk_channels is None


def test_multimodal_image_resolution_switch():
    sizes = dict(encoder=small_encoder(), num_frames=2, image_size=8, image_patch_size=4, audio_samples_per_frame=16,
                 samples_per_patch=8, num_classes=5, num_image_bands=2, num_audio_bands=3, label_query_channels=16,
                 decoder_channels=12)
    colab = architectures.video_audio_label_autoencoder(**sizes)
    port = architectures.video_audio_label_autoencoder(**sizes, image_resolution="pixels", image_query_shape=(1, 4, 4))
    assert colab.input_adapter.modalities["image"].position.max_resolution == [2, 2, 2]
    assert port.input_adapter.modalities["image"].position.max_resolution == [2, 8, 8]
    assert colab.decoder.queries.modalities["image"].index_dims == [2, 8, 8]
    assert port.decoder.queries.modalities["image"].index_dims == [1, 4, 4]
    with pytest.raises(ConfigError, match=r"image_resolution must be 'patches' or 'pixels', got 'grid'"):
        architectures.video_audio_label_autoencoder(**sizes, image_resolution="grid")


def test_builders_report_bad_arguments_with_the_field():
    with pytest.raises(ConfigError, match=r"train_size must be \(height, width\), got \[6\]"):
        architectures.optical_flow(encoder=small_encoder(), train_size=[6])
    with pytest.raises(ConfigError, match=r"conv_padding='valid'; allowed values"):
        architectures.conv_stem(32, conv_padding="valid")
