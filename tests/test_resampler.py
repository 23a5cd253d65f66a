"""The Perceiver Resampler (Flamingo): parity with flamingo-pytorch's PerceiverResampler
given the same weights, the media mask, its use as a Perceiver's encoder, bad input."""

from __future__ import annotations

import pytest
import torch

from perceptio import (
    ClassificationOutputConfig,
    GridAdapterConfig,
    LatentMeanDecoderConfig,
    Perceiver,
    PerceiverConfig,
    PerceiverResampler,
    PositionEncodingConfig,
    ResamplerConfig,
)
from perceptio.config import ConfigError
from perceptio.layers.attention import collect_attention


def tiny(**overrides) -> ResamplerConfig:
    return ResamplerConfig(**{**dict(num_latents=5, num_latent_channels=16, depth=2, num_heads=2,
                                     head_channels=4, widening_factor=2, num_media_embeds=3), **overrides})


def test_equals_flamingo_pytorch():
    flamingo = pytest.importorskip("flamingo_pytorch", reason="flamingo-pytorch is not installed (the test extra)")
    from perceptio import resampler_from_flamingo_pytorch

    torch.manual_seed(0)
    theirs = flamingo.PerceiverResampler(dim=16, depth=2, dim_head=4, heads=2, num_latents=5, num_media_embeds=3,
                                         ff_mult=2)
    with torch.no_grad():  # re-draw every layer norm too, so a mis-mapped tensor shows
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    ours = resampler_from_flamingo_pytorch(theirs)
    assert ours.config == tiny()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    media = torch.randn(2, 3, 7, 16)
    ref = theirs(media)
    torch.testing.assert_close(ours(media), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(media[:, :2]), theirs(media[:, :2]), atol=1e-5, rtol=1e-5)  # fewer frames
    # one frame [B, n, D]: flamingo-pytorch returns [B, 1, N, D], we drop the time axis
    torch.testing.assert_close(ours(media[:, 0]), theirs(media[:, 0])[:, 0], atol=1e-5, rtol=1e-5)
    # gradients agree too
    x = media.clone().requires_grad_()
    y = media.clone().requires_grad_()
    theirs(x).square().sum().backward()
    ours(y).square().sum().backward()
    torch.testing.assert_close(y.grad, x.grad, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unexpected \\['extra'\\]"):
        from perceptio.resampler import resampler_state_from_flamingo_pytorch

        resampler_state_from_flamingo_pytorch({**theirs.state_dict(), "extra": torch.zeros(1)})


def test_masked_media_tokens_are_as_if_absent():
    torch.manual_seed(0)
    model = PerceiverResampler(tiny()).eval()
    media = torch.randn(2, 3, 6, 16)
    mask = torch.ones(2, 3, 6, dtype=torch.bool)
    mask[0, 1, 4:] = False
    mask[1, :, 2:] = False
    out = model(media, mask)
    # frames are resampled on their own (with their time embedding): frame 1 of example 0 as if it had 4 tokens
    torch.testing.assert_close(out[0, 1], model(media[0:1, :, :4])[0, 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], model(media[1:2, :, :2])[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0, 0], model(media[0:1, 0:1])[0, 0], atol=1e-5, rtol=1e-5)
    # a frame with no valid token still attends to the latents
    mask[1, 2] = False
    assert torch.isfinite(model(media, mask)).all()


def test_keys_are_media_and_latents():
    model = PerceiverResampler(tiny())
    with collect_attention(model) as maps:
        model(torch.randn(2, 3, 6, 16))
    probs = maps.by_module()["cross_attends.0.attention"][0]
    assert probs.shape == (2 * 3, 2, 5, 6 + 5)


def test_as_the_encoder_of_a_perceiver():
    config = PerceiverConfig(
        input_adapter=GridAdapterConfig(index_dims=[6], num_input_channels=3, num_channels=8,
                                        position=PositionEncodingConfig(encoding="trainable", num_channels=8)),
        encoder=tiny(),
        decoder=LatentMeanDecoderConfig(output_channels=4),
        output_adapter=ClassificationOutputConfig(),
    )
    again = PerceiverConfig.from_json(config.to_json())
    assert isinstance(again.encoder, ResamplerConfig) and again == config
    model = Perceiver(config)
    assert isinstance(model.encoder, PerceiverResampler)
    x = torch.randn(2, 6, 3)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    out = model(x, input_mask=mask)
    assert out.logits.shape == (2, 4) and out.latents.shape == (2, 5, 16)
    assert config.encoder.ponder is None
    maps = model(x, input_mask=mask, return_attention=True).attentions
    assert [m.shape for m in maps["cross"]] == [(2, 2, 5, 6 + 5)] * 2 and maps["self"] == []
    assert maps["cross"][0][1, :, :, 3:6].abs().max() == 0  # the masked inputs
    torch.testing.assert_close(out.latents[1], model.encoder(model.input_adapter(x).inputs[1:2, :3])[0])
    with pytest.raises(ConfigError, match="num_latent_channels=16 must equal the input adapter's num_channels=12"):
        Perceiver(config.replace(input_adapter=config.input_adapter.replace(num_channels=4)))
    with pytest.raises(ConfigError,
                       match="encoder.dept: unknown key; allowed keys: \\['activation', 'activation_checkpointing', 'dep"):
        PerceiverConfig.from_dict({**config.to_dict(), "encoder": {**tiny().to_dict(), "dept": 2}})


def test_bad_input_is_named():
    model = PerceiverResampler(tiny())
    with pytest.raises(ValueError, match="media must be \\[B, T, n, 16\\] .* got shape \\(2, 16\\)"):
        model(torch.randn(2, 16))
    with pytest.raises(ValueError, match="got shape \\(2, 3, 6, 8\\)"):
        model(torch.randn(2, 3, 6, 8))
    with pytest.raises(ValueError, match="4 frames, more than num_media_embeds=3"):
        model(torch.randn(2, 4, 6, 16))
    with pytest.raises(TypeError, match="float tensor"):
        model(torch.zeros(2, 3, 6, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="media_mask must have shape \\(2, 3, 6\\) .* got \\(2, 6\\)"):
        model(torch.randn(2, 3, 6, 16), torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(TypeError, match="media_mask must be a bool tensor"):
        model(torch.randn(2, 3, 6, 16), torch.ones(2, 3, 6))
    with pytest.raises(ConfigError, match="ResamplerConfig.num_heads must be positive"):
        tiny(num_heads=0)


def test_layer_limit_names_the_depth(monkeypatch):
    monkeypatch.setenv("PERCEPTIO_MAX_LAYERS", "1")
    config = PerceiverConfig(
        input_adapter=GridAdapterConfig(index_dims=[6], num_input_channels=16, num_channels=None,
                                        position=PositionEncodingConfig(encoding="trainable", num_channels=8,
                                                                        combine="add")),
        encoder=tiny(), decoder=LatentMeanDecoderConfig(output_channels=4),
    )
    with pytest.raises(ConfigError, match="encoder.depth=2 Resampler layers, above"):
        Perceiver(config)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = PerceiverResampler(tiny()).train()
    checkpointed = PerceiverResampler(tiny(activation_checkpointing=True)).train()
    checkpointed.load_state_dict(plain.state_dict())
    media, mask = torch.randn(2, 3, 6, 16), torch.rand(2, 3, 6) > 0.3
    for model in (plain, checkpointed):
        model(media, mask).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)
