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


def test_flat_overrides_keep_coupled_fields_consistent():
    config = preset_config("language-perceiver", num_latents=8, num_latent_channels=64,
                           num_self_attends_per_block=2, max_seq_len=64)
    assert config.input_adapter.max_seq_len == 64
    assert config.decoder.queries.num_queries == 64  # one query per position
    assert config.encoder.num_latents == 8 and config.encoder.num_latent_channels == 64
    assert config.encoder.num_self_attends_per_block == 2
    assert config.encoder.qk_channels == 256  # untouched fields keep the published value


def test_small_model_runs():
    model = create_model("language-perceiver", **SMALL_LANGUAGE).eval()
    ids = torch.randint(0, 262, (2, 40))
    assert model(ids).logits.shape == (2, 64, 262)


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


def test_register_preset(monkeypatch):
    monkeypatch.setattr(presets, "_PRESETS", dict(presets._PRESETS))

    @register_preset("tiny-test", description="a test", task="fill-mask", num_params=0)
    def tiny(*, num_latents: int = 4) -> PerceiverConfig:
        return preset_config("language-perceiver", **{**SMALL_LANGUAGE, "num_latents": num_latents})

    assert "tiny-test" in list_presets()
    assert preset_config("tiny-test", num_latents=2).encoder.num_latents == 2
    assert get_preset("tiny-test").size_fields == {"num_latents": 4}
    with pytest.raises(ValueError, match="already registered"):
        register_preset("tiny-test", description="", task="fill-mask", num_params=0)(tiny)
    with pytest.raises(TypeError, match="keyword-only"):
        register_preset("positional", description="", task="fill-mask", num_params=0)(lambda size=1: None)
    with pytest.raises(ValueError, match="unknown task"):
        register_preset("bad-task", description="", task="translation", num_params=0)


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
