"""Before/after thumbnails for the dashboard: the photo beside its cut-out on a checkerboard."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from model.imaging import decode_image, encode_png

THUMBNAIL_HEIGHT = 160


def _checkerboard(height: int, width: int, square: int = 8) -> np.ndarray:
    rows, cols = np.indices((height, width)) // square
    light = ((rows + cols) % 2 == 0)[:, :, None]
    return np.where(light, 230, 190).astype(np.float32) * np.ones(3, np.float32)


def _fit(image: Image.Image) -> Image.Image:
    width = max(1, round(image.width * THUMBNAIL_HEIGHT / image.height))
    return image.resize((width, THUMBNAIL_HEIGHT), Image.Resampling.BILINEAR)


def before_after_png(source: bytes, cutout: bytes) -> bytes:
    """One PNG: the source photo (left) and the RGBA cut-out over a checkerboard (right)."""
    before = _fit(Image.fromarray(decode_image(source)))
    after = np.asarray(_fit(Image.open(io.BytesIO(cutout)).convert("RGBA")),
                       np.float32)
    alpha = after[:, :, 3:] / 255.0
    board = _checkerboard(*after.shape[:2])
    flattened = (after[:, :, :3] * alpha + board * (1.0 - alpha)).round().astype(np.uint8)
    canvas = np.zeros((THUMBNAIL_HEIGHT, before.width + flattened.shape[1] + 4, 3), np.uint8)
    canvas[:, :before.width] = np.asarray(before)
    canvas[:, before.width + 4:] = flattened
    return encode_png(canvas)
