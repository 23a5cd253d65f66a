"""Reading and writing image files (PNG, JPEG, ...) with Pillow, the optional
``image`` extra: ``pip install 'perceptio[image]'``."""

from __future__ import annotations

import os

import numpy as np


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading and writing image files needs Pillow: pip install 'perceptio[image]'") from None
    return Image


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file -> RGB pixels ``[H, W, 3]`` uint8 (grey, palette and alpha images are
    converted to RGB)."""
    Image = _pillow()
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB")).copy()
    except FileNotFoundError:
        raise
    except OSError as e:  # Pillow's "cannot identify image file"
        raise ValueError(f"{path}: not a readable image ({e})") from None


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of ``[H, W, 3]`` uint8 pixels."""
    Image = _pillow()
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write ``[H, W, 3]`` uint8 pixels as PNG."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"save_png expects [H, W, 3] uint8 pixels, got {image.dtype} {image.shape}")
    _pillow().fromarray(image).save(path, format="PNG")
