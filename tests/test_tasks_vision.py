"""Image classification and optical flow from image files with small random models
saved to directories (the published presets, shrunk with overrides)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from perceptio import Perceiver, create_model
from perceptio.adapters.image import IMAGENET_MEAN_RGB
from perceptio.cli import main
from perceptio.data.files import read_image
from perceptio.tasks.image_classification import center_crop, classify_images, preprocess_image
from perceptio.tasks.optical_flow import FLOW_SCALE_FACTOR, estimate_flow, frames_from_images, read_flo

SMALL_ENCODER = dict(num_latents=8, num_latent_channels=32, num_blocks=1, num_self_attends_per_block=1,
                     num_self_attend_heads=4)
TRAIN_SIZE = (16, 24)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("classifier")
    create_model("vision-perceiver-conv", image_size=32, num_classes=10, num_channels=8, num_bands=4,
                 **SMALL_ENCODER).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("flow")
    create_model("optical-flow-perceiver", train_size=TRAIN_SIZE, num_channels=8, num_bands=4,
                 **SMALL_ENCODER).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("images")
    files = []
    for name, (h, w) in [("a.png", (40, 60)), ("b.jpg", (50, 50)), ("c.png", (33, 29))]:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path / name)
        files.append(path / name)
    Image.fromarray(rng.integers(0, 256, (30, 44), dtype=np.uint8), mode="L").save(path / "grey.png")
    return files + [path / "grey.png"]


def test_center_crop_and_normalisation():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 50:150] = 7
    crop = center_crop(image)
    assert crop.shape == (87, 87, 3)  # 224/256 of the shorter side
    assert (crop == 7).all()  # centred
    mean = np.broadcast_to(np.round(IMAGENET_MEAN_RGB).astype(np.uint8), (64, 64, 3)).copy()
    x = preprocess_image(mean, (32, 32))
    assert x.shape == (32, 32, 3) and x.abs().max() < 0.01  # the ImageNet mean maps to ~0


def test_read_image_converts_to_rgb(images):
    grey = read_image(images[-1])
    assert grey.shape == (30, 44, 3) and grey.dtype == np.uint8
    assert (grey[..., 0] == grey[..., 2]).all()
    with pytest.raises(ValueError, match="not a readable image"):
        read_image(__file__)


def test_classify_images_top_k(classifier_dir, images):
    model = Perceiver.from_pretrained(classifier_dir).eval()
    labels = [f"class {i}" for i in range(10)]
    results = classify_images(model, images, top_k=3, labels=labels, batch_size=2)
    assert len(results) == len(images)
    for path, preds in zip(images, results):
        with torch.no_grad():
            probs = model(preprocess_image(read_image(path), (32, 32))[None]).logits.softmax(-1)[0]
        top = probs.topk(3)
        assert [p.index for p in preds] == top.indices.tolist()
        assert [p.label for p in preds] == [labels[i] for i in top.indices.tolist()]
        np.testing.assert_allclose([p.score for p in preds], top.values.numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="3 labels given for a model with 10 classes"):
        classify_images(model, images[:1], labels=["a", "b", "c"])


def test_cli_image_classification(classifier_dir, images, capsys, tmp_path):
    assert main(["predict", "image-classification", str(classifier_dir), str(images[0]), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(images[0]) and len(lines) == 3
    (classifier_dir / "labels.txt").write_text("\n".join(f"name{i}" for i in range(10)) + "\n")
    try:
        assert main(["predict", "classify", str(classifier_dir), *map(str, images[:2]), "--json"]) == 0
    finally:
        (classifier_dir / "labels.txt").unlink()
    out = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in out] == [str(p) for p in images[:2]]
    assert all(len(r["predictions"]) == 5 and r["predictions"][0]["label"].startswith("name") for r in out)
    assert main(["predict", "image-classification", str(classifier_dir), str(tmp_path / "none.png")]) == 2
    assert "none.png" in capsys.readouterr().err


def test_estimate_flow_at_training_size_is_one_forward(flow_dir):
    model = Perceiver.from_pretrained(flow_dir).eval()
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (*TRAIN_SIZE, 3), dtype=np.uint8) for _ in range(2))
    flow = estimate_flow(model, a, b)
    with torch.no_grad():
        expected = model(frames_from_images(a, b)[None]).logits[0] * FLOW_SCALE_FACTOR
    torch.testing.assert_close(flow, expected)
    assert frames_from_images(a, b).min() >= -1 and frames_from_images(a, b).max() <= 1


def test_estimate_flow_on_larger_and_smaller_frames(flow_dir):
    model = Perceiver.from_pretrained(flow_dir).eval()
    rng = np.random.default_rng(2)
    for size in [(37, 61), (10, 12)]:
        a, b = (rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(2))
        flow = estimate_flow(model, a, b, min_overlap=4, batch_size=3)
        assert flow.shape == (*size, 2) and torch.isfinite(flow).all()
    with pytest.raises(ValueError, match="differ in size"):
        estimate_flow(model, a, a[:5])
    classifier = create_model("vision-perceiver-conv", image_size=32, num_classes=10, num_channels=8, num_bands=4,
                              **SMALL_ENCODER)
    with pytest.raises(ValueError, match="needs a flow model"):
        estimate_flow(classifier, a, b)
    with pytest.raises(ValueError, match="needs an image classifier"):
        classify_images(model, [a])


def test_cli_optical_flow_writes_flo_and_png(flow_dir, tmp_path, capsys):
    rng = np.random.default_rng(3)
    a, b = (rng.integers(0, 256, (30, 50, 3), dtype=np.uint8) for _ in range(2))
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.jpg", quality=95)
    args = ["predict", "optical-flow", str(flow_dir), str(tmp_path / "a.png"), str(tmp_path / "b.jpg"),
            "-o", str(tmp_path / "flow.flo"), "--png", str(tmp_path / "flow.png"), "--min-overlap", "4"]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    flow = read_flo(tmp_path / "flow.flo")
    model = Perceiver.from_pretrained(flow_dir).eval()
    expected = estimate_flow(model, tmp_path / "a.png", tmp_path / "b.jpg", min_overlap=4).numpy()
    np.testing.assert_allclose(flow, expected, rtol=1e-5, atol=1e-6)
    png = read_image(tmp_path / "flow.png")
    assert png.shape == (30, 50, 3)


def test_flow_of_a_model_converted_from_transformers(tmp_path):
    """transformers' flow model takes 3x3 patches (channels first) instead of frames; the
    converted model keeps that input format and ``estimate_flow`` feeds it patches."""
    pytest.importorskip("perceptio.interop.transformers")
    transformers = pytest.importorskip("transformers")
    from perceptio.checkpoints import convert
    from perceptio.adapters.flow import patches_for_flow

    torch.manual_seed(0)
    config = transformers.PerceiverConfig(num_latents=8, d_latents=32, num_blocks=1, num_self_attends_per_block=1,
                                          num_self_attention_heads=4, num_cross_attention_heads=1,
                                          train_size=list(TRAIN_SIZE))
    hf = transformers.PerceiverForOpticalFlow(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = convert(tmp_path / "hf", tmp_path / "out")
    rng = np.random.default_rng(4)
    a, b = (rng.integers(0, 256, (*TRAIN_SIZE, 3), dtype=np.uint8) for _ in range(2))
    patches = patches_for_flow(frames_from_images(a, b)[None])  # [1, 2, H, W, 27]
    with torch.no_grad():
        expected = hf(inputs=patches.permute(0, 1, 4, 2, 3)).logits[0] * FLOW_SCALE_FACTOR
    torch.testing.assert_close(estimate_flow(model, a, b), expected, atol=1e-4, rtol=1e-4)
