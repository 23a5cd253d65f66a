"""The inference layer on training runs: `perceptio predict run`, the one image reader, the
errors for paths that are neither a model nor a run directory (fill-mask on a trained byte
model is in test_tasks_text.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from perceptio import create_model
from perceptio.cli import main
from perceptio.data.files import ImageFolderConfig, read_image, resize_image
from perceptio.pretrained import is_model_dir
from perceptio.tasks import load_model, load_run, predict_run, read_run_input
from perceptio.train.checkpoint import is_run_dir
from perceptio.train import Trainer
from perceptio.train.experiment import experiment_from_dict


def test_one_image_reader_for_published_models_training_data_and_runs(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    path = tmp_path / "data" / "a" / "0.png"  # the first file of the sorted folder tree
    # the reader is Pillow's bicubic resize, the published ImageNet models' preprocessing
    bicubic = np.asarray(Image.open(path).convert("RGB").resize((12, 8), Image.BICUBIC))
    np.testing.assert_array_equal(read_image(path, (8, 12)), bicubic)
    np.testing.assert_array_equal(resize_image(read_image(path), 8, 12), bicubic)  # classify_images' path
    grey = np.asarray(Image.open(path).convert("L").resize((12, 8), Image.BICUBIC))
    np.testing.assert_array_equal(read_image(path, (8, 12), channels=1)[..., 0], grey)

    # training data (image_folder) and the run's predictions get identical arrays
    data = {"kind": "image_folder", "path": str(tmp_path / "data"), "image_size": [8, 12], "channels": 3}
    unsplit = ImageFolderConfig.from_dict({**data, "val_fraction": 0.0, "test_fraction": 0.0}).load().train
    model = {"input_adapter": {"kind": "image", "image_shape": [8, 12, 3], "num_channels": 8,
                               "position": {"encoding": "fourier", "num_bands": 2}},
             "encoder": {"num_latents": 4, "num_latent_channels": 16, "num_self_attends_per_block": 1,
                         "num_self_attend_heads": 1, "num_cross_attend_heads": 1},
             "decoder": {"kind": "cross_attention", "queries": {"kind": "trainable", "num_queries": 1,
                                                                "num_channels": 16}, "output_channels": 2},
             "output_adapter": {"kind": "classification"}}
    exp = experiment_from_dict({"name": "images", "data": data, "model": {"perceiver": model},
                                "train": {"steps": 1, "batch_size": 2, "threads": 1, "eval_every": 1000},
                                "logging": {"progress": False, "plots": False}})
    Trainer(exp, tmp_path / "run").fit()
    run = load_run(tmp_path / "run")
    from_run = read_run_input(path, run)
    assert from_run.dtype == torch.float32 and from_run.shape == (8, 12, 3)
    unsplit = unsplit.batch(torch.arange(len(unsplit)))  # every example, read
    same = [i for i, row in enumerate(unsplit["inputs"]) if torch.equal(row, from_run)]
    assert len(same) == 1 and int(unsplit["targets"][same[0]]) == 0  # this file's training example, class a
    torch.testing.assert_close(from_run, torch.from_numpy(bicubic.astype(np.float32) / 255), rtol=0, atol=0)
    [result] = predict_run(run, [str(path)], top_k=2)
    assert result["label"] in ("a", "b") and set(result["top"]) == {"a", "b"}
    with torch.no_grad():
        probs = run.model(from_run[None]).logits.softmax(-1)[0]
    assert result["top"][result["label"]] == round(float(probs.max()), 4)


def test_predict_help_lists_every_task(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for task in ("run", "fill-mask", "image-classification", "optical-flow", "multimodal-autoencoding"):
        assert task in out
    assert "training run directory" in out
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "run", "--help"])
    assert exit_.value.code == 0
    assert "RUN_DIR" in capsys.readouterr().out


def test_paths_that_are_neither_a_model_nor_a_run(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", "fill-mask", str(empty), "a[MASK]"]) == 2
    err = capsys.readouterr().err
    assert f"{empty} is neither a model directory nor a training run directory" in err
    assert "config.json + model.safetensors" in err and "experiment.yaml + checkpoints/" in err
    assert main(["predict", "classify", str(tmp_path / "missing"), "x.png"]) == 2
    assert f"{tmp_path / 'missing'} does not exist; expected a model directory" in capsys.readouterr().err
    # a model directory is not a run: `predict run` says what it expected
    create_model("language-perceiver", num_latents=4, num_latent_channels=16, num_self_attends_per_block=1,
                 max_seq_len=8, d_model=16, qk_channels=16, v_channels=16,
                 decoder_qk_channels=16).save_pretrained(tmp_path / "model")
    assert is_model_dir(tmp_path / "model") and not is_run_dir(tmp_path / "model")
    assert main(["predict", "run", str(tmp_path / "model"), "a[MASK]"]) == 2
    assert "is not a training run directory (expected experiment.yaml and checkpoints/)" in capsys.readouterr().err
    # a run without a checkpoint yet
    (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)
    (tmp_path / "fresh" / "experiment.yaml").write_text("name: x\n")
    with pytest.raises(FileNotFoundError, match="no checkpoint yet; train first"):
        load_model(tmp_path / "fresh")


def test_predict_shorthand_knows_every_task_name():
    """``perceptio predict RUN_DIR ...`` is taken for ``predict run RUN_DIR ...`` only when the first
    argument is no task: the list it checks is the parser's own."""
    import argparse

    from perceptio.cli import build_parser
    from perceptio.cli.predict import TASKS, run_shorthand

    predict = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["predict"]
    tasks = next(a for a in predict._actions if isinstance(a, argparse._SubParsersAction))
    assert set(TASKS) == set(tasks.choices)
    assert run_shorthand(["predict", "fill-mask", "m", "x"]) == ["predict", "fill-mask", "m", "x"]
    assert run_shorthand(["predict", "no-such-dir", "x"]) == ["predict", "no-such-dir", "x"]  # argparse names it
