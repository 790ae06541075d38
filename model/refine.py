"""Soft edges of a cut-out: the subject's own colour in the soft band, and alpha matting.

Where 0 < alpha < 1 (hair, motion blur, the anti-aliased outline) a photo's pixel is a mix of
the subject and the old background. A cut-out that keeps the photo's RGB there carries the old
background along: a fringe of it shows once the cut-out lies on anything else. Foreground
estimation solves for the subject's colour alone (pymatting's multi-level method, Germer et
al. 2020, ``estimate_foreground_ml``), and only the band is replaced: pixels with alpha 0 or
1 keep the photo's values, so nothing outside the soft edge changes.

Alpha matting (rembg's ``-a``) rebuilds the alpha itself from a trimap made of the model's
alpha, exactly as rembg does it: alpha above the foreground threshold is sure foreground,
below the background threshold sure background, both eroded by an ``erode_size`` square, and
the rest unknown; closed-form matting (Levin et al. 2008, pymatting's ``estimate_alpha_cf``)
solves the unknown part from the photo's colours. A trimap without sure foreground or sure
background leaves nothing to solve from: the model's alpha is kept, as rembg falls back to its
plain cut-out. Its cost and its effect on accuracy are measured in README ("Quality").

pymatting (and numba behind it) and scipy are imported when first used: plain cut-outs never
load them.
It prints its preconditioner retries to stdout; ``matte i ... -`` keeps them off the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.imaging import alpha_to_uint8

TRIMAP_UNKNOWN = 128


@dataclass(frozen=True)
class AlphaMatting:
    """rembg's alpha-matting settings and defaults (``-af``, ``-ab``, ``-ae``), on 0..255."""

    foreground_threshold: int = 240
    background_threshold: int = 10
    erode_size: int = 10

    def __post_init__(self) -> None:
        for name in ("foreground_threshold", "background_threshold"):
            if not 0 <= getattr(self, name) <= 255:
                raise ValueError(f"alpha matting {name.replace('_', ' ')} must be in 0..255, "
                                 f"got {getattr(self, name)}")
        if self.background_threshold >= self.foreground_threshold:
            raise ValueError("the alpha matting background threshold must be below the "
                             f"foreground threshold, got {self.background_threshold} >= "
                             f"{self.foreground_threshold}")
        if self.erode_size < 0:
            raise ValueError(f"the alpha matting erode size must be >= 0, got {self.erode_size}")


def soft_band(alpha: np.ndarray) -> np.ndarray:
    """Where the written alpha (8 bit) is neither 0 nor 255: the only pixels that mix."""
    alpha8 = alpha_to_uint8(alpha)
    return (alpha8 > 0) & (alpha8 < 255)


def estimate_foreground(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """HxWx3 uint8: ``image`` with the subject's estimated colour in the soft band of
    ``alpha`` (HxW in [0, 1]) and the photo's own values everywhere else."""
    band = soft_band(alpha)
    if not band.any():
        return image
    from pymatting import estimate_foreground_ml

    foreground = estimate_foreground_ml(image.astype(np.float32) / 255.0,
                                        np.clip(alpha, 0.0, 1.0).astype(np.float32))
    result = image.copy()
    result[band] = np.clip(np.rint(foreground[band] * 255.0), 0, 255).astype(np.uint8)
    return result


def trimap(alpha: np.ndarray, settings: AlphaMatting) -> np.ndarray:
    """HxW uint8 of 0 (sure background), 128 (unknown), 255 (sure foreground), as rembg's."""
    from scipy import ndimage  # ~0.2 s of import that plain cut-outs never need

    alpha8 = alpha_to_uint8(alpha)
    structure = (np.ones((settings.erode_size, settings.erode_size), dtype=bool)
                 if settings.erode_size > 0 else None)
    foreground = ndimage.binary_erosion(alpha8 > settings.foreground_threshold, structure)
    # border_value=1: the frame is not an edge of the background (rembg's choice too).
    background = ndimage.binary_erosion(alpha8 < settings.background_threshold, structure,
                                        border_value=1)
    result = np.full(alpha8.shape, TRIMAP_UNKNOWN, dtype=np.uint8)
    result[foreground] = 255
    result[background] = 0
    return result


def matte_alpha(image: np.ndarray, alpha: np.ndarray, settings: AlphaMatting) -> np.ndarray:
    """HxW float alpha in [0, 1] from closed-form matting on ``alpha``'s trimap, or ``alpha``
    itself when the trimap has no sure foreground or no sure background."""
    regions = trimap(alpha, settings)
    if not ((regions == 255).any() and (regions == 0).any()):
        return alpha
    if not (regions == TRIMAP_UNKNOWN).any():
        return regions.astype(np.float32) / 255.0
    from pymatting import estimate_alpha_cf

    solved = estimate_alpha_cf(image.astype(np.float64) / 255.0, regions / 255.0)
    return np.clip(solved, 0.0, 1.0).astype(np.float32)
