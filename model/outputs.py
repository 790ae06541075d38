"""What a matting run writes for one photo (bytes, key): shared by the CLI and the pipeline."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from model.imaging import alpha_to_uint8, composite, cutout_rgba, encode_jpeg, encode_png


@dataclass(frozen=True)
class OutputOptions:
    """RGBA cut-out by default; ``only_mask`` writes the alpha alone; ``bgcolor`` composites."""

    only_mask: bool = False
    bgcolor: tuple[int, int, int] | None = None
    jpeg: bool = False  # only with bgcolor: a composite needs no alpha channel

    def __post_init__(self) -> None:
        if self.only_mask and self.bgcolor is not None:
            raise ValueError("--only-mask and --bgcolor are exclusive")
        if self.jpeg and self.bgcolor is None:
            raise ValueError("a JPEG output needs --bgcolor (JPEG has no alpha channel)")

    @property
    def extension(self) -> str:
        return ".jpg" if self.jpeg else ".png"


def render(image: np.ndarray, alpha: np.ndarray, options: OutputOptions) -> bytes:
    """Encode the output file for ``image`` (HxWx3 uint8) and its ``alpha`` (HxW in [0, 1])."""
    if options.only_mask:
        return encode_png(alpha_to_uint8(alpha))
    if options.bgcolor is not None:
        flat = composite(image, alpha, options.bgcolor)
        return encode_jpeg(flat) if options.jpeg else encode_png(flat)
    return encode_png(cutout_rgba(image, alpha))


def output_key(relative_key: str, options: OutputOptions) -> str:
    """``a/b/photo.jpg`` -> ``a/b/photo.png`` (or ``.jpg``): same relative key, new extension."""
    stem, _ = os.path.splitext(relative_key)
    return stem + options.extension
