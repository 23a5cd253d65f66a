"""Video + audio autoencoding with a small random multimodal model saved to a directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from perceptio import Perceiver, create_model
from perceptio.cli import main
from perceptio.tasks.multimodal import autoencode

SMALL = dict(num_frames=2, image_size=16, audio_samples_per_frame=64, samples_per_patch=16, num_classes=7,
             num_image_bands=4, num_audio_bands=6, label_query_channels=24, decoder_channels=16,
             num_latents=8, num_latent_channels=32, num_self_attends_per_block=1, num_self_attend_heads=4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("multimodal")
    create_model("multimodal-perceiver", **SMALL).save_pretrained(path)
    return path


def clip(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8), rng.uniform(-1, 1, (128, 1)).astype(np.float32)


def test_autoencode_equals_one_full_decode(model_dir):
    model = Perceiver.from_pretrained(model_dir).eval()
    video, audio = clip()
    result = autoencode(model, video, audio, chunk_size=100, top_k=3, labels=[f"c{i}" for i in range(7)])
    assert result.video.shape == (2, 16, 16, 3) and result.audio.shape == (128, 1)
    inputs = {"image": torch.from_numpy(video)[None].float() / 255, "audio": torch.from_numpy(audio)[None],
              "label": torch.zeros(1, 7)}
    with torch.no_grad():
        latents, context = model.encode(inputs)
        full = model.decode(latents, context, points=model.decoder.query_builder.all_points(context))
    torch.testing.assert_close(result.video.reshape(1, -1, 3), full["image"])
    torch.testing.assert_close(result.audio.reshape(1, -1), full["audio"])
    torch.testing.assert_close(result.label_logits, full["label"][0])
    probs = full["label"][0].softmax(-1)
    assert [p.index for p in result.top_k] == probs.topk(3).indices.tolist()
    assert [p.label for p in result.top_k] == [f"c{i}" for i in probs.topk(3).indices.tolist()]
    # The chunk size only bounds memory.
    other = autoencode(model, video, audio, chunk_size=10_000)
    torch.testing.assert_close(other.video, result.video)
    # uint8 frames are scaled to [0, 1], int16 audio to [-1, 1].
    as_float = autoencode(model, video.astype(np.float32) / 255, (audio * 2**15).astype(np.int16), chunk_size=100)
    torch.testing.assert_close(as_float.video, result.video, atol=1e-3, rtol=0)


def test_autoencode_rejects_wrong_inputs(model_dir):
    model = Perceiver.from_pretrained(model_dir).eval()
    video, audio = clip()
    with pytest.raises(ValueError, match="image inputs"):
        autoencode(model, video[:, :15], audio)
    with pytest.raises(ValueError, match="3 labels given for a model with 7 classes"):
        autoencode(model, video, audio, labels=["a", "b", "c"])
    text = create_model("language-perceiver", num_latents=4, num_latent_channels=16, num_self_attends_per_block=1,
                        max_seq_len=8, d_model=16, qk_channels=16, v_channels=16, decoder_qk_channels=16)
    with pytest.raises(ValueError, match="needs a multimodal model"):
        autoencode(text, video, audio)


def test_cli_multimodal_autoencoding(model_dir, tmp_path, capsys):
    video, audio = clip(1)
    np.savez(tmp_path / "clip.npz", video=video, audio=audio[:, 0])
    out = tmp_path / "rec.npz"
    assert main(["predict", "multimodal-autoencoding", str(model_dir), str(tmp_path / "clip.npz"), "-o", str(out),
                 "--top-k", "2", "--chunk-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "classes:" in printed and len(printed.strip().splitlines()) == 4
    with np.load(out) as rec:
        assert rec["video"].shape == (2, 16, 16, 3) and rec["audio"].shape == (128, 1) and rec["label_logits"].shape == (7,)
        expected = autoencode(Perceiver.from_pretrained(model_dir).eval(), video, audio[:, 0])
        np.testing.assert_allclose(rec["video"], expected.video.numpy(), rtol=1e-5, atol=1e-6)
    assert main(["predict", "autoencode", str(model_dir), str(tmp_path / "clip.npz"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["predictions"]) == 5
    np.savez(tmp_path / "bad.npz", frames=video)
    assert main(["predict", "autoencode", str(model_dir), str(tmp_path / "bad.npz")]) == 2
    assert "missing arrays ['video', 'audio']" in capsys.readouterr().err
