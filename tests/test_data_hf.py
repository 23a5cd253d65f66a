"""Kind ``hf_dataset``: Hugging Face data sets built on the fly under tmp_path (nothing is
downloaded), read memory-mapped and decoded on access."""

from __future__ import annotations

import io
import pickle
import sys
import wave

import numpy as np
import pytest
import torch

from perceptio.config import ConfigError
from perceptio.data import DataConfig
from perceptio.data.base import split_indices
from perceptio.data.builtin import DigitsConfig
from perceptio.data.files import read_image

datasets = pytest.importorskip("datasets")
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Image, List, Value  # noqa: E402

from perceptio.data.hf import classification_to_hf, offline_hub  # noqa: E402

FEATURES = Features({"x": List(Value("float32"), length=3), "y": ClassLabel(names=["cat", "dog", "eel"])})


def rows(n: int, offset: int = 0) -> Dataset:
    """Row i: x = [i, 2i, 3i] (+ offset), y = i % 3."""
    x = [[float(i + offset), 2.0 * (i + offset), 3.0 * (i + offset)] for i in range(n)]
    return Dataset.from_dict({"x": x, "y": [i % 3 for i in range(n)]}, features=FEATURES)


def load(path, **data):
    data = {"kind": "hf_dataset", "path": str(path), "columns": {"inputs": "x", "labels": "y"}, **data}
    return DataConfig.from_dict(data).load()


def everything(split) -> dict:
    return split.batch(torch.arange(len(split)))


# -- sources ------------------------------------------------------------------------------------
def test_saved_dataset_dict_uses_its_splits_and_classlabel_names(tmp_path):
    DatasetDict({"train": rows(12), "validation": rows(4, 100), "test": rows(5, 200)}).save_to_disk(tmp_path / "d")
    splits = load(tmp_path / "d")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 5)
    assert splits.info.objective == "classification" and splits.info.classes == ["cat", "dog", "eel"]
    test = everything(splits.test)
    assert test["inputs"].dtype == torch.float32 and test["inputs"].shape == (5, 3)
    assert test["inputs"][:, 0].tolist() == [200.0, 201.0, 202.0, 203.0, 204.0]
    assert test["targets"].tolist() == [0, 1, 2, 0, 1]
    one = splits.val.example(2)
    assert one["inputs"].tolist() == [102.0, 204.0, 306.0] and int(one["targets"]) == 2
    # other split names on request; a validation split taken from the training rows when asked for one it lacks
    other = load(tmp_path / "d", val_split="test", test_split="validation")
    assert (len(other.val), len(other.test)) == (5, 4)


def test_one_saved_dataset_is_split_by_fractions_lazily(tmp_path):
    rows(50).save_to_disk(tmp_path / "d")
    splits = load(tmp_path / "d", val_fraction=0.2, test_fraction=0.1, split_seed=3)
    train, val, test = split_indices(50, 0.2, 0.1, 3)
    for split, want in ((splits.train, train), (splits.val, val), (splits.test, test)):
        assert everything(split)["inputs"][:, 0].long().tolist() == want.tolist()
    with pytest.raises(ConfigError, match="one Dataset without splits.*remove data.split"):
        load(tmp_path / "d", split="train")


def test_parquet_files_split_by_their_names_and_one_file(tmp_path):
    (tmp_path / "pq").mkdir()
    rows(20).to_parquet(str(tmp_path / "pq" / "train-00000-of-00002.parquet"))
    rows(10, 20).to_parquet(str(tmp_path / "pq" / "train-00001-of-00002.parquet"))
    rows(6, 100).to_parquet(str(tmp_path / "pq" / "test-00000-of-00001.parquet"))
    splits = load(tmp_path / "pq", val_fraction=0.1, cache_dir=str(tmp_path / "cache"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (27, 3, 6)  # val: 10 % of the 30 train rows
    seen = everything(splits.train)["inputs"][:, 0].tolist() + everything(splits.val)["inputs"][:, 0].tolist()
    assert sorted(seen) == [float(i) for i in range(30)]
    assert everything(splits.test)["inputs"][:, 0].tolist() == [100.0 + i for i in range(6)]
    assert splits.info.classes == ["cat", "dog", "eel"]  # the features travel in the Parquet metadata
    assert any((tmp_path / "cache").rglob("*.arrow"))  # converted once into the cache given
    single = load(tmp_path / "pq" / "test-00000-of-00001.parquet", cache_dir=str(tmp_path / "cache"),
                  val_fraction=0.5, test_fraction=0.0)
    assert len(single.train) + len(single.val) == 6


def test_arrow_files_are_memory_mapped_in_place(tmp_path):
    rows(8).save_to_disk(tmp_path / "saved")
    (tmp_path / "arrow" / "train").mkdir(parents=True)
    (tmp_path / "arrow" / "validation").mkdir()
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    (tmp_path / "arrow" / "train" / "part.arrow").write_bytes(arrow.read_bytes())
    (tmp_path / "arrow" / "validation" / "part.arrow").write_bytes(arrow.read_bytes())
    splits = load(tmp_path / "arrow", test_fraction=0.25)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 8, 2)
    files = [f["filename"] for f in splits.val.data.cache_files]
    assert files == [str(tmp_path / "arrow" / "validation" / "part.arrow")]  # mapped where it is, not copied


def test_a_data_set_in_the_cache_is_read_by_name_offline(tmp_path):
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    (tmp_path / "pq").mkdir()
    rows(9).to_parquet(str(tmp_path / "pq" / "train.parquet"))
    rows(3, 50).to_parquet(str(tmp_path / "pq" / "test.parquet"))
    cache = tmp_path / "cache"
    # the cache as load_dataset("tiny") leaves it after a download: NAME/CONFIG/VERSION/HASH/
    files = DataFilesDict.from_patterns({"train": ["train.parquet"], "test": ["test.parquet"]}, str(tmp_path / "pq"))
    Parquet(cache_dir=str(cache), dataset_name="tiny", hash="0123abcd", config_id="default",
            data_files=files).download_and_prepare()
    hub_flag = datasets.config.HF_HUB_OFFLINE
    splits = load("tiny", cache_dir=str(cache), val_fraction=1 / 3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 3, 3)
    assert everything(splits.test)["inputs"][:, 0].tolist() == [50.0, 51.0, 52.0]
    assert datasets.config.HF_HUB_OFFLINE == hub_flag  # offline mode was forced for the load only
    with pytest.raises(FileNotFoundError) as e:
        load("owner/not-there", cache_dir=str(cache))
    message = str(e.value)
    assert "'owner/not-there'" in message and str(cache) in message and "nothing is downloaded" in message
    assert "\n" not in message


def test_offline_hub_forces_and_restores_both_flags():
    import huggingface_hub.constants as hub

    before = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    with offline_hub():
        assert datasets.config.HF_HUB_OFFLINE and hub.HF_HUB_OFFLINE
    assert (datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE) == before


# -- columns ------------------------------------------------------------------------------------
def test_labels_without_classlabel_are_the_sorted_distinct_values_of_all_splits(tmp_path):
    train = Dataset.from_dict({"v": [[1.0], [2.0], [3.0], [4.0]], "name": ["owl", "ant", "owl", "bee"]})
    test = Dataset.from_dict({"v": [[5.0], [6.0]], "name": ["cow", "ant"]})
    DatasetDict({"train": train, "test": test}).save_to_disk(tmp_path / "d")
    splits = load(tmp_path / "d", columns={"inputs": "v", "labels": "name"}, val_fraction=0.0)
    assert splits.info.classes == ["ant", "bee", "cow", "owl"]
    assert everything(splits.test)["targets"].tolist() == [2, 0]
    batch = splits.train.batch(torch.arange(4))
    assert [splits.info.classes[t] for t in batch["targets"]] == [
        {1.0: "owl", 2.0: "ant", 3.0: "owl", 4.0: "bee"}[float(v)] for v in batch["inputs"][:, 0]]
    ints = Dataset.from_dict({"v": [[0.0]] * 4, "k": [10, 2, 10, 7]})
    ints.save_to_disk(tmp_path / "ints")
    assert load(tmp_path / "ints", columns={"inputs": "v", "labels": "k"}).info.classes == ["2", "7", "10"]


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image as PILImage

    out = io.BytesIO()
    PILImage.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_images_are_decoded_on_access_and_resized_or_refused(tmp_path):
    gen = np.random.default_rng(0)
    pictures = [gen.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(6, 5), (7, 9), (6, 5), (4, 4)]]
    data = Dataset.from_dict({"img": [{"bytes": png(p), "path": None} for p in pictures], "y": [0, 1, 0, 1]},
                             features=Features({"img": Image(), "y": ClassLabel(names=["a", "b"])}))
    data.save_to_disk(tmp_path / "d")
    resized = load(tmp_path / "d", columns={"inputs": "img", "labels": "y"}, image_size=[6, 5], val_fraction=0.0,
                   test_fraction=0.0)
    batch = resized.train.parent.batch(torch.arange(4))  # the rows in order (train: a permutation)
    assert batch["inputs"].shape == (4, 6, 5, 3) and batch["inputs"].dtype == torch.float32
    for i, p in enumerate(pictures):  # the pixels image_folder reads from the same PNG (bicubic resize)
        expected = read_image(io.BytesIO(png(p)), (6, 5), 3).astype(np.float32) / 255.0
        assert np.array_equal(batch["inputs"][i].numpy(), expected)
    grey = load(tmp_path / "d", columns={"inputs": "img", "labels": "y"}, image_size=[3, 3], channels=1,
                val_fraction=0.0, test_fraction=0.0)
    assert grey.train.parent.example(1)["inputs"].shape == (3, 3, 1)
    kept = load(tmp_path / "d", columns={"inputs": "img", "labels": "y"}, val_fraction=0.0, test_fraction=0.0)
    assert kept.train.parent.batch(torch.tensor([0, 2]))["inputs"].shape == (2, 6, 5, 3)  # one size: kept as it is
    with pytest.raises(ValueError, match=r"different shapes \[\(6, 5, 3\), \(7, 9, 3\)\].*data.image_size"):
        kept.train.parent.batch(torch.tensor([0, 1]))
    refused = load(tmp_path / "d", columns={"inputs": "img", "labels": "y"}, image_size=[6, 5], resize=False)
    assert refused.train.parent.example(2)["inputs"].shape == (6, 5, 3)
    with pytest.raises(ValueError, match=r"row 1 column 'img': image of 7x9 pixels, but data.image_size is \[6, 5\] "
                                         r"and data.resize is false"):
        refused.train.parent.example(1)


def test_max_shift_augments_the_training_split_only(tmp_path):
    images = np.zeros((20, 5, 5, 1), np.float32)
    images[:, 2, 2] = 1.0  # one bright pixel in the middle
    Dataset.from_dict({"x": images, "y": [0, 1] * 10},
                      features=Features({"x": datasets.Array3D((5, 5, 1), "float32"), "y": Value("int64")})
                      ).save_to_disk(tmp_path / "d")
    splits = load(tmp_path / "d", max_shift=2, val_fraction=0.25, test_fraction=0.25)
    bright = lambda batch: batch["inputs"][..., 0].flatten(1).argmax(1)  # noqa: E731
    train = splits.train.batch(torch.arange(10), torch.Generator().manual_seed(1))
    assert (bright(train) != 12).any()  # shifted away from the centre
    for split in (splits.val, splits.test):  # never augmented
        assert (bright(split.batch(torch.arange(5), torch.Generator().manual_seed(1))) == 12).all()
    rows(5).save_to_disk(tmp_path / "flat")
    with pytest.raises(ValueError, match=r"data.max_shift needs image inputs \[H, W, C\]; .* shape \(3,\)"):
        load(tmp_path / "flat", max_shift=1)


def test_a_broken_image_names_its_split_row_and_column(tmp_path):
    data = Dataset.from_dict({"img": [{"bytes": png(np.zeros((2, 2, 3), np.uint8)), "path": None},
                                      {"bytes": b"not a png", "path": None}], "y": [0, 1]},
                             features=Features({"img": Image(), "y": Value("int64")}))
    data.save_to_disk(tmp_path / "d")
    splits = load(tmp_path / "d", columns={"inputs": "img", "labels": "y"}, val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(ValueError, match=r"\(train split\) row 1 column 'img': not a readable image"):
        splits.train.parent.batch(torch.tensor([0, 1]))


def wav(samples: np.ndarray, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype(np.int16).tobytes())
    return out.getvalue()


def test_audio_of_wav_bytes_is_decoded_on_access(tmp_path):
    clips = [np.sin(np.arange(n) / 3.0) * 0.5 for n in (40, 25)]
    # written as the Audio storage ({bytes, path}) and cast: encoding audio needs torchcodec, reading WAV does not
    data = Dataset.from_dict({"a": [{"bytes": wav(c, 8000), "path": None} for c in clips], "y": [0, 1]})
    data.cast_column("a", Audio()).save_to_disk(tmp_path / "d")
    splits = load(tmp_path / "d", columns={"inputs": "a", "labels": "y"}, num_samples=32, val_fraction=0.0,
                  test_fraction=0.0)
    batch = splits.train.parent.batch(torch.arange(2))
    assert batch["inputs"].shape == (2, 32)
    np.testing.assert_allclose(batch["inputs"][0].numpy(), clips[0][:32], atol=1e-4)  # cropped
    np.testing.assert_allclose(batch["inputs"][1, :25].numpy(), clips[1], atol=1e-4)  # zero-padded
    assert not batch["inputs"][1, 25:].any()
    wrong_rate = load(tmp_path / "d", columns={"inputs": "a", "labels": "y"}, sample_rate=16000)
    with pytest.raises(ValueError, match="row 0 column 'a': sample rate 8000 Hz, but data.sample_rate is 16000"):
        wrong_rate.train.parent.example(0)


def test_text_column_gives_masked_bytes_windows_of_the_joined_rows(tmp_path):
    texts = ["hello world", "", "perceiver reads bytes", "éé"]
    Dataset.from_dict({"t": texts}).save_to_disk(tmp_path / "d")
    splits = load(tmp_path / "d", columns={"text": "t"}, seq_len=4, val_fraction=0.0, test_fraction=0.0)
    joined = "\n\n".join(texts).encode("utf-8")
    windows = everything(splits.train)
    assert splits.info.objective == "mlm" and len(splits.train) == len(joined) // 4
    got = sorted(bytes((windows["targets"][k] - 6).tolist()) for k in range(len(splits.train)))
    assert got == sorted(joined[i:i + 4] for i in range(0, len(joined) // 4 * 4, 4))
    assert windows["mask"].any() and (windows["inputs"] != windows["targets"]).any()  # masked as text_files masks
    # the unigram baseline: the most frequent byte of the training text (all of it: under 1 MiB)
    assert splits.info.extras["unigram_top_id"] == int(torch.bincount(windows["targets"].flatten()).argmax())
    with pytest.raises(ValueError, match="fewer than 3"):
        load(tmp_path / "d", columns={"text": "t"}, seq_len=20)


def test_masked_bytes_of_a_text_column_train_through_the_trainer(tmp_path):
    from perceptio.train.experiment import load_experiment
    from perceptio.train.trainer import Trainer

    Dataset.from_dict({"t": [f"line {i}: the Perceiver reads bytes" for i in range(200)]}).save_to_disk(tmp_path / "d")
    exp = load_experiment("bytes_mlm", [
        f"data={{kind: hf_dataset, path: {tmp_path / 'd'}, columns: {{text: t}}, seq_len: 64}}", "train.steps=2",
        "train.batch_size=8", "train.eval_every=1000", "train.num_workers=0", "logging.progress=false",
        "logging.plots=false", "model.perceiver.encoder.num_self_attends_per_block=1"])
    results = Trainer(exp, tmp_path / "run").fit()
    assert 0.0 <= results["test"]["masked_accuracy"] <= 1.0
    assert "unigram_baseline_accuracy" in results["test"]


def test_text_with_labels_is_text_classification(tmp_path):
    Dataset.from_dict({"t": ["good", "bad film", "good"], "y": ["pos", "neg", "pos"]}).save_to_disk(tmp_path / "d")
    splits = load(tmp_path / "d", columns={"text": "t", "labels": "y"}, seq_len=6, val_fraction=0.0,
                  test_fraction=0.0)
    batch = splits.train.parent.batch(torch.arange(3))
    assert splits.info.classes == ["neg", "pos"] and splits.info.extras == {"text": True, "max_length": 6}
    assert batch["inputs"].shape == (3, 6) and batch["input_mask"].sum(1).tolist() == [4, 6, 4]
    assert batch["targets"].tolist() == [1, 0, 1]


# -- bad input ----------------------------------------------------------------------------------
def test_a_missing_column_names_the_columns_there_are(tmp_path):
    rows(5).save_to_disk(tmp_path / "d")
    with pytest.raises(ValueError, match=r"data.columns.inputs: .* has no column 'image'; its columns are: "
                                         r"x \(list of float32\), y \(ClassLabel of 3 names\)"):
        load(tmp_path / "d", columns={"inputs": "image", "labels": "y"})


def test_a_missing_split_names_the_splits_there_are(tmp_path):
    DatasetDict({"train": rows(5), "test": rows(5)}).save_to_disk(tmp_path / "d")
    with pytest.raises(ValueError, match="data.split: .* has no split 'training'; its splits are: train, test"):
        load(tmp_path / "d", split="training")
    with pytest.raises(ValueError, match="data.val_split: .* has no split 'dev'"):
        load(tmp_path / "d", val_split="dev")
    DatasetDict({"a": rows(5)}).save_to_disk(tmp_path / "no_train")
    with pytest.raises(ValueError, match="has no 'train' split; set data.split to one of: a"):
        load(tmp_path / "no_train")


def test_an_unlabelled_split_is_refused_when_the_data_loads(tmp_path):
    unlabelled = Dataset.from_dict({"x": [[0.0, 0.0, 0.0]] * 3, "y": [-1, -1, -1]}, features=FEATURES)
    DatasetDict({"train": rows(6), "test": unlabelled}).save_to_disk(tmp_path / "d")
    with pytest.raises(ValueError, match="the test split of .* has rows labelled -1 .* data.test_split"):
        load(tmp_path / "d")


def test_a_folder_without_data_says_what_it_holds(tmp_path):
    (tmp_path / "csv").mkdir()
    for name in ("a.csv", "b.csv", "notes.txt"):
        (tmp_path / "csv" / name).write_text("1,2\n")
    with pytest.raises(ValueError, match=r"neither a data set saved with save_to_disk .* nor a folder of "
                                         r"Parquet/Arrow files; it holds 3 files: 2 .csv, 1 .txt \(a.csv, b.csv"):
        load(tmp_path / "csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "no" / "such" / "dir")
    import pyarrow as pa

    (tmp_path / "feather").mkdir()
    table = pa.table({"x": [1.0], "y": [0]})
    with pa.ipc.new_file(str(tmp_path / "feather" / "train.arrow"), table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(ValueError, match=r"train.arrow is an Arrow IPC file \(Feather\), not an Arrow stream"):
        load(tmp_path / "feather")
    (tmp_path / "mixed").mkdir()
    rows(2).to_parquet(str(tmp_path / "mixed" / "a.parquet"))
    (tmp_path / "mixed" / "b.arrow").write_bytes(b"")
    with pytest.raises(ValueError, match="holds both Parquet and Arrow files"):
        load(tmp_path / "mixed")


def test_a_column_of_the_wrong_type_says_its_type(tmp_path):
    Dataset.from_dict({"s": ["a", "b"], "f": [0.5, 1.5], "y": [0, 1]}).save_to_disk(tmp_path / "d")
    with pytest.raises(ValueError, match="column 's' .* has type string; expected numbers .*data.columns: {text"):
        load(tmp_path / "d", columns={"inputs": "s", "labels": "y"})
    with pytest.raises(ValueError, match="data.columns.labels: column 'f' .* has type float64; expected class labels"):
        load(tmp_path / "d", columns={"inputs": "f", "labels": "f"})
    with pytest.raises(ValueError, match="data.columns.text: column 'f' .* has type float64; expected text"):
        load(tmp_path / "d", columns={"text": "f"})


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="data.path .* is required"):
        DataConfig.from_dict({"kind": "hf_dataset", "columns": {"text": "t"}})
    with pytest.raises(ConfigError, match="data.columns must map inputs and labels"):
        DataConfig.from_dict({"kind": "hf_dataset", "path": "x", "columns": {"inputs": "x"}})
    with pytest.raises(ConfigError, match="data.on_nonfinite: skip is not available"):
        DataConfig.from_dict({"kind": "hf_dataset", "path": "x", "columns": {"text": "t"}, "on_nonfinite": "skip"})


def test_ragged_and_nonfinite_rows_are_named(tmp_path):
    Dataset.from_dict({"x": [[1.0, 2.0], [3.0], [float("nan"), 1.0]], "y": [0, 1, 0]}).save_to_disk(tmp_path / "d")
    splits = load(tmp_path / "d", val_fraction=0.0, test_fraction=0.0)
    train = splits.train.parent
    with pytest.raises(ValueError, match=r"different shapes \[\(1,\), \(2,\)\]"):
        train.batch(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="row 2 column 'x': holds NaN"):
        train.example(2)


# -- workers, training --------------------------------------------------------------------------
def test_dataloader_workers_read_the_mapped_table_without_copying_it(tmp_path):
    big = Dataset.from_dict({"x": np.arange(20000 * 64, dtype=np.float32).reshape(20000, 64).tolist(),
                             "y": [i % 3 for i in range(20000)]})
    big.save_to_disk(tmp_path / "d")
    train = load(tmp_path / "d", val_fraction=0.0, test_fraction=0.0).train
    table_bytes = sum(f.stat().st_size for f in (tmp_path / "d").glob("*.arrow"))
    assert table_bytes > 5_000_000 and len(pickle.dumps(train)) < 300_000  # the file name, not the table
    loader = torch.utils.data.DataLoader(train, batch_size=5, num_workers=2, collate_fn=train.collate,
                                         sampler=[3, 19999, 7, 0, 12345])
    (batch,) = list(loader)
    assert torch.equal(batch["inputs"], train.batch(torch.tensor([3, 19999, 7, 0, 12345]))["inputs"])


def test_hf_digits_train_exactly_as_the_digits_kind(tmp_path):
    from test_train import tiny, train_losses

    from perceptio.train.experiment import experiment_from_dict
    from perceptio.train.trainer import Trainer

    classification_to_hf(DigitsConfig().load()).save_to_disk(tmp_path / "digits")
    data = {"kind": "hf_dataset", "path": str(tmp_path / "digits"), "max_shift": 1,
            "columns": {"inputs": "inputs", "labels": "label"}}

    def run(name: str, data: dict | None = None, **train) -> dict:
        config = tiny(4, **train)
        config["data"] = data or config["data"]
        return Trainer(experiment_from_dict(config), tmp_path / name).fit()

    builtin = run("builtin")
    assert run("hf", data, num_workers=0) == builtin  # same rows, batches and random shifts: same metrics
    assert run("hf_worker", data, num_workers=1) == builtin  # read in a DataLoader worker process
    assert train_losses(tmp_path / "hf") == train_losses(tmp_path / "hf_worker") == train_losses(tmp_path / "builtin")
    too_big = tiny(2, batch_size=2048)
    too_big["data"] = data
    with pytest.raises(ValueError, match=r"train.batch_size=2048 is larger than the training set \(1258 examples\)"):
        Trainer(experiment_from_dict(too_big), tmp_path / "big").fit()


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from perceptio.cli import main

    rows(5).save_to_disk(tmp_path / "d")
    capsys.readouterr()  # the progress bar of save_to_disk
    data = f"data={{kind: hf_dataset, path: {tmp_path / 'd'}, columns: {{inputs: pixels, labels: y}}}}"
    assert main(["train", "digits", "--run-dir", str(tmp_path / "run"), "--set", data]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("perceptio train: error: data.columns.inputs: ") and "its columns are: x" in err
    assert "\n" not in err
    monkeypatch.setitem(sys.modules, "datasets", None)  # the extra not installed
    assert main(["train", "digits", "--run-dir", str(tmp_path / "run2"), "--set", data]) == 2
    assert capsys.readouterr().err.strip() == ("perceptio train: error: data kind 'hf_dataset' needs the Hugging Face "
                                               "datasets package: pip install 'perceptio[datasets]'")
