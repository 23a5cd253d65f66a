"""Fill-mask on raw text with a small random byte-level model saved to a directory, and with
the model of a masked-byte training run (the same function, [MASK:N] included)."""

from __future__ import annotations

import json

import pytest
import torch

from perceptio import Perceiver, create_model
from perceptio.cli import main
from perceptio.pretrained import is_model_dir
from perceptio.tasks import load_model, load_run, predict_run
from perceptio.train.checkpoint import is_run_dir
from perceptio.tasks.fill_mask import fill_mask, parse_mask_markers
from perceptio.tokenizer import MASK, NUM_SPECIAL_TOKENS
from perceptio.train import Trainer, load_experiment

QUIET = ["train.steps=2", "train.batch_size=8", "train.threads=1", "logging.progress=false", "logging.plots=false"]
SMALL = dict(num_latents=8, num_latent_channels=64, num_self_attends_per_block=2, max_seq_len=64, d_model=32,
             qk_channels=32, v_channels=64, decoder_qk_channels=32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mlm")
    create_model("language-perceiver", **SMALL).save_pretrained(path)
    return path


def expected_fill(model: Perceiver, data: bytes, spans) -> bytes:
    """Greedy byte predictions from one full forward pass over the masked ids."""
    ids = torch.tensor([[b + NUM_SPECIAL_TOKENS for b in data]])
    for s, e in spans:
        ids[0, s:e] = MASK
    with torch.no_grad():
        logits = model(ids).logits[0, : len(data)]
    out = bytearray(data)
    for s, e in spans:
        for i in range(s, e):
            out[i] = int(logits[i, NUM_SPECIAL_TOKENS:].argmax())
    return bytes(out)


def test_markers():
    data, spans = parse_mask_markers("ab[MASK]c[MASK:3]é")
    assert spans == [(2, 3), (4, 7)]
    assert data[:2] == b"ab" and data[3:4] == b"c" and data[7:] == "é".encode()
    with pytest.raises(ValueError, match="masks no byte"):
        parse_mask_markers("a[MASK:0]")


def test_fill_mask_markers_predict_greedy_bytes(model_dir):
    model = Perceiver.from_pretrained(model_dir).eval()
    result = fill_mask(model, "Paris is the capital of[MASK:7].")
    data, spans = parse_mask_markers("Paris is the capital of[MASK:7].")
    expected = expected_fill(model, data, spans)
    assert result.spans == [(23, 30)]
    assert result.text == expected.decode("utf-8", errors="replace")
    assert result.text.startswith("Paris is the capital of") and result.text.endswith(".")
    assert result.fills == [expected[23:30].decode("utf-8", errors="replace")]


def test_fill_mask_byte_ranges_of_literal_text(model_dir):
    model = Perceiver.from_pretrained(model_dir).eval()
    text = "This is an incomplete sentence where some words are missing."
    result = fill_mask(model, text, [(51, 60)])
    expected = expected_fill(model, text.encode(), [(51, 60)])
    assert result.text == expected.decode("utf-8", errors="replace")
    assert result.text[:51] == text[:51]
    # Literal mode: a [MASK] in the text is just text.
    assert fill_mask(model, "[MASK] x", [(7, 8)]).text.startswith("[MASK] ")


def test_fill_mask_errors(model_dir):
    model = Perceiver.from_pretrained(model_dir).eval()
    with pytest.raises(ValueError, match="no \\[MASK\\]"):
        fill_mask(model, "nothing to fill")
    with pytest.raises(ValueError, match="mask span 5:99 is not a non-empty byte range of the 10-byte text"):
        fill_mask(model, "0123456789", [(5, 99)])
    with pytest.raises(ValueError, match="70 bytes long; the model reads at most max_seq_len=64"):
        fill_mask(model, "x" * 69 + "[MASK]")


def test_cli_fill_mask(model_dir, capsys):
    model = Perceiver.from_pretrained(model_dir).eval()
    assert main(["predict", "fill-mask", str(model_dir), "Hello [MASK:5]!"]) == 0
    out = capsys.readouterr().out
    assert out == fill_mask(model, "Hello [MASK:5]!").text + "\n"
    assert main(["predict", "fill-mask", str(model_dir), "Hello world!", "--mask", "6:11", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["spans"] == [[6, 11]] and result["text"] == fill_mask(model, "Hello world!", [(6, 11)]).text
    assert main(["predict", "fill-mask", str(model_dir), "Hello", "--mask", "1-2"]) == 2
    assert "--mask expects START:END" in capsys.readouterr().err


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("mlm_run")
    torch.manual_seed(0)
    Trainer(load_experiment("bytes_mlm", ["data.max_bytes=20000", *QUIET]), run).fit()
    return run


def test_fill_mask_with_spans_on_a_training_run(mlm_run, capsys, tmp_path):
    assert is_run_dir(mlm_run) and not is_model_dir(mlm_run)
    model = load_model(mlm_run)
    assert not model.training
    text = "def f(x):\n    return [MASK:4] + 1[MASK]"
    result = fill_mask(model, text)
    assert result.spans == [(21, 25), (29, 30)]
    data, spans = parse_mask_markers(text)
    assert result.text == expected_fill(model, data, spans).decode("utf-8", errors="replace")
    assert result.text.startswith("def f(x):\n    return ") and "[MASK" not in result.text
    # the run task and the fill-mask task on the run directory give the same text
    (tmp_path / "prompt.txt").write_text(text)
    assert main(["predict", "run", str(mlm_run), text, str(tmp_path / "prompt.txt")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in lines] == [text, str(tmp_path / "prompt.txt")]
    assert all(r["text"] == result.text and r["fills"] == result.fills for r in lines)
    assert main(["predict", "fill-mask", str(mlm_run), text]) == 0
    assert capsys.readouterr().out == result.text + "\n"
    with pytest.raises(ValueError, match="masks no byte"):
        predict_run(load_run(mlm_run), ["x[MASK:0]"])
