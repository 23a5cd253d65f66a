"""Data read on access: the shared protocol (ExampleDataset, ArrayDataset, example_generator),
the lazy file kinds, the DataLoader path and the Python entry point."""

from __future__ import annotations

import csv
import os
import re
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from perceptio.data import ArrayDataset, DataConfig, ExampleDataset, Sampler, StreamDataset, example_generator
from perceptio.data import corpus, files
from perceptio.data.base import DataInfo, random_splits
from perceptio.data.loader import LoaderOptions, available_cpus, default_num_workers, step_batches
from perceptio.tokenizer import NUM_SPECIAL_TOKENS
from perceptio.train.experiment import experiment_from_dict
from perceptio.train import fit
from perceptio.train.trainer import Trainer


class Squares(ExampleDataset):
    """Example i: inputs [i, i^2] plus a random offset drawn from the example's generator."""

    def __init__(self, n: int) -> None:
        self.n, self.reads = n, 0

    def __len__(self) -> int:
        return self.n

    def example(self, i, generator=None):
        self.reads += 1
        if not 0 <= i < self.n:
            raise IndexError(i)
        noise = torch.rand(1, generator=generator) if generator is not None else torch.zeros(1)
        return {"inputs": torch.tensor([float(i), float(i * i)]) + noise, "targets": torch.tensor(i % 2)}


# -- the protocol -----------------------------------------------------------------------------
def test_example_generator_is_a_function_of_seed_step_and_index():
    draw = lambda *key: torch.rand(3, generator=example_generator(*key))  # noqa: E731
    assert torch.equal(draw(1, 2, 3), draw(1, 2, 3))
    assert len({tuple(draw(*key).tolist()) for key in [(1, 2, 3), (2, 2, 3), (1, 3, 3), (1, 2, 4), (0, 0, 0)]}) == 5


def test_example_dataset_batch_is_independent_of_batch_composition():
    data = Squares(10)
    both = data.batch(torch.tensor([3, 7]), seed=5, step=2)
    assert both["inputs"].shape == (2, 2) and both["targets"].tolist() == [1, 1]
    alone = data.batch(torch.tensor([7]), seed=5, step=2)
    assert torch.equal(both["inputs"][1], alone["inputs"][0])  # example 7 draws the same wherever it sits
    assert not torch.equal(data.batch(torch.tensor([7]), seed=5, step=3)["inputs"], alone["inputs"])
    assert torch.equal(data[4]["inputs"], torch.tensor([4.0, 16.0]))  # __getitem__: no random transform


def test_subset_is_lazy_and_splits_index_only():
    data = Squares(50)
    splits = random_splits(data, DataInfo("classification", ["even", "odd"]), 0.2, 0.2, seed=0)
    assert data.reads == 0  # splitting read nothing
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 10)
    seen = sorted(int(splits.get(name)[i]["inputs"][0]) for name in ("train", "val", "test")
                  for i in range(len(splits.get(name))))
    assert seen == list(range(50))  # disjoint and complete
    nested = splits.train.subset(torch.tensor([2, 0]))
    assert torch.equal(nested[0]["inputs"], splits.train[2]["inputs"])
    assert torch.equal(nested.batch(torch.tensor([1]))["inputs"], splits.train.batch(torch.tensor([0]))["inputs"])



@pytest.mark.parametrize("make", [lambda: Squares(20), lambda: ArrayDataset({"inputs": torch.arange(40.0).view(20, 2)})])
def test_a_subset_applies_its_own_transform_not_its_parents(make):
    """The training split's augmentation is set on its view; the parent and the evaluation
    views read without it (before, a view always applied its parent's transform)."""
    data = make()
    train, val = data.subset(torch.tensor([0, 1, 2])), data.subset(torch.tensor([3, 4]))
    train.transform = lambda batch, generator: {**batch, "inputs": -batch["inputs"]}
    idx = torch.tensor([1, 0])
    assert torch.equal(train.batch(idx)["inputs"], -data.batch(torch.tensor([1, 0]))["inputs"])
    assert torch.equal(val.batch(idx)["inputs"], data.batch(torch.tensor([4, 3]))["inputs"])
    assert data.transform is None
    # a view of the view keeps the view's transform
    assert torch.equal(train.subset(torch.tensor([2])).batch(torch.tensor([0]))["inputs"],
                       -data.batch(torch.tensor([2]))["inputs"])

def test_batch_of_examples_of_different_shapes_names_the_key():
    class Ragged(Squares):
        def example(self, i, generator=None):
            return {"inputs": {"image": torch.zeros(i + 1)}, "targets": torch.tensor(0)}

    with pytest.raises(ValueError, match=r"different shapes for 'inputs.image': \[\(1,\), \(2,\)\]"):
        Ragged(3).batch(torch.tensor([0, 1]))


def test_array_dataset_satisfies_the_example_interface():
    fields = {"inputs": {"a": torch.arange(12.0).reshape(6, 2), "b": torch.arange(6)}, "targets": torch.arange(6) % 3}
    data = ArrayDataset(fields)
    assert isinstance(data, ExampleDataset) and isinstance(data, torch.utils.data.Dataset)
    idx = torch.tensor([4, 1, 5])
    via_examples = ExampleDataset.batch(data, idx)  # the generic collation path
    fast = data.batch(idx)
    assert torch.equal(via_examples["inputs"]["a"], fast["inputs"]["a"])
    assert torch.equal(via_examples["inputs"]["b"], fast["inputs"]["b"])
    assert torch.equal(via_examples["targets"], fast["targets"])
    assert data[1]["inputs"]["a"].tolist() == [2.0, 3.0] and data[1]["targets"].shape == ()
    assert isinstance(data.subset(idx), ArrayDataset)


def test_stream_dataset_is_declared_iterable():
    assert issubclass(StreamDataset, torch.utils.data.IterableDataset)
    with pytest.raises(NotImplementedError):
        next(iter(StreamDataset().stream(0, 0, 1, 0, 1, None)))


# -- helpers ------------------------------------------------------------------------------------
def write_png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def image_tree(root, per_class=6, size=(6, 6), classes=("dark", "bright")):
    rng = np.random.default_rng(0)
    for cls, value in zip(classes, (30, 220)):
        for i in range(per_class):
            write_png(root / cls / f"{i}.png", np.clip(rng.normal(value, 10, size), 0, 255).astype(np.uint8))
    return root


def read_all(dataset):
    return dataset.batch(torch.arange(len(dataset)))


def image_experiment(path, steps=6, **train):
    return experiment_from_dict({
        "name": "lazy",
        "data": {"kind": "image_folder", "path": str(path), "image_size": [6, 6], "channels": 1,
                 "val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"perceiver": {
            "input_adapter": {"kind": "image", "image_shape": [6, 6, 1], "prep_type": "pixels",
                              "spatial_downsample": 1, "position": {"num_bands": 2}},
            "encoder": {"num_latents": 4, "num_latent_channels": 16, "num_self_attends_per_block": 1,
                        "num_self_attend_heads": 2, "num_cross_attend_heads": 1, "dropout": 0.1},
            "decoder": {"kind": "cross_attention", "queries": {"kind": "trainable", "num_channels": 16},
                        "output_channels": 2},
            "output_adapter": {"kind": "classification"}}},
        "optim": {"lr": 3e-3},
        "train": {"steps": steps, "batch_size": 4, "eval_every": 3, "checkpoint_every": 1000, "threads": 1,
                  "eval_batch_size": 3, **train},
        "logging": {"progress": False, "plots": False, "log_every": 1},
    })


def train_losses(run_dir):
    with (run_dir / "metrics.csv").open() as f:
        return {(int(r["step"]), r["split"], r["name"]): r["value"] for r in csv.DictReader(f)
                if r["name"] in ("loss", "accuracy", "cross_entropy")}


# -- folder kinds, read on access ---------------------------------------------------------------
def test_folder_index_is_cached_and_rebuilt_when_the_folder_changes(tmp_path, monkeypatch):
    root = image_tree(tmp_path / "data")
    config = {"kind": "image_folder", "path": str(root), "image_size": [6, 6], "channels": 1}
    first = DataConfig.from_dict(config).load()
    assert list(root.glob(".perceptio/index-*.npz"))  # next to the folder
    calls = []
    real = files.build_index
    monkeypatch.setattr(files, "build_index", lambda *a: calls.append(a) or real(*a))
    again = DataConfig.from_dict(config).load()
    assert not calls  # not listed again
    assert torch.equal(read_all(first.train)["inputs"], read_all(again.train)["inputs"])
    write_png(root / "dark" / "new.png", np.zeros((6, 6), np.uint8))
    grown = DataConfig.from_dict(config).load()
    assert len(calls) == 1 and sum(len(grown.get(n)) for n in ("train", "val", "test")) == 13
    DataConfig.from_dict({**config, "index_cache": "off"}).load()
    assert len(calls) == 2  # off: listed every time


def test_images_of_other_sizes_are_resized_or_refused(tmp_path):
    root = image_tree(tmp_path / "data")
    write_png(root / "dark" / "big.png", np.zeros((9, 7), np.uint8))
    config = {"kind": "image_folder", "path": str(root), "image_size": [6, 6], "channels": 1,
              "val_fraction": 0.0, "test_fraction": 0.0}
    assert read_all(DataConfig.from_dict(config).load().train)["inputs"].shape == (13, 6, 6, 1)
    refused = DataConfig.from_dict({**config, "resize": False, "on_error": "error"}).load().train
    with pytest.raises(ValueError, match=r"big\.png: image of 9x7 pixels, but data.image_size is \[6, 6\] and "
                                         r"data.resize is false; set data.resize: true"):
        read_all(refused)


def test_a_missing_file_names_itself_and_skip_warns_once_across_workers(tmp_path):
    root = image_tree(tmp_path / "data")
    config = {"kind": "image_folder", "path": str(root), "image_size": [6, 6], "channels": 1,
              "val_fraction": 0.0, "test_fraction": 0.0, "on_error": "error"}
    train = DataConfig.from_dict(config).load().train
    (root / "dark" / "3.png").unlink()  # removed while "training"
    with pytest.raises(ValueError, match=r"dark/3\.png does not exist \(listed under data\.path\).*data.on_error: skip"):
        read_all(train)
    in_worker = step_batches(train, Sampler(len(train), 11, seed=0), seed=0, start=0, stop=1,
                             options=LoaderOptions(num_workers=1))
    with pytest.raises(ValueError, match=r"^\S*dark/3\.png does not exist") as error:
        next(in_worker)
    assert "DataLoader worker" not in str(error.value)  # the message as the main process gives it
    skipping = DataConfig.from_dict({**config, "on_error": "skip", "index_cache": "off"}).load().train
    (root / "bright" / "2.png").write_bytes(b"not a png")
    sampler = Sampler(len(skipping), 4, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(step_batches(skipping, sampler, seed=0, start=0, stop=9, options=LoaderOptions(num_workers=2)))
    messages = [str(w.message) for w in caught if "skipping" in str(w.message)]
    assert len(messages) == 1 and "bright/2.png" in messages[0]  # three epochs, two workers: one warning


def test_a_data_set_too_small_for_one_batch_says_so(tmp_path):
    exp = image_experiment(image_tree(tmp_path / "data", per_class=2), batch_size=8)
    with pytest.raises(ValueError, match=r"train.batch_size=8 is larger than the training set \(2 examples\); "
                                         "lower train.batch_size"):
        Trainer(exp, tmp_path / "run").fit()


def test_explicit_val_and_test_folders(tmp_path):
    image_tree(tmp_path / "train")
    image_tree(tmp_path / "val", per_class=2)
    image_tree(tmp_path / "test", per_class=3, classes=("dark",))
    splits = DataConfig.from_dict({"kind": "image_folder", "path": str(tmp_path / "train"), "image_size": [6, 6],
                                   "channels": 1, "val_path": str(tmp_path / "val"),
                                   "test_path": str(tmp_path / "test")}).load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 3)
    assert read_all(splits.test)["targets"].tolist() == [1, 1, 1]  # "dark" is class 1 of data.path
    image_tree(tmp_path / "other", per_class=1, classes=("cats",))
    with pytest.raises(ValueError, match=r"data.val_path: class folder .*cats is not a class of data.path"):
        DataConfig.from_dict({"kind": "image_folder", "path": str(tmp_path / "train"),
                              "val_path": str(tmp_path / "other")}).load()


def test_npy_arrays_are_memory_mapped_and_read_by_row(tmp_path):
    import pickle

    x = np.random.default_rng(0).normal(size=(300, 16, 5)).astype(np.float64)
    x[17, 2, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(300) % 3)
    data = DataConfig.from_dict({"kind": "npy", "inputs": str(tmp_path / "x.npy"), "labels": str(tmp_path / "y.npy"),
                                 "on_nonfinite": "skip", "val_fraction": 0.1, "test_fraction": 0.1})
    with pytest.warns(UserWarning, match=r"x.npy row 17: index \(2, 1\) is nan"):
        splits = data.load()
    train = splits.train
    assert isinstance(train, files.ArrayRows) and isinstance(train.inputs, np.memmap)
    rows = train.rows[[4, 0, 9]]
    batch = train.batch(torch.tensor([4, 0, 9]))
    assert batch["inputs"].dtype == torch.float32 and batch["inputs"].shape == (3, 16, 5)
    assert torch.equal(batch["inputs"], torch.from_numpy(x[rows].astype(np.float32)))
    assert batch["targets"].tolist() == (rows % 3).tolist()
    assert torch.equal(train.example(4)["inputs"], batch["inputs"][0])
    seen = np.concatenate([splits.get(name).rows for name in ("train", "val", "test")])
    assert sorted(seen.tolist()) == [i for i in range(300) if i != 17]  # the NaN row left out, the rest split
    # a DataLoader worker gets the path, not the array
    assert len(pickle.dumps(train)) < x.nbytes // 10
    assert torch.equal(pickle.loads(pickle.dumps(train)).batch(torch.tensor([4]))["inputs"], batch["inputs"][:1])


def test_video_folder_of_frame_folders_and_npy_clips(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        for t in range(5):  # a clip as a folder of frames, frame t has value 10 t
            write_png(tmp_path / "a" / f"clip{i}" / f"{t:03d}.png", np.full((4, 4, 3), 10 * t, np.uint8))
        (tmp_path / "b").mkdir(exist_ok=True)
        np.save(tmp_path / "b" / f"clip{i}.npy", rng.integers(0, 255, (6, 4, 4, 3), dtype=np.uint8))
    config = {"kind": "video_folder", "path": str(tmp_path), "num_frames": 3, "image_size": [4, 4],
              "val_fraction": 0.0, "test_fraction": 0.0}
    train = DataConfig.from_dict(config).load().train.parent  # unsplit, in folder order
    batch = train.batch(torch.arange(6), seed=0, step=0)
    assert batch["inputs"].shape == (6, 3, 4, 4, 3) and batch["targets"].tolist() == [0, 0, 0, 1, 1, 1]
    frames = (batch["inputs"][:3, :, 0, 0, 0] * 255).round() / 10  # consecutive frames from a random start
    assert ((frames[:, 1:] - frames[:, :-1]) == 1).all()
    starts = {int(round(float(train.batch(torch.tensor([0]), seed=0, step=s)["inputs"][0, 0, 0, 0, 0]) * 25.5))
              for s in range(12)}
    assert starts == {0, 1, 2}  # the start is drawn per (seed, step, example)
    with pytest.raises(ValueError, match=r"clip\d: 5 frames, fewer than data.num_frames=6"):
        read_all(DataConfig.from_dict({**config, "num_frames": 6}).load().train)


# -- text_files, memory-mapped --------------------------------------------------------------------
def test_text_files_windows_are_the_files_bytes_at_sampled_offsets(tmp_path):
    text = bytes(range(32, 127)) * 40  # 3800 bytes
    (tmp_path / "a.txt").write_bytes(text[:2000])
    (tmp_path / "b.txt").write_bytes(text[2000:])
    joined = text[:2000] + b"\n\n" + text[2000:]
    config = {"kind": "text_files", "paths": [str(tmp_path / "*.txt")], "seq_len": 16, "block_size": 64}
    splits = DataConfig.from_dict(config).load()
    train = splits.train
    assert not train.corpus.open_files  # nothing read yet
    n_blocks = len(joined) // 64 + (len(joined) % 64 >= 16)
    assert len(train) + (len(splits.val) + len(splits.test)) // 4 == n_blocks  # eval: every window of a block
    example = train.batch(torch.tensor([5]), seed=1, step=7)
    ids = example["targets"][0] - NUM_SPECIAL_TOKENS
    start = bytes(ids.tolist())
    block = int(train.blocks[5])
    assert joined.find(start, block * 64) - block * 64 in range(64 - 16 + 1)  # inside its block
    assert torch.equal(train.batch(torch.tensor([2, 5]), seed=1, step=7)["inputs"][1], example["inputs"][0])
    offsets = {bytes((train.example(5, example_generator(1, s, 5))["targets"] - NUM_SPECIAL_TOKENS).tolist())
               for s in range(8)}
    assert len(offsets) > 1  # a new offset when the block is visited again
    masked = example["mask"][0]
    assert masked.any() and (example["inputs"][0][~masked] == example["targets"][0][~masked]).all()
    val = read_all(splits.val)["targets"] - NUM_SPECIAL_TOKENS
    assert all(bytes(row.tolist()) in joined for row in val)


def test_text_files_default_blocks_are_the_sequences_and_explicit_val_paths(tmp_path):
    (tmp_path / "train.txt").write_text("hello world " * 100)
    (tmp_path / "val.txt").write_text("other words " * 10)
    splits = DataConfig.from_dict({"kind": "text_files", "paths": [str(tmp_path / "train.txt")], "seq_len": 16,
                                   "val_paths": [str(tmp_path / "val.txt")]}).load()
    assert len(splits.train) + len(splits.test) == 1200 // 16 and len(splits.val) == 120 // 16
    assert b"other" in bytes((read_all(splits.val)["targets"][0] - NUM_SPECIAL_TOKENS).tolist())
    assert splits.info.extras["unigram_top_id"] == ord("l") + NUM_SPECIAL_TOKENS


def test_text_files_check_utf8_once(tmp_path, monkeypatch):
    (tmp_path / "good.txt").write_text("hello world " * 100)
    (tmp_path / "bad.txt").write_bytes(b"x" * 5000 + b"caf\xe9 " * 100)
    config = {"kind": "text_files", "paths": [str(tmp_path)], "seq_len": 16}
    with pytest.raises(ValueError, match=r"bad\.txt: not UTF-8 text \(byte 5003: b'\\xe9'\)"):
        DataConfig.from_dict(config).load()
    monkeypatch.setattr(corpus, "CHUNK", 7)  # a chunk border inside a character changes nothing
    assert corpus.check_file(tmp_path / "bad.txt").bad_at == 5003
    calls = []
    monkeypatch.setattr(corpus, "check_file", lambda f: calls.append(f) or pytest.fail("checked again"))
    replaced = DataConfig.from_dict({**config, "on_decode_error": "replace"}).load()  # from the cached check
    rows = read_all(replaced.train)["targets"] - NUM_SPECIAL_TOKENS
    assert any("\ufffd" in bytes(r.tolist()).decode("utf-8", "replace") for r in rows)


# -- the DataLoader path --------------------------------------------------------------------------
def test_losses_are_the_same_with_0_and_2_workers_and_after_resume(tmp_path):
    root = image_tree(tmp_path / "data")
    (root / "dark" / "5.png").write_bytes(b"broken")  # skipped (image_folder's default): same in every run
    Trainer(image_experiment(root, num_workers=0), tmp_path / "w0").fit()
    Trainer(image_experiment(root, num_workers=2, prefetch_factor=1), tmp_path / "w2").fit()

    def ctrl_c(trainer, step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        Trainer(image_experiment(root, num_workers=2), tmp_path / "cut", callbacks=[ctrl_c]).fit()
    Trainer(image_experiment(root, num_workers=1), tmp_path / "cut", resume=True).fit()
    expected = train_losses(tmp_path / "w0")
    assert len([k for k in expected if k[1:] == ("train", "loss")]) == 6 and ("val" in {k[1] for k in expected})
    assert train_losses(tmp_path / "w2") == expected
    assert train_losses(tmp_path / "cut") == expected


def test_default_workers_follow_the_data():
    assert default_num_workers(ArrayDataset({"x": torch.zeros(3)})) == 0
    assert default_num_workers(Squares(3)) == max(0, min(4, available_cpus() - 1))


# -- your own Dataset from Python -------------------------------------------------------------
def docs_example() -> str:
    text = (Path(__file__).parent.parent / "docs" / "data.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    [example] = [b for b in blocks if "fit(" in b]
    return example


def test_the_documented_fit_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs_example"}
    exec(compile(docs_example(), "docs/data.md", "exec"), namespace)
    assert namespace["metrics"]["test"]["accuracy"] >= 0.9
    assert "test accuracy" in capsys.readouterr().out
    run = tmp_path / "runs" / "blobs"
    assert (run / "checkpoints" / "best").is_dir() and (run / "metrics.json").is_file()
    assert "kind: python" in (run / "experiment.yaml").read_text()


def test_fit_resumes_exactly_and_takes_pairs_and_a_collate(tmp_path):
    namespace = {"__name__": "docs_example"}
    example = docs_example()
    exec(compile(example[:example.index("metrics = fit(")], "docs/data.md", "exec"), namespace)
    Blobs, model = namespace["Blobs"], namespace["model"]

    class Pairs(torch.utils.data.Dataset):  # (image, label) as torchvision gives them
        def __init__(self, n, seed):
            self.blobs = Blobs(n, seed)

        def __len__(self):
            return len(self.blobs)

        def __getitem__(self, i):
            item = self.blobs[i]
            return item["inputs"].numpy(), int(item["targets"])

    collated = []

    def collate(examples):
        collated.append(len(examples))
        return {"inputs": torch.stack([torch.as_tensor(e["inputs"]) for e in examples]),
                "targets": torch.tensor([e["targets"] for e in examples])}

    kw = dict(classes=["dark", "bright"], steps=6, batch_size=8, eval_every=3, num_workers=0,
              logging={"progress": False, "plots": False, "log_every": 1}, optim={"lr": 3e-3})
    fit(model, Pairs(64, 0), run_dir=tmp_path / "full", **kw)

    def ctrl_c(trainer, step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        fit(model, Pairs(64, 0), run_dir=tmp_path / "cut", callbacks=[ctrl_c], collate=collate, **kw)
    fit(model, Pairs(64, 0), run_dir=tmp_path / "cut", resume=True, **{**kw, "num_workers": 2})
    assert train_losses(tmp_path / "cut") == train_losses(tmp_path / "full")
    assert 8 in collated  # training batches went through the user's collate
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(Pairs(8, 0))

    with pytest.raises(ValueError, match=r"train_data is an IterableDataset, which cannot be split"):
        fit(model, Stream(), run_dir=tmp_path / "x", **kw)  # (trained on the stream path: tests/test_shards.py)
    with pytest.raises(ValueError, match=r"needs classes=\[...\]"):
        fit(model, Pairs(8, 0), run_dir=tmp_path / "y", steps=1)


def test_two_processes_each_read_their_slice_of_lazy_data(tmp_path):
    """DDP (gloo), 2 processes on an image folder read on access: the same parameters after
    3 steps as one process with the same global batch (workers build the same batches as
    the main process: tested above; left out here, where they cost 15 s)."""
    from test_train import _free_port, _worker, weights

    root = image_tree(tmp_path / "data")
    config = image_experiment(root, steps=3, num_workers=0, eval_every=1000).to_dict()
    config["model"]["perceiver"]["encoder"]["dropout"] = 0.0  # dropout is drawn per process
    config["optim"]["eps"] = 1e-3  # keeps round-off of the gradients from being amplified
    single = Trainer(experiment_from_dict(config), tmp_path / "single")
    single.fit()
    out = tmp_path / "states.pt"
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), {"ddp": config}, str(tmp_path), str(out)), nprocs=2)
    states = torch.load(out, weights_only=True)
    for k, v in weights(single.module).items():
        torch.testing.assert_close(states["ddp"][k], v, rtol=1e-4, atol=1e-5, msg=k)
