"""Optical flow between two frames of any size, Middlebury ``.flo`` files and the
standard flow colour coding.

The flow model sees frames of its training size (368 x 496 for the published one).
Larger frames are cut into tiles of that size that overlap by at least ``min_overlap``
pixels, the last tile of each row/column flush with the border; each tile's flow is
weighted by its distance to the tile border (``min(x + 1, w - x, y + 1, h - y)``) and
the weighted flows are averaged, as in the reference colab. Frames smaller than a tile
are padded by repeating their border pixels and the flow is cropped back. (The colab's
grid can repeat a tile when the overlap is large; ours never computes a tile twice.)

Frames are RGB scaled to ``[-1, 1]`` and the output is multiplied by
``FLOW_SCALE_FACTOR`` = 20, as in the colab, to give pixels.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapters.flow import FlowInputAdapter, patches_for_flow
from ..data.files import pillow, read_image
from ..model import Perceiver

# The reference colab multiplies the model output (the decoder output divided by 100)
# by 20 to get pixels (deepmind-research issue #266).
FLOW_SCALE_FACTOR = 20.0
FLO_MAGIC = 202021.25  # b"PIEH" read as a little-endian float32
UNKNOWN_FLOW = 1e9  # components above this mark unknown flow in .flo files

FlowFn = Callable[[Tensor], Tensor]  # frames [B, 2, h, w, 3] -> flow [B, h, w, 2]


# ---------------------------------------------------------------------------------------
# Tiling
# ---------------------------------------------------------------------------------------
def tile_starts(size: int, tile: int, min_overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size >= tile``, consecutive tiles
    overlapping by at least ``min_overlap``, the last one ending at ``size``."""
    if size < tile:
        raise ValueError(f"size {size} is smaller than the tile {tile}")
    if size == tile:
        return [0]
    if not 0 <= min_overlap < tile:
        raise ValueError(f"min_overlap must be in [0, tile size {tile}), got {min_overlap}")
    starts = list(range(0, size - tile, tile - min_overlap))
    return starts + [size - tile]


def tile_weights(height: int, width: int) -> Tensor:
    """``[height, width]`` blending weights: distance (1-based) to the nearest tile border."""
    y = torch.arange(height, dtype=torch.float32)
    x = torch.arange(width, dtype=torch.float32)
    wy = torch.minimum(y + 1, height - y)
    wx = torch.minimum(x + 1, width - x)
    return torch.minimum(wy[:, None], wx[None, :])


@torch.no_grad()
def tiled_flow(
    flow_fn: FlowFn,
    frames: Tensor,
    tile_size: tuple[int, int],
    min_overlap: int = 20,
    batch_size: int = 1,
) -> Tensor:
    """Flow of ``frames [2, H, W, 3]`` (any H, W) -> ``[H, W, 2]`` by overlapping tiles."""
    if frames.dim() != 4 or frames.shape[0] != 2 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [2, H, W, 3], got {tuple(frames.shape)}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    th, tw = tile_size
    height, width = frames.shape[1:3]
    pad_h, pad_w = max(th - height, 0), max(tw - width, 0)
    if pad_h or pad_w:  # replicate the border pixels: [2, H, W, 3] -> [2, H', W', 3]
        frames = F.pad(frames.permute(0, 3, 1, 2), (0, pad_w, 0, pad_h), mode="replicate").permute(0, 2, 3, 1)
    full_h, full_w = frames.shape[1:3]
    corners = list(itertools.product(tile_starts(full_h, th, min_overlap), tile_starts(full_w, tw, min_overlap)))
    weights = tile_weights(th, tw).to(frames.device)
    total = frames.new_zeros(full_h, full_w, 2)
    norm = frames.new_zeros(full_h, full_w, 1)
    for i in range(0, len(corners), batch_size):
        batch = corners[i:i + batch_size]
        tiles = torch.stack([frames[:, y:y + th, x:x + tw] for y, x in batch])  # [b, 2, th, tw, 3]
        flows = flow_fn(tiles)
        if tuple(flows.shape) != (len(batch), th, tw, 2):
            raise ValueError(f"the flow model returned shape {tuple(flows.shape)}, expected {(len(batch), th, tw, 2)}")
        for (y, x), flow in zip(batch, flows):
            total[y:y + th, x:x + tw] += flow * weights[..., None]
            norm[y:y + th, x:x + tw] += weights[..., None]
    return (total / norm)[:height, :width]


def frames_from_images(image1: np.ndarray, image2: np.ndarray) -> Tensor:
    """Two RGB ``[H, W, 3]`` uint8 images -> frames ``[2, H, W, 3]`` in ``[-1, 1]`` (reference colab)."""
    for name, image in (("frame 1", image1), ("frame 2", image2)):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{name}: expected RGB pixels [H, W, 3] uint8, got {image.dtype} {image.shape}")
    if image1.shape != image2.shape:
        raise ValueError(f"the two frames differ in size: {image1.shape[:2]} vs {image2.shape[:2]}")
    frames = torch.from_numpy(np.stack([image1, image2]).astype(np.float32))
    return frames / 255.0 * 2 - 1


@torch.no_grad()
def estimate_flow(
    model: Perceiver,
    frame1: str | os.PathLike | np.ndarray,
    frame2: str | os.PathLike | np.ndarray,
    min_overlap: int = 20,
    batch_size: int = 1,
    scale: float = FLOW_SCALE_FACTOR,
) -> Tensor:
    """Flow ``[H, W, 2]`` in pixels (u right, v down) from ``frame1`` to ``frame2``: image
    files or RGB ``[H, W, 3]`` uint8 arrays of equal size, any size (tiled, see module docstring)."""
    if not isinstance(model.input_adapter, FlowInputAdapter):
        raise ValueError(f"optical flow needs a flow model (flow input adapter), got {type(model.input_adapter).__name__}")
    height, width, channels = model.input_adapter.config.image_shape
    if channels != 3:
        raise ValueError(f"the model reads {channels}-channel frames; image files give RGB")
    images = [f if isinstance(f, np.ndarray) else read_image(f) for f in (frame1, frame2)]
    frames = frames_from_images(*images)
    device = next(model.parameters()).device

    # Models converted from transformers take the 3x3 patches of the frames instead.
    takes_patches = getattr(model.input_adapter.config, "input_format", "frames") == "patches"

    def flow_fn(tiles: Tensor) -> Tensor:
        tiles = tiles.to(device)
        return model(patches_for_flow(tiles) if takes_patches else tiles).logits.float().cpu() * scale

    return tiled_flow(flow_fn, frames, (height, width), min_overlap, batch_size)


# ---------------------------------------------------------------------------------------
# .flo files (Middlebury format)
# ---------------------------------------------------------------------------------------
def write_flo(path: str | os.PathLike, flow: np.ndarray | Tensor) -> None:
    """Write ``flow [H, W, 2]`` (u = x, v = y displacement) as a Middlebury ``.flo`` file:
    "PIEH" (float 202021.25), int32 width, int32 height, then float32 rows of (u, v)."""
    flow = flow.detach().cpu().numpy() if isinstance(flow, Tensor) else np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must have shape [H, W, 2], got {flow.shape}")
    height, width = flow.shape[:2]
    with open(path, "wb") as f:
        f.write(b"PIEH")
        f.write(np.array([width, height], dtype="<i4").tobytes())
        f.write(np.ascontiguousarray(flow, dtype="<f4").tobytes())


def read_flo(path: str | os.PathLike) -> np.ndarray:
    """Read a Middlebury ``.flo`` file -> ``[H, W, 2]`` float32."""
    data = Path(path).read_bytes()
    if len(data) < 12 or np.frombuffer(data[:4], dtype="<f4")[0] != FLO_MAGIC:
        raise ValueError(f"{path}: not a .flo file (expected the magic 'PIEH' = {FLO_MAGIC})")
    width, height = (int(v) for v in np.frombuffer(data[4:12], dtype="<i4"))
    expected = 12 + 4 * 2 * width * height
    if width <= 0 or height <= 0 or len(data) != expected:
        raise ValueError(f"{path}: header says {width}x{height} ({expected} bytes), file has {len(data)} bytes")
    return np.frombuffer(data[12:], dtype="<f4").reshape(height, width, 2).copy()


# ---------------------------------------------------------------------------------------
# Colour coding (Baker et al., "A Database and Evaluation Methodology for Optical Flow")
# ---------------------------------------------------------------------------------------
def color_wheel() -> np.ndarray:
    """The 55 colours of the Middlebury wheel, ``[55, 3]`` RGB in 0..255: red -> yellow ->
    green -> cyan -> blue -> magenta -> red with 15, 6, 4, 11, 13, 6 steps."""
    segments = [(15, 0, 1, True), (6, 1, 0, False), (4, 1, 2, True), (11, 2, 1, False), (13, 2, 0, True), (6, 0, 2, False)]
    rows = []
    for steps, full, ramp, rising in segments:
        col = np.zeros((steps, 3))
        col[:, full] = 255
        ramp_values = np.floor(255 * np.arange(steps) / steps)
        col[:, ramp] = ramp_values if rising else 255 - ramp_values
        rows.append(col)
    return np.concatenate(rows)


def flow_to_color(flow: np.ndarray | Tensor, max_flow: float | None = None) -> np.ndarray:
    """``flow [H, W, 2]`` -> ``[H, W, 3]`` uint8 RGB: hue = direction, saturation = speed
    relative to ``max_flow`` (default: the largest speed); unknown flow is black."""
    flow = flow.detach().cpu().numpy() if isinstance(flow, Tensor) else np.asarray(flow, dtype=np.float64)
    u, v = flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64)
    unknown = (np.abs(u) > UNKNOWN_FLOW) | (np.abs(v) > UNKNOWN_FLOW) | ~np.isfinite(u) | ~np.isfinite(v)
    u, v = np.where(unknown, 0, u), np.where(unknown, 0, v)
    rad = np.sqrt(u**2 + v**2)
    scale = max_flow if max_flow is not None else rad.max()
    scale = max(float(scale), np.finfo(np.float64).eps)
    u, v, rad = u / scale, v / scale, rad / scale

    wheel = color_wheel() / 255
    ncols = len(wheel)
    angle = np.arctan2(-v, -u) / np.pi  # [-1, 1]
    fk = (angle + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(int)
    k1 = (k0 + 1) % ncols
    f = (fk - k0)[..., None]
    col = (1 - f) * wheel[k0] + f * wheel[k1]
    inside = (rad <= 1)[..., None]
    col = np.where(inside, 1 - rad[..., None] * (1 - col), col * 0.75)
    col[unknown] = 0
    return np.floor(255 * col).astype(np.uint8)


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write ``[H, W, 3]`` uint8 pixels (e.g. :func:`flow_to_color`) as PNG."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"save_png expects [H, W, 3] uint8 pixels, got {image.dtype} {image.shape}")
    pillow().fromarray(image).save(path, format="PNG")
