"""WebDataset shards: to-shards round trip, readers split by rank x worker, the seeded
shuffle buffer, resumption without re-reading, the trainer's stream path (resume, two
processes), bad shards and samples."""

from __future__ import annotations

import itertools
import os
import signal
import tarfile
import warnings
from pathlib import Path

import pytest
import torch

from perceptio.cli import main
from perceptio.data import ArrayDataset, DataInfo
from perceptio.data.builtin import DigitsConfig
from perceptio.data.loader import LoaderOptions
from perceptio.data.shards import (ShardError, ShardStream, StreamBatches, WebDatasetConfig, expand_braces,
                                   write_info, write_split)
from perceptio.train import checkpoint as ckpt
from perceptio.train.experiment import TrainConfig, experiment_from_dict
from perceptio.train.streaming import open_stream
from perceptio.train.trainer import Trainer
from test_train import _free_port, tiny, train_losses


def numbered(n: int) -> ArrayDataset:
    """Example i has inputs [i] (its identity) and a class i % 3."""
    return ArrayDataset({"inputs": torch.arange(n, dtype=torch.float32)[:, None], "targets": torch.arange(n) % 3})


def write_numbered(out: Path, n: int = 40, per_shard: int = 5) -> str:
    """Shards of :func:`numbered` (train; val and test of 6 each) -> the train pattern."""
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": write_split(numbered(n), out, "train", per_shard),
              "val": write_split(numbered(6), out, "val", 3), "test": write_split(numbered(6), out, "test", 3)}
    write_info(out, DataInfo("classification", ["a", "b", "c"]), splits, {})
    return f"{out}/train-{{000000..{len(splits['train']['shards']) - 1:06d}}}.tar"


def ids(items) -> list[int]:
    return [int(example["inputs"][0]) for example, _ in items]


def one_epoch(stream: ShardStream, seed: int, rank: int, world: int, worker: int, workers: int) -> list:
    """The reader's items of epoch 0: the last one's position is the start of epoch 1, or
    (without a buffer to empty) the end of its last shard."""
    items = []
    for item in stream.stream(seed, rank, world, worker, workers, None):
        position = item[1]
        if position["epoch"] == 1 and (position["shard"], position["offset"], position["buffer"]) != (0, 0, []):
            return items
        items.append(item)
        if position["epoch"] == 1:
            return items
    raise AssertionError("the stream ended")


def test_brace_patterns():
    assert expand_braces("s/train-{000008..000010}.tar") == ["s/train-000008.tar", "s/train-000009.tar",
                                                            "s/train-000010.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]


def test_to_shards_round_trip_gives_the_source_examples(tmp_path):
    (tmp_path / "exp.yaml").write_text("name: x\ndata: {kind: digits, digits: [0, 1]}\nmodel: {preset: x}\n")
    out = tmp_path / "shards"
    with pytest.warns(UserWarning, match=r"applies a random transform .* re-applies image shifts"):
        assert main(["data", "to-shards", str(tmp_path / "exp.yaml"), str(out), "--shard-size", "50"]) == 0
    source = DigitsConfig(digits=[0, 1]).load()
    splits = WebDatasetConfig(urls=f"{out}/train-*.tar", shuffle_buffer=64).load()
    assert splits.info.objective == "classification" and splits.info.classes == ["0", "1"]
    for name in ("val", "test"):  # in order, equal
        got, want = splits.get(name), source.get(name)
        assert len(got) == len(want) > 0
        for i in range(len(want)):
            a, b = got.example(i), want.example(i)
            assert torch.equal(a["inputs"], b["inputs"]) and a["inputs"].dtype == b["inputs"].dtype
            assert torch.equal(a["targets"], b["targets"]) and a["targets"].dtype == torch.long
    train = splits.train
    assert train.num_examples == len(source.train)
    key = lambda e: (int(e["targets"]), tuple(e["inputs"].flatten().tolist()))  # noqa: E731
    got = sorted(key(e) for e, _ in one_epoch(train, 0, 0, 1, 0, 1))
    assert got == sorted(key(source.train.example(i)) for i in range(len(source.train)))
    # a second write into the same folder is refused without --overwrite
    assert main(["data", "to-shards", str(tmp_path / "exp.yaml"), str(out)]) == 2
    assert main(["data", "to-shards", str(tmp_path / "exp.yaml"), str(out), "--split", "test", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["info.json", "test-000000.tar"]



@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "no-shuffle"])
def test_to_shards_writes_training_examples_in_a_seeded_permutation(tmp_path, shuffle):
    """The training split is written in the order of ``randperm(n, seed 0)`` of its examples
    (keys are the examples' indices), so every shard mixes the whole split whatever the
    source's order (a class-ordered one too); --no-shuffle keeps the source's order."""
    import numpy as np

    for split in ("train", "val", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(20 if split == "train" else 2):
                np.save(tmp_path / split / c / f"{i}.npy", np.full(3, i + (100 if c == "b" else 0), np.float32))
    config = tmp_path / "exp.yaml"
    config.write_text(f"data: {{kind: npy_folder, path: {tmp_path / 'train'}, val_path: {tmp_path / 'val'}, "
                      f"test_path: {tmp_path / 'test'}}}\n")
    out = tmp_path / "shards"
    assert main(["data", "to-shards", str(config), str(out), "--shard-size", "10",
                 *([] if shuffle else ["--no-shuffle"])]) == 0
    keys = []
    for shard in sorted(out.glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            keys += [int(m.name.split(".")[0]) for m in tar.getmembers() if m.name.endswith(".cls")]
    expected = torch.randperm(40, generator=torch.Generator().manual_seed(0)).tolist() if shuffle else list(range(40))
    assert keys == expected
    for name in ("val", "test"):  # evaluation splits: in order
        with tarfile.open(out / f"{name}-000000.tar") as tar:
            assert [int(m.name.split(".")[0]) for m in tar.getmembers() if m.name.endswith(".cls")] == [0, 1, 2, 3]

def test_readers_of_two_ranks_and_two_workers_are_disjoint_and_cover_the_epoch(tmp_path):
    stream = WebDatasetConfig(urls=write_numbered(tmp_path / "a", 40, 5), shuffle_buffer=4).load().train
    for seed in (0, 1):
        parts = [ids(one_epoch(stream, seed, rank, 2, worker, 2)) for rank in range(2) for worker in range(2)]
        assert sorted(sum(parts, [])) == list(range(40))
        assert all(len(p) == 10 for p in parts)
    # 9 shards for 4 readers: one reader reads one more, still disjoint and covering, with a warning
    uneven = WebDatasetConfig(urls=write_numbered(tmp_path / "b", 45, 5)).load().train
    with pytest.warns(UserWarning, match="9 shards do not divide among 4 readers"):
        parts = [ids(one_epoch(uneven, 0, rank, 2, worker, 2)) for rank in range(2) for worker in range(2)]
    assert sorted(sum(parts, [])) == list(range(45)) and sorted(map(len, parts)) == [10, 10, 10, 15]
    with pytest.raises(ValueError, match="9 shards for 10 readers"):
        next(uneven.stream(0, 0, 5, 0, 2, None))


def test_shuffle_buffer_is_seeded_and_mixes_shards(tmp_path):
    urls = write_numbered(tmp_path, 40, 5)
    order = lambda buffer, seed: ids(one_epoch(WebDatasetConfig(urls=urls, shuffle_buffer=buffer).load().train,  # noqa: E731
                                               seed, 0, 1, 0, 1))
    assert order(16, 0) == order(16, 0) != order(16, 1)
    assert sorted(order(16, 0)) == list(range(40))
    first = order(1, 0)[:5]  # no buffer: a shard's examples in order
    assert first == list(range(first[0], first[0] + 5))
    shuffled = order(16, 0)[:5]
    assert len({i // 5 for i in shuffled}) > 1  # the buffer mixes examples of several shards


@pytest.mark.parametrize("cut", [0, 7, 10, 39, 40, 53])
def test_resumed_stream_equals_uninterrupted_and_reads_nothing_twice(tmp_path, cut):
    urls = write_numbered(tmp_path, 40, 5)
    stream = WebDatasetConfig(urls=urls, shuffle_buffer=8).load().train
    items = stream.stream(3, 0, 1, 0, 1, None)
    uninterrupted = [next(items) for _ in range(90)]
    state = uninterrupted[cut - 1][1] if cut else None
    resumed_stream = WebDatasetConfig(urls=urls, shuffle_buffer=8).load().train
    resumed = resumed_stream.stream(3, 0, 1, 0, 1, state)
    rest = [next(resumed) for _ in range(90 - cut)]
    assert ids(rest) == ids(uninterrupted[cut:])
    assert [p for _, p in rest] == [p for _, p in uninterrupted[cut:]]
    # to finish the epoch (the buffered examples included) the resumed stream decodes only what was not drawn
    left = 40 - cut if cut < 40 else 80 - cut
    again = WebDatasetConfig(urls=urls, shuffle_buffer=8).load().train
    more = again.stream(3, 0, 1, 0, 1, state)
    for _ in range(left):
        next(more)
    assert again.decoded == left


def test_stream_batches_with_workers_resume_exactly(tmp_path):
    stream = WebDatasetConfig(urls=write_numbered(tmp_path, 40, 5), shuffle_buffer=4).load().train
    full = StreamBatches(stream, 3, seed=0, options=LoaderOptions(num_workers=2))
    batches = [full.next()["inputs"][:, 0].tolist() for _ in range(9)]
    cut = StreamBatches(stream, 3, seed=0, options=LoaderOptions(num_workers=2))
    for _ in range(5):  # an odd number: the resumed loader starts with the other worker
        cut.next()
    state = cut.state()
    assert state["phase"] == 1
    resumed = StreamBatches(stream, 3, seed=0, options=LoaderOptions(num_workers=2), state=state)
    assert [resumed.next()["inputs"][:, 0].tolist() for _ in range(4)] == batches[5:]
    with pytest.raises(ValueError, match="resume with train.num_workers=2"):
        StreamBatches(stream, 3, seed=0, options=LoaderOptions(num_workers=3), state=state)


def webdataset_run(tmp_path: Path, steps: int, **train) -> dict:
    out = tmp_path / "shards"
    if not out.exists():
        assert main(["data", "to-shards", "digits", str(out), "--shard-size", "160"]) == 0  # 8 shards
    d = tiny(steps, **train)
    d["data"] = {"kind": "webdataset", "urls": f"{out}/train-{{000000..000007}}.tar", "max_shift": 1,
                 "shuffle_buffer": 50}
    return d


@pytest.mark.parametrize("workers", [0, 2])
def test_trainer_interrupted_and_resumed_on_shards_equals_uninterrupted(tmp_path, workers):
    d = webdataset_run(tmp_path, 10, checkpoint_every=4, num_workers=workers)
    full = Trainer(experiment_from_dict(d), tmp_path / "full")
    full.fit()

    def ctrl_c(trainer, step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        Trainer(experiment_from_dict(d), tmp_path / "cut", callbacks=[ctrl_c]).fit()
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(tmp_path / "cut"))
    assert state["step"] == 5 and len(state["stream"]) == 1 and len(state["stream"][0]["readers"]) == max(1, workers)
    assert state["stream"][0]["readers"][0]["offset"] > 0
    resumed = Trainer(experiment_from_dict(d), tmp_path / "cut", resume=True)
    resumed.fit()
    assert train_losses(tmp_path / "cut") == train_losses(tmp_path / "full")
    for k, v in full.module.state_dict().items():
        assert torch.equal(v, resumed.module.state_dict()[k]), k
    from perceptio.tasks.runs import load_run

    assert load_run(tmp_path / "full").input_shape == (8, 8, 1)  # predict: the shapes come from the test shards


def _rank(rank: int, world: int, port: int, urls: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    import torch.distributed as dist

    dist.init_process_group("gloo")
    stream = WebDatasetConfig(urls=urls, shuffle_buffer=4).load().train
    tc = TrainConfig(batch_size=8)  # 4 per process and step
    batches = open_stream(stream, tc, dist.get_rank(), dist.get_world_size(), LoaderOptions(), None)
    seen = [int(i) for _ in range(40 // 8) for i in batches.next()["inputs"][:, 0]]  # one epoch of steps
    gathered = [None] * world
    dist.all_gather_object(gathered, seen)
    if rank == 0:
        torch.save(gathered, out)
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_see_disjoint_examples_that_cover_the_epoch(tmp_path):
    urls = write_numbered(tmp_path, 40, 5)
    out = tmp_path / "seen.pt"
    torch.multiprocessing.spawn(_rank, args=(2, _free_port(), urls, str(out)), nprocs=2)
    seen = torch.load(out)
    assert len(seen[0]) == len(seen[1]) == 20
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(40))


def _resume_in_two(rank: int, world: int, port: int, config: dict, run_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    import torch.distributed as dist

    def stop(trainer, step):
        if step == 3 and rank == 0:  # one process asks; both stop after this step and save
            trainer.stop.requested = True

    Trainer(experiment_from_dict(config), f"{run_dir}/full").fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(experiment_from_dict(config), f"{run_dir}/cut", callbacks=[stop]).fit()
    Trainer(experiment_from_dict(config), f"{run_dir}/cut", resume=True).fit()
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_interrupted_and_resumed_on_shards_equal_uninterrupted(tmp_path):
    d = webdataset_run(tmp_path, 6, checkpoint_every=100, num_workers=0)
    torch.multiprocessing.spawn(_resume_in_two, args=(2, _free_port(), d, str(tmp_path)), nprocs=2)
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(tmp_path / "cut"))
    assert len(state["stream"]) == 2 and state["stream"][0] != state["stream"][1]
    assert sorted(train_losses(tmp_path / "cut")) == list(range(1, 7))
    assert train_losses(tmp_path / "cut") == train_losses(tmp_path / "full")


# -- bad input ----------------------------------------------------------------------------------
def test_missing_truncated_and_bad_shards_name_themselves(tmp_path):
    urls = write_numbered(tmp_path, 20, 5)
    shards = sorted(tmp_path.glob("train-*.tar"))
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[:2600])  # truncated inside the data of its third member
    os.remove(shards[2])
    read = lambda on_error: ids(one_epoch(WebDatasetConfig(urls=urls, shuffle_buffer=1, on_error=on_error)  # noqa: E731
                                          .load().train, 0, 0, 1, 0, 1))
    with pytest.raises(ShardError, match=r"shard .*train-00000[12]\.tar"):
        read("error")
    with pytest.warns(UserWarning) as caught:
        got = read("skip")
    messages = " ".join(str(w.message) for w in caught)
    assert "train-000002.tar: cannot be read" in messages and "train-000001.tar" in messages
    assert set(range(0, 5)) | set(range(15, 20)) <= set(got) and not set(range(10, 15)) & set(got)
    # read by a DataLoader worker, the error reaches the main process as it is (not wrapped by torch)
    batches = StreamBatches(WebDatasetConfig(urls=urls, shuffle_buffer=1).load().train, 5, seed=0,
                            options=LoaderOptions(num_workers=2))
    try:
        with pytest.raises(ShardError, match=r"shard .*train-00000[12]\.tar"):
            for _ in range(4):
                batches.next()
    finally:
        batches.close()  # stop the workers now


def test_bad_member_and_missing_field_name_the_sample(tmp_path):
    urls = write_numbered(tmp_path, 10, 5)
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if m.name == "000000002.targets.cls":
                continue  # sample 2 lacks its label
            if m.name == "000000003.inputs.npy":
                data = b"not an array"
            m.size = len(data)
            tar.addfile(m, __import__("io").BytesIO(data))
    stream = WebDatasetConfig(urls=urls, shuffle_buffer=1).load().train
    with pytest.raises(ShardError, match=r"train-000000\.tar: sample '000000002' lacks the field\(s\) \['targets'\]; "
                                         r"it has \['inputs.npy'\]"):
        list(zip(range(10), stream.stream(0, 0, 1, 0, 1, None)))
    skipping = WebDatasetConfig(urls=urls, shuffle_buffer=1, on_error="skip").load().train
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = ids(one_epoch(skipping, 0, 0, 1, 0, 1))
    assert sorted(got) == [0, 1, 4, 5, 6, 7, 8, 9]
    assert any("member 000000003.inputs.npy cannot be decoded" in str(w.message) for w in caught)


def test_data_help_lists_to_shards(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "--help"])
    assert e.value.code == 0 and "to-shards" in capsys.readouterr().out


def test_bad_urls_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"the pattern '.*nothing-\*\.tar' matches no file"):
        WebDatasetConfig(urls=str(tmp_path / "nothing-*.tar")).load()
    (tmp_path / "train-000000.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="info.json not found; write the shards with `perceptio data"):
        WebDatasetConfig(urls=str(tmp_path / "train-000000.tar")).load()
    urls = write_numbered(tmp_path / "s", 10, 5)
    with pytest.raises(ValueError, match="larger than the training stream"):
        open_stream(WebDatasetConfig(urls=urls).load().train, TrainConfig(batch_size=16), 0, 1,
                    LoaderOptions(), None)
    assert main(["data", "to-shards", "digits", str(tmp_path / "o"), "--shard-size", "lots"]) == 2


# -- your own IterableDataset ---------------------------------------------------------------------
class Counting(torch.utils.data.IterableDataset):
    """Examples {"inputs": [i]} for i < n; ``state_dict`` / ``load_state_dict`` if ``stateful``."""

    def __init__(self, n: int) -> None:
        self.n, self.start = n, 0

    def __iter__(self):
        start, self.start = self.start, 0
        for i in range(start, self.n):
            self.next = i + 1
            yield {"inputs": torch.tensor([float(i)]), "targets": torch.tensor(i % 3)}


class StatefulCounting(Counting):
    def state_dict(self) -> dict:
        return {"next": self.next}

    def load_state_dict(self, state: dict) -> None:
        self.start = state["next"]


@pytest.mark.parametrize("kind", [Counting, StatefulCounting])
def test_iterable_dataset_stream_splits_and_resumes(kind):
    from perceptio.data.streams import IterableStream

    parts = [ids(itertools.islice(IterableStream(kind(10)).stream(0, r, 2, w, 2, None), 3)) for r in range(2)
             for w in range(2)]
    assert parts == [[0, 4, 8], [1, 5, 9], [2, 6, 2], [3, 7, 3]]  # strided; epoch 1 starts again
    full = list(itertools.islice(IterableStream(kind(10)).stream(0, 0, 1, 0, 1, None), 25))
    state = full[12][1]
    if kind is Counting:
        with pytest.warns(UserWarning, match="by reading and dropping the 3 examples it had consumed"):
            rest = list(itertools.islice(IterableStream(kind(10)).stream(0, 0, 1, 0, 1, state), 12))
    else:
        rest = list(itertools.islice(IterableStream(kind(10)).stream(0, 0, 1, 0, 1, state), 12))
    assert ids(rest) == ids(full[13:]) and [p for _, p in rest] == [p for _, p in full[13:]]


@pytest.mark.parametrize("stateful", [False, True])
def test_fit_on_an_iterable_dataset_resumes_exactly(tmp_path, stateful):
    from perceptio.train import fit
    from test_data_lazy import docs_example

    namespace = {"__name__": "docs_example"}
    example = docs_example()
    exec(compile(example[:example.index("metrics = fit(")], "docs/data.md", "exec"), namespace)
    Blobs, model = namespace["Blobs"], namespace["model"]

    class BlobStream(torch.utils.data.IterableDataset):
        """The blobs in order, endlessly; ``state_dict`` if stateful."""

        def __init__(self) -> None:
            self.blobs, self.start = Blobs(64, 0), 0

        def __iter__(self):
            start, self.start = self.start, 0
            for i in range(start, len(self.blobs)):
                self.next = i + 1
                yield self.blobs.images[i], int(self.blobs.targets[i])  # a pair

    class StatefulBlobStream(BlobStream):
        def state_dict(self) -> dict:
            return {"next": self.next}

        def load_state_dict(self, state: dict) -> None:
            self.start = state["next"]

    kind = StatefulBlobStream if stateful else BlobStream
    kw = dict(classes=["dark", "bright"], steps=8, batch_size=8, eval_every=4, num_workers=0,
              logging={"progress": False, "plots": False, "log_every": 1}, optim={"lr": 3e-3})
    fit(model, kind(), Blobs(16, 1), Blobs(16, 2), run_dir=tmp_path / "full", **kw)

    def ctrl_c(trainer, step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        fit(model, kind(), Blobs(16, 1), Blobs(16, 2), run_dir=tmp_path / "cut", callbacks=[ctrl_c], **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(model, kind(), Blobs(16, 1), Blobs(16, 2), run_dir=tmp_path / "cut", resume=True, **kw)
    dropped = [w for w in caught if "by reading and dropping the 40 examples" in str(w.message)]
    assert len(dropped) == (0 if stateful else 1)
    assert train_losses(tmp_path / "cut") == train_losses(tmp_path / "full")
    with pytest.raises(TypeError, match="val_data is an IterableDataset; evaluation reads map-style"):
        fit(model, kind(), kind(), Blobs(16, 2), run_dir=tmp_path / "x", **kw)


def test_shards_of_other_tools_with_images_and_named_members(tmp_path):
    """KEY.png + KEY.cls (the WebDataset convention), a hand-written info.json without fields."""
    import io
    import json

    from PIL import Image

    images = torch.randint(0, 256, (6, 5, 4), dtype=torch.uint8)
    with tarfile.open(tmp_path / "train-0.tar", "w") as tar:
        for i, image in enumerate(images):
            png = io.BytesIO()
            Image.fromarray(image.numpy(), mode="L").save(png, format="PNG")
            for suffix, data in (("png", png.getvalue()), ("cls", str(i % 2).encode()), ("json", b"{}")):
                member = tarfile.TarInfo(f"img{i:03d}.{suffix}")
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    (tmp_path / "info.json").write_text(json.dumps({"format": "perceptio-shards", "info": {
        "objective": "classification", "classes": ["even", "odd"]}, "splits": {}}))
    config = {"urls": str(tmp_path / "train-0.tar"), "val_urls": str(tmp_path / "train-0.tar"),
              "test_urls": str(tmp_path / "train-0.tar")}
    splits = WebDatasetConfig(**config, members={"inputs": "png", "targets": "cls"}).load()
    example = splits.test.example(3)
    assert example["inputs"].shape == (5, 4, 1) and example["inputs"].dtype == torch.float32
    assert torch.equal(example["inputs"][..., 0], images[3].float() / 255) and int(example["targets"]) == 1
    assert len(splits.val) == 6
    labels = sorted(int(e["targets"]) for e, _ in one_epoch(splits.train, 0, 0, 1, 0, 1))
    assert labels == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match=r"fields \['cls', 'json', 'png'\], no 'inputs'; name the members"):
        WebDatasetConfig(**config, members={"cls": "cls", "json": "json", "png": "png"}).load()


def test_stream_path_given_the_samplers_batches_equals_the_in_memory_path(tmp_path):
    """The same batches through the stream path (an IterableDataset in the sampler's order)
    and through the sampler give the same losses: the stream path changes only the order."""
    from perceptio.data.base import Sampler, Splits
    from perceptio.data.streams import IterableStream

    d = tiny(6)
    d["data"]["max_shift"] = 1
    source = DigitsConfig(max_shift=1).load()
    sampler = Sampler(len(source.train), 8, 0)

    class SamplerOrder(torch.utils.data.IterableDataset):
        def __iter__(self):
            for step in itertools.count():
                yield from (source.train.example(i) for i in sampler.global_batch(step).tolist())

    stream = IterableStream(SamplerOrder())
    stream.transform = source.train.transform  # the digits kind's shifts, drawn per step as in memory
    Trainer(experiment_from_dict(d), tmp_path / "memory").fit()
    Trainer(experiment_from_dict(d), tmp_path / "stream",
            splits=Splits(stream, source.val, source.test, source.info)).fit()
    assert train_losses(tmp_path / "stream") == train_losses(tmp_path / "memory")


def test_a_buffer_as_large_as_the_epoch_shuffles_uniformly(tmp_path):
    """Every example's mean place in its epoch is the middle, over 300 epochs (no bias
    from the order in which the shards were read)."""
    stream = WebDatasetConfig(urls=write_numbered(tmp_path, 40, 5), shuffle_buffer=100).load().train
    items = stream.stream(4, 0, 1, 0, 1, None)
    places = torch.zeros(300, 40)
    for epoch in range(300):
        for place, (example, _) in enumerate(itertools.islice(items, 40)):
            places[epoch, int(example["inputs"][0])] = place
    assert (places.mean(0) - 19.5).abs().max() < 3  # 5 standard deviations of a mean of 300 uniform places
    # examples next to each other in a shard are not next to each other in the stream (1/40 by chance)
    neighbours = (places[:, 1:] - places[:, :-1] == 1).float().mean()
    assert neighbours < 0.06
