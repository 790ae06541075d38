"""What a matting run writes for one photo (bytes, key): shared by the CLI, the Python API and
the pipeline, so ``matte i``, ``matte p``, ``matte bucket`` and ``model.api.remove`` write the
same bytes for the same photo and options.

An RGBA cut-out stores RGB = 0 wherever alpha is 0 (as rembg does): those pixels are invisible
whatever their colour, and zeros make smaller files that encode faster. With
``estimate_foreground`` the soft band (0 < alpha < 1) holds the subject's own colour instead of
the photo's mix of subject and old background (``model.refine``); ``alpha_matting`` rebuilds the
alpha itself first (rembg's ``-a``) and, like rembg, always estimates the foreground after it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from model.imaging import alpha_to_uint8, composite, cutout_rgba, encode_jpeg, encode_png
from model.refine import AlphaMatting, estimate_foreground, matte_alpha

OPAQUE = 255


@dataclass(frozen=True)
class OutputOptions:
    """RGBA cut-out by default; ``only_mask`` writes the alpha alone; ``bgcolor`` composites.

    ``bgcolor`` is (R, G, B), or (R, G, B, A) as rembg's ``-bgc`` takes it: A = 255 is the
    same as (R, G, B); a lower A keeps the output RGBA, the cut-out laid over a translucent
    colour. These options are recorded beside every output (the planner's "already done"
    rule), so an output made with other options is redone.
    """

    only_mask: bool = False
    bgcolor: tuple[int, ...] | None = None
    jpeg: bool = False  # only with bgcolor: a composite needs no alpha channel
    estimate_foreground: bool = False
    alpha_matting: AlphaMatting | None = None

    def __post_init__(self) -> None:
        if self.bgcolor is not None:
            colour = tuple(int(c) for c in self.bgcolor)
            if len(colour) not in (3, 4) or not all(0 <= c <= 255 for c in colour):
                raise ValueError(f"bgcolor must be 3 or 4 integers in 0..255, got "
                                 f"{self.bgcolor!r}")
            # One spelling per output: an opaque RGBA colour is the RGB colour.
            object.__setattr__(self, "bgcolor",
                               colour[:3] if colour[3:] == (OPAQUE,) else colour)
        if self.only_mask and self.bgcolor is not None:
            raise ValueError("--only-mask and --bgcolor are exclusive")
        if self.jpeg and self.bgcolor is None:
            raise ValueError("a JPEG output needs --bgcolor (JPEG has no alpha channel)")
        if self.jpeg and len(self.bgcolor) == 4:
            raise ValueError("a JPEG output needs an opaque background (A = 255)")

    @property
    def extension(self) -> str:
        return ".jpg" if self.jpeg else ".png"


def render_array(image: np.ndarray, alpha: np.ndarray, options: OutputOptions) -> np.ndarray:
    """The output's pixels for ``image`` (HxWx3 uint8) and its ``alpha`` (HxW in [0, 1]):
    HxW (mask), HxWx3 (composite on an opaque colour) or HxWx4 (cut-out), uint8."""
    if options.alpha_matting is not None:
        alpha = matte_alpha(image, alpha, options.alpha_matting)
    if options.only_mask:
        return alpha_to_uint8(alpha)
    foreground = (estimate_foreground(image, alpha)
                  if options.estimate_foreground or options.alpha_matting is not None
                  else image)
    if options.bgcolor is not None and len(options.bgcolor) == 3:
        return composite(foreground, alpha, options.bgcolor)
    rgba = cutout_rgba(foreground, alpha)
    if options.bgcolor is not None:
        return _over(rgba, options.bgcolor)
    rgba[rgba[..., 3] == 0, :3] = 0  # invisible: zeros encode smaller and faster
    return rgba


def render(image: np.ndarray, alpha: np.ndarray, options: OutputOptions) -> bytes:
    """Encode the output file for ``image`` (HxWx3 uint8) and its ``alpha`` (HxW in [0, 1])."""
    pixels = render_array(image, alpha, options)
    return encode_jpeg(pixels) if options.jpeg else encode_png(pixels)


def _over(rgba: np.ndarray, colour: tuple[int, ...]) -> np.ndarray:
    """The cut-out over a translucent colour (Porter-Duff "over", straight alpha), RGBA uint8;
    RGB = 0 where the result is fully transparent."""
    a = rgba[..., 3:].astype(np.float32) / 255.0
    below = colour[3] / 255.0
    out_alpha = a + below * (1.0 - a)
    mixed = rgba[..., :3].astype(np.float32) * a + (np.asarray(colour[:3], np.float32)
                                                    * below * (1.0 - a))
    rgb = np.divide(mixed, out_alpha, out=np.zeros_like(mixed), where=out_alpha > 0)
    result = np.concatenate([np.clip(np.rint(rgb), 0, 255).astype(np.uint8),
                             alpha_to_uint8(out_alpha[..., 0])[..., None]], axis=2)
    result[result[..., 3] == 0, :3] = 0
    return result


def output_key(relative_key: str, options: OutputOptions) -> str:
    """``a/b/photo.jpg`` -> ``a/b/photo.png`` (or ``.jpg``): same relative key, new extension."""
    stem, _ = os.path.splitext(relative_key)
    return stem + options.extension
