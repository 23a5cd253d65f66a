"""The config machinery: kinds written once, Literal fields checked at construction."""

import dataclasses
import typing

import pytest

from perceptio import (
    ConfigError,
    CrossAttentionDecoderConfig,
    EncoderConfig,
    FourierQueriesConfig,
    ImageAdapterConfig,
    PerceiverConfig,
    PositionEncodingConfig,
    QueryConfig,
    TextAdapterConfig,
    TrainableQueriesConfig,
)
from perceptio.adapters.base import InputAdapterConfig, OutputAdapterConfig
from perceptio.data import DataConfig
from perceptio.decoder import DecoderConfig


BASES = [InputAdapterConfig, OutputAdapterConfig, QueryConfig, DecoderConfig, DataConfig]


@pytest.mark.parametrize("base", BASES, ids=lambda b: b.__name__)
def test_kind_is_the_registered_name_and_not_a_field(base):
    assert base._registry, f"{base.__name__} has no registered kinds"
    for name, cls in base._registry.items():
        assert cls.kind == name
        assert "kind" not in {f.name for f in dataclasses.fields(cls)}


def test_to_dict_writes_the_kind_first_and_round_trips():
    config = PerceiverConfig(
        input_adapter=TextAdapterConfig(max_seq_len=16, num_channels=8),
        decoder=CrossAttentionDecoderConfig(queries=FourierQueriesConfig(index_dims=[4, 4], num_bands=2)),
    )
    data = config.to_dict()
    assert list(data["input_adapter"])[0] == "kind" and data["input_adapter"]["kind"] == "text"
    assert data["decoder"]["queries"]["kind"] == "fourier"
    assert PerceiverConfig.from_dict(data) == config
    assert PerceiverConfig.from_json(config.to_json()).to_dict() == data


def test_a_concrete_class_rejects_another_kind():
    assert TrainableQueriesConfig.from_dict({"kind": "trainable", "num_queries": 3}).num_queries == 3
    assert TrainableQueriesConfig.from_dict({"num_queries": 3}).num_queries == 3
    with pytest.raises(ConfigError, match=r"kind: TrainableQueriesConfig has kind 'trainable', got 'fourier'"):
        TrainableQueriesConfig.from_dict({"kind": "fourier"})


@pytest.mark.parametrize("cls, field, bad", [
    (EncoderConfig, "cross_attention_shape_for_attn", "qk"),
    (EncoderConfig, "activation", "tanh"),
    (CrossAttentionDecoderConfig, "activation", "gelu_erf"),
    (ImageAdapterConfig, "prep_type", "patch"),
    (ImageAdapterConfig, "conv_padding", "valid"),
    (PositionEncodingConfig, "encoding", "learned"),
    (PositionEncodingConfig, "combine", "sum"),
])
def test_literal_fields_are_checked_at_construction(cls, field, bad):
    allowed = list(typing.get_args(typing.get_type_hints(cls)[field]))
    with pytest.raises(ConfigError, match=rf"{cls.__name__}\.{field}='{bad}'; allowed values: ") as e:
        cls(**{field: bad})
    assert str(allowed) in str(e.value)
    cls(**{field: allowed[-1]})  # every allowed value is accepted


def test_every_learned_table_is_cut_at_two_standard_deviations():
    """Text embedding and positions, latents, queries: one initialisation (the reference's
    TruncatedNormal), so no table has values beyond 2 * init_scale."""
    import torch

    from perceptio import Perceiver
    from perceptio.layers.position import TrainablePositionEncoding

    torch.manual_seed(0)
    model = Perceiver(PerceiverConfig(
        input_adapter=TextAdapterConfig(max_seq_len=512, num_channels=64, init_scale=0.1),
        encoder=EncoderConfig(num_latents=64, num_latent_channels=64, num_self_attends_per_block=1,
                              latent_init_scale=0.1),
        decoder=CrossAttentionDecoderConfig(queries=TrainableQueriesConfig(num_queries=512, num_channels=64,
                                                                           init_scale=0.1)),
    ))
    assert isinstance(model.input_adapter.position, TrainablePositionEncoding)
    tables = [model.input_adapter.embedding.weight, model.input_adapter.position.pos_embs,
              model.encoder.latents.pos_embs, model.decoder.query_builder.queries.pos_embs]
    for table in tables:
        table = table.detach()
        assert float(table.abs().max()) <= 0.2
        assert 0.07 < float(table.std()) < 0.1  # a normal cut at 2 sigma has std 0.88 sigma


def test_multimodal_configs_share_their_checks():
    from perceptio import MultimodalAdapterConfig, MultimodalQueriesConfig

    text = TextAdapterConfig(max_seq_len=8, num_channels=8)
    with pytest.raises(ConfigError, match=r"MultimodalAdapterConfig.modalities.inner: modalities cannot be multimodal"):
        MultimodalAdapterConfig(modalities={"inner": MultimodalAdapterConfig(modalities={"t": text})})
    with pytest.raises(ConfigError, match=r"MultimodalQueriesConfig.modalities.inner: modalities cannot be multimodal"):
        MultimodalQueriesConfig(modalities={"inner": MultimodalQueriesConfig(modalities={"q": TrainableQueriesConfig()})})
    with pytest.raises(ConfigError, match=r"MultimodalQueriesConfig.modalities needs at least one modality"):
        MultimodalQueriesConfig()
    with pytest.raises(ConfigError, match=r"MultimodalAdapterConfig.min_padding_size must be >= 0, got -1"):
        MultimodalAdapterConfig(modalities={"t": text}, min_padding_size=-1)
