"""Modality adapters: input checks, shapes (TF SAME padding), layouts, serialisation, and
multimodal decoding (encode once, decode in chunks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from perceptio import (
    AudioAdapterConfig,
    ConfigError,
    FlowAdapterConfig,
    ImageAdapterConfig,
    MultimodalAdapterConfig,
    OneHotAdapterConfig,
    Perceiver,
    PerceiverConfig,
    PositionEncodingConfig,
    imagenet_normalize,
)
from perceptio.adapters.flow import patches_for_flow
from perceptio.adapters.image import Conv2DDownsample, same_padding, space_to_depth
from perceptio.interop.deepmind import config_from_reference

from helpers import SHIPPED_FIXTURES

FOURIER = PositionEncodingConfig(encoding="fourier", num_bands=4)
KINDS = ["imagenet_fourier_small", "imagenet_learned_small", "imagenet_conv_small", "flow_small", "multimodal_small"]


def reference_config(name: str) -> PerceiverConfig:
    return config_from_reference(json.loads((SHIPPED_FIXTURES / f"{name}.json").read_text())["config"])


def random_inputs(config: PerceiverConfig, batch: int = 2):
    """Random inputs of the shape each adapter is built for."""
    adapter = config.input_adapter
    if isinstance(adapter, MultimodalAdapterConfig):
        return {m: random_inputs(PerceiverConfig(input_adapter=a), batch) for m, a in adapter.modalities.items()}
    if isinstance(adapter, FlowAdapterConfig):
        return torch.randn(batch, 2, *adapter.image_shape)
    if isinstance(adapter, ImageAdapterConfig):
        return torch.randn(batch, *adapter.image_shape)
    if isinstance(adapter, AudioAdapterConfig):
        return torch.randn(batch, adapter.num_samples, adapter.num_input_channels)
    if isinstance(adapter, OneHotAdapterConfig):
        return torch.nn.functional.one_hot(torch.arange(batch) % adapter.num_classes, adapter.num_classes).float()
    raise AssertionError(adapter)


def randomise(model: Perceiver) -> Perceiver:
    """Random parameters and batch-norm statistics (zero-initialised ones would hide bugs)."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if "running_var" in name else torch.randn_like(tensor) * 0.2)
    return model.eval()


# ---------------------------------------------------------------------------------------
# Bad inputs: clear errors naming expected vs given, before any tensor math
# ---------------------------------------------------------------------------------------
def _adapter(config):
    return config.build()


IMAGE = ImageAdapterConfig(image_shape=[16, 16, 3], prep_type="patches", spatial_downsample=4, position=FOURIER)


@pytest.mark.parametrize(
    "adapter, inputs, error, words",
    [
        (IMAGE, torch.randn(2, 16, 16), ValueError, ["rank 4", "(2, 16, 16)"]),
        (IMAGE, torch.randn(2, 16, 16, 4), ValueError, ["3 channels", "got 4"]),
        (IMAGE, torch.randn(2, 18, 16, 3), ValueError, ["18x16", "spatial_downsample=4"]),
        (IMAGE, torch.zeros(2, 16, 16, 3, dtype=torch.uint8), TypeError, ["floating point", "uint8"]),
        (IMAGE, np.zeros((2, 16, 16, 3)), TypeError, ["tensor", "ndarray"]),
        (ImageAdapterConfig(image_shape=[2, 8, 8, 3], prep_type="patches", spatial_downsample=2, temporal_downsample=2,
                            position=FOURIER), torch.randn(1, 3, 8, 8, 3), ValueError, ["3 frames", "temporal_downsample=2"]),
        (ImageAdapterConfig(image_shape=[8, 8, 3], prep_type="pixels", spatial_downsample=1,
                            position=PositionEncodingConfig(encoding="trainable", num_channels=4)),
         torch.randn(1, 10, 8, 3), ValueError, ["[8, 8]", "[10, 8]", "trainable"]),
        (FlowAdapterConfig(image_shape=[6, 8, 3], num_channels=8, position=FOURIER), torch.randn(1, 3, 6, 8, 3),
         ValueError, ["[B, 2, H, W, C]", "(1, 3, 6, 8, 3)"]),
        (FlowAdapterConfig(image_shape=[6, 8, 3], num_channels=8, position=FOURIER), torch.randn(1, 2, 6, 9, 3),
         ValueError, ["[6, 8, 3]", "[6, 9, 3]"]),
        (AudioAdapterConfig(num_samples=64, samples_per_patch=16, position=FOURIER), torch.randn(1, 60, 1),
         ValueError, ["60 samples", "samples_per_patch=16"]),
        (AudioAdapterConfig(num_samples=64, samples_per_patch=16, position=FOURIER), torch.randn(1, 64, 2),
         ValueError, ["1 channels", "got 2"]),
        (OneHotAdapterConfig(num_classes=7), torch.zeros(2, 8), ValueError, ["num_classes=7", "(2, 8)"]),
    ],
)
def test_bad_inputs_are_named(adapter, inputs, error, words):
    with pytest.raises(error) as info:
        _adapter(adapter).check(inputs)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_bad_inputs_raise_before_tensor_math():
    model = Perceiver(reference_config("imagenet_conv_small"))
    calls = []
    model.input_adapter.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="3 channels"):
        model(torch.randn(1, 32, 32, 1))
    assert not calls


def test_multimodal_input_errors():
    model = Perceiver(reference_config("multimodal_small"))
    inputs = random_inputs(model.config)
    with pytest.raises(ValueError, match=r"missing \['label'\], unexpected \['text'\]"):
        model({**{k: v for k, v in inputs.items() if k != "label"}, "text": inputs["label"]})
    with pytest.raises(ValueError, match="share the batch size"):
        model({**inputs, "label": inputs["label"][:1]})
    with pytest.raises(ValueError, match="image inputs must have 3 channels"):
        model({**inputs, "image": inputs["image"][..., :2]})
    with pytest.raises(TypeError, match="dict"):
        model(inputs["image"])
    latents, context = model.encode(inputs)
    with pytest.raises(ValueError, match=r"unknown modalities \['video'\]"):
        model.decode(latents, context, points={"video": torch.arange(3)})
    with pytest.raises(TypeError, match="1-d integer tensor"):
        model.decode(latents, context, points={"image": [1, 2]})


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(image_shape=[18, 16, 3], prep_type="patches", spatial_downsample=4), ["18x16", "spatial_downsample=4"]),
        (dict(prep_type="conv", spatial_downsample=8), ["powers of 4", "spatial_downsample=8"]),
        (dict(image_shape=[16, 3]), ["[H, W, C]", "[16, 3]"]),
        (dict(position=PositionEncodingConfig(max_resolution=[16, 16, 16])), ["max_resolution", "[56, 56]"]),
        (dict(prep_type="conv1x1", num_channels=16, position=PositionEncodingConfig(combine="add", num_bands=4)),
         ["add", "18 != 16", "project_pos_dim=16"]),
    ],
)
def test_bad_image_configs_are_named(kwargs, words):
    with pytest.raises(ConfigError) as info:
        ImageAdapterConfig(**kwargs).build()
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


# ---------------------------------------------------------------------------------------
# Layouts and shapes
# ---------------------------------------------------------------------------------------
def test_same_padding_is_tf_same():
    # output ceil(n / stride); the odd pixel of the total padding goes at the end
    assert same_padding(32, 7, 2) == (2, 3)
    assert same_padding(33, 7, 2) == (3, 3)
    assert same_padding(16, 3, 2) == (0, 1)
    assert same_padding(17, 3, 2) == (1, 1)
    assert same_padding(1, 3, 2) == (1, 1)
    assert same_padding(5, 1, 2) == (0, 0)


def _naive_same(x: np.ndarray, kernel: int, stride: int, reduce) -> np.ndarray:
    """Independent TF-SAME sliding window over [H, W] with ``reduce(window) -> value``."""
    h, w = x.shape
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h = max((out_h - 1) * stride + kernel - h, 0)
    pad_w = max((out_w - 1) * stride + kernel - w, 0)
    out = np.empty((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            r0, c0 = i * stride - pad_h // 2, j * stride - pad_w // 2
            rows = [r for r in range(r0, r0 + kernel) if 0 <= r < h]
            cols = [c for c in range(c0, c0 + kernel) if 0 <= c < w]
            out[i, j] = reduce(x, rows, cols, r0, c0)
    return out


@pytest.mark.parametrize("size", [(9, 11), (8, 8), (7, 4), (1, 3)])
def test_conv_downsample_matches_naive_same_padding(size):
    torch.manual_seed(1)
    net = Conv2DDownsample(1, 1, 1, use_batchnorm=False).eval()
    kernel = net.convs[0].weight.detach()[0, 0].numpy().astype(np.float64)
    x = torch.randn(1, 1, *size)
    ours = net(x)[0, 0].detach().numpy()

    xs = x[0, 0].numpy().astype(np.float64)
    conv = _naive_same(xs, 7, 2, lambda a, rows, cols, r0, c0: sum(
        a[r, c] * kernel[r - r0, c - c0] for r in rows for c in cols))
    relu = np.maximum(conv, 0)
    pooled = _naive_same(relu, 3, 2, lambda a, rows, cols, r0, c0: max(a[r, c] for r in rows for c in cols))
    assert ours.shape == pooled.shape == (-(-(-(-size[0] // 2)) // 2), -(-(-(-size[1] // 2)) // 2))
    np.testing.assert_allclose(ours, pooled, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prep_type, downsample", [("conv", 4), ("conv", 16), ("conv1x1", 3), ("pixels", 2), ("patches", 3)])
@pytest.mark.parametrize("shape", [[33, 31, 3], [2, 15, 9, 3]])
def test_feature_grid_of_odd_sizes(prep_type, downsample, shape):
    if prep_type == "patches":
        shape = [*shape[:-3], 33, 9, 3] if len(shape) == 4 else [33, 9, 3]
    config = ImageAdapterConfig(image_shape=shape, prep_type=prep_type, spatial_downsample=downsample,
                                num_channels=5, position=FOURIER)
    adapter = config.build().eval()
    images = torch.randn(1, *shape)
    b, m = adapter.check(images)
    features = adapter.features(images)
    assert tuple(features.shape[1:-1]) == config.index_dims()
    assert adapter(images).inputs.shape == (1, m, adapter.num_channels)
    if prep_type in ("conv", "conv1x1", "pixels"):  # ceil(n / stride) per strided op
        steps = round(np.log(downsample) / np.log(4)) * 2 if prep_type == "conv" else 1
        stride = 2 if prep_type == "conv" else downsample
        h, w = shape[-3], shape[-2]
        for _ in range(steps):
            h, w = -(-h // stride), -(-w // stride)
        assert features.shape[-3:-1] == (h, w)


def test_space_to_depth_orders_channels_dt_dh_dw_c():
    video = torch.arange(2 * 4 * 6 * 3, dtype=torch.float32).reshape(1, 2, 4, 6, 3)
    out = space_to_depth(video, temporal_block_size=2, spatial_block_size=2)
    assert out.shape == (1, 1, 2, 3, 24)
    t, dh, dw, c = 1, 0, 1, 2
    assert out[0, 0, 1, 2, ((t * 2 + dh) * 2 + dw) * 3 + c] == video[0, t, 2 + dh, 4 + dw, c]


def test_patches_for_flow_are_zero_padded_3x3_neighbourhoods():
    frames = torch.randn(1, 2, 4, 5, 3)
    patches = patches_for_flow(frames)
    assert patches.shape == (1, 2, 4, 5, 27)
    padded = torch.nn.functional.pad(frames, (0, 0, 1, 1, 1, 1))
    for y, x in [(0, 0), (3, 4), (2, 1)]:
        expected = padded[0, 1, y : y + 3, x : x + 3].reshape(-1)  # (dh, dw, c)
        assert torch.equal(patches[0, 1, y, x], expected)


def test_imagenet_normalize():
    pixels = torch.tensor([[0.485 * 255, 0.456 * 255, 0.406 * 255], [255.0, 0.0, 255.0]])
    out = imagenet_normalize(pixels)
    assert torch.allclose(out[0], torch.zeros(3), atol=1e-5)
    assert torch.allclose(out[1], torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224, (1 - 0.406) / 0.225]))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        imagenet_normalize(torch.zeros(2, 4))


def test_multimodal_mask_tokens():
    config = MultimodalAdapterConfig(
        modalities={"a": OneHotAdapterConfig(num_classes=3), "b": OneHotAdapterConfig(num_classes=5),
                    "c": AudioAdapterConfig(num_samples=4000, samples_per_patch=4, position=FOURIER)},
        min_padding_size=1, mask_probs={"a": 1.0, "b": 0.0, "c": 0.5},
    )
    adapter = config.build()
    out = adapter({"a": torch.eye(3)[:2], "b": torch.eye(5)[:2], "c": torch.randn(2, 4000)})
    assert out.modality_sizes == {"a": 1, "b": 1, "c": 1000}
    assert adapter.num_channels == 4 + 2 * 4 + 1 + 1  # widest (audio: 4 + Fourier 9) + padding 1
    token = {m: adapter.mask_token[m].pos_embs[0] for m in "abc"}
    a, b, c = out.inputs[:, :1], out.inputs[:, 1:2], out.inputs[:, 2:]
    assert torch.equal(a, token["a"].expand_as(a))
    assert torch.equal(b[..., :5], torch.eye(5)[:2, None]) and torch.equal(b[0, 0, 5:], adapter.padding["b"].pos_embs[0])
    masked = (c == token["c"]).all(-1).float().mean()
    assert 0.45 < masked < 0.55


# ---------------------------------------------------------------------------------------
# Serialisation
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", KINDS)
def test_config_json_round_trip(name):
    config = reference_config(name)
    text = config.to_json()
    again = PerceiverConfig.from_json(text)
    assert again == config
    assert again.to_json() == text


@pytest.mark.parametrize("name", KINDS)
def test_save_load_round_trip(name, tmp_path):
    model = randomise(Perceiver(reference_config(name)))
    inputs = random_inputs(model.config)
    model.save_pretrained(tmp_path)
    loaded = Perceiver.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    with torch.no_grad():
        before, after = model(inputs).logits, loaded(inputs).logits
    if isinstance(before, dict):
        assert before.keys() == after.keys()
        for key in before:
            assert torch.equal(before[key], after[key]), key
    else:
        assert torch.equal(before, after)


# ---------------------------------------------------------------------------------------
# Multimodal: encode once, decode in chunks
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multimodal():
    torch.manual_seed(0)
    model = randomise(Perceiver(reference_config("multimodal_small")))
    inputs = random_inputs(model.config)
    with torch.no_grad():
        latents, context = model.encode(inputs)
    return model, latents, context


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        # float32 matmuls of different batch shapes round differently; nothing more
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5 * (1 + float(b[key].abs().max())))


@pytest.mark.parametrize("chunk_size", [13, 128, 10_000])
def test_chunked_multimodal_decode_equals_one_decode_over_all_points(multimodal, chunk_size):
    model, latents, context = multimodal
    points = model.decoder.query_builder.all_points(context)
    with torch.no_grad():
        one = model.decode(latents, context, points=points)
    chunked = model.decode_chunked(latents, context, chunk_size=chunk_size, points=points)
    _assert_same(chunked, one)
    assert one["image"].shape == (2, 512, 3) and one["audio"].shape == (2, 128) and one["label"].shape == (2, 7)


def test_chunked_multimodal_decode_of_the_full_grid_and_of_subsets(multimodal):
    model, latents, context = multimodal
    with torch.no_grad():
        _assert_same(model.decode_chunked(latents, context, chunk_size=50), model.decode(latents, context))
        subset = {"image": torch.tensor([5, 0, 511, 64]), "audio": torch.tensor([7, 1])}
        _assert_same(model.decode_chunked(latents, context, chunk_size=3, points=subset),
                     model.decode(latents, context, points=subset))
        # the full grid (linspace) and all subsampled points (-1 + 2 i / n) place queries differently
        full = model.decode(latents, context)
        every = model.decode(latents, context, points=model.decoder.query_builder.all_points(context))
        assert not torch.allclose(full["image"], every["image"])
        torch.testing.assert_close(full["label"], every["label"])


def test_decode_chunked_bounds_chunk_size_and_never_reencodes(multimodal):
    model, latents, context = multimodal
    sizes, encodes = [], []
    h1 = model.decoder.cross_attend.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[1]))
    h2 = model.encoder.register_forward_pre_hook(lambda *a: encodes.append(1))
    try:
        model.decode_chunked(latents, context, chunk_size=100, points=model.decoder.query_builder.all_points(context))
    finally:
        h1.remove()
        h2.remove()
    assert max(sizes) <= 100 and sum(sizes) == 512 + 8 + 1
    assert not encodes


def test_chunked_decode_of_one_modality_with_and_without_points():
    from perceptio import CrossAttentionDecoderConfig, EncoderConfig, FourierQueriesConfig, ProjectionOutputConfig

    config = PerceiverConfig(
        input_adapter=ImageAdapterConfig(image_shape=[8, 8, 3], prep_type="pixels", spatial_downsample=1,
                                         position=FOURIER),
        encoder=EncoderConfig(num_latents=4, num_latent_channels=16, num_self_attends_per_block=1,
                              num_self_attend_heads=2, num_cross_attend_heads=1),
        decoder=CrossAttentionDecoderConfig(queries=FourierQueriesConfig(index_dims=[8, 8], num_bands=4),
                                            output_channels=8),
        output_adapter=ProjectionOutputConfig(num_outputs=3),
    )
    model = randomise(Perceiver(config))
    with torch.no_grad():
        latents, context = model.encode(torch.randn(2, 8, 8, 3))
        points = torch.tensor([63, 0, 17, 5, 9])
        torch.testing.assert_close(model.decode_chunked(latents, context, chunk_size=2, points=points),
                                   model.decode(latents, context, points=points))
        full = model.decode(latents, context)
        assert full.shape == (2, 64, 3)
        torch.testing.assert_close(model.decode_chunked(latents, context, chunk_size=10), full)


def test_point_cloud_positions_are_the_fourier_encoding_of_the_coordinates():
    from perceptio import PointCloudAdapterConfig
    from perceptio.layers.position import FourierPositionEncoding, fourier_features

    adapter = PointCloudAdapterConfig(num_coords=3, num_features=2, coord_scale=2.0, num_bands=4,
                                      max_resolution=8).build()
    assert isinstance(adapter.positions, FourierPositionEncoding) and adapter.positions.index_dims is None
    points = torch.rand(2, 5, 5) * 4 - 2
    out = adapter(points)
    expected = fourier_features(points[..., :3] / 2.0, 4, [8, 8, 8])
    torch.testing.assert_close(out.inputs[..., 2:], expected, rtol=0, atol=0)
    torch.testing.assert_close(out.inputs[..., :2], points[..., 3:], rtol=0, atol=0)
    with pytest.raises(ValueError, match="has no grid"):
        adapter.positions.grid_rows()
