"""Matting metrics against small hand-worked arrays (expected values derived in comments)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from model import metrics
from model.metrics import (
    METRIC_NAMES,
    as_alpha,
    boundary_f,
    conn,
    evaluate,
    grad,
    iou,
    mad,
    mse,
    sad,
    summarize,
)

# pred - gt = [[0, -0.5, 0.5], [-0.25, 0, 1]]
PRED_2X3 = np.array([[0.0, 0.5, 1.0], [0.25, 0.75, 1.0]])
GT_2X3 = np.array([[0.0, 1.0, 0.5], [0.5, 0.75, 0.0]])


# --- as_alpha -------------------------------------------------------------------------------


def test_as_alpha_scales_uint8():
    out = as_alpha(np.array([[0, 51, 255]], dtype=np.uint8))
    assert out.dtype == np.float64
    assert out[0].tolist() == pytest.approx([0.0, 0.2, 1.0])


def test_as_alpha_rejects_float_outside_unit_range():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        as_alpha(np.array([[0.0, 255.0]]))
    with pytest.raises(ValueError):
        as_alpha(np.array([[np.nan, 0.5]]))


def test_as_alpha_rejects_non_2d_and_other_ints():
    with pytest.raises(ValueError, match="2-D"):
        as_alpha(np.zeros((2, 2, 1)))
    with pytest.raises(TypeError):
        as_alpha(np.zeros((2, 2), dtype=np.uint16))


# --- sad / mse / mad ------------------------------------------------------------------------


def test_sad_hand_worked():
    # |diff| = 0 + 0.5 + 0.5 + 0.25 + 0 + 1 = 2.25 -> / 1000
    assert sad(PRED_2X3, GT_2X3) == pytest.approx(0.00225)


def test_mse_hand_worked():
    # diff^2 = 0 + 0.25 + 0.25 + 0.0625 + 0 + 1 = 1.5625 over 6 pixels
    assert mse(PRED_2X3, GT_2X3) == pytest.approx(1.5625 / 6)


def test_mad_hand_worked():
    # 2.25 over 6 pixels
    assert mad(PRED_2X3, GT_2X3) == pytest.approx(0.375)


def test_identical_inputs_give_zero_errors():
    for fn in (sad, mse, mad, grad, conn):
        assert fn(PRED_2X3, PRED_2X3) == pytest.approx(0.0, abs=1e-15)


# --- grad -----------------------------------------------------------------------------------


def _step_5x5() -> np.ndarray:
    # Vertical edge: columns 0-1 background, columns 2-4 foreground.
    step = np.zeros((5, 5))
    step[:, 2:] = 1.0
    return step


def test_grad_constant_offset_is_zero():
    # Derivative kernels sum to zero, so adding 0.2 everywhere leaves both gradients unchanged.
    gt = _step_5x5() * 0.7
    assert grad(gt + 0.2, gt) == pytest.approx(0.0, abs=1e-12)


def test_grad_step_edge_vs_flat_matches_direct_filtering():
    pred = _step_5x5()
    gt = np.full((5, 5), 0.5)
    # Independent reference: filter by hand. The flat gt has zero gradient everywhere, and the
    # edge varies only along columns, so the row derivative vanishes and |grad p| = |gx|.
    gx = ndimage.gaussian_filter(pred, sigma=1.4, order=(0, 1))
    gy = ndimage.gaussian_filter(pred, sigma=1.4, order=(1, 0))
    assert np.abs(gy).max() == pytest.approx(0.0, abs=1e-12)
    expected = float(np.sum(gx**2)) / 1000.0
    assert expected > 0
    assert grad(pred, gt) == pytest.approx(expected)
    # Symmetric in its arguments, and quadratic in the matte's amplitude.
    assert grad(gt, pred) == pytest.approx(expected)
    assert grad(0.5 * pred, np.zeros((5, 5))) == pytest.approx(0.25 * expected)


# --- conn -----------------------------------------------------------------------------------


def test_conn_1x5_traced():
    pred = np.array([[0.0, 0.55, 1.0, 1.0, 0.25]])
    gt = np.array([[0.0, 1.0, 1.0, 1.0, 0.0]])
    # t = 0.1..0.5: (pred>=t & gt>=t) = cols 1-3 (col 4 has gt 0) -> omega = {1, 2, 3};
    #   at t = 0.1 cols 0 and 4 lie outside omega -> l = 0.0.
    # t = 0.6..1.0: mask = cols 2-3 -> col 1 drops out at t = 0.6 -> l = 0.5.
    # cols 2-3 never drop out -> l = 1.  l_map = [0, 0.5, 1, 1, 0]
    # pred_d = [0, 0.05, 0, 0, 0.25] -> only 0.25 >= 0.15 -> pred_phi = [1, 1, 1, 1, 0.75]
    # gt_d   = [0, 0.5,  0, 0, 0   ] ->                      gt_phi  = [1, 0.5, 1, 1, 1]
    # sum |pred_phi - gt_phi| = 0.5 + 0.25 = 0.75 -> / 1000
    assert conn(pred, gt) == pytest.approx(0.00075)


def test_conn_uses_only_the_largest_component():
    pred = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    gt = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.12]])
    # t = 0.1: mask = the L-shaped triple (size 3) and the corner (2,2) (size 1, gt 0.12).
    #   omega = the triple, so all six other pixels, the corner included, get l = 0.
    # The triple stays in omega up to t = 1 -> l = 1 there.
    # Corner: pred_d = 1 -> pred_phi = 0; gt_d = 0.12 < 0.15 -> gt_phi = 1 -> error 1.
    # Every other pixel has equal pred and gt, so phi agrees. Total 1 -> / 1000.
    # (Counting every component would give the corner l = 0.1 and an error of 0.9 instead.)
    assert conn(pred, gt) == pytest.approx(0.001)


def test_conn_breaks_size_ties_in_matlab_column_major_order():
    pred = np.array([[0.0, 1.0], [1.0, 0.0]])
    gt = np.array([[0.0, 0.12], [1.0, 0.0]])
    # t = 0.1: two single-pixel components, (0,1) and (1,0). bwconncomp numbers them in
    # column-major order, so MATLAB's max picks (1,0): (0,0), (0,1), (1,1) get l = 0.
    # (1,0) stays to t = 1 -> l = 1. Only (0,1) differs: pred_phi = 1 - 1 = 0, gt_phi = 1
    # (0.12 < 0.15) -> error 1. A row-major pick would give (0,1) l = 0.1 -> error 0.9.
    assert conn(pred, gt) == pytest.approx(0.001)


def test_conn_rejects_bad_step():
    with pytest.raises(ValueError):
        conn(PRED_2X3, GT_2X3, step=0.0)


def test_thresholds_hit_decimal_values_exactly():
    # 0.3 must be 0.3, not 0.30000000000000004, or a pixel of exactly 0.3 misses its level.
    assert metrics._thresholds(0.1).tolist() == [i / 10 for i in range(11)]
    assert metrics._thresholds(0.1)[3] == 0.3


# --- iou ------------------------------------------------------------------------------------


def test_iou_hand_worked():
    pred = np.array([[0.6, 0.4, 0.9], [0.1, 0.5, 0.2]])  # >= 0.5: [[1,0,1],[0,1,0]]
    gt = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])  #          [[1,1,0],[0,1,0]]
    # intersection {(0,0), (1,1)} = 2; union {(0,0), (0,1), (0,2), (1,1)} = 4
    assert iou(pred, gt) == pytest.approx(0.5)


def test_iou_empty_masks():
    empty = np.zeros((2, 3))
    assert iou(empty, empty) == 1.0
    assert iou(empty, np.ones((2, 3))) == 0.0


# --- boundary_f -----------------------------------------------------------------------------


def _square(size: int, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((size, size))
    mask[rows, cols] = 1.0
    return mask


def test_boundary_f_hand_worked_5x5():
    gt = _square(5, slice(1, 4), slice(1, 4))  # 3x3 square: boundary = 8-pixel ring
    pred = _square(5, slice(1, 3), slice(1, 3))  # 2x2 square: all 4 pixels are boundary
    # Default tolerance: 0.008 * hypot(5, 5) = 0.057 -> at least 1 pixel.
    # Precision: (1,1), (1,2), (2,1) lie on the ring; (2,2) is 1 px from (1,2) -> P = 4/4.
    # Recall: ring pixels within 1 px of the 2x2: all except (3,3) (sqrt 2 away) -> R = 7/8.
    # F = 2 * 1 * 7/8 / (1 + 7/8) = 14/15
    assert metrics.default_tolerance((5, 5)) == 1
    assert boundary_f(pred, gt) == pytest.approx(14 / 15)
    # Tolerance 0: only exact overlaps count -> P = 3/4, R = 3/8, F = (9/16) / (9/8) = 1/2.
    assert boundary_f(pred, gt, tolerance=0) == pytest.approx(0.5)


def test_boundary_f_ignores_the_image_frame():
    # Foreground touching the left edge: only its inner edge is a boundary, the frame is not.
    gt = np.zeros((4, 4))
    gt[:, :2] = 1.0  # boundary = column 1
    pred = np.zeros((4, 4))
    pred[:, :3] = 1.0  # boundary = column 2, one pixel from gt's
    assert boundary_f(pred, gt, tolerance=0) == 0.0
    assert boundary_f(pred, gt, tolerance=1) == pytest.approx(1.0)
    # A matte covering the whole frame has no boundary at all, on either side.
    assert boundary_f(np.ones((4, 4)), np.ones((4, 4))) == 1.0


def test_boundary_f_empty_masks():
    empty = np.zeros((5, 5))
    square = _square(5, slice(1, 4), slice(1, 4))
    assert boundary_f(empty, empty) == 1.0
    assert boundary_f(empty, square) == 0.0
    assert boundary_f(square, empty) == 0.0


def test_default_tolerance_scales_with_diagonal():
    # 0.008 * hypot(480, 640) = 0.008 * 800 = 6.4 -> 6
    assert metrics.default_tolerance((480, 640)) == 6


# --- evaluate / summarize -------------------------------------------------------------------


def test_evaluate_returns_every_metric_in_order():
    result = evaluate(PRED_2X3, GT_2X3)
    assert tuple(result) == METRIC_NAMES
    assert all(isinstance(v, float) for v in result.values())
    assert result["sad"] == pytest.approx(0.00225)
    assert result["mad"] == pytest.approx(0.375)


def test_evaluate_uint8_matches_float():
    pred_u8 = np.array([[0, 51, 255, 255], [102, 204, 255, 0], [0, 153, 255, 255]], np.uint8)
    gt_u8 = np.array([[0, 255, 255, 255], [0, 255, 255, 0], [0, 0, 255, 255]], np.uint8)
    as_uint8 = evaluate(pred_u8, gt_u8)
    as_float = evaluate(pred_u8 / 255.0, gt_u8 / 255.0)
    assert as_uint8 == pytest.approx(as_float)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        evaluate(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError):
        sad(np.zeros((2, 3)), np.zeros((3, 2)))


def test_summarize_averages_each_metric():
    row_a = dict.fromkeys(METRIC_NAMES, 1.0)
    row_b = dict.fromkeys(METRIC_NAMES, 0.0)
    row_b["sad"] = 3.0
    summary = summarize([row_a, row_b])
    assert tuple(summary) == METRIC_NAMES
    assert summary["sad"] == pytest.approx(2.0)
    assert summary["iou"] == pytest.approx(0.5)


def test_summarize_rejects_empty_and_incomplete_rows():
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(KeyError, match="boundary_f"):
        summarize([dict.fromkeys(METRIC_NAMES[:-1], 1.0)])


def test_region_restricts_sad_mse_and_grad_hand_worked():
    gt = np.zeros((6, 6))
    pred = gt.copy()
    pred[0, 0] = 1.0  # outside the region
    pred[3, 3] = 0.5  # inside
    region = np.zeros((6, 6), bool)
    region[2:5, 2:5] = True
    assert metrics.sad(pred, gt, region=region) == pytest.approx(0.5 / 1000)
    assert metrics.mse(pred, gt, region=region) == pytest.approx(0.25 / 9)
    assert metrics.sad(pred, gt) == pytest.approx(1.5 / 1000)  # whole image as before
    # Grad: the gradients are taken on the whole image, then summed over the region only.
    full = (metrics._grad_magnitude(pred) - metrics._grad_magnitude(gt)) ** 2
    assert metrics.grad(pred, gt, region=region) == pytest.approx(full[region].sum() / 1000)
    assert metrics.grad(pred, gt, region=region) < metrics.grad(pred, gt)
    assert metrics.mse(pred, gt, region=np.zeros((6, 6), bool)) == 0.0
    with pytest.raises(ValueError, match="boolean mask of shape"):
        metrics.sad(pred, gt, region=region.astype(np.uint8))
