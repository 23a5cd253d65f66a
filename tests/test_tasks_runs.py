"""The inference layer on training runs: models of run directories, `perceptio predict run`,
fill-mask with [MASK:N] on a trained byte model, the one image reader, and the errors for
paths that are neither a model nor a run directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from perceptio import Perceiver, create_model
from perceptio.cli import main
from perceptio.data.files import ImageFolderConfig, read_image, resize_image
from perceptio.tasks import fill_mask, is_model_dir, is_run_dir, load_model, load_run, predict_run, read_run_input
from perceptio.tasks.fill_mask import parse_mask_markers
from perceptio.tokenizer import MASK, NUM_SPECIAL_TOKENS
from perceptio.train import Trainer, load_experiment
from perceptio.train.experiment import experiment_from_dict

QUIET = ["train.steps=2", "train.batch_size=8", "train.threads=1", "logging.progress=false", "logging.plots=false"]


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("mlm_run")
    torch.manual_seed(0)
    Trainer(load_experiment("bytes_mlm", ["data.max_bytes=20000", *QUIET]), run).fit()
    return run


def greedy_fill(model: Perceiver, text: str) -> str:
    """Greedy bytes at the masked positions of one full forward pass (no query selection)."""
    data, spans = parse_mask_markers(text)
    ids = torch.tensor([[b + NUM_SPECIAL_TOKENS for b in data]])
    for s, e in spans:
        ids[0, s:e] = MASK
    with torch.no_grad():
        logits = model(ids).logits[0]
    out = bytearray(data)
    for s, e in spans:
        for i in range(s, e):
            out[i] = int(logits[i, NUM_SPECIAL_TOKENS:].argmax())
    return bytes(out).decode("utf-8", errors="replace")


def test_fill_mask_with_spans_on_a_training_run(mlm_run, capsys, tmp_path):
    assert is_run_dir(mlm_run) and not is_model_dir(mlm_run)
    model = load_model(mlm_run)
    assert not model.training
    text = "def f(x):\n    return [MASK:4] + 1[MASK]"
    result = fill_mask(model, text)
    assert result.spans == [(21, 25), (29, 30)]
    assert result.text == greedy_fill(model, text)
    assert result.text.startswith("def f(x):\n    return ") and "[MASK" not in result.text
    # the run task and the fill-mask task on the run directory give the same text
    (tmp_path / "prompt.txt").write_text(text)
    assert main(["predict", "run", str(mlm_run), text, str(tmp_path / "prompt.txt")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in lines] == [text, str(tmp_path / "prompt.txt")]
    assert all(r["text"] == result.text and r["fills"] == result.fills for r in lines)
    assert main(["predict", "fill-mask", str(mlm_run), text]) == 0
    assert capsys.readouterr().out == result.text + "\n"
    with pytest.raises(ValueError, match="masks no byte"):
        predict_run(load_run(mlm_run), ["x[MASK:0]"])


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
    same = [i for i, row in enumerate(unsplit.fields["inputs"]) if torch.equal(row, from_run)]
    assert len(same) == 1 and int(unsplit.fields["targets"][same[0]]) == 0  # this file's training example, class a
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
