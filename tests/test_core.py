"""Behaviour of the core architecture beyond reference parity."""

from __future__ import annotations

import json

import pytest
import torch

from perceptio import (
    ClassificationOutputConfig,
    ConcatQueriesConfig,
    ConfigError,
    CrossAttentionDecoderConfig,
    EncoderConfig,
    FourierQueriesConfig,
    InputQueriesConfig,
    LatentMeanDecoderConfig,
    Perceiver,
    PerceiverConfig,
    TextAdapterConfig,
    TiedEmbeddingOutputConfig,
    TrainableQueriesConfig,
)
from perceptio.layers.attention import MultiHeadAttention, collect_attention
from perceptio.layers.position import grid_positions, grid_positions_at
from perceptio.encoder import PerceiverEncoder

from helpers import randomize


def small_encoder(**kw) -> EncoderConfig:
    base = dict(num_latents=8, num_latent_channels=32, num_self_attends_per_block=2, num_self_attend_heads=4,
                num_cross_attend_heads=2, num_blocks=2)
    base.update(kw)
    return EncoderConfig(**base)


def mlm_config(**enc) -> PerceiverConfig:
    return PerceiverConfig(
        input_adapter=TextAdapterConfig(vocab_size=262, max_seq_len=24, num_channels=16),
        encoder=small_encoder(**enc),
        decoder=CrossAttentionDecoderConfig(
            queries=TrainableQueriesConfig(num_queries=24, num_channels=16), num_heads=2, qk_channels=8
        ),
        output_adapter=TiedEmbeddingOutputConfig(),
    )


def ids_and_mask(batch=3, length=24, valid=(24, 10, 0)):
    ids = torch.randint(6, 262, (batch, length))
    mask = torch.arange(length)[None, :] < torch.tensor(valid)[:, None]
    return ids, mask


# -- attention --------------------------------------------------------------------------------------
def test_fully_masked_rows_output_zeros_before_projection():
    attn = randomize(MultiHeadAttention(8, 6, num_heads=2, qk_channels=4, v_channels=6, output_channels=5))
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 4, 6)
    key_mask = torch.tensor([[True, True, False, False], [False] * 4])
    query_mask = torch.tensor([[True, False, True], [True, True, True]])
    out = attn(q, kv, key_mask, query_mask)
    bias = attn.o.bias.expand(3, 5)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], bias)  # no valid key at all
    torch.testing.assert_close(out[0, 1], bias[0])  # masked query
    assert not torch.allclose(out[0, 0], bias[0])


def test_attention_matches_explicit_softmax_and_returned_weights():
    attn = randomize(MultiHeadAttention(8, 6, num_heads=2, qk_channels=4))
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 5, 6)
    key_mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    fast = attn(q, kv, key_mask)
    with collect_attention(attn) as maps:
        slow = attn(q, kv, key_mask)
    (probs,) = maps[""]
    torch.testing.assert_close(fast, slow)
    assert probs.shape == (2, 2, 3, 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 3))
    assert (probs[0, :, :, 3:] == 0).all()
    # explicit reference computation, head by head, with the 1/sqrt(qk per head) scale
    qh = attn.q(q).view(2, 3, 2, 2).transpose(1, 2)
    kh = attn.k(kv).view(2, 5, 2, 2).transpose(1, 2)
    logits = (qh @ kh.transpose(-1, -2)) / (2 ** 0.5)
    logits[0, :, :, 3:] = -1e30
    torch.testing.assert_close(probs, logits.softmax(-1))


def test_channel_defaults_follow_reference():
    attn = MultiHeadAttention(12, 20, num_heads=2)
    assert (attn.q.out_features, attn.v.out_features, attn.o.out_features) == (12, 12, 12)
    enc = PerceiverEncoder(small_encoder(), input_channels=20)
    # cross-attend: qk defaults to the key/value width, v to qk, output to the query width
    ca = enc.cross_attends[0].attention
    assert (ca.q.out_features, ca.v.out_features, ca.o.out_features) == (20, 20, 32)
    enc_q = PerceiverEncoder(small_encoder(cross_attention_shape_for_attn="q"), input_channels=20)
    assert enc_q.cross_attends[0].attention.q.out_features == 32


# -- model behaviour --------------------------------------------------------------------------------
def test_gradients_reach_every_parameter():
    model = randomize(Perceiver(mlm_config())).train()
    ids, mask = ids_and_mask(valid=(24, 10, 3))
    model(ids, input_mask=mask).logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_padded_positions_do_not_change_outputs():
    model = randomize(Perceiver(mlm_config()))
    ids, mask = ids_and_mask(valid=(24, 10, 5))
    out = model(ids, input_mask=mask).logits
    changed = torch.where(mask, ids, torch.randint(6, 262, ids.shape))
    assert not torch.equal(changed, ids)
    torch.testing.assert_close(model(changed, input_mask=mask).logits, out, rtol=0, atol=1e-6)


def test_all_padding_row_is_finite_and_independent_of_tokens():
    model = randomize(Perceiver(mlm_config()))
    ids, mask = ids_and_mask(valid=(24, 10, 0))
    a = model(ids, input_mask=mask, query_mask=mask).logits
    b = model(torch.randint(6, 262, ids.shape), input_mask=mask, query_mask=mask).logits
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a[2], b[2])


def test_encoder_is_invariant_to_permuting_inputs_with_their_positions():
    enc = randomize(PerceiverEncoder(small_encoder(), input_channels=20))
    x = torch.randn(2, 50, 20)  # features already carry their position encoding
    mask = torch.rand(2, 50) > 0.3
    perm = torch.randperm(50)
    torch.testing.assert_close(enc(x[:, perm], mask[:, perm]), enc(x, mask), rtol=1e-5, atol=1e-5)


def test_fourier_encoder_permutation_with_position_features():
    cfg = FourierQueriesConfig(index_dims=[6, 7], num_bands=4)
    feats = cfg.build(0, None)(2)  # [2, 42, C]
    x = torch.cat([torch.randn(2, 42, 4), feats], dim=-1)
    enc = randomize(PerceiverEncoder(small_encoder(), input_channels=x.shape[-1]))
    perm = torch.randperm(42)
    torch.testing.assert_close(enc(x[:, perm]), enc(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 24, 100])
def test_chunked_decoding_equals_full_decoding(chunk):
    cfg = mlm_config()
    cfg.decoder.queries = ConcatQueriesConfig(
        parts=[TrainableQueriesConfig(num_queries=24, num_channels=8),
               FourierQueriesConfig(index_dims=[4, 6], num_bands=2)]
    )
    cfg.output_adapter = None
    model = randomize(Perceiver(cfg))
    ids, _ = ids_and_mask()
    latents, context = model.encode(ids)
    full = model.decode(latents, context)
    torch.testing.assert_close(model.decode_chunked(latents, context, chunk_size=chunk), full, rtol=0, atol=1e-6)


def test_subsampled_points_decode_the_same_rows_as_a_full_decode_with_those_points():
    model = randomize(Perceiver(mlm_config()))
    ids, _ = ids_and_mask()
    latents, context = model.encode(ids)
    points = torch.tensor([3, 0, 17])
    torch.testing.assert_close(model.decode(latents, context, points), model.decode(latents, context)[:, points])


def test_grid_positions_at_matches_full_grid():
    dims = (3, 1, 5)
    idx = torch.tensor([0, 4, 7, 14])
    torch.testing.assert_close(grid_positions_at(idx, dims), grid_positions(dims)[idx])


def test_attention_maps_on_request():
    model = randomize(Perceiver(mlm_config(num_blocks=2)))
    ids, mask = ids_and_mask()
    plain = model(ids, input_mask=mask)
    out = model(ids, input_mask=mask, return_attention=True)
    torch.testing.assert_close(out.logits, plain.logits)
    assert plain.attentions is None
    assert [a.shape for a in out.attentions["cross"]] == [(3, 2, 8, 24)]
    assert len(out.attentions["self"]) == 4 and out.attentions["self"][0].shape == (3, 4, 8, 8)
    assert out.attentions["decoder"][0].shape == (3, 2, 24, 8)
    assert (out.attentions["cross"][0][1, :, :, 10:] == 0).all()


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(1)
    model = randomize(Perceiver(mlm_config())).train()
    ids, mask = ids_and_mask()
    model(ids, input_mask=mask).logits.sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.encoder.config.activation_checkpointing = True
    model(ids, input_mask=mask).logits.sum().backward()
    for a, p in zip(ref, model.parameters()):
        torch.testing.assert_close(p.grad, a)


def test_attention_maps_by_module_name_one_per_call():
    model = randomize(Perceiver(mlm_config(num_blocks=3)))
    ids, mask = ids_and_mask()
    with collect_attention(model) as outer, collect_attention(model.encoder) as inner:
        model(ids, input_mask=mask)
    by_module = outer.by_module()
    assert list(by_module) == [
        "encoder.cross_attends.0.attention",
        "encoder.latent_blocks.0.layers.0.attention",
        "encoder.latent_blocks.0.layers.1.attention",
        "decoder.cross_attend.attention",
    ]
    assert [len(v) for v in by_module.values()] == [1, 3, 3, 1]  # the shared latent block runs 3 times
    # the encoder's own names; the same tensors as the outer collection's
    assert list(inner.by_module()) == [name.removeprefix("encoder.") for name in list(by_module)[:3]]
    assert all(a is b for a, b in zip(inner["latent_blocks.0.layers.1.attention"],
                                       outer["encoder.latent_blocks.0.layers.1.attention"]))
    assert all(m.recorder is None for m in model.modules() if isinstance(m, MultiHeadAttention))
    with pytest.raises(ValueError, match="has no MultiHeadAttention module"):
        with collect_attention(model.input_adapter):
            pass


def test_attention_maps_are_complete_with_activation_checkpointing_in_train_mode():
    model = randomize(Perceiver(mlm_config(num_blocks=2))).train()
    ids, mask = ids_and_mask(valid=(24, 10, 3))

    def run():
        model.zero_grad()
        out = model(ids, input_mask=mask, return_attention=True)
        out.logits.square().mean().backward()  # after recording ended: recomputes the checkpointed blocks
        return out.attentions, [p.grad.clone() for p in model.parameters()]

    plain_maps, plain_grads = run()
    model.encoder.config.activation_checkpointing = True
    maps, grads = run()
    assert {k: len(v) for k, v in maps.items()} == {"cross": 1, "self": 4, "decoder": 1}
    for key in maps:
        for a, b in zip(maps[key], plain_maps[key]):
            torch.testing.assert_close(a, b)
    for a, b in zip(grads, plain_grads):
        torch.testing.assert_close(a, b)
    with collect_attention(model) as collected:  # backward inside the block records nothing more
        model(ids, input_mask=mask).logits.sum().backward()
    assert len(collected.under("encoder.latent_blocks")) == 4


def test_gradient_reaches_the_attention_maps_under_key_and_query_masks():
    attn = randomize(MultiHeadAttention(8, 6, num_heads=2, qk_channels=4, v_channels=6, output_channels=5))
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 4, 6)
    key_mask = torch.tensor([[True, True, False, True], [False] * 4])
    query_mask = torch.tensor([[True, False, True], [True, True, True]])
    with collect_attention(attn) as maps:
        out = attn(q, kv, key_mask, query_mask)
    (probs,) = maps[""]
    (grad_probs,) = torch.autograd.grad(out.sum(), probs)
    # d out.sum() / d probs[b, h, i, j] = v[b, h, j] . (column sums of the output projection)[h]
    v = attn.v(kv).view(2, 4, 2, 3).transpose(1, 2)  # [B, H, Tk, Dv]
    w = attn.o.weight.sum(0).view(2, 3)  # [H, Dv]
    expected = torch.einsum("bhjd,hd->bhj", v, w)[:, :, None, :].expand(2, 2, 3, 4)
    torch.testing.assert_close(grad_probs, expected)
    # masked key; no valid key at all; masked query
    assert (probs[0, :, :, 2] == 0).all() and (probs[1] == 0).all() and (probs[0, :, 1] == 0).all()


def test_model_attention_maps_are_in_the_autograd_graph_with_a_key_mask():
    model = randomize(Perceiver(mlm_config())).train()
    ids, mask = ids_and_mask(valid=(24, 10, 0))
    out = model(ids, input_mask=mask, return_attention=True)
    maps = out.attentions["cross"] + out.attentions["self"] + out.attentions["decoder"]
    grads = torch.autograd.grad(out.logits.square().sum(), maps)  # raises if a map were off the graph
    assert all(g.abs().sum() > 0 for g in grads)


# -- original Perceiver -----------------------------------------------------------------------------
def test_original_perceiver_weight_sharing_and_mean_latent_head():
    enc = small_encoder(num_cross_attends=4, num_blocks=1)
    cfg = PerceiverConfig(
        input_adapter=TextAdapterConfig(vocab_size=262, max_seq_len=24, num_channels=16),
        encoder=enc,
        decoder=LatentMeanDecoderConfig(output_channels=5),
        output_adapter=ClassificationOutputConfig(),
    )
    model = Perceiver(cfg)
    assert len(model.encoder.cross_attends) == 2 and len(model.encoder.latent_blocks) == 2
    unshared = Perceiver(cfg.replace(encoder=enc.replace(share_cross_attend_weights=False,
                                                         share_latent_block_weights=False)))
    assert len(unshared.encoder.cross_attends) == 4 and len(unshared.encoder.latent_blocks) == 4
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    ca, lb = count(model.encoder.cross_attends[0]), count(model.encoder.latent_blocks[0])
    assert count(unshared) - count(model) == 2 * (ca + lb)
    ids, mask = ids_and_mask()
    out = model(ids, input_mask=mask, return_attention=True)
    assert out.logits.shape == (3, 5) and len(out.attentions["cross"]) == 4
    # the head sees only the mean latent
    latents = out.latents
    head = model.decoder
    expected = head.output(head.norm(latents.mean(1)))
    torch.testing.assert_close(out.logits, expected)


def test_latent_mean_decoder_rejects_selections_with_a_clear_error():
    cfg = PerceiverConfig(
        input_adapter=TextAdapterConfig(vocab_size=262, max_seq_len=24, num_channels=16),
        encoder=small_encoder(),
        decoder=LatentMeanDecoderConfig(output_channels=5),
        output_adapter=ClassificationOutputConfig(),
    )
    model = Perceiver(cfg).eval()
    assert not model.decoder.supports_selection and Perceiver(mlm_config()).decoder.supports_selection
    ids, mask = ids_and_mask()
    latents, context = model.encode(ids, mask)
    torch.testing.assert_close(model.decode(latents, context), model(ids, input_mask=mask).logits)
    reason = "not supported by the latent_mean decoder.*no output queries"
    with pytest.raises(ValueError, match="decode_chunked is " + reason):
        model.decode_chunked(latents, context, chunk_size=4)
    with pytest.raises(ValueError, match="points is " + reason):
        model(ids, points=torch.tensor([0]))
    with pytest.raises(ValueError, match="rows is " + reason):
        model.decode(latents, context, rows=torch.tensor([0]))
    with pytest.raises(ValueError, match="query_mask is " + reason):
        model(ids, query_mask=torch.ones(3, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="all_points is " + reason):
        model.decoder.all_points(context)


def test_all_points_decode_equals_the_full_decode_for_a_grid_of_queries():
    model = Perceiver(mlm_config()).eval()
    ids, mask = ids_and_mask()
    latents, context = model.encode(ids, mask)
    points = model.decoder.all_points(context)
    assert torch.equal(points, torch.arange(24))
    torch.testing.assert_close(model.decode_chunked(latents, context, chunk_size=5, points=points),
                               model.decode(latents, context), rtol=0, atol=1e-6)


def test_cross_attention_decoder_takes_points_or_rows_not_both():
    model = Perceiver(mlm_config())
    latents, context = model.encode(torch.randint(6, 262, (2, 24)))
    with pytest.raises(ValueError, match="give points .* or rows .*, not both"):
        model.decode(latents, context, points=torch.tensor([1]), rows=torch.tensor([1]))


# -- persistence and configs ------------------------------------------------------------------------
def test_save_load_round_trip_is_exact(tmp_path):
    model = randomize(Perceiver(mlm_config()))
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = Perceiver.from_pretrained(tmp_path)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    ids, mask = ids_and_mask()
    assert torch.equal(loaded.eval()(ids, input_mask=mask).logits, model(ids, input_mask=mask).logits)


def test_config_round_trip_is_exact():
    cfg = mlm_config()
    cfg.decoder.queries = ConcatQueriesConfig(
        parts=[InputQueriesConfig(), FourierQueriesConfig(index_dims=[24], num_bands=3, sine_only=True)]
    )
    again = PerceiverConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.to_dict() == json.loads(cfg.to_json())


def test_config_validation_names_field_and_fix():
    with pytest.raises(ConfigError, match=r"num_latent_channels=30 is not divisible by num_self_attend_heads=4.*choose"):
        EncoderConfig(num_latent_channels=30, num_self_attend_heads=4)
    with pytest.raises(ConfigError, match="num_latents must be positive"):
        EncoderConfig(num_latents=0)
    with pytest.raises(ConfigError, match=r"encoder\.num_blockz: unknown key; allowed keys: \[.*'num_blocks'"):
        PerceiverConfig.from_dict({**mlm_config().to_dict(), "encoder": {"num_blockz": 2}})
    with pytest.raises(ConfigError, match=r"encoder\.num_blocks: expected an integer, got str"):
        PerceiverConfig.from_dict({**mlm_config().to_dict(), "encoder": {"num_blocks": "2"}})
    with pytest.raises(ConfigError, match=r"decoder\.queries\.kind: unknown kind 'grid'; allowed"):
        d = mlm_config().to_dict()
        d["decoder"]["queries"] = {"kind": "grid"}
        PerceiverConfig.from_dict(d)
    with pytest.raises(ConfigError, match="cross_attention_shape_for_attn"):
        EncoderConfig(cross_attention_shape_for_attn="both")


# -- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: torch.randint(0, 262, (24,)), ValueError, r"shape \[batch, length\], got shape \(24,\)"),
        (lambda: torch.rand(2, 24), TypeError, "integer token ids, got dtype torch.float32"),
        (lambda: torch.randint(0, 262, (2, 25)), ValueError, "sequence length 25 exceeds the model's max_seq_len=24"),
        (lambda: torch.zeros(2, 0, dtype=torch.long), ValueError, "empty"),
        (lambda: torch.full((2, 4), 262), ValueError, r"token ids must be in \[0, 262\), got values in \[262, 262\]"),
        (lambda: [[1, 2, 3]], TypeError, "must be a tensor of token ids"),
    ],
)
def test_bad_text_input(make, error, message):
    model = Perceiver(mlm_config())
    with pytest.raises(error, match=message):
        model(make())


def test_bad_masks():
    model = Perceiver(mlm_config())
    ids = torch.randint(6, 262, (2, 10))
    with pytest.raises(ValueError, match=r"input_mask must have shape \(2, 10\).*got \(2, 11\)"):
        model(ids, input_mask=torch.ones(2, 11, dtype=torch.bool))
    with pytest.raises(TypeError, match="input_mask must have dtype torch.bool.*got torch.int64"):
        model(ids, input_mask=torch.ones(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match=r"query_mask must have shape \(2, 24\)"):
        model(ids, query_mask=torch.ones(2, 10, dtype=torch.bool))


def test_heads_not_dividing_channels_fail_at_construction():
    with pytest.raises(ValueError, match="qk_channels=10 is not divisible by num_heads=4"):
        MultiHeadAttention(8, 8, num_heads=4, qk_channels=10)
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        cfg = mlm_config()
        Perceiver(cfg.replace(decoder=cfg.decoder.replace(num_heads=3)))
