"""The byte tokenizer of the Perceiver IO language model.

Ids are UTF-8 bytes shifted by 6 reserved special ids:
pad 0, bos 1, eos 2, mask 3, cls 4, sep 5; byte ``b`` has id ``b + 6``; vocabulary 262.
Decoding drops special ids and decodes the bytes with replacement characters.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

PAD, BOS, EOS, MASK, CLS, SEP = range(6)
NUM_SPECIAL_TOKENS = 6
VOCAB_SIZE = 256 + NUM_SPECIAL_TOKENS


class ByteTokenizer:
    pad_id, bos_id, eos_id, mask_id, cls_id, sep_id = PAD, BOS, EOS, MASK, CLS, SEP
    vocab_size = VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        return [b + NUM_SPECIAL_TOKENS for b in text.encode("utf-8")]

    def decode(self, ids: Iterable[int]) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= int(i) < VOCAB_SIZE]
        if bad:
            raise ValueError(f"token ids must be in [0, {VOCAB_SIZE}), got {bad[:5]}")
        data = bytes(int(i) - NUM_SPECIAL_TOKENS for i in ids if int(i) >= NUM_SPECIAL_TOKENS)
        return data.decode("utf-8", errors="replace")

    def batch_encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad (with ``pad``) or reject texts to ``[B, max_length]`` ids and a bool mask."""
        encoded = [self.encode(t) for t in texts]
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
