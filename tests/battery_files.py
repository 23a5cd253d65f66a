"""The slow half of issue 9's battery for files and run directories (not collected by
pytest: run ``python tests/battery_files.py [--quick]`` from the repository root).

* kill -9 at random moments of a run that checkpoints every step: the newest checkpoint
  always loads, unfinished ``.tmp-*`` folders are removed by the next start, and
  ``--resume`` finishes the run with every step logged once;
* two ``perceptio train`` on one run directory: the second exits at once naming the
  first one's pid and host, also with ``--resume`` or ``--overwrite``, and the first
  finishes untouched;
* fuzzed files (every truncation and random byte flips of a model's ``model.safetensors``
  and ``config.json``, a ``trainer_state.pt`` and a DeepMind pickle): each load either
  succeeds or raises one ValueError naming the file, never another exception;
* bad command lines run as real processes: exit status 2 (1 for unexpected errors),
  one ``error:`` line naming the path or key, no traceback.

Prints one line per case and a summary; exits 1 if any case is a defect.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from perceptio import EncoderConfig, Perceiver, PerceiverConfig, TextAdapterConfig  # noqa: E402
from perceptio.decoder import CrossAttentionDecoderConfig  # noqa: E402
from perceptio.interop.deepmind import load_reference_file  # noqa: E402
from perceptio.pretrained import CONFIG_NAME, WEIGHTS_NAME, read_torch_file  # noqa: E402
from perceptio.queries import TrainableQueriesConfig  # noqa: E402
from perceptio.train import checkpoint as ckpt  # noqa: E402

TINY = ["--set", "train.threads=1", "--set", "logging.progress=false", "--set", "logging.plots=false",
        "--set", "train.batch_size=8", "--set", "model.perceiver.encoder.num_self_attends_per_block=1",
        "--set", "train.eval_every=100000", "--set", "logging.log_every=1"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
results: list[tuple[str, bool, str]] = []


def record(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)


def perceptio(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "perceptio", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def train_steps(run_dir: Path) -> list[int]:
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    return [int(r.split(",")[0]) for r in rows if r.split(",")[1:3] == ["train", "loss"]]


# ---------------------------------------------------------------------------------------
def kill9_during_saves(work: Path, rounds: int) -> None:
    run = work / "kill9"
    steps = 400
    args = ["train", "--run-dir", str(run), *TINY, "--set", f"train.steps={steps}", "--set", "train.checkpoint_every=1",
            "--set", "train.keep_last=2"]
    rng = random.Random(0)
    tmp_seen = 0
    for i in range(rounds):
        before = ckpt.latest_checkpoint(run)
        p = perceptio(*args, *(["--resume"] if (run / "experiment.yaml").is_file() else []))
        deadline = time.time() + 300  # wait for the first new checkpoint (starting takes seconds), then kill at random
        while time.time() < deadline and p.poll() is None and ckpt.latest_checkpoint(run) in (None, before):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))  # a step + its checkpoint take tens of ms: most kills land in a save
        p.send_signal(signal.SIGKILL)
        p.wait()
        latest = ckpt.latest_checkpoint(run)
        tmp_seen += len(list((run / "checkpoints").glob(".tmp-*"))) if (run / "checkpoints").is_dir() else 0
        if latest is None:
            record(f"kill -9 round {i}: no checkpoint yet", True, "killed before the first save")
            continue
        try:
            Perceiver.from_pretrained(latest)
            step = ckpt.load_trainer_state(latest)["step"]
            record(f"kill -9 round {i}", True, f"newest checkpoint {latest.name} (step {step}) loads")
        except Exception as e:  # noqa: BLE001
            record(f"kill -9 round {i}", False, f"newest checkpoint {latest} does not load: {e}")
    p = perceptio(*args, "--resume")
    out, err = p.communicate(timeout=600)
    left = list((run / "checkpoints").glob(".tmp-*"))
    logged = train_steps(run)
    ok = p.returncode == 0 and not left and sorted(set(logged)) == list(range(1, steps + 1))
    record("kill -9: final --resume", ok, f"exit {p.returncode}, {tmp_seen} unfinished .tmp-* folders seen after "
           f"kills, {len(left)} left after the resume, steps logged {len(logged)} (unique {len(set(logged))})"
           + ("" if ok else f"; stderr: {err[-400:]}"))


def two_trainers(work: Path) -> None:
    run = work / "two"
    a = perceptio("train", "--run-dir", str(run), *TINY, "--set", "train.steps=400", "--set",
                  "train.checkpoint_every=100")
    lock = run / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.is_file() and lock.read_text().strip()):
        time.sleep(0.1)
    holder = json.loads(lock.read_text())
    for extra in ([], ["--resume"], ["--overwrite"]):
        b = perceptio("train", "--run-dir", str(run), *TINY, "--set", "train.steps=400", *extra)
        _, err = b.communicate(timeout=300)
        lines = [ln for ln in err.strip().splitlines() if ln]
        ok = (b.returncode == 2 and len(lines) == 1 and f"pid {holder['pid']} on host {holder['host']}" in err
              and "in use by another trainer" in err)
        record(f"second trainer {' '.join(extra) or '(plain)'}", ok, lines[-1] if lines else f"exit {b.returncode}")
    _, err = a.communicate(timeout=900)
    logged = train_steps(run)
    ok = a.returncode == 0 and logged == sorted(set(logged)) and len(logged) == 400
    record("first trainer finishes untouched", ok, f"exit {a.returncode}, {len(logged)} train rows, in order, no "
           "interleaving" if ok else err[-400:])


# ---------------------------------------------------------------------------------------
def _load_outcome(load, path: Path) -> str:
    try:
        load()
        return "loaded"
    except ValueError as e:
        return "error naming the file" if str(path) in str(e) and "\n" not in str(e) else f"DEFECT unnamed: {e}"
    except Exception as e:  # noqa: BLE001
        return f"DEFECT {type(e).__name__}: {e}"


def fuzz(work: Path, cases: int) -> None:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = Perceiver(PerceiverConfig(
        input_adapter=TextAdapterConfig(max_seq_len=8, num_channels=16),
        encoder=EncoderConfig(num_latents=4, num_latent_channels=16, num_self_attends_per_block=1,
                              num_self_attend_heads=2, num_cross_attend_heads=1),
        decoder=CrossAttentionDecoderConfig(queries=TrainableQueriesConfig(num_queries=8, num_channels=16)),
    ))
    directory = work / "fuzz_model"
    model.save_pretrained(directory)
    state_file = work / "trainer_state.pt"
    torch.save({"step": 3, "optimizer": {"state": {}, "param_groups": []}, "rng": [torch.get_rng_state()]}, state_file)
    pickle_file = work / "ref.pickle"
    pickle_file.write_bytes(pickle.dumps({"mod": {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}},
                                         protocol=4))
    targets = [
        ("model.safetensors", directory / WEIGHTS_NAME, lambda: Perceiver.from_pretrained(directory)),
        ("config.json", directory / CONFIG_NAME, lambda: Perceiver.from_pretrained(directory)),
        ("trainer_state.pt", state_file, lambda: read_torch_file(state_file)),
        ("DeepMind pickle", pickle_file, lambda: load_reference_file(str(pickle_file))),
    ]
    for name, path, load in targets:
        original = path.read_bytes()
        counts: dict[str, int] = {}
        cuts = sorted(set(np.linspace(0, len(original) - 1, min(cases, len(original))).astype(int)))
        variants = [original[:c] for c in cuts]
        for _ in range(cases):  # flips in the first 512 bytes: headers, opcodes, JSON
            data = bytearray(original)
            for pos in rng.integers(0, min(512, len(data)), size=int(rng.integers(1, 4))):
                data[pos] = int(rng.integers(0, 256))
            variants.append(bytes(data))
        variants += [rng.bytes(int(n)) for n in rng.integers(1, 4096, size=cases // 4)]
        for data in variants:
            path.write_bytes(data)
            outcome = _load_outcome(load, path)
            key = outcome if not outcome.startswith("DEFECT") else outcome[:160]
            counts[key] = counts.get(key, 0) + 1
        path.write_bytes(original)
        defects = {k: v for k, v in counts.items() if k.startswith("DEFECT")}
        record(f"fuzz {name}: {len(variants)} damaged versions", not defects,
               ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))[:600])


# ---------------------------------------------------------------------------------------
def cli_cases(work: Path) -> None:
    run = work / "cli_run"
    p = perceptio("train", "--run-dir", str(run), *TINY, "--set", "train.steps=2")
    p.communicate(timeout=600)
    (work / "afile").write_text("x")
    (work / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    ro = work / "readonly"
    ro.mkdir()
    evil = work / "evil_hf"
    evil.mkdir()
    (evil / "config.json").write_text(json.dumps({"model_type": "perceiver", "architectures": ["PerceiverForMaskedLM"]}))

    class Evil:
        def __reduce__(self):
            return os.system, ("echo pwned > " + str(work / "pwned"),)

    torch.save({"w": Evil()}, evil / "pytorch_model.bin")
    damaged = work / "damaged_model"
    shutil.copytree(ckpt.latest_checkpoint(run), damaged)
    (damaged / WEIGHTS_NAME).write_bytes((damaged / WEIGHTS_NAME).read_bytes()[:100])
    cases = [
        (["train", "--run-dir", str(run), *TINY], [str(run), "--resume", "--overwrite"]),
        (["train", "--run-dir", str(work / "none"), "--resume"], [str(work / "none"), "does not exist"]),
        (["train", "--run-dir", str(work / "afile")], [str(work / "afile"), "is a file"]),
        (["train", "--set", "name=../../victim"], ["name must be a plain name", "../../victim"]),
        (["train", "--set", "train.steps={"], ["--set 'train.steps={'"]),
        (["train", "--set", "optim.lr=fast"], ["optim.lr"]),
        (["predict", "run", str(run), str(work / "bad.png")], [str(work / "bad.png"), "not a readable image"]),
        (["predict", "run", str(run), "x.npy", "--device", "cuda"], ["cuda"]),
        (["evaluate", str(run), "--device", "cuda:7"], ["cuda:7"]),
        (["predict", "classify", str(damaged), "x.png"], [str(damaged / WEIGHTS_NAME), "truncated"]),
        (["convert", str(evil), str(work / "out")], [str(evil / "pytorch_model.bin"), "refused"]),
        (["convert", str(run / "metrics.csv"), str(work / "out")], ["metrics.csv"]),
        (["convert", str(damaged), str(work / "afile")], [str(damaged / WEIGHTS_NAME)]),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        ro.chmod(0o500)
        cases.append((["train", "--run-dir", str(ro / "run")], [str(ro / "run"), "Permission denied"]))
    for argv, expected in cases:
        p = perceptio(*argv)
        _, err = p.communicate(timeout=600)
        errors = [ln for ln in err.splitlines() if ": error: " in ln]
        ok = (p.returncode == 2 and len(errors) == 1 and "Traceback" not in err
              and all(text in errors[0] for text in expected))
        record(f"cli {' '.join(a if len(a) < 40 else '...' + a[-30:] for a in argv[:4])}", ok,
               errors[0] if errors else f"exit {p.returncode}: {err[-300:]}")
    record("no code ran from the hostile pytorch_model.bin", not (work / "pwned").exists())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer kill -9 rounds and fuzz cases")
    args = parser.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="perceptio-battery-") as tmp:
        work = Path(tmp)
        fuzz(work, 60 if args.quick else 300)
        cli_cases(work)
        two_trainers(work)
        kill9_during_saves(work, 3 if args.quick else 8)
    bad = [r for r in results if not r[1]]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{len(results) - len(bad)}/{len(results)} cases ok in {time.time() - t0:.0f} s "
          f"(peak memory of the in-process cases {peak:.0f} MiB)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
