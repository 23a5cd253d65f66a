"""Fill masked byte spans of raw text with the byte-level masked language model.

The model predicts one UTF-8 byte per masked position, so a span's length in bytes is
chosen by the user. Two ways to mark spans:

* markers in the text: ``[MASK]`` is one masked byte, ``[MASK:9]`` nine;
* byte ranges of the (literal, unparsed) text: ``mask_spans=[(51, 60)]`` masks and
  re-predicts bytes 51..59, as the reference colab does with " missing.".

As in the reference colab, no special tokens are added and the text is not padded (the
encoder attends to the valid bytes only, so padding would not change the result).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..adapters.text import TextInputAdapter, TiedEmbeddingOutput
from ..model import Perceiver
from ..tokenizer import MASK, NUM_SPECIAL_TOKENS

MASK_MARKER = re.compile(r"\[MASK(?::(\d+))?\]")


@dataclass
class FillMaskResult:
    text: str  # the input with every span filled
    spans: list[tuple[int, int]]  # byte ranges [start, end) of the filled spans, in the filled text
    fills: list[str]  # the predicted text of each span


def parse_mask_markers(text: str) -> tuple[bytes, list[tuple[int, int]]]:
    """``"a [MASK:3] b"`` -> (the UTF-8 bytes with 3 placeholder bytes, [(2, 5)])."""
    data, spans, pos = bytearray(), [], 0
    for m in MASK_MARKER.finditer(text):
        data += text[pos:m.start()].encode("utf-8")
        length = int(m.group(1) or 1)
        if length == 0:
            raise ValueError(f"{m.group(0)!r} masks no byte; use [MASK] or [MASK:N] with N >= 1")
        spans.append((len(data), len(data) + length))
        data += b"\0" * length
        pos = m.end()
    data += text[pos:].encode("utf-8")
    return bytes(data), spans


def _check_spans(spans: Sequence[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    out = []
    for span in spans:
        start, end = span
        if not 0 <= start < end <= length:
            raise ValueError(f"mask span {start}:{end} is not a non-empty byte range of the {length}-byte text")
        out.append((int(start), int(end)))
    return sorted(out)


@torch.no_grad()
def fill_mask(
    model: Perceiver, text: str, mask_spans: Sequence[tuple[int, int]] | None = None
) -> FillMaskResult:
    """Predict the masked bytes (greedy, bytes only) and return the filled text.

    Without ``mask_spans`` the ``[MASK]`` / ``[MASK:N]`` markers of ``text`` are the spans;
    with them, ``text`` is literal and the spans are byte ranges ``(start, end)`` of it."""
    if not isinstance(model.input_adapter, TextInputAdapter) or not isinstance(model.output_adapter, TiedEmbeddingOutput):
        raise ValueError("fill-mask needs a byte-level masked language model (text input adapter and "
                         f"tied_embedding output adapter), got {type(model.input_adapter).__name__} / "
                         f"{type(model.output_adapter).__name__}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if mask_spans is None:
        data, spans = parse_mask_markers(text)
        if not spans:
            raise ValueError("the text has no [MASK] or [MASK:N] marker and no mask spans were given")
    else:
        data = text.encode("utf-8")
        spans = _check_spans(mask_spans, len(data))
        if not spans:
            raise ValueError("mask_spans is empty")
    max_len = model.input_adapter.config.max_seq_len
    if len(data) > max_len:
        raise ValueError(f"the text is {len(data)} bytes long; the model reads at most max_seq_len={max_len}")

    ids = torch.tensor([b + NUM_SPECIAL_TOKENS for b in data], dtype=torch.long)
    masked = torch.cat([torch.arange(s, e) for s, e in spans])
    ids[masked] = MASK
    device = next(model.parameters()).device
    latents, context = model.encode(ids[None].to(device))
    logits = model.decode(latents, context, points=masked.to(device))[0]  # [num_masked, vocab]
    predicted = logits[:, NUM_SPECIAL_TOKENS:].argmax(dim=-1).cpu()  # bytes only, never special ids

    filled = bytearray(data)
    for pos, byte in zip(masked.tolist(), predicted.tolist()):
        filled[pos] = byte
    filled = bytes(filled)
    return FillMaskResult(
        text=filled.decode("utf-8", errors="replace"),
        spans=spans,
        fills=[filled[s:e].decode("utf-8", errors="replace") for s, e in spans],
    )
