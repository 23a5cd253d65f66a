"""Perceiver AR in the trainer: the causal LM objective, bytes_clm, evaluate and generate."""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F

from perceptio.cli import main
from perceptio.data.base import DataInfo
from perceptio.perceiver_ar import PerceiverAR, PerceiverARConfig
from perceptio.train.objectives import CausalLanguageModel

TINY = ["model.perceiver_ar.input_embed_dim=16", "model.perceiver_ar.num_z_channels=16",
        "model.perceiver_ar.z_index_dim=8", "model.perceiver_ar.max_context_length=32",
        "model.perceiver_ar.max_wavelength=32", "model.perceiver_ar.num_transformers_per_block=1",
        "data.seq_len=32", "data.stride=8", "data.max_bytes=6000", "train.steps=4", "train.batch_size=4",
        "train.eval_every=4", "train.checkpoint_every=4", "train.eval_batch_size=64", "logging.progress=false",
        "logging.plots=false"]


def test_causal_lm_loss_is_scored_at_the_latent_positions_only():
    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig(num_classes=20, max_context_length=8, input_embed_dim=8, num_z_channels=8,
                                          z_index_dim=3, num_transformers_per_block=1, num_cross_attend_heads=1,
                                          num_transformer_heads=1, final_layer_init_zeros=False)).eval()
    inputs = torch.tensor([[2, 5, 6, 7, 8, 9, 10, 11], [2, 5, 0, 0, 0, 0, 0, 0]])
    targets = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [5, 0, 0, 0, 0, 0, 0, 0]])
    unigram = [math.log2(20)] * 20
    loss, sums = CausalLanguageModel(DataInfo("clm", extras={"unigram_bits": unigram})).loss(
        model, {"inputs": inputs, "targets": targets}, torch.Generator())
    logits = model(inputs).logits
    # row 0: latents on inputs 5, 6, 7 predict targets 10, 11, 12; row 1 (length 2): latents on -1
    # (invalid), 0 and 1; input 0 predicts 5, input 1's target is padding
    picked = torch.cat([logits[0], logits[1, 1:2]])
    expected = F.cross_entropy(picked, torch.tensor([10, 11, 12, 5]))
    torch.testing.assert_close(loss, expected)
    assert sums["bits_per_byte"][1] == 4
    assert math.isclose(sums["bits_per_byte"][0] / 4, expected.item() / math.log(2), rel_tol=1e-5)
    assert math.isclose(sums["unigram_bits_per_byte"][0] / 4, math.log2(20), rel_tol=1e-6)


def test_train_evaluate_generate(tmp_path, capsysbinary):
    run = tmp_path / "run"
    sets = [a for s in TINY for a in ("--set", s)]
    assert main(["train", "bytes_clm", "--run-dir", str(run), *sets]) == 0
    capsysbinary.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    metrics = json.loads(capsysbinary.readouterr().out.decode().strip().splitlines()[-1])
    for split in ("val", "test"):
        assert metrics[split]["bits_per_byte"] > 0 and metrics[split]["unigram_bits_per_byte"] > 0
    assert main(["generate", str(run), "--prompt", "def f", "--max-new-tokens", "5", "--seed", "1"]) == 0
    out = capsysbinary.readouterr().out
    assert out.startswith(b"def f") and out.endswith(b"\n")
    assert main(["generate", str(run), "--prompt", "x", "--temperature", "0"]) == 2
    assert b"temperature must be a finite number > 0" in capsysbinary.readouterr().err
    assert main(["generate", str(run), "--prompt", "x" * 40, "--no-truncate"]) == 2
    assert b"max_context_length=32" in capsysbinary.readouterr().err


def test_generate_refuses_a_model_that_is_not_causal(tmp_path, capsys):
    run = tmp_path / "digits"
    assert main(["train", "quickstart", "--run-dir", str(run), "--set", "train.steps=2", "--set",
                 "train.eval_every=2", "--set", "logging.progress=false", "--set", "logging.plots=false"]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("perceptio generate: error: ") and "Perceiver is not a causal" in err
    assert str(run) in err and "Traceback" not in err
