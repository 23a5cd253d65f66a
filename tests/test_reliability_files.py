"""Issue 9, files and run directories: damaged and hostile files, busy / finished / missing
run directories, full disks and CLI errors. Every case asserts the error type and that the
message names what was expected and what was given (the file, the key, the holder).
The slow cases (kill -9 during a save, two trainers at once) are in tests/battery_files.py."""

from __future__ import annotations

import errno
import json
import os
import pickle
import socket
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from perceptio import Perceiver
from perceptio.checkpoints import load_checkpoint
from perceptio.cli import main
from perceptio.config import ConfigError
from perceptio.data.base import DataInfo
from perceptio.interop.deepmind import load_reference_file
from perceptio.pretrained import (
    CONFIG_NAME, WEIGHTS_NAME, DamagedFileError, read_json, read_torch_file, safetensors_header, save_model_dir,
)
from perceptio.tasks.runs import TrainedRun, predict_run, read_run_input
from perceptio.train import checkpoint as ckpt
from perceptio.train.experiment import experiment_from_dict, load_experiment
from perceptio.train.rundir import LOCK_NAME, RunDirError, RunLock
from perceptio.train.trainer import Trainer

from test_pretrained import tiny as tiny_model
from test_train import tiny, train_losses

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")


class Evil:
    def __reduce__(self):
        return os.system, ("echo pwned",)


# ---------------------------------------------------------------------------------------
# Damaged model directories
# ---------------------------------------------------------------------------------------
@pytest.fixture
def model_dir(tmp_path) -> Path:
    tiny_model().save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, expected", [
    (lambda p: p.write_bytes(b""), "empty file; expected safetensors weights"),
    (_truncate, "truncated"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not a safetensors file"),
    (lambda p: p.write_bytes(pickle.dumps({"w": Evil()})), "holds a pickle"),
    (lambda p: torch.save({"w": torch.ones(2)}, p), "holds a zip archive"),
    (lambda p: p.write_bytes(struct.pack("<Q", 2) + b"[]"), "header is not a JSON object"),
    (lambda p: p.write_bytes(struct.pack("<Q", 5) + b"{\"a\":"), "header is not JSON"),
])
def test_damaged_weights_are_one_error_naming_the_file(model_dir, damage, expected):
    damage(model_dir / WEIGHTS_NAME)
    with pytest.raises(DamagedFileError, match=expected) as info:
        Perceiver.from_pretrained(model_dir)
    assert str(model_dir / WEIGHTS_NAME) in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match=expected):  # every entry point: convert / predict read the same way
        load_checkpoint(model_dir)


@pytest.mark.parametrize("text, expected", [
    ("", "empty file; expected a JSON object"),
    ("{not json", r"not valid JSON \(.*\); expected a JSON object"),
    ("[1, 2]", "expected a JSON object, got a JSON list"),
    ("\xff\xfe", "not valid JSON"),
])
def test_damaged_config_json_names_the_file(model_dir, text, expected):
    (model_dir / CONFIG_NAME).write_bytes(text.encode("latin1"))
    with pytest.raises(DamagedFileError, match=expected) as info:
        Perceiver.from_pretrained(model_dir)
    assert str(model_dir / CONFIG_NAME) in str(info.value)


def edit_config(model_dir: Path, section: str, key: str, value) -> None:
    config = json.loads((model_dir / CONFIG_NAME).read_text())
    config[section][key] = value
    (model_dir / CONFIG_NAME).write_text(json.dumps(config))


def test_a_config_json_with_a_wrong_key_names_the_file_and_the_key(model_dir):
    edit_config(model_dir, "encoder", "num_latentz", 3)
    with pytest.raises(ConfigError, match=rf"{model_dir / CONFIG_NAME}: encoder.num_latentz: unknown key; allowed"):
        Perceiver.from_pretrained(model_dir)


def test_weights_of_the_wrong_dtype_are_a_mismatch(model_dir):
    model = tiny_model()
    state = {k: v.to(torch.int64) if k == "encoder.latents.pos_embs" else v for k, v in model.state_dict().items()}
    save_model_dir(model_dir, state, model.config)
    with pytest.raises(ValueError, match=r"wrong dtype: \['encoder.latents.pos_embs: expected torch.float32, "
                                         r"got torch.int64'\]"):
        Perceiver.from_pretrained(model_dir)


def test_from_pretrained_compares_the_header_before_allocating(model_dir, monkeypatch):
    """A config that does not fit the weights (here 2**22 positions, 256 MiB of parameters)
    is refused after building the model on the meta device only."""
    edit_config(model_dir, "input_adapter", "max_seq_len", 2 ** 22)
    devices = []
    init = Perceiver.__init__

    def recording_init(self, *args, **kwargs):
        devices.append(torch.empty(()).device.type)  # the default device the parameters would go to
        init(self, *args, **kwargs)

    monkeypatch.setattr(Perceiver, "__init__", recording_init)
    with pytest.raises(ValueError, match=rf"{WEIGHTS_NAME} does not fit the model; wrong shape: "
                                         r"\['input_adapter.*expected \(4194304, 16\), got \(8, 16\)'\]"):
        Perceiver.from_pretrained(model_dir)
    assert devices == ["meta"]


def test_header_reader_matches_the_weights(model_dir):
    header = safetensors_header(model_dir / WEIGHTS_NAME)
    state = tiny_model().state_dict()
    assert header == {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


@NO_CUDA
def test_map_location_cuda_without_cuda_says_so(model_dir):
    with pytest.raises(ValueError, match="device 'cuda' but CUDA is not available on this machine; use 'cpu'"):
        Perceiver.from_pretrained(model_dir, map_location="cuda")


def test_save_into_a_file_names_it(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ValueError, match=r"taken is a file; expected a folder to write the model to"):
        tiny_model().save_pretrained(tmp_path / "taken")


def test_read_json_rejects_bytes_that_are_not_utf8(tmp_path):
    (tmp_path / "c.json").write_bytes(b"\x80\x81")
    with pytest.raises(DamagedFileError, match=r"c.json: not valid JSON"):
        read_json(tmp_path / "c.json")


# ---------------------------------------------------------------------------------------
# Refused pickles: weights_only files and the DeepMind unpickler
# ---------------------------------------------------------------------------------------
def test_refused_torch_file_is_one_line_without_torch_advice(tmp_path):
    path = tmp_path / "trainer_state.pt"
    torch.save({"step": 1, "payload": Evil()}, path)
    with pytest.raises(DamagedFileError) as info:
        read_torch_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: holds objects other than tensors (")
    assert "refused to load it" in message and "\n" not in message and "weights_only" not in message
    path.write_bytes(b"\x80\x02" + bytes(range(200, 256)))
    with pytest.raises(DamagedFileError, match=r"trainer_state.pt: damaged, or not a torch.save file"):
        read_torch_file(path)
    torch.save({"a": torch.ones(1000)}, path)
    _truncate(path)
    with pytest.raises(DamagedFileError, match=r"trainer_state.pt: damaged or truncated torch.save file"):
        read_torch_file(path)


def test_malicious_pytorch_model_bin_is_refused_naming_the_file(tmp_path):
    transformers = pytest.importorskip("transformers")
    from perceptio import from_transformers

    transformers.PerceiverConfig(architectures=["PerceiverForMaskedLM"]).save_pretrained(tmp_path)
    torch.save({"w": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(DamagedFileError, match=r"pytorch_model.bin: holds objects other than tensors .*refused"):
        from_transformers(tmp_path)
    (tmp_path / "config.json").write_text("")
    with pytest.raises(DamagedFileError, match=r"config.json: empty file"):
        from_transformers(tmp_path)


def _pickle_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "ckpt.pickle"
    path.write_bytes(data)
    return path


class _ArrayFromSharedBytes:
    """Pickles as numpy's own array reduction, with the data bytes shared through the memo."""

    def __init__(self, raw: bytes):
        self.raw = raw

    def __reduce__(self):
        return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                (1, (len(self.raw) // 4,), np.dtype("f4"), False, self.raw))


@pytest.mark.parametrize("data, expected", [
    # numpy.ndarray((8589934592,), 'f8'): 64 GiB from 30 bytes
    (b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x02\x85U\x02f8\x86R.", "refusing to call numpy.ndarray"),
    (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x00\x02\x85U\x01b\x87R.",
     r"refusing numpy _reconstruct other than numpy's own"),
    (b"\x80\x02N" + b"r" + (2 ** 31 - 1).to_bytes(4, "little") + b".", "expected a mapping at the top level"),
    (pickle.dumps({"m": {"w": [[1.0, 2.0]]}}), "checkpoint entry 'm::w' is a list, not an array"),
    (pickle.dumps({"m": {"w": np.array(["a"])}}), "refusing dtype"),
    (pickle.dumps({"m": {"w": np.ones(8, np.float32)}})[:-20], "not a readable DeepMind checkpoint"),
    (b"", r"not a readable DeepMind checkpoint \(EOFError\)"),
    (b"\x80\x04" + bytes(range(256)) * 4, "not a readable DeepMind checkpoint"),
    (pickle.dumps({"m": {f"w{i}": _ArrayFromSharedBytes(b"\0" * 4000) for i in range(3)}}),
     "refusing arrays that hold more bytes than the file itself"),
])
def test_restricted_unpickler_builds_arrays_only_from_the_files_bytes(tmp_path, data, expected):
    path = _pickle_file(tmp_path, data)
    with pytest.raises(DamagedFileError, match=expected) as info:
        load_reference_file(str(path))
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_real_arrays(tmp_path, protocol):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(3, dtype=np.int64),
              "f": np.asfortranarray(np.ones((2, 2), ">f8")), "s": np.float32(2.5)}
    path = _pickle_file(tmp_path, pickle.dumps({"params": {"mod": arrays}}, protocol=protocol))
    params, state = load_reference_file(str(path))
    assert state == {} and sorted(params) == ["mod::b", "mod::f", "mod::s", "mod::w"]
    for name, value in arrays.items():
        np.testing.assert_array_equal(params[f"mod::{name}"], value)
        assert params[f"mod::{name}"].dtype == np.asarray(value).dtype


# ---------------------------------------------------------------------------------------
# Run directories
# ---------------------------------------------------------------------------------------
def _exp(steps: int = 4, **train):
    return experiment_from_dict(tiny(steps, **train))


def test_a_locked_run_directory_names_the_holder(tmp_path):
    lock = RunLock(tmp_path).acquire()  # another trainer (flock locks conflict across file descriptions)
    try:
        with pytest.raises(RunDirError, match=rf"{tmp_path} is in use by another trainer \(pid {os.getpid()} on "
                                              rf"host {socket.gethostname()} since .*\); wait for it"):
            Trainer(_exp(), tmp_path).fit()
    finally:
        lock.release()
    assert not (tmp_path / "metrics.csv").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 2 ** 22 + 17, "host": socket.gethostname(), "since": "x"}))
    Trainer(_exp(2), tmp_path).fit()
    assert sorted(train_losses(tmp_path)) == [1, 2]
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_finished_run_is_refused_then_overwritten_only_when_asked(tmp_path):
    Trainer(_exp(6, checkpoint_every=2, keep_last=3), tmp_path).fit()
    before = (tmp_path / "metrics.csv").read_bytes()
    with pytest.raises(RunDirError, match=rf"{tmp_path} already holds a run \(checkpoints, experiment.yaml, .*\); "
                                          r"continue it with --resume, or delete it and start over with --overwrite"):
        Trainer(_exp(2), tmp_path).fit()
    assert (tmp_path / "metrics.csv").read_bytes() == before
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path)] == [2, 4, 6]
    Trainer(_exp(2), tmp_path, overwrite=True).fit()
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path)] == [2]  # the old run's step 4 and 6 are gone
    assert sorted(train_losses(tmp_path)) == [1, 2]
    with pytest.raises(RunDirError, match="give one of them"):
        Trainer(_exp(2), tmp_path, resume=True, overwrite=True).fit()


def test_a_folder_that_is_not_a_run_is_never_overwritten(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(RunDirError, match=rf"--run-dir {tmp_path} is not empty and holds no perceptio run "
                                          r"\(thesis.tex\); choose a new or empty --run-dir"):
        Trainer(_exp(2), tmp_path, overwrite=True).fit()
    assert (tmp_path / "thesis.tex").read_text() == "mine"


@pytest.mark.parametrize("name", ["../../victim", "a/b", "/abs", ".hidden", "", "x" * 200, "a..b"])
def test_the_experiment_name_is_a_plain_name(name):
    with pytest.raises(ConfigError, match=rf"name must be a plain name .*got {name!r}"):
        experiment_from_dict({**tiny(), "name": name})
    experiment_from_dict({**tiny(), "name": "my-run_2.b"})


def test_resume_needs_an_existing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"--resume: run directory {tmp_path / 'nope'} does not exist; "
                                                r"start a new run without --resume"):
        Trainer(_exp(), tmp_path / "nope", resume=True).fit()
    assert not (tmp_path / "nope").exists()
    with pytest.raises(FileNotFoundError, match=r"holds no run \(experiment.yaml not found\)"):
        Trainer(_exp(), tmp_path, resume=True).fit()


@pytest.mark.parametrize("damage", [
    lambda c: _truncate(c / WEIGHTS_NAME),
    lambda c: _truncate(c / ckpt.STATE_NAME),
    lambda c: torch.save({"step": 6, "optimizer": {}, "rng": [], "x": Evil()}, c / ckpt.STATE_NAME),
    lambda c: (c / WEIGHTS_NAME).unlink(),
])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, damage):
    cut = _exp(4, checkpoint_every=2, keep_last=3)
    Trainer(cut, tmp_path / "cut").fit()
    newest = ckpt.latest_checkpoint(tmp_path / "cut")
    damage(newest)
    resumed = Trainer(_exp(6, checkpoint_every=2, keep_last=3), tmp_path / "cut", resume=True)
    with pytest.warns(UserWarning, match=rf"--resume: skipped damaged checkpoint {newest} \(moved to "
                                         r"damaged_step_000004\)"):
        resumed.fit()
    assert resumed.resumed_from.name == "step_000002"
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path / "cut")] == [2, 4, 6]
    assert (tmp_path / "cut" / "checkpoints" / "damaged_step_000004").is_dir()  # kept aside, not deleted
    assert sorted(train_losses(tmp_path / "cut")) == [1, 2, 3, 4, 5, 6]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    Trainer(_exp(2), tmp_path).fit()
    tmp_ckpt = tmp_path / "checkpoints" / ".tmp-step_000004-999999"
    tmp_ckpt.mkdir()
    (tmp_ckpt / WEIGHTS_NAME).write_bytes(b"\0" * 1000)
    (tmp_path / ".metrics.json.tmp-999999").write_text("{")
    with pytest.warns(UserWarning, match=r"removed 2 unfinished file\(s\) of an interrupted run"):
        Trainer(_exp(3), tmp_path, resume=True).fit()
    assert not tmp_ckpt.exists() and not (tmp_path / ".metrics.json.tmp-999999").exists()
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_a_run_killed_while_writing_its_config_leaves_nothing_in_the_way(tmp_path):
    (tmp_path / ".experiment.yaml.tmp-999999").write_text("data:")
    with pytest.warns(UserWarning, match=r"removed 1 unfinished file\(s\)"):
        Trainer(_exp(1), tmp_path).fit()
    assert (tmp_path / "experiment.yaml").is_file()


def test_a_full_disk_says_so_removes_the_partial_checkpoint_and_keeps_the_previous(tmp_path, monkeypatch):
    trainer = Trainer(_exp(2), tmp_path)
    trainer.fit()

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    trainer.step = 3
    with pytest.raises(OSError, match=r"writing checkpoint .*step_000003 failed: no space left on device; the "
                                      r"partial checkpoint was removed, the previous one \(.*step_000002\) is kept; "
                                      r"free disk space and continue with --resume") as info:
        trainer.save_checkpoint()
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match=r"writing checkpoint .*best failed: no space left on device"):
        ckpt.save_best(tmp_path, trainer.module.state_dict(), trainer.model_config, {"step": 3})
    monkeypatch.undo()
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path)] == [2]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    Perceiver.from_pretrained(ckpt.latest_checkpoint(tmp_path))
    Perceiver.from_pretrained(ckpt.best_checkpoint(tmp_path))


def test_a_torn_metrics_row_is_dropped_on_resume(tmp_path):
    Trainer(_exp(2, checkpoint_every=2), tmp_path).fit()
    with (tmp_path / "metrics.csv").open("a") as f:
        f.write("3,tra")  # a crash in the middle of a row
    Trainer(_exp(3), tmp_path, resume=True).fit()
    assert sorted(train_losses(tmp_path)) == [1, 2, 3]


# ---------------------------------------------------------------------------------------
# The CLI: one line per error, --debug for the traceback
# ---------------------------------------------------------------------------------------
TRAIN = ["--set", "train.steps=2", "--set", "train.threads=1", "--set", "logging.progress=false",
         "--set", "logging.plots=false", "--set", "train.batch_size=8",
         "--set", "model.perceiver.encoder.num_self_attends_per_block=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--run-dir", str(run), *TRAIN]) == 0
    return run


def _one_line_error(capsys, argv: list[str], *expected: str, status: int = 2) -> str:
    capsys.readouterr()
    assert main(argv) == status
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def test_cli_errors_are_one_line_naming_the_path_or_key(tmp_path, run_dir, capsys):
    (tmp_path / "file").write_text("x")
    _one_line_error(capsys, ["train", "--run-dir", str(tmp_path / "file")], f"--run-dir {tmp_path / 'file'} is a file")
    _one_line_error(capsys, ["train", "--run-dir", str(run_dir), *TRAIN], f"{run_dir} already holds a run",
                    "--resume", "--overwrite")
    _one_line_error(capsys, ["train", "--run-dir", str(tmp_path / "none"), "--resume"],
                    f"run directory {tmp_path / 'none'} does not exist")
    _one_line_error(capsys, ["train", "--set", "train.steps=[1,"], "--set 'train.steps=[1,': VALUE is not one YAML")
    _one_line_error(capsys, ["train", "--set", "train.steps=many"], "train.steps: expected an integer, got str 'many'")
    _one_line_error(capsys, ["train", "--set", "name=../x"], "name must be a plain name", "'../x'")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    _one_line_error(capsys, ["predict", "run", str(run_dir), str(tmp_path / "broken.png")],
                    f"{tmp_path / 'broken.png'}: not a readable image")
    _one_line_error(capsys, ["predict", "run", str(run_dir), str(tmp_path / "missing.png")],
                    f"input {tmp_path / 'missing.png'} does not exist")
    _one_line_error(capsys, ["predict", "classify", str(tmp_path / "file"), "x.png"], f"{tmp_path / 'file'} is neither")
    _one_line_error(capsys, ["evaluate", str(tmp_path)], f"{tmp_path / 'experiment.yaml'} not found")
    _one_line_error(capsys, ["convert", str(run_dir / "metrics.csv"), str(tmp_path / "out")], "metrics.csv: not a pickle")
    _one_line_error(capsys, ["predict", "run", str(run_dir), "x.npy", "--device", "gpu"],
                    "device 'gpu' is not a torch device")


@NO_CUDA
def test_cli_device_cuda_without_cuda(run_dir, capsys):
    for argv in (["evaluate", str(run_dir), "--device", "cuda"], ["predict", "run", str(run_dir), "x.npy", "--device",
                                                                 "cuda"]):
        _one_line_error(capsys, argv, "device 'cuda' but CUDA is not available on this machine; use 'cpu'")


def test_cli_read_only_run_directory(tmp_path, capsys, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(LOCK_NAME):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    _one_line_error(capsys, ["train", "--run-dir", str(tmp_path / "ro"), *TRAIN],
                    f"cannot lock run directory {tmp_path / 'ro'}: Permission denied")


def test_cli_unexpected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    from perceptio.cli import info

    def bug(args):
        raise RuntimeError("something internal\nsecond line")

    monkeypatch.setattr(info, "run", bug)
    _one_line_error(capsys, ["info"], "perceptio info: error: RuntimeError: something internal second line",
                    "rerun with --debug", status=1)
    with pytest.raises(RuntimeError, match="something internal"):
        main(["info", "--debug"])
    with pytest.raises(RuntimeError):
        main(["--debug", "info"])


# ---------------------------------------------------------------------------------------
# predict: audio sample rates, output folders
# ---------------------------------------------------------------------------------------
def _wav(path: Path, rate: int, seconds: float = 0.1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(int(rate * seconds), np.int16).tobytes())
    return path


def _fake_run(objective: str = "classification", input_shape=(800,), sample_rate=None) -> TrainedRun:
    return TrainedRun(model=None, experiment=load_experiment("digits"), info=DataInfo(objective),
                      objective=None, input_shape=input_shape, target_shape=(), sample_rate=sample_rate)


def test_predict_refuses_a_wav_of_another_sample_rate(tmp_path):
    run = _fake_run(sample_rate=8000)
    assert read_run_input(_wav(tmp_path / "ok.wav", 8000), run).shape == (800,)
    with pytest.raises(ValueError, match=r"loud.wav: sample rate 44100 Hz, but the run was trained on 8000 Hz "
                                         r"clips; resample the file to 8000 Hz"):
        read_run_input(_wav(tmp_path / "loud.wav", 44100), run)


def test_wav_runs_know_their_rate(tmp_path):
    from perceptio.data.files import WavFolderConfig

    (tmp_path / "a").mkdir()
    _wav(tmp_path / "a" / "x.wav", 16000)
    assert WavFolderConfig(path=str(tmp_path)).rate() == 16000
    assert WavFolderConfig(path=str(tmp_path), sample_rate=8000).rate() == 8000


def test_predict_output_that_is_a_file_names_it(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(ValueError, match=rf"--output {tmp_path / 'out'} is a file; expected a folder"):
        predict_run(_fake_run("dense"), ["a.npy"], output=tmp_path / "out")
