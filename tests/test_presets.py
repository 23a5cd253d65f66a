"""Presets of the published models: exact parameter counts, overrides, the CLI listing."""

from __future__ import annotations

import pytest
import torch

from perceptio import ConfigError, PerceiverConfig
from perceptio import presets
from perceptio.cli import main
from perceptio.presets import count_parameters, create_model, get_preset, list_presets, preset_config, register_preset

# The official parameter counts (DeepMind releases / Hugging Face model cards).
PUBLISHED = {
    "language-perceiver": 201_108_230,
    "vision-perceiver-learned": 62_255_848,
    "vision-perceiver-fourier": 48_440_627,
    "vision-perceiver-conv": 48_646_522,
    "optical-flow-perceiver": 41_057_134,
}

SMALL_LANGUAGE = dict(num_latents=8, num_latent_channels=64, num_self_attends_per_block=2, max_seq_len=64,
                      d_model=32, qk_channels=32, v_channels=64, decoder_qk_channels=32)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_is_the_published_one(name):
    preset = get_preset(name)
    assert preset.num_params == PUBLISHED[name]
    assert count_parameters(preset.config()) == PUBLISHED[name]


def test_every_preset_counts_its_published_parameters():
    for name in list_presets():
        preset = get_preset(name)
        assert count_parameters(preset.config()) == preset.num_params, name


def test_count_parameters_of_a_model_equals_its_config():
    model = create_model("language-perceiver", **SMALL_LANGUAGE)
    assert count_parameters(model) == count_parameters(model.config) == sum(p.numel() for p in model.parameters())


SMALL_ENCODER = dict(num_latents=8, num_latent_channels=32, num_blocks=2, num_self_attends_per_block=1,
                     num_self_attend_heads=4)
SMALL = {
    "language-perceiver": (SMALL_LANGUAGE, lambda: torch.randint(0, 262, (2, 40)), (2, 64, 262)),
    "vision-perceiver-learned": (dict(image_size=16, num_classes=7, num_channels=8, num_position_channels=8,
                                      **SMALL_ENCODER), lambda: torch.randn(2, 16, 16, 3), (2, 7)),
    "vision-perceiver-fourier": (dict(image_size=16, num_classes=7, num_bands=4, **SMALL_ENCODER),
                                 lambda: torch.randn(2, 16, 16, 3), (2, 7)),
    "vision-perceiver-conv": (dict(image_size=32, num_classes=7, num_channels=8, num_bands=4, **SMALL_ENCODER),
                              lambda: torch.randn(2, 32, 32, 3), (2, 7)),
    "optical-flow-perceiver": (dict(train_size=(12, 16), num_channels=8, num_bands=4, **SMALL_ENCODER),
                               lambda: torch.randn(2, 2, 12, 16, 3), (2, 12, 16, 2)),
}


def test_published_presets_are_registered():
    assert set(PUBLISHED) <= set(list_presets())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_versions_run(name):
    overrides, inputs, shape = SMALL[name]
    model = create_model(name, **overrides).eval()
    with torch.no_grad():
        assert model(inputs()).logits.shape == shape
    full, small = preset_config(name), model.config
    assert type(full.input_adapter) is type(small.input_adapter)  # same architecture, smaller
    assert type(full.output_adapter) is type(small.output_adapter)


def test_flat_overrides_keep_coupled_fields_consistent():
    config = preset_config("language-perceiver", num_latents=8, num_latent_channels=64,
                           num_self_attends_per_block=2, max_seq_len=64)
    assert config.input_adapter.max_seq_len == 64
    assert config.decoder.queries.num_queries == 64  # one query per position
    assert config.encoder.num_latents == 8 and config.encoder.num_latent_channels == 64
    assert config.encoder.num_self_attends_per_block == 2
    assert config.encoder.qk_channels == 256  # untouched fields keep the published value


def test_coupled_image_fields():
    conv = preset_config("vision-perceiver-conv", image_size=64)
    assert conv.input_adapter.image_shape == [64, 64, 3] and conv.input_adapter.position.max_resolution == [16, 16]
    learned = preset_config("vision-perceiver-learned", image_size=32)
    assert count_parameters(learned.replace(output_adapter=None)) < count_parameters(preset_config(
        "vision-perceiver-learned").replace(output_adapter=None))  # the position table shrinks with the image
    flow = preset_config("optical-flow-perceiver", train_size=(24, 32))
    assert flow.input_adapter.image_shape == [24, 32, 3] and flow.input_adapter.position.max_resolution == [24, 32]


def test_dotted_overrides_set_any_field_and_are_validated():
    config = preset_config("language-perceiver", **SMALL_LANGUAGE, **{"encoder.num_blocks": 3,
                                                                      "decoder.queries.init_scale": 0.5})
    assert config.encoder.num_blocks == 3 and config.decoder.queries.init_scale == 0.5
    with pytest.raises(ConfigError, match="num_self_attend_heads"):
        preset_config("language-perceiver", **{"encoder.num_self_attend_heads": 7})


def test_unknown_overrides_name_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"unknown override 'num_latent'.*did you mean 'num_latents'.*size fields"):
        preset_config("language-perceiver", num_latent=8)
    with pytest.raises(ConfigError, match=r"'encoder.num_block'.*no field 'num_block'.*num_blocks"):
        preset_config("language-perceiver", **{"encoder.num_block": 2})
    with pytest.raises(ConfigError, match=r"'encoder.num_blocks.x'.*is a value"):
        preset_config("language-perceiver", **{"encoder.num_blocks.x": 2})
    with pytest.raises(ValueError, match=r"unknown preset 'language-perciever'.*did you mean 'language-perceiver'"):
        create_model("language-perciever")


def test_size_fields_are_type_checked():
    with pytest.raises(ConfigError, match=r"size field num_latents must be an integer .*got '8'"):
        preset_config("language-perceiver", num_latents="8")
    with pytest.raises(ConfigError, match=r"train_size must be 2 integers"):
        preset_config("optical-flow-perceiver", train_size=[12])
    assert preset_config("language-perceiver", decoder_v_channels=None).decoder.v_channels == 768
    assert preset_config("optical-flow-perceiver", train_size=[24, 32]).input_adapter.image_shape == [24, 32, 3]


def test_register_preset(monkeypatch):
    monkeypatch.setattr(presets, "_PRESETS", dict(presets._PRESETS))

    @register_preset("tiny-test", sizes=dict(num_latents=4), description="a test", task="fill-mask", num_params=0)
    def tiny(s) -> PerceiverConfig:
        return preset_config("language-perceiver", **{**SMALL_LANGUAGE, "num_latents": s.num_latents})

    assert "tiny-test" in list_presets()
    assert preset_config("tiny-test", num_latents=2).encoder.num_latents == 2
    assert get_preset("tiny-test").size_fields == {"num_latents": 4}
    with pytest.raises(ValueError, match="already registered"):
        register_preset("tiny-test", sizes={}, description="", task="fill-mask", num_params=0)(tiny)
    with pytest.raises(ValueError, match="cannot contain dots"):
        register_preset("dotted", sizes={"encoder.x": 1}, description="", task="fill-mask", num_params=0)
    with pytest.raises(ValueError, match="unknown task"):
        register_preset("bad-task", sizes={}, description="", task="translation", num_params=0)


def test_cli_lists_presets_with_parameter_counts(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in list_presets():
        preset = get_preset(name)
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert f"{preset.num_params:,}" in line and preset.task in line and preset.description in line


def test_cli_shows_one_preset(capsys):
    assert main(["presets", "language-perceiver"]) == 0
    out = capsys.readouterr().out
    assert "201,108,230" in out and "num_self_attends_per_block = 26" in out
    assert main(["presets", "nope"]) == 2
