"""The byte tokenizer of the Perceiver IO language model.

Ids are UTF-8 bytes shifted by 6 reserved special ids:
pad 0, bos 1, eos 2, mask 3, cls 4, sep 5; byte ``b`` has id ``b + 6``; vocabulary 262.
These are the ids of ``transformers``' ``PerceiverTokenizer``.

``encode`` / ``decode`` are the reference's (no special tokens added; decoding drops
special ids and decodes the bytes with replacement characters). Calling the tokenizer,
``tokenizer(texts, padding=..., truncation=..., max_length=..., return_tensors="pt")``,
``encode(text, add_special_tokens=True)`` and ``decode(ids, skip_special_tokens=False)``
behave as ``PerceiverTokenizer`` (``[CLS] bytes [SEP]``, special tokens decoded as
``"[CLS]"`` ...); docs/transformers.md says what of its API is covered.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch

PAD, BOS, EOS, MASK, CLS, SEP = range(6)
NUM_SPECIAL_TOKENS = 6
VOCAB_SIZE = 256 + NUM_SPECIAL_TOKENS
# As written by transformers' PerceiverTokenizer.
SPECIAL_TOKENS = {PAD: "[PAD]", BOS: "[BOS]", EOS: "[EOS]", MASK: "[MASK]", CLS: "[CLS]", SEP: "[SEP]"}


class Encoding(dict):
    """``{"input_ids": ..., "attention_mask": ...}``, also readable as attributes
    (``enc.input_ids``), like ``transformers``' ``BatchEncoding``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class ByteTokenizer:
    pad_id, bos_id, eos_id, mask_id, cls_id, sep_id = PAD, BOS, EOS, MASK, CLS, SEP
    # the transformers names of the same
    pad_token_id, bos_token_id, eos_token_id, mask_token_id, cls_token_id, sep_token_id = PAD, BOS, EOS, MASK, CLS, SEP
    vocab_size = VOCAB_SIZE
    model_max_length = 2048  # the language model's max_seq_len

    def __len__(self) -> int:
        return VOCAB_SIZE

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """UTF-8 byte ids of ``text``; ``add_special_tokens``: ``[CLS] ... [SEP]``, as
        ``transformers`` (whose default it is)."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        ids = [b + NUM_SPECIAL_TOKENS for b in text.encode("utf-8")]
        return [CLS, *ids, SEP] if add_special_tokens else ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special ids are dropped, or written ``"[CLS]"`` ... with
        ``skip_special_tokens=False`` (the ``transformers`` default). Invalid UTF-8 becomes U+FFFD."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= int(i) < VOCAB_SIZE]
        if bad:
            raise ValueError(f"token ids must be in [0, {VOCAB_SIZE}), got {bad[:5]}")
        parts = bytearray()
        for i in map(int, ids):
            if i >= NUM_SPECIAL_TOKENS:
                parts.append(i - NUM_SPECIAL_TOKENS)
            elif not skip_special_tokens:
                parts += SPECIAL_TOKENS[i].encode("utf-8")
        return bytes(parts).decode("utf-8", errors="replace")

    def batch_encode(self, texts: list[str], max_length: int, truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad (with ``pad``) texts to ``[B, max_length]`` ids and a bool mask (True = a byte);
        longer texts are an error, or with ``truncate`` cut to their first ``max_length`` bytes."""
        encoded = [self.encode(t)[:max_length] if truncate else self.encode(t) for t in texts]
        too_long = [i for i, e in enumerate(encoded) if len(e) > max_length]
        if too_long:
            i = too_long[0]
            raise ValueError(f"text {i} is {len(encoded[i])} bytes long, more than max_length={max_length}")
        ids = torch.full((len(texts), max_length), PAD, dtype=torch.long)
        mask = torch.zeros((len(texts), max_length), dtype=torch.bool)
        for row, e in enumerate(encoded):
            ids[row, : len(e)] = torch.tensor(e, dtype=torch.long)
            mask[row, : len(e)] = True
        return ids, mask

    def __call__(
        self,
        text: str | list[str] | None = None,
        *,
        text_target: str | list[str] | None = None,
        add_special_tokens: bool = True,
        padding: bool | Literal["longest", "max_length", "do_not_pad"] = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: Literal["pt"] | None = None,
    ) -> Encoding:
        """``transformers``-style encoding of one text or a list: ``input_ids`` and
        ``attention_mask`` (1 = token, 0 = padding), lists or, with ``return_tensors="pt"``,
        ``[B, L]`` long tensors. ``padding=True`` / ``"longest"`` pads to the longest text,
        ``"max_length"`` to ``max_length``; ``truncation`` cuts at ``max_length`` (default
        ``model_max_length``). ``text_target`` is encoded like ``text`` (an encoder-only
        model has no decoder inputs)."""
        if (text is None) == (text_target is None):
            raise ValueError("give exactly one of `text` and `text_target`")
        text = text if text is not None else text_target
        single = isinstance(text, str)
        texts = [text] if single else text
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
        if padding not in (False, True, "longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding must be False, True, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        limit = max_length if max_length is not None else self.model_max_length
        specials = 2 if add_special_tokens else 0
        if truncation and limit < specials:
            raise ValueError(f"max_length={limit} leaves no room for the {specials} special tokens")
        ids = [self.encode(t) for t in texts]
        if truncation:  # the text is cut, not [SEP]
            ids = [e[: limit - specials] for e in ids]
        if add_special_tokens:
            ids = [[CLS, *e, SEP] for e in ids]
        if padding == "max_length":
            width = limit
        elif padding in (True, "longest"):
            width = max(map(len, ids), default=0)
        else:
            width = None
        lengths = [len(e) for e in ids]
        if width is not None:
            ids = [e + [PAD] * (width - len(e)) for e in ids]
        masks = [[1] * n + [0] * (len(e) - n) for e, n in zip(ids, lengths)]
        if return_tensors == "pt":
            if len({len(e) for e in ids}) > 1:
                raise ValueError("texts of different lengths make no tensor: pass padding=True")
            return Encoding(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(masks))
        if return_tensors is not None:
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        return Encoding(input_ids=ids[0] if single else ids, attention_mask=masks[0] if single else masks)

class CausalByteTokenizer:
    """The byte ids of Perceiver AR (the official code's): pad 0, eos 1, sos 2, byte ``b`` is
    ``b + 3``; vocabulary 259. Decoding drops the reserved ids."""

    pad_id, eos_id, sos_id = 0, 1, 2
    offset = 3
    vocab_size = 256 + offset

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        return [b + self.offset for b in text.encode("utf-8")]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {bad[:5]}")
        return bytes(int(i) - self.offset for i in ids if int(i) >= self.offset)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
