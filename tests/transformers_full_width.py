"""Parity of ``from_transformers`` on ``transformers`` Perceiver models with the widths of
the released checkpoints (random weights: no checkpoint is downloaded). Not collected by
pytest (minutes on a CPU); run ``python tests/transformers_full_width.py [class names]``."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
import transformers

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from perceptio import from_transformers  # noqa: E402
from helpers import randomize  # noqa: E402

G = torch.Generator().manual_seed(0)

# class -> (config overrides, inputs)
CASES = {
    # deepmind/language-perceiver (as transformers' conversion script configures it);
    # 1500 tokens + 548 padding
    "PerceiverForMaskedLM": (
        dict(qk_channels=8 * 32, v_channels=1280),
        lambda: {
            "inputs": torch.randint(0, 262, (1, 2048), generator=G),
            "attention_mask": torch.cat([torch.ones(1, 1500), torch.zeros(1, 548)], dim=1),
        },
    ),
    # deepmind/vision-perceiver-conv
    "PerceiverForImageClassificationConvProcessing": (
        dict(num_latents=512, d_latents=1024, d_model=322, num_blocks=8, num_self_attends_per_block=6,
             num_self_attention_heads=8, num_cross_attention_heads=1, image_size=224, num_labels=1000),
        lambda: {"inputs": torch.randn((1, 3, 224, 224), generator=G)},
    ),
    # deepmind/optical-flow-perceiver widths, on 96 x 128 frames instead of 368 x 496
    "PerceiverForOpticalFlow": (
        dict(num_latents=2048, d_latents=512, d_model=322, num_blocks=1, num_self_attends_per_block=24,
             num_self_attention_heads=16, num_cross_attention_heads=1, train_size=[96, 128]),
        lambda: {"inputs": torch.randn((1, 2, 27, 96, 128), generator=G)},
    ),
    # deepmind/multimodal-perceiver widths, subsampled decoding as in the transformers docs
    "PerceiverForMultimodalAutoencoding": (
        dict(num_latents=784, d_latents=512, d_model=704, num_blocks=1, num_self_attends_per_block=8,
             num_self_attention_heads=8, num_cross_attention_heads=1, num_labels=700, image_size=224,
             num_frames=16, audio_samples_per_frame=1920, samples_per_patch=16, output_shape=[1, 16, 224, 224],
             output_num_channels=512, _label_trainable_num_channels=1024),
        lambda: {
            "inputs": {
                "image": torch.randn((1, 16, 3, 224, 224), generator=G),
                "audio": torch.randn((1, 30720, 1), generator=G),
                "label": torch.zeros(1, 700),
            },
            "subsampled_output_points": {"image": torch.arange(6272), "audio": torch.arange(240), "label": None},
        },
    ),
}


def flat(x) -> torch.Tensor:
    return torch.cat([v.flatten() for v in x.values()]) if isinstance(x, dict) else x.flatten()


def main(names: list[str]) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    for name in names or list(CASES):
        overrides, make_inputs = CASES[name]
        hf = randomize(getattr(transformers, name)(transformers.PerceiverConfig(
            attention_probs_dropout_prob=0.0, **overrides)))
        start = time.perf_counter()
        ours = from_transformers(hf)
        convert = time.perf_counter() - start
        kwargs = make_inputs()
        with torch.no_grad():
            ref, out = flat(hf(**kwargs).logits), flat(ours(**kwargs).logits)
        err, scale = (out - ref).abs().max().item(), ref.abs().max().item()
        bound = 1e-4 * (1 + scale)
        params = sum(p.numel() for p in hf.parameters()) / 1e6
        print(f"{name}: {params:.1f}M params, convert {convert:.1f}s, max|diff| {err:.2e}, max|ref| {scale:.3f}, "
              f"bound {bound:.2e}: {'OK' if err <= bound else 'FAIL'}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
