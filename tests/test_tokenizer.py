"""ByteTokenizer where its API overlaps transformers' PerceiverTokenizer: the same ids,
masks and texts (the cases of transformers' own test_tokenization_perceiver.py included)."""

from __future__ import annotations

import pytest
import torch

from perceptio import ByteTokenizer

TEXTS = ["Unicode €.", "e è é ê ë", "A long paragraph for summarization.", "Another paragraph for summarization.",
         "", "\x00 nul and 😀"]


@pytest.fixture(scope="module")
def theirs():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    return transformers.PerceiverTokenizer()  # byte level: nothing is downloaded


def test_the_cases_of_transformers_tests():
    tok = ByteTokenizer()
    encoded_ids = [4, 91, 116, 111, 105, 117, 106, 107, 38, 232, 136, 178, 52, 5]
    assert tok("Unicode €.")["input_ids"] == encoded_ids
    assert tok.decode(encoded_ids, skip_special_tokens=False) == "[CLS]Unicode €.[SEP]"
    assert tok.decode(encoded_ids) == "Unicode €."  # the reference's default drops special ids
    assert tok.decode(tok.encode("e è é ê ë", add_special_tokens=True), skip_special_tokens=False) == (
        "[CLS]e è é ê ë[SEP]"
    )
    assert tok.decode([178]) == "\ufffd"
    batch = tok(TEXTS[2:4], padding=True, return_tensors="pt")
    assert batch.input_ids.shape == batch.attention_mask.shape == (2, 38)
    assert batch.input_ids[0, -1] == tok.pad_token_id and batch.attention_mask[0].tolist() == [1] * 37 + [0]
    assert set(batch) == {"input_ids", "attention_mask"}
    targets = tok(text_target=["Summary of the text.", "Another summary."], max_length=32, padding="max_length",
                  truncation=True, return_tensors="pt")
    assert targets["input_ids"].shape == (2, 32)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"add_special_tokens": False}, {"padding": True}, {"padding": "max_length", "max_length": 16},
     {"truncation": True, "max_length": 5}, {"padding": "longest", "truncation": True, "max_length": 9,
                                              "return_tensors": "pt"}],
)
def test_call_matches_transformers(theirs, kwargs):
    ours = ByteTokenizer()
    for text in (TEXTS, TEXTS[0]):
        if kwargs.get("return_tensors") and isinstance(text, str):
            continue
        a, b = ours(text, **kwargs), theirs(text, **kwargs)
        for key in ("input_ids", "attention_mask"):
            if isinstance(b[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key


def test_encode_decode_match_transformers(theirs):
    ours = ByteTokenizer()
    assert len(ours) == len(theirs) == 262  # (their vocab_size counts the 256 bytes only)
    for name in ("pad", "bos", "eos", "mask", "cls", "sep"):
        assert getattr(ours, f"{name}_token_id") == getattr(theirs, f"{name}_token_id"), name
    for text in TEXTS:
        ids = theirs.encode(text)
        assert ours.encode(text, add_special_tokens=True) == ids
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False)
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids)
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
    every = list(range(len(ours)))
    assert ours.decode(every, skip_special_tokens=False) == theirs.decode(every)


def test_bad_arguments_are_named():
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match="exactly one of `text` and `text_target`"):
        tok()
    with pytest.raises(TypeError, match="a str or a list of str, got int"):
        tok(3)
    with pytest.raises(ValueError, match="padding must be"):
        tok("a", padding="left")
    with pytest.raises(ValueError, match="pass padding=True"):
        tok(["a", "bb"], return_tensors="pt")
    with pytest.raises(ValueError, match="return_tensors must be 'pt' or None, got 'np'"):
        tok("a", return_tensors="np")
