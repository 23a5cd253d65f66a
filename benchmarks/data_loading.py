"""Measurements of data read on access (docs/data.md, README "Data at scale").

    python benchmarks/data_loading.py memory   # peak RSS of masked-byte training: 2 MB vs 2 GB corpus
    python benchmarks/data_loading.py images   # images/s of the loader (0, 1, 2 workers) vs the model step

``memory`` writes a text corpus of real bytes (not sparse) under /tmp, trains ``bytes_mlm``
with ``data.kind=text_files`` on it for a few steps under ``/usr/bin/time -v`` and reports
the maximum resident set size; the corpus is deleted afterwards. ``images`` writes 10,000
small JPEGs under /tmp, times the loader alone (``perceptio.data.loader.step_batches``) and
the training step alone (forward, backward, AdamW on a fixed batch) for the quickstart-size
model (8x8 grey inputs) and a 224x224 RGB model, and deletes the images.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------
# Peak memory of training on a 2 MB and a 2 GB corpus
# ---------------------------------------------------------------------------------------
def write_corpus(path: Path, size: int, seed: int = 0) -> None:
    """``size`` bytes of word-like ASCII text, written chunk by chunk (every byte on disk, not
    sparse): 8 random 4 MB chunks, each written again rotated by a random amount."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"etaoinshrdlucmfwypvbgkqjxz", np.uint8)
    chunk = 1 << 22
    chunks = []
    for _ in range(8):
        text = letters[rng.integers(0, len(letters), chunk)]
        text[rng.random(chunk) < 0.18] = ord(" ")
        text[rng.random(chunk) < 0.01] = ord("\n")
        chunks.append(text)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(np.roll(chunks[rng.integers(8)], rng.integers(chunk))[:n].tobytes())
            left -= n


def peak_rss_mib(corpus: Path, val: Path, run_dir: Path, steps: int) -> tuple[float, float]:
    """(max RSS in MiB, wall seconds) of ``perceptio train bytes_mlm`` on ``corpus``."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "perceptio", "train", "bytes_mlm", "--run-dir", str(run_dir),
           "--set", "data.kind=text_files", "--set", f"data.paths=['{corpus}']",
           "--set", f"data.val_paths=['{val}']", "--set", f"data.test_paths=['{val}']",
           "--set", f"train.steps={steps}", "--set", f"train.eval_every={steps}",
           "--set", f"train.checkpoint_every={steps}", "--set", "logging.progress=false",
           "--set", "logging.plots=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return rss / 1024, wall


def memory(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="perceptio-corpus-", dir="/tmp"))
    try:
        val = base / "val" / "val.txt"
        val.parent.mkdir()
        write_corpus(val, 64 << 10, seed=1)
        sizes = {"2 MB": 2 << 20, "2 GB": args.large_gb << 30}
        for name, size in sizes.items():
            folder = base / name.replace(" ", "")
            folder.mkdir()
            t0 = time.perf_counter()
            write_corpus(folder / "corpus.txt", size)
            print(f"{name} corpus written in {time.perf_counter() - t0:.1f} s "
                  f"({os.path.getsize(folder / 'corpus.txt') / 2**20:.0f} MiB on disk, "
                  f"{os.stat(folder / 'corpus.txt').st_blocks * 512 / 2**20:.0f} MiB allocated)", flush=True)
            for run in ("first run (UTF-8 check)", "second run (cached check)"):
                run_dir = base / f"run-{len(run)}-{name.replace(' ', '')}"
                rss, wall = peak_rss_mib(folder / "corpus.txt", val, run_dir, args.steps)
                print(f"  {name}, {run}: max RSS {rss:.0f} MiB, {wall:.1f} s", flush=True)
            (folder / "corpus.txt").unlink()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Loader throughput on 10,000 small JPEGs, and the model step
# ---------------------------------------------------------------------------------------
def write_jpegs(root: Path, count: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((size, size, 3)) * 64 + np.linspace(0, 191, size)[:, None, None]).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


MODELS = {
    # the quickstart's model (configs/quickstart.yaml) on 8x8 grey images
    "quickstart": {"image_size": [8, 8], "channels": 1},
    # a 224x224 RGB model: 16x16 patches (196 inputs), 64 latents of 128 channels, 4 self-attends
    "224x224": {"image_size": [224, 224], "channels": 3},
}


def model_config(name: str) -> dict:
    from perceptio.train.experiment import load_experiment

    model = load_experiment("quickstart").model.perceiver.to_dict()
    if name == "224x224":
        model["input_adapter"].update(image_shape=[224, 224, 3], spatial_downsample=16, num_channels=64)
        model["encoder"].update(num_latents=64, num_latent_channels=128)
        model["decoder"]["queries"]["num_channels"] = 128
    return model


def loader_images_per_s(path: Path, name: str, workers: int, batch: int, steps: int) -> float:
    from perceptio.data import DataConfig
    from perceptio.data.base import Sampler
    from perceptio.data.loader import LoaderOptions, step_batches

    data = DataConfig.from_dict({"kind": "image_folder", "path": str(path), **MODELS[name],
                                 "val_fraction": 0.0, "test_fraction": 0.0}).load().train
    batches = step_batches(data, Sampler(len(data), batch, 0), seed=0, start=0, stop=steps + 1,
                           options=LoaderOptions(num_workers=workers))
    next(batches)  # workers started, first batch read
    t0 = time.perf_counter()
    for _ in batches:
        pass
    return steps * batch / (time.perf_counter() - t0)


def step_images_per_s(name: str, batch: int, steps: int) -> float:
    from perceptio.model import Perceiver, PerceiverConfig

    torch.manual_seed(0)
    model = Perceiver(PerceiverConfig.from_dict(model_config(name)))
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    h, w = MODELS[name]["image_size"]
    x, y = torch.rand(batch, h, w, MODELS[name]["channels"]), torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x).logits, y)
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def images(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    base = Path(tempfile.mkdtemp(prefix="perceptio-jpegs-", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        write_jpegs(base, args.count, args.size)
        print(f"{args.count} JPEGs of {args.size}x{args.size} written in {time.perf_counter() - t0:.1f} s "
              f"({sum(f.stat().st_size for f in base.rglob('*.jpg')) / 2**20:.1f} MiB)", flush=True)
        for name in MODELS:
            loads = {w: loader_images_per_s(base, name, w, args.batch, args.steps) for w in (0, 1, 2)}
            step = step_images_per_s(name, args.batch, args.model_steps[name == "224x224"])
            best = max(loads.values())
            print(f"{name}: loader " + ", ".join(f"{w} workers {v:.0f}" for w, v in loads.items())
                  + f" images/s; model step {step:.0f} images/s (batch {args.batch}, {args.threads} threads): "
                  + ("the loader" if best < step else "the model step") + " is the bottleneck", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--steps", type=int, default=20)
    m.add_argument("--large-gb", type=int, default=2)
    i = sub.add_parser("images")
    i.add_argument("--count", type=int, default=10_000)
    i.add_argument("--size", type=int, default=32)
    i.add_argument("--batch", type=int, default=64)
    i.add_argument("--steps", type=int, default=30, help="loader batches timed")
    i.add_argument("--model-steps", type=int, nargs=2, default=[20, 3], help="steps timed: quickstart, 224x224")
    i.add_argument("--threads", type=int, default=1, help="torch threads of the model step")
    args = parser.parse_args()
    memory(args) if args.what == "memory" else images(args)


if __name__ == "__main__":
    main()
