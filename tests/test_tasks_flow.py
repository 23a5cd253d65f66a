"""Optical flow tiling, .flo files and the colour coding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceptio.tasks.optical_flow import (
    color_wheel, flow_to_color, read_flo, tile_starts, tile_weights, tiled_flow, write_flo,
)


def positional_flow(origin_calls=None):
    """A 'model' whose flow is a function of absolute pixel position, read from the
    frames themselves (channel 0 holds x, channel 1 holds y): tiling must be seamless."""

    def flow_fn(tiles):  # [b, 2, h, w, 3] -> [b, h, w, 2]
        if origin_calls is not None:
            origin_calls.append(tuple(tiles.shape))
        x, y = tiles[:, 0, ..., 0], tiles[:, 0, ..., 1]
        return torch.stack([torch.sin(x / 7) * 3 + y / 50, torch.cos(y / 5) - x / 40], dim=-1)

    return flow_fn


def frames_with_coordinates(height, width):
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")
    frame = torch.stack([x, y, torch.zeros_like(x)], dim=-1)
    return torch.stack([frame, frame])


def test_tile_starts_cover_with_overlap():
    for size, tile, overlap in [(100, 100, 20), (101, 100, 20), (250, 64, 10), (1000, 368, 20), (1000, 368, 200)]:
        starts = tile_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] == size - tile and starts == sorted(set(starts))
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + tile] = True
        assert covered.all()
        assert all(a + tile - b >= overlap for a, b in zip(starts, starts[1:]))
    assert tile_starts(1000, 368, 20) == [0, 348, 632]  # the reference colab's grid
    with pytest.raises(ValueError, match="min_overlap"):
        tile_starts(100, 50, 50)


def test_tile_weights_are_distance_to_border():
    w = tile_weights(4, 6)
    assert w[0].tolist() == [1, 1, 1, 1, 1, 1]
    assert w[1].tolist() == [1, 2, 2, 2, 2, 1]
    assert w.min() == 1 and torch.equal(w, w.flip(0)) and torch.equal(w, w.flip(1))


@pytest.mark.parametrize("height, width", [(50, 70), (37, 90), (24, 32), (20, 20)])
def test_tiling_a_positional_model_is_seamless(height, width):
    frames = frames_with_coordinates(height, width)
    calls = []
    flow = tiled_flow(positional_flow(calls), frames, (24, 32), min_overlap=6, batch_size=2)
    expected = positional_flow()(frames[None])[0]
    assert flow.shape == (height, width, 2)
    torch.testing.assert_close(flow, expected, atol=1e-5, rtol=0)
    assert all(shape[2:4] == (24, 32) for shape in calls)  # every tile has the training size
    if height > 24 and width > 32:
        assert sum(shape[0] for shape in calls) > 1


def test_smaller_frames_are_padded_with_their_border():
    frames = frames_with_coordinates(10, 12)
    seen = []
    tiled_flow(lambda t: (seen.append(t), torch.zeros(t.shape[0], 24, 32, 2))[1], frames, (24, 32))
    tile = seen[0][0, 0]
    assert tile.shape == (24, 32, 3)
    assert torch.equal(tile[:10, :12], frames[0]) and torch.equal(tile[23, 31], frames[0, 9, 11])


def test_tiled_flow_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[2, H, W, 3\]"):
        tiled_flow(positional_flow(), torch.zeros(3, 8, 8, 3), (4, 4))
    with pytest.raises(ValueError, match="returned shape"):
        tiled_flow(lambda t: torch.zeros(1, 2, 2, 2), torch.zeros(2, 8, 8, 3), (4, 4), min_overlap=1)


def test_flo_round_trip_and_header(tmp_path):
    flow = np.random.default_rng(0).normal(size=(5, 7, 2)).astype(np.float32)
    write_flo(tmp_path / "f.flo", flow)
    data = (tmp_path / "f.flo").read_bytes()
    assert data[:4] == b"PIEH" and np.frombuffer(data[:4], "<f4")[0] == 202021.25
    assert np.frombuffer(data[4:12], "<i4").tolist() == [7, 5]  # width, then height
    assert len(data) == 12 + 5 * 7 * 2 * 4
    np.testing.assert_array_equal(read_flo(tmp_path / "f.flo"), flow)
    np.testing.assert_array_equal(np.frombuffer(data[12:20], "<f4"), flow[0, 0])  # (u, v) interleaved
    (tmp_path / "bad.flo").write_bytes(b"PIEX" + data[4:])
    with pytest.raises(ValueError, match="not a .flo file"):
        read_flo(tmp_path / "bad.flo")
    (tmp_path / "short.flo").write_bytes(data[:-4])
    with pytest.raises(ValueError, match="header says 7x5"):
        read_flo(tmp_path / "short.flo")


def test_color_wheel_and_coding():
    wheel = color_wheel()
    assert wheel.shape == (55, 3)
    assert wheel[0].tolist() == [255, 0, 0]  # red
    assert wheel[15].tolist() == [255, 255, 0]  # yellow after RY = 15
    assert wheel[21].tolist() == [0, 255, 0]  # green after YG = 6
    assert wheel[25].tolist() == [0, 255, 255]  # cyan after GC = 4
    assert wheel[36].tolist() == [0, 0, 255]  # blue after CB = 11
    assert wheel[49].tolist() == [255, 0, 255]  # magenta after BM = 13
    flow = np.array([[[0, 0], [1, 0], [-1, 0]], [[0, 1], [0, -1], [1e10, 0]]], np.float32)
    rgb = flow_to_color(flow)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[0, 0].tolist() == [255, 255, 255]  # no motion: white
    assert rgb[1, 2].tolist() == [0, 0, 0]  # unknown flow: black
    # Unit flow in the four directions, as in the Middlebury colour key (image y points down).
    key = flow_to_color(np.array([[[1, 0], [-1, 0], [0, 1], [0, -1]]], np.float32))[0]
    assert key[0].tolist() == [255, 0, 0]  # right: red
    assert key[1].tolist() == [0, 209, 255]  # left: cyan-blue
    assert key[2].tolist() == [255, 229, 0]  # down: yellow
    assert key[3].tolist() == [88, 0, 255]  # up: violet-blue
    half = flow_to_color(np.array([[[0.5, 0]]], np.float32), max_flow=1.0)
    assert half[0, 0].tolist() == [255, 127, 127]  # half the maximum speed: half saturation
