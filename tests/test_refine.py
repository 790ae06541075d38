"""Soft edges: foreground estimation, rembg's trimap and closed-form alpha matting, and how
``render`` writes them (zeros under alpha 0, translucent backgrounds). Synthetic images with a
known foreground, background and alpha, so every expected value is known independently."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model import metrics
from model.imaging import alpha_to_uint8
from model.outputs import OutputOptions, render, render_array
from model.refine import AlphaMatting, estimate_foreground, matte_alpha, soft_band, trimap

SIZE = 48


def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(foreground, background, alpha): a warm subject on a cool background, meeting in a
    12-px ramp; both colour fields vary smoothly, as estimation assumes."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    foreground = np.stack([200 + 40 * y, 120 + 30 * x, 40 + 20 * y], -1)
    background = np.stack([30 + 20 * x, 90 + 40 * y, 220 - 30 * x], -1)
    alpha = np.clip((SIZE * x - 18) / 12, 0, 1)
    return foreground, background, alpha


def composite_of(foreground, background, alpha) -> np.ndarray:
    a = alpha[..., None]
    return np.rint(foreground * a + background * (1 - a)).astype(np.uint8)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_foreground_estimation_removes_most_of_the_old_background():
    foreground, background, alpha = scene()
    photo = composite_of(foreground, background, alpha)
    estimated = estimate_foreground(photo, alpha)
    band = soft_band(alpha)
    assert band.sum() > SIZE * 8  # the ramp is wide enough to mean something
    kept = np.abs(photo[band] - foreground[band]).mean()
    recovered = np.abs(estimated[band] - foreground[band]).mean()
    assert recovered < 0.25 * kept
    # Outside the band nothing changes, byte for byte.
    np.testing.assert_array_equal(estimated[~band], photo[~band])


def test_foreground_estimation_without_a_band_returns_the_photo():
    photo = np.full((8, 8, 3), 77, np.uint8)
    alpha = np.zeros((8, 8), np.float32)
    alpha[2:6, 2:6] = 1.0
    assert estimate_foreground(photo, alpha) is photo


def test_trimap_follows_rembgs_rule():
    alpha8 = np.zeros((9, 12), np.uint8)
    alpha8[:, 6:] = 255
    alpha8[:, 5:7] = 128
    tri = trimap(alpha8 / 255.0, AlphaMatting(240, 10, 3))
    # Sure foreground: > 240 (columns 7..11), eroded by 3x3 with the frame as background.
    expected_fg = np.zeros_like(alpha8, bool)
    expected_fg[1:-1, 8:-1] = True
    # Sure background: < 10 (columns 0..4), eroded by 3x3 with the frame counting as background.
    expected_bg = np.zeros_like(alpha8, bool)
    expected_bg[:, :4] = True
    np.testing.assert_array_equal(tri == 255, expected_fg)
    np.testing.assert_array_equal(tri == 0, expected_bg)
    assert set(np.unique(tri[~(expected_fg | expected_bg)])) == {128}


def test_alpha_matting_sharpens_a_blurred_alpha():
    foreground, background, _ = scene()
    truth = np.zeros((SIZE, SIZE), np.float32)
    truth[:, SIZE // 2:] = 1.0
    photo = composite_of(foreground, background, truth)
    x = np.arange(SIZE, dtype=np.float32)
    blurred = np.broadcast_to(np.clip((x - SIZE // 2 + 8) / 16, 0, 1), (SIZE, SIZE))
    refined = matte_alpha(photo, blurred, AlphaMatting(erode_size=2))
    assert refined.shape == truth.shape and refined.dtype == np.float32
    assert metrics.sad(refined, truth) < 0.25 * metrics.sad(blurred.copy(), truth)


def test_alpha_matting_keeps_the_alpha_without_sure_regions():
    photo = np.full((16, 16, 3), 90, np.uint8)
    alpha = np.full((16, 16), 0.5, np.float32)  # neither sure foreground nor background
    assert matte_alpha(photo, alpha, AlphaMatting()) is alpha


@pytest.mark.parametrize("settings, message", [
    (dict(foreground_threshold=256), "foreground threshold must be in 0..255"),
    (dict(background_threshold=240), "below the foreground threshold"),
    (dict(erode_size=-1), "erode size must be >= 0"),
])
def test_alpha_matting_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        AlphaMatting(**settings)


def test_cutout_is_zero_under_alpha_zero_and_the_photo_elsewhere():
    foreground, background, alpha = scene()
    photo = composite_of(foreground, background, alpha)
    rgba = decode(render(photo, alpha, OutputOptions()))
    transparent = rgba[..., 3] == 0
    assert transparent.any() and (~transparent).any()
    assert not rgba[transparent, :3].any()
    np.testing.assert_array_equal(rgba[~transparent, :3], photo[~transparent])
    np.testing.assert_array_equal(rgba[..., 3], alpha_to_uint8(alpha))


def test_estimate_foreground_option_changes_only_the_band():
    foreground, background, alpha = scene()
    photo = composite_of(foreground, background, alpha)
    plain = decode(render(photo, alpha, OutputOptions()))
    fringe_free = decode(render(photo, alpha, OutputOptions(estimate_foreground=True)))
    band = soft_band(alpha)
    np.testing.assert_array_equal(fringe_free[~band], plain[~band])
    assert (fringe_free[band, :3] != plain[band, :3]).any()
    # A mask is the alpha alone: foreground estimation does not touch it.
    assert render(photo, alpha, OutputOptions(only_mask=True, estimate_foreground=True)) == \
        render(photo, alpha, OutputOptions(only_mask=True))


def test_an_opaque_rgba_background_is_the_rgb_background():
    assert OutputOptions(bgcolor=(0, 255, 0, 255)) == OutputOptions(bgcolor=(0, 255, 0))
    with pytest.raises(ValueError, match="opaque background"):
        OutputOptions(bgcolor=(0, 255, 0, 128), jpeg=True)
    with pytest.raises(ValueError, match="3 or 4 integers"):
        OutputOptions(bgcolor=(0, 255, 0, 128, 1))


def test_translucent_background_is_porter_duff_over():
    foreground, background, alpha = scene()
    photo = composite_of(foreground, background, alpha)
    out = render_array(photo, alpha, OutputOptions(bgcolor=(0, 0, 255, 102)))
    assert out.shape == (SIZE, SIZE, 4)
    a = alpha_to_uint8(alpha) / 255.0
    np.testing.assert_allclose(out[..., 3], np.rint(255 * (a + 0.4 * (1 - a))), atol=1)
    opaque, clear = a == 1, a == 0
    np.testing.assert_array_equal(out[opaque, :3], photo[opaque])
    assert (out[clear] == (0, 0, 255, 102)).all()
    # A fully transparent colour leaves the cut-out itself.
    np.testing.assert_array_equal(render_array(photo, alpha, OutputOptions(bgcolor=(9, 9, 9, 0))),
                                  render_array(photo, alpha, OutputOptions()))
