"""Per-image alpha-matting metrics, as reported by the P3M benchmark.

Every metric is computed over the whole image: U²-Net is trimap-free, so there is no unknown
region to restrict the errors to. SAD, MSE and Grad also take an optional ``region`` (a boolean
HxW mask, e.g. a trimap's unknown region) for comparisons where only the soft edge may differ,
as trimap-based matting is evaluated; Grad's filters still see the whole image there. SAD, Grad
and Conn are divided by 1000 because that is how the matting literature (and the P3M tables we
compare with) reports them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

METRIC_NAMES: tuple[str, ...] = ("sad", "mse", "mad", "grad", "conn", "iou", "boundary_f")

GRAD_SIGMA = 1.4
# 4-connectivity, as bwconncomp(..., 4) in the reference MATLAB and the DAVIS boundary.
_CROSS = ndimage.generate_binary_structure(2, 1)


def as_alpha(array: np.ndarray) -> np.ndarray:
    """Return ``array`` as a float64 HxW alpha matte in [0, 1].

    uint8 mattes (PNG files) are scaled by 1/255. Floats must already be in [0, 1]: a float
    matte in 0..255 would otherwise inflate every error by up to 255x without any sign.
    """
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"alpha matte must be 2-D (HxW), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.floating):
        # uint16 or int mattes have no single agreed scale; make the caller say which.
        raise TypeError(f"alpha matte must be uint8, bool or float, got dtype {arr.dtype}")
    out = arr.astype(np.float64)
    if not np.all(np.isfinite(out)) or out.min(initial=0.0) < 0.0 or out.max(initial=0.0) > 1.0:
        raise ValueError("float alpha matte must be finite and within [0, 1]")
    return out


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = as_alpha(pred), as_alpha(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: pred {p.shape}, gt {g.shape}")
    return p, g


def _within(values: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    if region is None:
        return values
    region = np.asarray(region)
    if region.dtype != np.bool_ or region.shape != values.shape:
        raise ValueError(f"region must be a boolean mask of shape {values.shape}, got "
                         f"{region.dtype} {region.shape}")
    return values[region]


def sad(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> float:
    """Sum of absolute differences (over ``region`` if given), divided by 1000."""
    p, g = _pair(pred, gt)
    return float(_within(np.abs(p - g), region).sum() / 1000.0)


def mse(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> float:
    """Mean squared error (over ``region`` if given; 0 for an empty region)."""
    p, g = _pair(pred, gt)
    errors = _within((p - g) ** 2, region)
    return float(np.mean(errors)) if errors.size else 0.0


def mad(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute difference."""
    p, g = _pair(pred, gt)
    return float(np.mean(np.abs(p - g)))


def _grad_magnitude(alpha: np.ndarray) -> np.ndarray:
    gy = ndimage.gaussian_filter(alpha, sigma=GRAD_SIGMA, order=(1, 0))
    gx = ndimage.gaussian_filter(alpha, sigma=GRAD_SIGMA, order=(0, 1))
    return np.sqrt(gx**2 + gy**2)


def grad(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> float:
    """Gradient error: sum of squared differences of Gaussian-derivative magnitudes / 1000
    (summed over ``region`` if given; the gradients are taken on the whole image)."""
    p, g = _pair(pred, gt)
    return float(np.sum(_within((_grad_magnitude(p) - _grad_magnitude(g)) ** 2, region))
                 / 1000.0)


def _thresholds(step: float) -> np.ndarray:
    if not 0.0 < step <= 1.0:
        raise ValueError(f"step must be in (0, 1], got {step}")
    per_unit = 1.0 / step
    count = math.floor(per_unit + 1e-9) + 1
    # k / (1/step) rather than k * step, so 0.3 is 0.3 and not 0.30000000000000004 as with
    # np.arange: MATLAB's 0:step:1 hits these values exactly and pixels sit on them often.
    return np.arange(count) / per_unit


def _largest_component(mask: np.ndarray) -> np.ndarray:
    # Label the transpose so labels follow column-major order, as MATLAB's bwconncomp does;
    # argmax then breaks size ties the same way as MATLAB's max (first component wins).
    labels_t, count = ndimage.label(mask.T, structure=_CROSS)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels_t.ravel())[1:]
    return (labels_t == int(np.argmax(sizes)) + 1).T


def conn(pred: np.ndarray, gt: np.ndarray, step: float = 0.1) -> float:
    """Connectivity error (Rhemann et al. 2009, MATLAB ``compute_connectivity_error``) / 1000."""
    p, g = _pair(pred, gt)
    thresholds = _thresholds(step)
    # NaN marks "not yet assigned"; it is the MATLAB code's -1 without a magic value.
    l_map = np.full(p.shape, np.nan)
    for previous, current in zip(thresholds[:-1], thresholds[1:], strict=True):
        omega = _largest_component((p >= current) & (g >= current))
        l_map[np.isnan(l_map) & ~omega] = previous
    l_map[np.isnan(l_map)] = 1.0
    pred_d = p - l_map
    gt_d = g - l_map
    pred_phi = 1.0 - pred_d * (pred_d >= 0.15)
    gt_phi = 1.0 - gt_d * (gt_d >= 0.15)
    return float(np.abs(pred_phi - gt_phi).sum() / 1000.0)


def iou(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> float:
    """Intersection over union of the binarised mattes (1.0 when both are empty)."""
    p, g = _pair(pred, gt)
    pm, gm = p >= threshold, g >= threshold
    union = np.count_nonzero(pm | gm)
    if union == 0:
        # Both agree there is no foreground, which is a perfect answer, not an undefined one.
        return 1.0
    return float(np.count_nonzero(pm & gm) / union)


def _boundary(mask: np.ndarray) -> np.ndarray:
    # border_value=1: the image frame is not an object edge. A portrait cut off by the bottom
    # of the photo would otherwise get a boundary along the frame in both pred and gt.
    eroded = ndimage.binary_erosion(mask, structure=_CROSS, border_value=1)
    return mask ^ eroded


def default_tolerance(shape: Sequence[int]) -> int:
    """DAVIS boundary tolerance: 0.8% of the image diagonal, at least one pixel."""
    diagonal = math.hypot(shape[0], shape[1])
    # floor(x + 0.5) is MATLAB/DAVIS rounding; Python's round() rounds halves to even.
    return max(1, math.floor(0.008 * diagonal + 0.5))


def boundary_f(
    pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5, tolerance: float | None = None
) -> float:
    """Boundary F-measure (DAVIS, Perazzi et al. 2016) of the binarised mattes."""
    p, g = _pair(pred, gt)
    if tolerance is None:
        tolerance = default_tolerance(p.shape)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    pb, gb = _boundary(p >= threshold), _boundary(g >= threshold)
    n_pred, n_gt = np.count_nonzero(pb), np.count_nonzero(gb)
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    # Distance from every pixel to the nearest boundary pixel of the other mask.
    dist_to_gt = ndimage.distance_transform_edt(~gb)
    dist_to_pred = ndimage.distance_transform_edt(~pb)
    precision = np.count_nonzero(dist_to_gt[pb] <= tolerance) / n_pred
    recall = np.count_nonzero(dist_to_pred[gb] <= tolerance) / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2.0 * precision * recall / (precision + recall))


def evaluate(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """All metrics for one image, keyed and ordered as ``METRIC_NAMES``."""
    p, g = _pair(pred, gt)
    return {
        "sad": sad(p, g),
        "mse": mse(p, g),
        "mad": mad(p, g),
        "grad": grad(p, g),
        "conn": conn(p, g),
        "iou": iou(p, g),
        "boundary_f": boundary_f(p, g),
    }


def summarize(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over images (the benchmark reports per-image averages)."""
    if not rows:
        raise ValueError("cannot summarize zero images")
    summary: dict[str, float] = {}
    for name in METRIC_NAMES:
        missing = [i for i, row in enumerate(rows) if name not in row]
        if missing:
            raise KeyError(f"metric {name!r} missing from rows {missing}")
        summary[name] = math.fsum(float(row[name]) for row in rows) / len(rows)
    return summary
