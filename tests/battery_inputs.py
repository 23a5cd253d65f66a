"""A battery of bad model inputs, configs and sizes (issue 9), slower than the unit tests
(tests/test_reliability_inputs.py): each case must raise the expected error type with a
message naming what was expected and what was given, allocate nothing large, and finish
fast. Not collected by pytest (no ``test_`` prefix). Run it from the repository root:

    python tests/battery_inputs.py

It prints one line per case and, at the end, the number of failures and the peak resident
memory of the whole process (``ru_maxrss``); the exit status is the number of failures."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from perceptio import (CrossAttentionDecoderConfig, EncoderConfig, FourierQueriesConfig, ImageAdapterConfig,
                       Perceiver, PerceiverConfig, TextAdapterConfig)
from perceptio.adapters.grid import PointCloudAdapterConfig
from perceptio.adapters.positions import PositionEncodingConfig
from perceptio.cli import main as cli
from perceptio.config import ConfigError
from perceptio.overrides import parse_assignments
from perceptio.presets import create_model, preset_config
from perceptio.queries import TrainableQueriesConfig

CASES: list[tuple[str, object, type, list[str]]] = []


def case(name: str, error: type, *patterns: str):
    """Register ``fn`` as a case that must raise ``error`` matching every regex in ``patterns``."""
    def wrap(fn):
        CASES.append((name, fn, error, list(patterns)))
        return fn
    return wrap


def small_encoder(**kw) -> EncoderConfig:
    return EncoderConfig(**{"num_latents": 8, "num_latent_channels": 16, "num_self_attends_per_block": 1,
                            "num_self_attend_heads": 2, "num_cross_attend_heads": 1, **kw})


def image_model() -> Perceiver:
    torch.manual_seed(0)
    return Perceiver(PerceiverConfig(
        input_adapter=ImageAdapterConfig(image_shape=[8, 8, 3], prep_type="pixels", spatial_downsample=1,
                                         position=PositionEncodingConfig(num_bands=2)),
        encoder=small_encoder(), decoder=CrossAttentionDecoderConfig(
            queries=FourierQueriesConfig(index_dims=[8, 8], num_bands=2), output_channels=3)))


def text_config(**adapter) -> PerceiverConfig:
    return PerceiverConfig(input_adapter=TextAdapterConfig(**adapter), encoder=small_encoder())


# -- sizes ----------------------------------------------------------------------------------
for field, value, pattern in [
    ("max_seq_len", 100_000_000, r"input_adapter\.max_seq_len=100000000 makes a 307 GB tensor"),
    ("vocab_size", 1_000_000_000, r"input_adapter\.vocab_size=1000000000 makes a 3.07 TB tensor"),
    ("num_channels", 10_000_000, r"input_adapter\.num_channels=10000000 makes 800 TB in \d+ tensors"),
]:
    case(f"text {field}={value}", ConfigError, pattern, r"above the limit of 4 GB \(PERCEPTIO_MAX_MODEL_GB")(
        lambda field=field, value=value: Perceiver(text_config(**{field: value})))

for name, overrides, pattern in [
    ("language-perceiver", {"num_latent_channels": 65536}, r"encoder\.num_latent_channels=65536 makes 9\d\d GB"),
    ("language-perceiver", {"num_latents": 10**8}, r"encoder\.num_latents=100000000 makes a 512 GB tensor "
                                                   r"encoder\.latents\.pos_embs"),
    ("language-perceiver", {"num_self_attends_per_block": 10**6}, r"makes 1,000,001 attention layers"),
    ("vision-perceiver-learned", {"input_adapter.image_shape": [100000, 100000, 3]},
     r"input_adapter\.image_shape=\[100000, 100000, 3\] makes a"),
    ("vision-perceiver-learned", {"decoder.output_channels": 10**9}, r"decoder\.output_channels=1000000000 makes"),
]:
    case(f"create_model({name}, {overrides})", ConfigError, pattern, r"above the limit of")(
        lambda name=name, overrides=overrides: create_model(name, **overrides))


@case("trainable queries num_queries=1e9", ConfigError, r"decoder\.queries\.num_queries=1000000000 makes")
def _():
    Perceiver(text_config().replace(decoder=CrossAttentionDecoderConfig(
        queries=TrainableQueriesConfig(num_queries=10**9, num_channels=64))))


@case("from_pretrained of a hand-edited config.json", ConfigError, r"max_seq_len=1000000000 makes a 1.02 TB")
def _():
    with tempfile.TemporaryDirectory() as d:
        Perceiver(text_config(max_seq_len=16, num_channels=256)).save_pretrained(d)
        config = json.loads((Path(d) / "config.json").read_text())
        config["input_adapter"]["max_seq_len"] = 10**9
        (Path(d) / "config.json").write_text(json.dumps(config))
        Perceiver.from_pretrained(d)


@case("return_attention over 1M points", ValueError, r"an attention map \[1, 1, 2048, 1048576\]",
      r"would take 8.59 GB, above the limit of 2 GB \(PERCEPTIO_MAX_ATTENTION_GB\)")
def _():
    model = Perceiver(PerceiverConfig(input_adapter=PointCloudAdapterConfig(num_bands=2),
                                      encoder=small_encoder(num_latents=2048)))
    with torch.no_grad():
        model(torch.rand(1, 2**20, 3), return_attention=True)


# -- YAML -----------------------------------------------------------------------------------
@case("alias bomb in a --set value", ConfigError, r"expands to more than 100,000 values through aliases")
def _():
    value = "[&a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"
    for i in range(8):
        value += f", &b{i} [{', '.join(['*a' if i == 0 else f'*b{i - 1}'] * 10)}]"
    parse_assignments([f"model.overrides={value}]"])


@case("perceptio train with an alias bomb in model.overrides", SystemExit, r"exit 2",
      r"YAML line \d+, column \d+: the document expands")
def _():
    with tempfile.TemporaryDirectory() as d:
        bomb = "\n".join(["    a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"] + [
            f"    {n}: &{n} [{', '.join(['*' + p] * 10)}]" for p, n in zip("abcdefgh", "bcdefghi")])
        (Path(d) / "bomb.yaml").write_text(f"data: {{kind: digits}}\nmodel:\n  preset: language-perceiver\n"
                                           f"  overrides:\n{bomb}\n")
        run_cli(["train", str(Path(d) / "bomb.yaml"), "--run-dir", str(Path(d) / "run")])


# -- non-finite config values ----------------------------------------------------------------
for assignment, pattern in [("optim.lr=.nan", r"OptimConfig\.lr must be a finite number, got nan"),
                            ("optim.lr=.inf", r"OptimConfig\.lr must be a finite number, got inf"),
                            ("optim.weight_decay=-.inf", r"OptimConfig\.weight_decay must be a finite number"),
                            ("train.label_smoothing=.nan", r"label_smoothing must be a finite number"),
                            ("data.val_fraction=.nan", r"val_fraction must be a finite number")]:
    case(f"perceptio train --set {assignment}", SystemExit, r"exit 2", pattern)(
        lambda assignment=assignment: run_cli(["train", "quickstart", "--run-dir", tempfile.mkdtemp(),
                                               "--set", assignment]))


case("perceptio train diverging (optim.lr=1e30, no clipping)", SystemExit, r"exit 2",
     r"training diverged at step \d+: the loss is nan \(expected a finite number\); stopped without saving",
     r"Lower optim.lr \(now 1e\+30\)")(
    lambda: run_cli(["train", "quickstart", "--run-dir", tempfile.mkdtemp(), "--set", "optim.lr=1e30",
                     "--set", "optim.grad_clip=null", "--set", "optim.warmup_steps=0", "--set", "train.steps=20",
                     "--set", "logging.progress=false"]))


# -- output indices ---------------------------------------------------------------------------
for points, error, pattern in [
    (torch.tensor([64]), ValueError, r"in \[0, 64\) \(the decoder has 64 outputs\), got values in \[64, 64\]"),
    (torch.tensor([10**9]), ValueError, r"got values in \[1000000000, 1000000000\]"),
    (torch.tensor([-1, 0]), ValueError, r"got values in \[-1, 0\]"),
    (torch.tensor([0.5]), TypeError, r"got dtype torch.float32"),
    (torch.tensor([[0, 1]]), ValueError, r"got shape \(1, 2\)"),
    (torch.ones(64, dtype=torch.bool), TypeError, r"got dtype torch.bool"),
    ((0, 1), TypeError, r"got tuple"),
]:
    case(f"points={points!r}", error, r"points must be a 1-d integer tensor of output indices in \[0, 64\)",
         pattern)(lambda points=points: image_model()(torch.rand(2, 8, 8, 3), points=points))

case("multimodal points out of range", ValueError, r"points\['audio'\] must be a 1-d integer tensor",
     r"in \[0, 1920\) \(the decoder has 1920 outputs\), got values in \[30720, 30720\]")(
    lambda: meta_multimodal().decoder.check_selection(None, {"audio": torch.tensor([30720])}, "points"))


def meta_multimodal() -> Perceiver:
    with torch.device("meta"):
        return Perceiver(preset_config("multimodal-perceiver"))


# -- non-finite and ill-typed inputs --------------------------------------------------------
for fill in (math.nan, math.inf, -math.inf):
    def nan_pixel(fill=fill):
        model = image_model()
        model.check_finite = True
        x = torch.rand(2, 8, 8, 3)
        x[1, 2, 3, 0] = fill
        model(x)
    case(f"image with a {fill} pixel (check_finite)", ValueError,
         rf"inputs hold NaN or infinite values \(the first at index \[1, 2, 3, 0\]: {fill}\)",
         r"reaching example 1, position 19 of the 64 positions", r"expected finite values")(nan_pixel)

case("int pixels", TypeError, r"image inputs must be floating point, got dtype torch.int64")(
    lambda: image_model()(torch.zeros(1, 8, 8, 3, dtype=torch.long)))
case("float token ids", TypeError, r"text inputs must be integer token ids, got dtype torch.float32")(
    lambda: Perceiver(text_config(max_seq_len=16))(torch.zeros(1, 4)))
case("token id out of range", ValueError, r"token ids must be in \[0, 262\), got values in \[0, 300\]")(
    lambda: Perceiver(text_config(max_seq_len=16))(torch.tensor([[0, 300]])))
case("input_mask of floats", TypeError, r"input_mask must have dtype torch.bool \(True = valid\), got torch.float32")(
    lambda: image_model()(torch.rand(1, 8, 8, 3), input_mask=torch.ones(1, 64)))
case("input_mask of the wrong shape", ValueError, r"input_mask must have shape \(1, 64\) to match its array, got "
     r"\(1, 63\)")(lambda: image_model()(torch.rand(1, 8, 8, 3), input_mask=torch.ones(1, 63, dtype=torch.bool)))


def run_cli(argv: list[str]) -> None:
    """Run ``perceptio ARGV``; raise SystemExit("exit N: <stderr>") so the case can match it."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli(argv)
    text = err.getvalue()
    if "Traceback" in text:
        raise AssertionError(f"a traceback reached the user: {text}")
    raise SystemExit(f"exit {code}: {text.strip()}")


# -- things that must work ---------------------------------------------------------------------
def must_work() -> list[tuple[str, object]]:
    model = image_model()
    x = torch.rand(2, 8, 8, 3)
    full = model(x).logits
    checks = []
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        checks.append((f"{dtype} inputs are cast", lambda dtype=dtype: torch.testing.assert_close(
            model(x.to(dtype)).logits, model(x.to(dtype).float()).logits)))
    padded = torch.cat([x.flatten(1, 2), torch.full((2, 5, 3), math.nan)], 1)
    points_model = Perceiver(PerceiverConfig(input_adapter=PointCloudAdapterConfig(num_bands=2),
                                             encoder=small_encoder())).eval()
    mask = torch.tensor([[True] * 64 + [False] * 5] * 2)
    checks.append(("NaN padding masked out equals the unpadded output", lambda: torch.testing.assert_close(
        points_model(padded, input_mask=mask).logits, points_model(x.flatten(1, 2)).logits)))
    checks.append(("decode_chunked of valid points equals decode", lambda: torch.testing.assert_close(
        model.decode_chunked(*model.encode(x), chunk_size=7, points=torch.arange(64)),
        model.decode(*model.encode(x), points=torch.arange(64)))))
    checks.append(("meta text model infers shapes", lambda: meta_text_shape()))
    return checks + [("full decode", lambda: full)]


def meta_text_shape():
    with torch.device("meta"):
        model = Perceiver(text_config(max_seq_len=64))
    assert model(torch.empty(2, 40, dtype=torch.long, device="meta")).logits.shape[0] == 2


def main() -> int:
    failures = 0
    for name, fn, error, patterns in CASES:
        t0 = time.perf_counter()
        try:
            fn()
        except error as e:
            message = str(e)
            missing = [p for p in patterns if not re.search(p, message)]
            status = "ok" if not missing else f"FAIL: message {message!r} does not match {missing}"
        except Exception as e:  # noqa: BLE001 - the wrong error is a failure, reported
            status = f"FAIL: {type(e).__name__}: {e}"
        else:
            status = "FAIL: no error"
        failures += status != "ok"
        print(f"{status[:300]:<8} {time.perf_counter() - t0:6.2f}s  {name[:100]}")
    for name, fn in must_work():
        t0 = time.perf_counter()
        try:
            fn()
            status = "ok"
        except Exception as e:  # noqa: BLE001
            status = f"FAIL: {type(e).__name__}: {e}"
        failures += status != "ok"
        print(f"{status[:300]:<8} {time.perf_counter() - t0:6.2f}s  works: {name}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(CASES) + len(must_work())} cases, {failures} failures, peak resident memory {peak:.0f} MB")
    return failures


if __name__ == "__main__":
    sys.exit(main())
