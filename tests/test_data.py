"""Training data: built-in data sets, users' files (with their error messages), the
sampler, and the grid / point-cloud / spectrogram adapters."""

from __future__ import annotations

import math
import wave

import numpy as np
import pytest
import torch

from perceptio.adapters.grid import (
    GridAdapterConfig,
    PointCloudAdapterConfig,
    SpectrogramAdapterConfig,
    mel_filterbank,
    patchify,
)
from perceptio.adapters.image import space_to_depth
from perceptio.data import DataConfig, Sampler
from perceptio.data.builtin import affine_flow_pair, mask_tokens, random_shift
from perceptio.tokenizer import MASK, NUM_SPECIAL_TOKENS
from perceptio.train.experiment import experiment_from_dict, load_experiment
from perceptio.train.trainer import Trainer


def data(**kw):
    return DataConfig.from_dict(kw)


# -- sampler ----------------------------------------------------------------------------------
def test_sampler_covers_each_epoch_once_and_slices_the_global_batch():
    s = Sampler(20, 6, seed=3)
    epoch0 = torch.cat([s.global_batch(i) for i in range(3)])
    assert len(set(epoch0.tolist())) == 18  # 3 full batches, the last 2 examples dropped
    assert not torch.equal(s.global_batch(0), s.global_batch(3))  # new permutation per epoch
    parts = [s.indices(4, rank, 2, micro, 3) for rank in range(2) for micro in range(3)]
    assert torch.equal(torch.cat(parts), s.global_batch(4))
    assert torch.equal(Sampler(20, 6, seed=3).global_batch(4), s.global_batch(4))  # stateless
    with pytest.raises(ValueError, match="batch_size=6 must be divisible by processes x grad_accum = 4 x 1"):
        s.indices(0, 0, 4)
    with pytest.raises(ValueError, match="larger than the training set"):
        Sampler(5, 6, 0)


# -- built-in data sets -------------------------------------------------------------------------
def test_digits_splits_and_shift_augmentation():
    splits = data(kind="digits").load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1258, 180, 359)
    x = splits.train.fields["inputs"][:4]
    assert x.shape == (4, 8, 8, 1) and 0 <= x.min() and x.max() <= 1
    shifted = random_shift(torch.arange(16.0).reshape(1, 4, 4, 1), 1, torch.Generator().manual_seed(1))
    rows = [torch.roll(torch.nn.functional.pad(torch.arange(16.0).reshape(4, 4), (1, 1, 1, 1)), (dy, dx), (0, 1))
            [1:5, 1:5] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    assert any(torch.equal(shifted[0, ..., 0], r) for r in rows)


def test_bert_masking():
    ids = torch.randint(NUM_SPECIAL_TOKENS, 262, (64, 128))
    out = mask_tokens(ids, 0.15, torch.Generator().manual_seed(0))
    frac = out["mask"].float().mean().item()
    assert 0.13 < frac < 0.17
    assert torch.equal(out["inputs"][~out["mask"]], ids[~out["mask"]])
    assert 0.75 < (out["inputs"][out["mask"]] == MASK).float().mean().item() < 0.85


def test_bytes_mlm_uses_pydoc_topics_and_a_unigram_baseline():
    splits = data(kind="bytes_mlm", seq_len=64, max_bytes=64 * 50).load()
    assert len(splits.train) + len(splits.val) + len(splits.test) == 50
    assert splits.info.extras["unigram_top_id"] == ord(" ") + NUM_SPECIAL_TOKENS
    batch = splits.val.batch(torch.arange(3), torch.Generator().manual_seed(0))
    assert set(batch) == {"inputs", "targets", "mask"} and batch["inputs"].shape == (3, 64)


def test_point_shapes_rotation_augmentation_keeps_the_shape():
    splits = data(kind="point_shapes", num_examples=10, num_points=16).load()
    clean = splits.train.fields["inputs"][:4]
    rotated = splits.train.batch(torch.arange(4), torch.Generator().manual_seed(0))["inputs"]
    assert not torch.allclose(rotated, clean)
    assert torch.allclose(rotated.norm(dim=-1), clean.norm(dim=-1), atol=1e-5)  # a rotation about the origin
    assert torch.allclose(torch.cdist(rotated, rotated), torch.cdist(clean, clean), atol=1e-4)


def test_affine_flow_is_exact_for_a_pure_translation():
    image = torch.rand(3, 60, 60)
    frames, flow = affine_flow_pair(image, 8, torch.Generator().manual_seed(0), max_shift=0.0, max_rotation=0.0,
                                    max_scale=0.0)
    assert frames.shape == (2, 8, 8, 3) and flow.shape == (8, 8, 2)
    assert flow.abs().max() < 1e-5 and torch.allclose(frames[0], frames[1], atol=1e-5)
    frames, flow = affine_flow_pair(image, 8, torch.Generator().manual_seed(1), 3.0, 10.0, 0.1)
    # frame2 at p + flow(p) shows what frame1 shows at p (checked at the centre pixel)
    assert flow.abs().max() > 0.1


@pytest.mark.parametrize("name", ["flow_affine", "point_shapes", "moving_shapes", "bytes_mlm"])
def test_builtin_configs_train_two_steps(tmp_path, name):
    small = {"flow_affine": ["data.num_examples=40"], "point_shapes": ["data.num_examples=40"],
             "moving_shapes": ["data.num_examples=40"], "bytes_mlm": ["data.max_bytes=20000"]}[name]
    exp = load_experiment(name, small + ["train.steps=2", "train.batch_size=8", "train.threads=1",
                                         "logging.progress=false", "logging.plots=false"])
    results = Trainer(exp, tmp_path).fit()
    metric = {"flow_affine": "epe", "point_shapes": "accuracy", "moving_shapes": "label_accuracy",
              "bytes_mlm": "masked_accuracy"}[name]
    assert math.isfinite(results["test"][metric])
    if name == "flow_affine":
        assert results["test"]["zero_flow_epe"] > 0
    if name == "bytes_mlm":
        assert 0.1 < results["test"]["unigram_baseline_accuracy"] < 0.3
        from perceptio.tasks.runs import load_run, predict_run

        [filled] = predict_run(load_run(tmp_path), ["hello [MASK]orld"])
        assert filled["text"].startswith("hello ") and filled["text"].endswith("orld") and "[MASK]" not in filled["text"]
    if name == "flow_affine":
        from perceptio.tasks.runs import load_run, predict_run

        np.save(tmp_path / "pair.npy", np.zeros((2, 16, 16, 3), np.float32))
        [out] = predict_run(load_run(tmp_path), [str(tmp_path / "pair.npy")], output=str(tmp_path / "pred"))
        assert np.load(out["output"]).shape == (16, 16, 2)


# -- your own files -------------------------------------------------------------------------
def read_all(dataset):
    """Every example of a split, read (files are decoded on access)."""
    return dataset.batch(torch.arange(len(dataset)))


def write_png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_skips_unreadable_files_with_a_warning(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(5):
            write_png(tmp_path / cls / f"{i}.png", rng.integers(0, 255, (10, 12, 3), dtype=np.uint8))
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    splits = data(kind="image_folder", path=str(tmp_path), image_size=[8, 8], test_fraction=0.2).load()
    assert splits.info.classes == ["cat", "dog"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 11  # read on access: listed, not yet read
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*broken\.png"):
        batches = [read_all(splits.get(name)) for name in ("train", "val", "test")]
    assert all(b["inputs"].shape[1:] == (8, 8, 3) for b in batches)
    everything = torch.cat([b["inputs"] for b in batches])
    assert len(everything) == 11 and len(everything.unique(dim=0)) == 10  # broken.png's place read the next file


def test_missing_data_path_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.path: .*nowhere does not exist"):
        data(kind="image_folder", path=str(tmp_path / "nowhere")).load()
    with pytest.raises(FileNotFoundError, match=r"data.paths\[0\]: .*nowhere.txt does not exist"):
        data(kind="text_files", paths=[str(tmp_path / "nowhere.txt")]).load()


def test_non_utf8_text_names_the_file(tmp_path):
    (tmp_path / "good.txt").write_text("hello world " * 100)
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 " * 100)
    with pytest.raises(ValueError, match=r"bad\.txt: not UTF-8 text \(byte 3"):
        data(kind="text_files", paths=[str(tmp_path)], seq_len=16).load()
    with pytest.warns(UserWarning, match="skipping non-UTF-8 file"):
        splits = data(kind="text_files", paths=[str(tmp_path / "*.txt")], seq_len=16, on_decode_error="skip").load()
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1200 // 16


def test_npy_folder_and_inconsistent_shapes(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            np.save(tmp_path / cls / f"{i}.npy", np.full((5, 2), i, np.float32))
    splits = data(kind="npy_folder", path=str(tmp_path)).load()
    assert read_all(splits.train)["inputs"].shape[1:] == (5, 2) and splits.info.classes == ["a", "b"]
    np.save(tmp_path / "b" / "odd.npy", np.zeros((6, 2), np.float32))
    with pytest.raises(ValueError, match=r"inconsistent array shapes: .*odd\.npy has shape \(6, 2\)"):
        data(kind="npy_folder", path=str(tmp_path)).load()
    np.save(tmp_path / "x.npy", np.zeros((10, 3)))
    np.save(tmp_path / "y.npy", np.zeros(9, np.int64))
    with pytest.raises(ValueError, match=r"data.inputs .*x\.npy has 10 examples.*data.labels .*y\.npy has 9"):
        data(kind="npy", inputs=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy")).load()


def write_wav(path, samples: np.ndarray, rate: int = 8000, channels: int = 1):
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype("<i2").tobytes())


def test_wav_folder_crops_pads_mixes_to_mono_and_checks_the_rate(tmp_path):
    t = np.arange(1000) / 8000
    write_wav(tmp_path / "low" / "a.wav", np.sin(2 * np.pi * 200 * t))
    write_wav(tmp_path / "low" / "b.wav", np.repeat(np.sin(2 * np.pi * 200 * t[:300]), 2), channels=2)
    write_wav(tmp_path / "high" / "a.wav", np.sin(2 * np.pi * 900 * t))
    splits = data(kind="wav_folder", path=str(tmp_path), num_samples=800, val_fraction=0.0, test_fraction=0.0).load()
    x = read_all(splits.train)["inputs"]
    assert x.shape == (3, 800) and x.abs().max() <= 1.0
    assert any(bool((row[300:] == 0).all()) and row[:300].abs().max() > 0.5 for row in x)  # stereo, padded
    write_wav(tmp_path / "high" / "fast.wav", np.zeros(100), rate=16000)
    with pytest.raises(ValueError, match=r"fast\.wav: sample rate 16000 Hz differs from 8000 Hz"):
        read_all(data(kind="wav_folder", path=str(tmp_path), num_samples=800, test_fraction=0.0).load().train)
    (tmp_path / "high" / "fast.wav").write_bytes(b"RIFF garbage")
    with pytest.raises(ValueError, match=r"fast\.wav: not a readable PCM WAV file.*set data.on_error: skip"):
        read_all(data(kind="wav_folder", path=str(tmp_path), num_samples=800, test_fraction=0.0).load().train)


def test_csv_points(tmp_path):
    for cls in ("flat", "tall"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            pts = np.random.default_rng(i).normal(size=(20 + i, 3)) * ([1, 1, 0.1] if cls == "flat" else [0.1, 0.1, 1])
            (tmp_path / cls / f"{i}.csv").write_text("x,y,z\n" + "\n".join(",".join(map(str, p)) for p in pts))
    splits = data(kind="csv_points", path=str(tmp_path), num_points=32, val_fraction=0.0, test_fraction=0.0).load()
    assert read_all(splits.train)["inputs"].shape == (6, 32, 3)
    (tmp_path / "flat" / "bad.csv").write_text("1,2,3\n4,5\n")
    with pytest.raises(ValueError, match=r"bad\.csv: inconsistent number of columns \(3 in the first row, 2 in row 2\)"):
        read_all(data(kind="csv_points", path=str(tmp_path), val_fraction=0.0, test_fraction=0.0).load().train)


def test_train_on_an_image_folder_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    for cls, value in (("dark", 30), ("bright", 220)):
        for i in range(12):
            write_png(tmp_path / "data" / cls / f"{i}.png", np.clip(rng.normal(value, 10, (6, 6)), 0, 255).astype(np.uint8))
    exp = experiment_from_dict({
        "data": {"kind": "image_folder", "path": str(tmp_path / "data"), "image_size": [6, 6], "channels": 1},
        "model": {"perceiver": {
            "input_adapter": {"kind": "image", "image_shape": [6, 6, 1], "prep_type": "pixels", "spatial_downsample": 1,
                              "position": {"num_bands": 2}},
            "encoder": {"num_latents": 4, "num_latent_channels": 16, "num_self_attends_per_block": 1,
                        "num_self_attend_heads": 2, "num_cross_attend_heads": 1},
            "decoder": {"kind": "cross_attention", "queries": {"kind": "trainable", "num_channels": 16},
                        "output_channels": 2},
            "output_adapter": {"kind": "classification"}}},
        "optim": {"lr": 3e-3},
        "train": {"steps": 30, "batch_size": 8, "eval_every": 30, "threads": 1},
        "logging": {"progress": False, "plots": False},
    })
    results = Trainer(exp, tmp_path / "run").fit()
    assert results["test"]["accuracy"] == 1.0


# -- adapters ------------------------------------------------------------------------------------
def test_patchify_matches_space_to_depth_and_a_loop():
    x = torch.randn(2, 4, 6, 8, 3)  # a video [B, T, H, W, C]
    ours = patchify(x, [2, 2, 2])
    assert torch.equal(ours, space_to_depth(x, 2, 2))
    assert torch.equal(ours[1, 1, 2, 3], x[1, 2:4, 4:6, 6:8].reshape(-1))


def test_grid_adapter_on_a_time_series():
    adapter = GridAdapterConfig(index_dims=[12], num_input_channels=2, patch_size=[3], num_channels=8).build()
    x = torch.randn(5, 12, 2)
    assert adapter.check(x) == (5, 4)
    out = adapter(x)
    assert out.inputs.shape == (5, 4, adapter.num_channels) and adapter.num_channels == 8 + 1 + 2 * 16
    with pytest.raises(ValueError, match=r"grid inputs must have shape \[B, 12, 2\].*got \(5, 12, 3\)"):
        adapter.check(torch.randn(5, 12, 3))


def test_point_cloud_adapter_is_permutation_equivariant():
    adapter = PointCloudAdapterConfig(num_coords=3, num_features=1, num_channels=4, num_bands=4).build()
    pts = torch.randn(2, 10, 4)
    perm = torch.randperm(10)
    assert torch.allclose(adapter(pts).inputs[:, perm], adapter(pts[:, perm]).inputs)
    assert adapter(pts).inputs.shape == (2, 10, 4 + 3 + 3 * 4 * 2)
    with pytest.raises(ValueError, match=r"point cloud inputs must have shape \[B, P, 4\]"):
        adapter.check(torch.randn(2, 10, 3))


def test_spectrogram_adapter_finds_the_pitch_of_a_tone():
    cfg = SpectrogramAdapterConfig(num_samples=1600, sample_rate=8000, n_fft=256, hop_length=160, num_mels=32,
                                   patch_size=[1, 32])
    adapter = cfg.build()
    t = torch.arange(1600) / 8000
    low, high = torch.sin(2 * math.pi * 300 * t), torch.sin(2 * math.pi * 2500 * t)
    mel = adapter.log_mel(torch.stack([low, high]))
    assert mel.shape == (2, cfg.num_frames, 32)
    assert mel[0].mean(0).argmax() < mel[1].mean(0).argmax()
    assert adapter(torch.stack([low, high])).inputs.shape == (2, cfg.num_frames, adapter.num_channels)
    filters = mel_filterbank(32, 256, 8000)
    assert filters.shape == (129, 32) and (filters.max(0).values > 0.5).all()


def test_training_points_and_evaluation_decode_the_same_outputs():
    """Training passes every modality as ``points`` (all of them when not subsampled), the
    way evaluation decodes: Fourier queries of ``points`` and of the full grid differ."""
    from perceptio.model import Perceiver
    from perceptio.train.objectives import build_objective

    exp = load_experiment("moving_shapes", ["data.num_examples=8"])
    splits = exp.data.load()
    model = Perceiver(exp.model.resolve()).eval()
    objective = build_objective(splits.info, weights={"label": 0.1})  # no subsampling
    batch = splits.test.batch(torch.arange(2))
    with torch.no_grad():
        _, train_sums = objective.loss(model, batch, torch.Generator().manual_seed(0))
        eval_sums = objective.eval_batch(model, batch)
    assert train_sums.keys() == eval_sums.keys()
    for k in train_sums:
        assert train_sums[k][0] == pytest.approx(eval_sums[k][0], rel=1e-5), k


def _tiny_classifier(input_adapter: dict, num_classes: int) -> dict:
    return {
        "input_adapter": input_adapter,
        "encoder": {"num_latents": 4, "num_latent_channels": 16, "num_self_attends_per_block": 1,
                    "num_self_attend_heads": 2, "num_cross_attend_heads": 1},
        "decoder": {"kind": "cross_attention", "queries": {"kind": "trainable", "num_channels": 16},
                    "output_channels": num_classes},
        "output_adapter": {"kind": "classification"},
    }


def test_train_on_wav_files_with_log_mel_spectrograms(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(800) / 8000
    for cls, hz in (("low", 300), ("high", 2000)):
        for i in range(10):
            write_wav(tmp_path / "wav" / cls / f"{i}.wav", 0.5 * np.sin(2 * np.pi * hz * t + rng.uniform(0, 6)))
    exp = experiment_from_dict({
        "data": {"kind": "wav_folder", "path": str(tmp_path / "wav"), "num_samples": 800, "test_fraction": 0.3},
        "model": {"perceiver": _tiny_classifier(
            {"kind": "spectrogram", "num_samples": 800, "sample_rate": 8000, "n_fft": 128, "hop_length": 100,
             "num_mels": 16, "patch_size": [1, 16], "position": {"num_bands": 2}}, 2)},
        "optim": {"lr": 3e-3},
        "train": {"steps": 30, "batch_size": 8, "eval_every": 30, "threads": 1},
        "logging": {"progress": False, "plots": False},
    })
    assert Trainer(exp, tmp_path / "run").fit()["test"]["accuracy"] == 1.0


def test_train_on_npy_time_series_with_the_grid_adapter(tmp_path):
    rng = np.random.default_rng(0)
    for cls, slope in (("down", -1.0), ("up", 1.0)):
        (tmp_path / "npy" / cls).mkdir(parents=True)
        for i in range(12):
            series = slope * np.linspace(0, 1, 24)[:, None] + rng.normal(0, 0.1, (24, 2))
            np.save(tmp_path / "npy" / cls / f"{i}.npy", series.astype(np.float32))
    exp = experiment_from_dict({
        "data": {"kind": "npy_folder", "path": str(tmp_path / "npy"), "test_fraction": 0.25},
        "model": {"perceiver": _tiny_classifier(
            {"kind": "grid", "index_dims": [24], "num_input_channels": 2, "patch_size": [4], "num_channels": 8,
             "position": {"num_bands": 4}}, 2)},
        "optim": {"lr": 3e-3},
        "train": {"steps": 30, "batch_size": 8, "eval_every": 30, "threads": 1},
        "logging": {"progress": False, "plots": True},
    })
    assert Trainer(exp, tmp_path / "run").fit()["test"]["accuracy"] == 1.0
    assert (tmp_path / "run" / "plots" / "cross_attention.png").is_file()  # a 1-d grid: line plots
