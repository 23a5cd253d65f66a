"""Built-in data sets: nothing is downloaded, everything comes from installed packages
or is generated from a seed.

* ``digits``: the 8x8 handwritten digits of scikit-learn (1797 images, 10 classes);
* ``bytes_clm``: causal byte language modelling (Perceiver AR) on the same text;
* ``bytes_mlm``: masked-byte language modelling on Python's own documentation
  (``pydoc_data.topics``, ~460 kB of text in the standard library);
* ``flow_affine``: optical flow of random affine motions of crops of scikit-learn's
  two sample photographs (exact ground-truth flow);
* ``point_shapes``: point clouds sampled on the surfaces of 5 shapes, randomly rotated,
  scaled and jittered;
* ``moving_shapes``: multimodal clips: a video of a moving shape, a tone whose pitch
  depends on the shape, and the shape's class;
* ``parity``: the parity task of PonderNet (Banino et al., 2021): is the number of +1s of a
  vector of -1, 0, +1 odd? With an ``extrapolation`` split of more non-zero entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError, check_positive
from ..tokenizer import MASK, NUM_SPECIAL_TOKENS, VOCAB_SIZE, CausalByteTokenizer
from .base import ArrayDataset, Batch, DataConfig, DataInfo, Splits, random_splits


def _require_sklearn():
    try:
        import sklearn.datasets
    except ImportError:
        raise ImportError("this built-in data set needs scikit-learn: pip install 'perceptio[train]'") from None
    return sklearn.datasets


# ---------------------------------------------------------------------------------------
# Digits
# ---------------------------------------------------------------------------------------
def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image ``[B, H, W, C]`` by up to ``max_shift`` pixels (zero fill)."""
    if max_shift <= 0:
        return images
    b, h, w, _ = images.shape
    padded = F.pad(images, (0, 0, max_shift, max_shift, max_shift, max_shift))
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [B, 1, W]
    return padded[torch.arange(b)[:, None, None], rows, cols]


@DataConfig.register("digits")
@dataclass(kw_only=True)
class DigitsConfig(DataConfig):
    """scikit-learn's 8x8 digits as images ``[8, 8, 1]`` in [0, 1]."""

    max_shift: int = 1  # training augmentation: random shifts of up to this many pixels
    digits: list[int] | None = None  # keep only these digits (classes in this order); None: all ten
    train_examples: int | None = None  # keep only the first N training examples (few-shot transfer)

    def validate(self) -> None:
        super().validate()
        check_positive(self, "train_examples")
        if self.digits is not None and (not self.digits or len(set(self.digits)) != len(self.digits)
                                        or not all(0 <= d <= 9 for d in self.digits)):
            raise ConfigError(f"data.digits must be distinct digits 0-9, got {self.digits}")

    def load(self) -> Splits:
        digits = _require_sklearn().load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32)[..., None] / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        kept = list(range(10)) if self.digits is None else self.digits
        keep = torch.isin(labels, torch.tensor(kept))
        images, labels = images[keep], torch.tensor([kept.index(int(y)) for y in labels[keep]], dtype=torch.long)
        info = DataInfo("classification", [str(d) for d in kept])
        splits = random_splits(ArrayDataset({"inputs": images, "targets": labels}), info,
                               self.val_fraction, self.test_fraction, self.split_seed)
        splits.limit_train(self.train_examples).train.transform = self._augment
        return splits

    def _augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        return {**batch, "inputs": random_shift(batch["inputs"], self.max_shift, generator)}


# ---------------------------------------------------------------------------------------
# Byte-level masked language modelling
# ---------------------------------------------------------------------------------------
def mask_tokens(ids: Tensor, mask_prob: float, generator: torch.Generator, special: Tensor | None = None) -> Batch:
    """BERT masking of byte ids ``[B, L]``: ``mask_prob`` of the positions are predicted;
    of those 80% become ``[MASK]``, 10% a random byte, 10% stay. Returns inputs, targets
    and the bool ``mask`` of predicted positions."""
    predict = torch.rand(ids.shape, generator=generator) < mask_prob
    if special is not None:
        predict &= ~special
    roll = torch.rand(ids.shape, generator=generator)
    random_bytes = torch.randint(NUM_SPECIAL_TOKENS, VOCAB_SIZE, ids.shape, generator=generator)
    inputs = torch.where(predict & (roll < 0.8), torch.full_like(ids, MASK), ids)
    inputs = torch.where(predict & (roll >= 0.8) & (roll < 0.9), random_bytes, inputs)
    return {"inputs": inputs, "targets": ids, "mask": predict}


@dataclass(kw_only=True)
class TextMLMConfig(DataConfig):
    """Common settings of the masked-byte data sets: the text is cut into sequences of
    ``seq_len`` UTF-8 bytes (byte ids of :mod:`perceptio.tokenizer`)."""

    seq_len: int = 128
    mask_prob: float = 0.15

    def validate(self) -> None:
        super().validate()
        check_positive(self, "seq_len")
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"data.mask_prob must be in (0, 1), got {self.mask_prob}")

    def text_bytes(self) -> bytes:
        raise NotImplementedError

    def load(self) -> Splits:
        data = torch.frombuffer(bytearray(self.text_bytes()), dtype=torch.uint8).long() + NUM_SPECIAL_TOKENS
        n = data.numel() // self.seq_len
        if n < 3:
            raise ValueError(f"{self.describe()}: {data.numel()} bytes make fewer than 3 sequences of "
                             f"data.seq_len={self.seq_len}; give more text or lower seq_len")
        ids = data[: n * self.seq_len].reshape(n, self.seq_len)
        splits = random_splits(ArrayDataset({"ids": ids}), DataInfo("mlm"), self.val_fraction,
                               self.test_fraction, self.split_seed)
        counts = torch.bincount(splits.train.fields["ids"].flatten(), minlength=VOCAB_SIZE)
        splits.info.extras["unigram_top_id"] = int(counts.argmax())
        for split in (splits.train, splits.val, splits.test):
            split.transform = self._mask
        return splits

    def _mask(self, batch: Batch, generator: torch.Generator) -> Batch:
        return mask_tokens(batch["ids"], self.mask_prob, generator)


@DataConfig.register("bytes_mlm")
@dataclass(kw_only=True)
class BytesMLMConfig(TextMLMConfig):
    """Python's documentation topics (``pydoc_data.topics``), in sorted topic order."""

    max_bytes: int | None = None  # use only the first max_bytes bytes

    def text_bytes(self) -> bytes:
        return pydoc_topics(self.max_bytes)

    def describe(self) -> str:
        return "data (kind=bytes_mlm, pydoc_data.topics)"


def pydoc_topics(max_bytes: int | None = None) -> bytes:
    """Python's documentation topics (``pydoc_data.topics``) in sorted topic order, UTF-8."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")
    return text[:max_bytes] if max_bytes else text


@DataConfig.register("bytes_clm")
@dataclass(kw_only=True)
class BytesCLMConfig(DataConfig):
    """Causal byte language modelling on ``pydoc_data.topics``. The text is split into
    contiguous regions (train, then val, then test: no held-out byte is ever trained on), each
    cut into windows of ``seq_len + 1`` ids every ``stride`` bytes (ids of
    :class:`perceptio.tokenizer.CausalByteTokenizer`); ``inputs`` are a window's first
    ``seq_len`` ids, ``targets`` its last ``seq_len`` (the next byte of each input). With
    ``stride`` equal to the model's latents, evaluation scores every held-out byte once."""

    seq_len: int = 256
    stride: int = 64
    max_bytes: int | None = None  # use only the first max_bytes bytes of the text

    def validate(self) -> None:
        super().validate()
        check_positive(self, "seq_len", "stride", "max_bytes")

    def load(self) -> Splits:
        tok = CausalByteTokenizer()
        data = torch.frombuffer(bytearray(pydoc_topics(self.max_bytes)), dtype=torch.uint8).long() + tok.offset
        n = data.numel()
        n_test, n_val = int(n * self.test_fraction), int(n * self.val_fraction)
        regions = {"train": data[: n - n_val - n_test], "val": data[n - n_val - n_test: n - n_test],
                   "test": data[n - n_test:]}
        sets = {}
        for name, region in regions.items():
            if region.numel() < self.seq_len + 1:
                raise ValueError(f"{self.describe()}: the {name} region has {region.numel()} bytes, fewer than "
                                 f"data.seq_len + 1 = {self.seq_len + 1}; lower seq_len or change the split fractions")
            windows = region.unfold(0, self.seq_len + 1, self.stride)
            sets[name] = ArrayDataset({"inputs": windows[:, :-1].contiguous(), "targets": windows[:, 1:].contiguous()})
        counts = torch.bincount(regions["train"], minlength=tok.vocab_size).double() + 1.0  # add-one smoothing
        unigram_bits = -(counts / counts.sum()).log2()
        info = DataInfo("clm", extras={"unigram_bits": unigram_bits.float().tolist()})
        return Splits(sets["train"], sets["val"], sets["test"], info)

    def describe(self) -> str:
        return "data (kind=bytes_clm, pydoc_data.topics)"


# ---------------------------------------------------------------------------------------
# Optical flow of random affine motions
# ---------------------------------------------------------------------------------------
def affine_flow_pair(image: Tensor, size: int, generator: torch.Generator, max_shift: float, max_rotation: float,
                     max_scale: float) -> tuple[Tensor, Tensor]:
    """A random ``size x size`` crop of ``image [C, H, W]`` and its image under a random
    affine motion. Returns frames ``[2, size, size, C]`` and the flow ``[size, size, 2]``
    (dx, dy in pixels) that carries each pixel of frame 1 to frame 2."""
    c, h, w = image.shape
    r = lambda: float(torch.rand((), generator=generator)) * 2 - 1  # noqa: E731
    angle, scale = r() * max_rotation * math.pi / 180, 1 + r() * max_scale
    shift = torch.tensor([r() * max_shift, r() * max_shift])
    margin = int(math.ceil(size * 0.75 + max_shift)) + 2
    cy = int(torch.randint(margin, h - margin, (), generator=generator))
    cx = int(torch.randint(margin, w - margin, (), generator=generator))
    ys, xs = torch.meshgrid(torch.arange(size) - (size - 1) / 2, torch.arange(size) - (size - 1) / 2, indexing="ij")
    p = torch.stack([xs, ys], -1)  # [S, S, 2] pixel offsets from the crop centre (x, y)
    a = scale * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    flow = p @ a.T + shift - p  # p -> A p + t
    # frame2(q) = frame1(A^-1 (q - t)); sample the source image at those points
    src = (p - shift) @ torch.linalg.inv(a).T

    def sample(points: Tensor) -> Tensor:
        gx = (points[..., 0] + cx) / (w - 1) * 2 - 1
        gy = (points[..., 1] + cy) / (h - 1) * 2 - 1
        grid = torch.stack([gx, gy], -1)[None]
        return F.grid_sample(image[None], grid, mode="bilinear", align_corners=True)[0].permute(1, 2, 0)

    return torch.stack([sample(p), sample(src)]), flow


@DataConfig.register("flow_affine")
@dataclass(kw_only=True)
class FlowAffineConfig(DataConfig):
    """Frame pairs ``[2, size, size, 3]`` (RGB in [0, 1]) from scikit-learn's sample
    photographs (downscaled by ``downscale``) under random affine motions; target: the flow
    ``[size, size, 2]`` in pixels."""

    num_examples: int = 2000
    size: int = 24
    downscale: int = 4
    max_shift: float = 2.0
    max_rotation: float = 5.0  # degrees
    max_scale: float = 0.05
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_positive(self, "num_examples", "size", "downscale")

    def load(self) -> Splits:
        images = _require_sklearn().load_sample_images().images
        sources = [
            F.avg_pool2d(torch.tensor(im, dtype=torch.float32).permute(2, 0, 1)[None] / 255, self.downscale)[0]
            for im in images
        ]
        gen = torch.Generator().manual_seed(self.seed)
        frames, flows = [], []
        for i in range(self.num_examples):
            f, fl = affine_flow_pair(sources[i % len(sources)], self.size, gen, self.max_shift, self.max_rotation,
                                     self.max_scale)
            frames.append(f)
            flows.append(fl)
        dataset = ArrayDataset({"inputs": torch.stack(frames), "targets": torch.stack(flows)})
        return random_splits(dataset, DataInfo("dense"), self.val_fraction, self.test_fraction, self.split_seed)


# ---------------------------------------------------------------------------------------
# Point clouds of shapes
# ---------------------------------------------------------------------------------------
SHAPES = ("sphere", "cube", "cylinder", "cone", "torus")


def sample_shape(shape: str, n: int, gen: torch.Generator) -> Tensor:
    """``n`` points ``[n, 3]`` on the surface of a unit-size ``shape``."""
    u, v = torch.rand(2, n, generator=gen)
    if shape == "sphere":
        z, phi = 2 * u - 1, 2 * math.pi * v
        r = (1 - z**2).sqrt()
        return torch.stack([r * phi.cos(), r * phi.sin(), z], -1)
    if shape == "cube":
        pts = torch.rand(n, 3, generator=gen) * 2 - 1
        axis = torch.randint(0, 3, (n,), generator=gen)
        sign = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
        pts[torch.arange(n), axis] = sign
        return pts
    if shape == "cylinder":
        phi = 2 * math.pi * v
        return torch.stack([phi.cos(), phi.sin(), 2 * u - 1], -1)
    if shape == "cone":
        h = u.sqrt()  # uniform over the lateral surface
        phi = 2 * math.pi * v
        return torch.stack([h * phi.cos(), h * phi.sin(), 1 - 2 * h], -1)
    if shape == "torus":
        a, b = 2 * math.pi * u, 2 * math.pi * v
        r = 0.7 + 0.3 * b.cos()
        return torch.stack([r * a.cos(), r * a.sin(), 0.3 * b.sin()], -1)
    raise ValueError(f"unknown shape {shape!r}; allowed: {list(SHAPES)}")


def random_rotations(n: int, gen: torch.Generator) -> Tensor:
    """``n`` uniformly random rotation matrices ``[n, 3, 3]`` (QR of Gaussian matrices)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=gen))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    return q * torch.sign(torch.det(q))[:, None, None]


@DataConfig.register("point_shapes")
@dataclass(kw_only=True)
class PointShapesConfig(DataConfig):
    """Point clouds ``[num_points, 3]`` of 5 shapes (sphere, cube, cylinder, cone, torus),
    randomly rotated, scaled by [0.6, 1] per axis and jittered; label: the shape."""

    num_examples: int = 1500
    num_points: int = 128
    jitter: float = 0.02
    augment: bool = True  # training: a new random rotation of every cloud in every batch
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_positive(self, "num_examples", "num_points")

    def load(self) -> Splits:
        gen = torch.Generator().manual_seed(self.seed)
        clouds, labels = [], []
        for i in range(self.num_examples):
            label = i % len(SHAPES)
            pts = sample_shape(SHAPES[label], self.num_points, gen)
            pts = pts * (0.6 + 0.4 * torch.rand(3, generator=gen))
            pts = pts @ random_rotations(1, gen)[0].T + self.jitter * torch.randn(pts.shape, generator=gen)
            clouds.append(pts)
            labels.append(label)
        dataset = ArrayDataset({"inputs": torch.stack(clouds), "targets": torch.tensor(labels)})
        splits = random_splits(dataset, DataInfo("classification", list(SHAPES)), self.val_fraction,
                               self.test_fraction, self.split_seed)
        if self.augment:
            splits.train.transform = self._rotate
        return splits

    @staticmethod
    def _rotate(batch: Batch, generator: torch.Generator) -> Batch:
        rotations = random_rotations(batch["inputs"].shape[0], generator)
        return {**batch, "inputs": batch["inputs"] @ rotations.transpose(1, 2)}


# ---------------------------------------------------------------------------------------
# Multimodal moving shapes
# ---------------------------------------------------------------------------------------
SPRITES = ("square", "disc", "cross", "ring")


def sprite(kind: str, size: int) -> Tensor:
    c = (size - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    r = (xs**2 + ys**2).sqrt()
    if kind == "square":
        return torch.ones(size, size)
    if kind == "disc":
        return (r <= c + 0.5).float()
    if kind == "cross":
        return ((xs.abs() < 1) | (ys.abs() < 1)).float()
    if kind == "ring":
        return ((r <= c + 0.5) & (r >= c - 1.0)).float()
    raise ValueError(f"unknown sprite {kind!r}; allowed: {list(SPRITES)}")


@DataConfig.register("moving_shapes")
@dataclass(kw_only=True)
class MovingShapesConfig(DataConfig):
    """Clips of ``num_frames`` frames ``[frames, size, size, 1]`` of one shape moving in a
    straight line, a tone ``[num_samples]`` whose pitch is set by the shape (random amplitude,
    and random phase if ``random_phase``), and the class (one-hot ``[4]``): inputs and targets
    are the same dict ``{video, audio, label}`` (multimodal autoencoding; the label input is
    masked by the model)."""

    num_examples: int = 1200
    num_frames: int = 8
    size: int = 16
    sprite_size: int = 5
    num_samples: int = 512
    noise: float = 0.05
    random_phase: bool = False
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_positive(self, "num_examples", "num_frames", "size", "sprite_size", "num_samples")
        if self.sprite_size >= self.size:
            raise ConfigError(f"data.sprite_size={self.sprite_size} must be smaller than data.size={self.size}")

    def load(self) -> Splits:
        gen = torch.Generator().manual_seed(self.seed)
        n, t, s, k = self.num_examples, self.num_frames, self.size, self.sprite_size
        sprites = torch.stack([sprite(name, k) for name in SPRITES])
        labels = torch.arange(n) % len(SPRITES)
        video = torch.zeros(n, t, s, s)
        span = s - k
        start = torch.rand(n, 2, generator=gen) * span
        end = torch.rand(n, 2, generator=gen) * span
        for i in range(n):
            for f in range(t):
                y, x = (start[i] + (end[i] - start[i]) * f / max(t - 1, 1)).round().long().tolist()
                video[i, f, y:y + k, x:x + k] = sprites[labels[i]]
        video = video + self.noise * torch.randn(video.shape, generator=gen)
        freqs = torch.tensor([4.0, 8.0, 12.0, 16.0])[labels]  # cycles per clip
        phase = torch.rand(n, 1, generator=gen) * 2 * math.pi * float(self.random_phase)
        amp = 0.5 + 0.5 * torch.rand(n, 1, generator=gen)
        time = torch.arange(self.num_samples) / self.num_samples
        audio = amp * torch.sin(2 * math.pi * freqs[:, None] * time + phase)
        audio = audio + self.noise * torch.randn(audio.shape, generator=gen)
        data = {"video": video[..., None], "audio": audio, "label": F.one_hot(labels, len(SPRITES)).float()}
        dataset = ArrayDataset({"inputs": data, "targets": {**data, "label": labels}})
        return random_splits(dataset, DataInfo("multimodal", list(SPRITES)), self.val_fraction,
                             self.test_fraction, self.split_seed)


# ---------------------------------------------------------------------------------------
# Parity (PonderNet)
# ---------------------------------------------------------------------------------------
def parity_vectors(n: int, size: int, low: int, high: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` vectors ``[n, size]`` with a uniform number in ``[low, high]`` of entries set to
    +1 or -1 (random places and signs), the rest 0. Returns the vectors, the parity of their
    number of +1s ``[n]`` and their number of non-zero entries ``[n]``."""
    count = torch.randint(low, high + 1, (n,), generator=gen)
    rank = torch.rand(n, size, generator=gen).argsort(1).argsort(1)  # a random order of the places
    sign = torch.randint(0, 2, (n, size), generator=gen).float() * 2 - 1
    x = torch.where(rank < count[:, None], sign, torch.zeros(()))
    return x, (x == 1).sum(1) % 2, count


@DataConfig.register("parity")
@dataclass(kw_only=True)
class ParityConfig(DataConfig):
    """Vectors ``[size, 1]`` of -1, 0, +1 with ``min_nonzero`` to ``max_nonzero`` non-zero
    entries; label: whether the number of +1s is odd (classes ``even``, ``odd``). Each
    example also has its ``difficulty``, the number of non-zero entries. The
    ``extrapolation`` split (``num_extrapolation`` examples, 0: none) has more non-zero
    entries than any training example: from ``max_nonzero + 1`` to ``size``."""

    size: int = 8
    min_nonzero: int = 1
    max_nonzero: int = 4
    num_examples: int = 20000
    num_extrapolation: int = 2000
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_positive(self, "size", "min_nonzero", "max_nonzero", "num_examples")
        if not self.min_nonzero <= self.max_nonzero <= self.size:
            raise ConfigError(f"data.min_nonzero={self.min_nonzero} <= data.max_nonzero={self.max_nonzero} <= "
                              f"data.size={self.size} is required")
        if self.num_extrapolation < 0:
            raise ConfigError(f"data.num_extrapolation must be >= 0, got {self.num_extrapolation}")
        if self.num_extrapolation and self.max_nonzero == self.size:
            raise ConfigError(f"data.num_extrapolation={self.num_extrapolation} needs data.max_nonzero < data.size "
                              f"(={self.size}): the extrapolation split has more non-zero entries than training")

    def load(self) -> Splits:
        gen = torch.Generator().manual_seed(self.seed)

        def dataset(n: int, low: int, high: int) -> ArrayDataset:
            x, target, count = parity_vectors(n, self.size, low, high, gen)
            return ArrayDataset({"inputs": x[..., None], "targets": target, "difficulty": count})

        splits = random_splits(dataset(self.num_examples, self.min_nonzero, self.max_nonzero),
                               DataInfo("classification", ["even", "odd"]), self.val_fraction, self.test_fraction,
                               self.split_seed)
        if self.num_extrapolation:
            splits.more["extrapolation"] = dataset(self.num_extrapolation, self.max_nonzero + 1, self.size)
        return splits
