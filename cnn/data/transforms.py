"""Transforms applied once at load time, uint8 in and out: resizing (Pillow's bilinear, antialiased) and
grayscale ↔ colour (repetition, or the ITU-R 601-2 luma Pillow's `convert("L")` uses); and `shift`, which
moves images for the robustness experiments."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def to_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
    """NHWC uint8 images with `channels` channels: gray repeated into R, G, B, or colour to its luma."""
    have = images.shape[-1]
    if channels is None or channels == have:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if have == 3 and channels == 1:
        r, g, b = (images[..., i].astype(np.uint32) for i in range(3))
        return ((r * 299 + g * 587 + b * 114 + 500) // 1000).astype(np.uint8)[..., None]
    raise ValueError(f"channels: cannot turn {have}-channel images into {channels} channels (1 or 3)")


def resize(images: np.ndarray, size: Sequence[int] | None) -> np.ndarray:
    """NHWC uint8 images resized to `size` (H, W) with Pillow's bilinear filter, which averages over the
    whole source footprint when shrinking (antialiased)."""
    if size is None or tuple(images.shape[1:3]) == tuple(size):
        return images
    h, w = size
    out = np.empty((len(images), h, w, images.shape[-1]), np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        resized = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR))
        out[i] = resized.reshape(h, w, -1)
    return out


def transform(images: np.ndarray, size: Sequence[int] | None, channels: int | None) -> np.ndarray:
    """`resize` then `to_channels`: what `--image-size` and `--channels` do."""
    return to_channels(resize(images, size), channels)


def shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """NHWC images moved `dy` pixels down and `dx` right (negative: up, left), the uncovered border zero."""
    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    src_y, dst_y = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
    src_x, dst_x = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
    out[:, dst_y, dst_x] = images[:, src_y, src_x]
    return out
