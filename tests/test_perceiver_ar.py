"""Perceiver AR beyond parity: the exact cache equals a full recompute, sampling, persistence
and the errors of bad input."""

from __future__ import annotations

import warnings

import pytest
import torch

from perceptio.config import ConfigError
from perceptio.generation import exact_steps, next_tokens, recompute_steps
from perceptio.perceiver_ar import PerceiverAR, PerceiverARConfig
from perceptio.pretrained import load_pretrained


def tiny(**changes) -> PerceiverAR:
    fields = dict(num_classes=40, max_context_length=24, input_embed_dim=16, num_z_channels=16, z_index_dim=4,
                  num_transformers_per_block=2, num_cross_attend_heads=2, num_transformer_heads=2,
                  cross_attend_widening_factor=1, transformer_widening_factor=2, fraction_to_rotate=0.5,
                  final_layer_init_zeros=False)
    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig(**(fields | changes))).eval()
    with torch.no_grad():  # every layer norm and bias away from its initial value
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


PROMPTS = [[2, 5, 9, 11, 7, 30, 8], [2, 17], [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]]


@pytest.mark.parametrize("changes", [
    {}, {"use_negative_rotary_positions": True, "initial_query_offsetting": True, "initial_query_embed_style": "mlp"},
    {"additional_cross_attend_after_layers": [0], "cross_attention_shape_for_attn": "q"},
    {"use_positions_from_data": True}, {"include_initial_cross_attention": False, "additional_cross_attend_after_layers": [1]},
], ids=["default", "offset_negative_mlp", "extra_cross", "positions_from_data", "late_cross"])
def test_exact_cache_equals_recompute(changes):
    """Ragged batch, a row shorter than the latents, and rows running past the context (left cut)."""
    model = tiny(**changes)
    steps = 12
    with torch.no_grad():
        free = recompute_steps(model, [list(r) for r in PROMPTS])
        cached = exact_steps(model, [list(r) for r in PROMPTS])
        a, b = next(free), next(cached)
        for step in range(steps):
            torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)
            tokens = next_tokens(a, generator=torch.Generator().manual_seed(step))
            a, b = free.send(tokens), cached.send(tokens)
    generated = [model.generate(PROMPTS, 10, cache=c, seed=3) for c in ("exact", "none")]
    assert generated[0] == generated[1]


def test_sampling_seed_greedy_top_k_top_p():
    model = tiny()
    prompt = [[2, 5, 9]]
    assert model.generate(prompt, 8, seed=1) == model.generate(prompt, 8, seed=1)
    assert model.generate(prompt, 8, seed=1) != model.generate(prompt, 8, seed=2)
    greedy = model.generate(prompt, 6, greedy=True)
    assert greedy == model.generate(prompt, 6, top_k=1, seed=5) == model.generate(prompt, 6, top_p=1e-6, seed=7)
    logits = torch.tensor([[0.0, 0.0, 0.0, 3.0, 2.0, 1.0, -1.0]])
    draws = torch.stack([next_tokens(logits, top_k=2, generator=torch.Generator().manual_seed(s)) for s in range(200)])
    assert set(draws.flatten().tolist()) == {3, 4}
    p = logits[0, 3:].softmax(-1)  # ids 0 and 2 (PAD, SOS) are never sampled; id 1 has weight e^0
    draws = torch.stack([next_tokens(logits, top_p=0.7, generator=torch.Generator().manual_seed(s)) for s in range(200)])
    assert set(draws.flatten().tolist()) <= {3, 4} and float(p[0]) < 0.7
    assert next_tokens(torch.tensor([[9.0, 0.0, 9.0, 1.0]]), greedy=True).item() == 3  # PAD, SOS never chosen


def test_stop_tokens_and_empty_generation():
    model = tiny()
    free = model.generate([[2, 5, 9]], 10, greedy=True)[0]
    stop = free[3]
    out = model.generate([[2, 5, 9]], 10, greedy=True, stop_tokens=[stop])[0]
    assert out == free[: free.index(stop)]
    assert model.generate([[2, 5], [2, 6, 7]], 0) == [[], []]


def test_save_and_load_pretrained(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    assert isinstance(loaded, PerceiverAR) and loaded.config == model.config
    ids = torch.tensor([[2, 5, 9, 11, 0]])
    torch.testing.assert_close(loaded.eval()(ids).logits, model(ids).logits)


def test_bad_input_errors():
    model = tiny()
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        model.generate([[2, 3], []], 4)
    with pytest.raises(ValueError, match=r"token ids must be in \[1, 40\)"):
        model.generate([[2, 40]], 4)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        model.generate([[2, 3]], 4, top_p=1.5)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        model.generate([[2, 3]], 4, temperature=0)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0"):
        model.generate([[2, 3]], -1)
    long = [[2] + [5] * 30]
    with pytest.raises(ValueError, match="more than the model's max_context_length=24"):
        model.generate(long, 2, truncate="error")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cut = model.generate(long, 3, greedy=True)
    assert "keeping its last 24 tokens" in str(caught[0].message)
    assert cut == model.generate([long[0][-24:]], 3, greedy=True)
    with pytest.raises(ValueError, match="cache='reference' is the official sampler"):
        model.generate([[2, 3]], 2, cache="reference")
    with pytest.raises(ValueError, match="more than max_context_length=24"):
        model(torch.ones(1, 25, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.ones(1, 5))
    with pytest.raises(ConfigError, match="max_wavelength=8 must be >= max_context_length=24"):
        PerceiverARConfig(max_context_length=24, z_index_dim=4, max_wavelength=8)
    with pytest.raises(ConfigError, match="num_transformer_heads"):
        PerceiverARConfig(num_z_channels=30, num_transformer_heads=4)


def test_a_perceiver_is_not_causal():
    from perceptio import Perceiver, PerceiverConfig, TextAdapterConfig

    model = Perceiver(PerceiverConfig(input_adapter=TextAdapterConfig(max_seq_len=8, num_channels=16)))
    with pytest.raises(TypeError, match="Perceiver is not a causal"):
        model.generate([[2, 3]], 4)


def test_config_round_trip_and_byte_ids():
    from perceptio.tokenizer import CausalByteTokenizer

    config = PerceiverARConfig(max_context_length=64, z_index_dim=8, additional_cross_attend_after_layers=[1])
    assert PerceiverARConfig.from_json(config.to_json()) == config
    tok = CausalByteTokenizer()
    ids = tok.encode("héllo")
    assert min(ids) >= 3 and tok.decode([tok.sos_id, *ids, tok.eos_id]) == "héllo"
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 259\)"):
        tok.decode([300])


def test_prefix_dropout_hides_inputs_only_in_training():
    model = tiny(encoder_dropout_prob=0.5)
    ids = torch.tensor([[2, 5, 9, 11, 7, 30, 8, 9, 10, 11, 12, 13]])
    evaluated = model(ids).logits
    torch.testing.assert_close(model(ids).logits, evaluated)  # eval: deterministic
    model.train()
    torch.manual_seed(1)
    dropped = model(ids).logits
    assert not torch.allclose(dropped, evaluated)
    model.config.encoder_dropout_prob = 0.0
    torch.testing.assert_close(model(ids).logits, evaluated)  # train mode without dropout: the same


@pytest.mark.parametrize("changes", [{}, {"position_encoding_type": "absolute", "position_encoding": "random"}],
                         ids=["rotary", "absolute"])
def test_each_latent_sees_only_its_past(changes):
    model = tiny(**changes)
    ids = torch.randint(3, 40, (2, 16), generator=torch.Generator().manual_seed(0))
    out = model(ids)
    for j, p in enumerate(out.latent_last_steps[0].tolist()):
        changed = ids.clone()
        changed[:, p + 1:] = torch.randint(3, 40, changed[:, p + 1:].shape)
        row = model(changed).logits[:, j]
        torch.testing.assert_close(row, out.logits[:, j], atol=1e-5, rtol=1e-5)
        if p + 1 < ids.shape[1]:  # the next latent does see the change
            assert not torch.allclose(model(changed).logits[:, j + 1], out.logits[:, j + 1])


def test_the_transformer_baseline_is_causal_and_the_same_size():
    from perceptio.bench.causal import perceiver_ar, transformer

    model = transformer().eval()
    ids = torch.randint(3, 259, (1, 12), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 7:] = 5
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])
    ar = sum(p.numel() for p in perceiver_ar(256, 64).parameters())
    tf = sum(p.numel() for p in model.parameters())
    assert abs(ar - tf) / ar < 0.03  # "the same parameter count" of docs/training.md
