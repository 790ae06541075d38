"""Tests for model.imaging: every input is generated here, small, in memory or in tmp_path."""

from __future__ import annotations

import io
import pickle
import struct
import warnings
import zipfile
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from model import imaging
from model.imaging import ImageError, decode_image, decode_mask, read_image

assert_equal = np.testing.assert_array_equal


def _encode(image: Image.Image | np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def _png_claiming(width: int, height: int) -> bytes:
    """A 1-bit grey PNG whose header claims width x height but whose data is one tiny row."""
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    idat = _png_chunk(b"IDAT", zlib.compress(b"\x00\x00"))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + _png_chunk(b"IEND", b"")


def _with_exif_chunk(png: bytes, orientation: int) -> bytes:
    # OpenCV cannot write EXIF, so splice an eXIf chunk in right after IHDR (8 + 25 bytes).
    payload = _exif(orientation).tobytes().removeprefix(b"Exif\x00\x00")
    return png[:33] + _png_chunk(b"eXIf", payload) + png[33:]


def _raises(data: bytes, fragment: str, decoder=decode_image, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        decoder(data, source="in.bin", **kwargs)
    assert fragment in info.value.reason and info.value.source == "in.bin"
    return info.value


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_rgb_round_trip(fmt: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    decoded = decode_image(_encode(pixels, fmt))
    assert decoded.shape == (20, 30, 3) and decoded.dtype == np.uint8 and decoded.flags.writeable
    if fmt == "PNG":
        assert_equal(decoded, pixels)


def test_grey_la_and_one_bit_become_grey_rgb() -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    for im in (Image.fromarray(grey), Image.fromarray(grey).convert("LA")):
        assert_equal(decode_image(_encode(im)), np.repeat(grey[..., None], 3, axis=2))
    bits = decode_image(_encode(Image.fromarray(grey > 100).convert("1")))
    assert_equal(bits[..., 1], np.where(grey > 100, 255, 0))


def test_palette_with_and_without_transparency() -> None:
    im = Image.new("P", (4, 2))
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    im.putpixel((1, 0), 1)
    translucent = _encode(im, "PNG", transparency=b"\x00\x80")  # per-index alpha (tRNS)
    for data in (_encode(im), _encode(im, "PNG", transparency=1), translucent, _encode(im, "GIF")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow warns on P+transparency -> RGB directly
            decoded = decode_image(data)
        assert decoded[0, 0].tolist() == [10, 20, 30] and decoded[0, 1].tolist() == [200, 100, 50]


def test_rgba_drops_alpha_and_keeps_stored_colours() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (40, 80, 120)
    rgba[0, 0, 3] = 255  # the other pixels are fully transparent
    decoded = decode_image(_encode(rgba))
    assert decoded.shape == (2, 2, 3) and (decoded == (40, 80, 120)).all()


@pytest.mark.parametrize(
    ("mode", "fmt", "colour", "rgb"),
    [
        ("CMYK", "JPEG", (0, 255, 255, 0), (255, 0, 0)),
        ("CMYK", "TIFF", (0, 255, 255, 0), (255, 0, 0)),
        ("LAB", "TIFF", (255, 128, 128), (255, 255, 255)),
        ("YCbCr", "JPEG", (76, 85, 255), (254, 0, 0)),
    ],
)
def test_other_colour_spaces_become_rgb(mode: str, fmt: str, colour, rgb) -> None:
    decoded = decode_image(_encode(Image.new(mode, (16, 16), colour), fmt))
    assert decoded.shape == (16, 16, 3)
    assert np.abs(decoded[8, 8].astype(int) - rgb).max() <= 3


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    values = np.array([[65535, 32896, 0, 771, 1000]], np.uint16)
    assert_equal(decode_image(_encode(values))[0, :, 0], [255, 128, 0, 3, 4])
    big_endian = Image.fromarray(values).convert("I").convert("I;16B")
    assert decode_image(_encode(big_endian, "TIFF"))[0, 1, 0] == 128


def test_thirty_two_bit_int_and_float_rules() -> None:
    ints = np.array([[70000, 65535, 32896, -5]], np.int32)
    assert_equal(decode_mask(_encode(ints, "TIFF")), [[255, 255, 128, 0]])
    unit = np.array([[0.0, 0.5, 1.0]], np.float32)  # max <= 1: taken as [0, 1]
    assert_equal(decode_mask(_encode(unit, "TIFF")), [[0, 128, 255]])
    wide = np.array([[0.0, 100.4, 300.0]], np.float32)  # otherwise [0, 255], clipped
    assert_equal(decode_mask(_encode(wide, "TIFF")), [[0, 100, 255]])


@pytest.mark.parametrize("channels", [3, 4])
def test_sixteen_bit_colour_png_is_scaled(tmp_path, channels: int) -> None:
    rgba = np.array([[[65535, 32896, 1000, 9], [0, 257, 300, 9]]], np.uint16)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), rgba[..., [2, 1, 0, 3][:channels]])
    # Pillow alone would give 1000 -> 3 (its high byte); round(1000 / 257) is 4.
    assert_equal(read_image(path), [[[255, 128, 4], [0, 1, 1]]])
    assert_equal(decode_mask(path.read_bytes()), [[255, 0]])


# Orientation 6: stored landscape, shown turned clockwise (portrait); 3: half a turn.
@pytest.mark.parametrize(("orientation", "shape", "corner"), [(6, 48, (3, -4)), (3, 32, (-4, -4))])
def test_exif_orientation_moves_the_top_left_corner(orientation, shape, corner) -> None:
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:8, :8] = (255, 0, 0)  # a red block marks the stored top-left corner
    decoded = decode_image(_encode(pixels, "JPEG", exif=_exif(orientation), quality=95))
    assert decoded.shape == (shape, 80 - shape, 3)
    assert decoded[corner][0] > 200 and decoded[3, 3, 0] < 50


@pytest.mark.parametrize("orientation", range(1, 9))
def test_sixteen_bit_png_orients_like_eight_bit(orientation: int) -> None:
    pixels = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = decode_image(_encode(pixels, "PNG", exif=_exif(orientation)))
    assert expected.shape[:2] == ((7, 5) if orientation >= 5 else (5, 7))
    ok, deep = cv2.imencode(".png", pixels[..., ::-1].astype(np.uint16) * 257)
    assert ok
    assert_equal(decode_image(_with_exif_chunk(deep.tobytes(), orientation)), expected)


def test_empty_and_non_image_bytes() -> None:
    error = _raises(b"", "empty file")
    assert str(error) == "in.bin: empty file" and isinstance(error, ValueError)
    clone = pickle.loads(pickle.dumps(error))  # Beam ships exceptions between processes
    assert (clone.source, clone.reason, str(clone)) == ("in.bin", "empty file", str(error))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "hello")
    for data in (b"hello, world\n", archive.getvalue(), bytes(range(256)) * 4):
        _raises(data, "not an image")
    _raises(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64, "not an image")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(fmt: str) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encode(pixels, fmt)
    _raises(data[: len(data) // 2], "truncated or corrupt image data")
    _raises(data[:30], "truncated or corrupt image data")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_size_limit_is_checked_from_the_header() -> None:
    error = _raises(_png_claiming(8000, 8000), "too large: 8000x8000 = 64000000 pixels")
    assert f"limit of {imaging.DEFAULT_MAX_PIXELS}" in error.reason
    real = _encode(Image.new("1", (8000, 8000)))  # an honest 1-bit PNG, a few KB
    assert len(real) < 20_000
    _raises(real, "too large: 8000x8000")
    small = _encode(Image.new("RGB", (10, 10)))
    assert decode_image(small, max_pixels=100).shape == (10, 10, 3)
    _raises(small, "10x10 = 100 pixels exceeds the limit of 99", max_pixels=99)
    _raises(small, "exceeds the limit of 99", decoder=decode_mask, max_pixels=99)


@pytest.mark.parametrize("side", [10_000, 20_000])
def test_pillow_bomb_limit_becomes_image_error(side: int) -> None:
    before = (Image.MAX_IMAGE_PIXELS, list(warnings.filters))
    _raises(_png_claiming(side, side), "too large", max_pixels=10**9)
    assert (Image.MAX_IMAGE_PIXELS, list(warnings.filters)) == before


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_image_is_rejected(fmt: str) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "green", "blue")]
    data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:])
    _raises(data, "animated image with 3 frames is not supported")


def test_single_frame_gif_and_mpo_are_accepted() -> None:
    assert decode_image(_encode(Image.new("RGB", (8, 8), "red"), "GIF")).shape == (8, 8, 3)
    primary, depth = Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black")
    decoded = decode_image(_encode(primary, "MPO", save_all=True, append_images=[depth]))
    assert decoded.min() > 240


def test_decode_mask_rules() -> None:
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([levels, 255 - levels, np.zeros_like(levels)], axis=2)
    for image in (levels, rgb, np.dstack([rgb, 255 - levels])):
        assert_equal(decode_mask(_encode(image)), levels)
    deep = np.array([[65535, 32896, 0]], np.uint16)
    assert_equal(decode_mask(_encode(deep)), [[255, 128, 0]])
    bits = decode_mask(_encode(Image.fromarray(levels > 127).convert("1")))
    assert set(np.unique(bits)) == {0, 255}
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 is white
    palette.putpixel((1, 0), 1)
    assert_equal(decode_mask(_encode(palette)), [[255, 0]])
    mask = np.zeros((4, 6), np.uint8)
    mask[0, 0] = 255
    decoded = decode_mask(_encode(mask, "PNG", exif=_exif(6)))
    assert decoded.shape == (6, 4) and decoded[0, -1] == 255
    _raises(b"not a mask", "not an image", decoder=decode_mask)


def test_alpha_cutout_and_composite_arithmetic() -> None:
    rough = np.array([0.0, 0.002, 0.5, 1.0, -0.2, 1.7, np.nan], np.float32)
    assert_equal(imaging.alpha_to_uint8(rough), [0, 1, 128, 255, 0, 255, 0])
    image = np.array([[[200, 100, 10], [255, 255, 255]]], np.uint8)
    alpha = np.array([[0.5, 0.25]], np.float32)
    cut = imaging.cutout_rgba(image, alpha)
    assert_equal(cut, [[[200, 100, 10, 128], [255, 255, 255, 64]]])
    # 200*.5 + 0*.5 = 100; 100*.5 + 40*.5 = 70; 10*.5 + 20*.5 = 15
    # 255*.25 + 0*.75 = 63.75 -> 64; 255*.25 + 40*.75 = 93.75 -> 94; 255*.25 + 20*.75 = 78.75
    blended = imaging.composite(image, alpha, (0, 40, 20))
    assert_equal(blended, [[[100, 70, 15], [64, 94, 79]]])
    assert blended.dtype == np.uint8
    assert_equal(imaging.composite(image, np.ones((1, 2)), (9, 9, 9)), image)
    with pytest.raises(ValueError, match="alpha must be"):
        imaging.composite(image, np.ones((2, 2)), (0, 0, 0))
    with pytest.raises(ValueError, match="bgcolor"):
        imaging.composite(image, alpha, (0, 0, 256))


COLOURS = {"#ff8000": (255, 128, 0), "#F80": (255, 136, 0), "0,128,255": (0, 128, 255)}
COLOURS |= {" 10, 20 ,30 ": (10, 20, 30), "white": (255, 255, 255), "Black": (0, 0, 0)}


@pytest.mark.parametrize(("text", "expected"), COLOURS.items())
def test_parse_color(text: str, expected: tuple[int, int, int]) -> None:
    assert imaging.parse_color(text) == expected


@pytest.mark.parametrize("text", ["", "nocolour", "#12345", "1,2", "1,2,300", "-1,0,0", "#f008"])
def test_parse_color_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid colour"):
        imaging.parse_color(text)


@pytest.mark.parametrize("shape", [(5, 6), (5, 6, 3), (5, 6, 4), (1, 1), (1, 7, 4), (9, 1, 3),
                                   (700, 500, 4)])  # the last spans two of the deflated blocks
def test_encode_png_is_deterministic_and_lossless(shape: tuple[int, ...]) -> None:
    """Our own PNG writer (Up filter, zlib): Pillow and OpenCV (libpng) decode it exactly,
    Pillow's verify checks every chunk's CRC."""
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    pixels[: shape[0] // 2] //= 16  # smoother rows too, which the filter turns into runs
    data = imaging.encode_png(pixels)
    assert data == imaging.encode_png(pixels.copy())
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == {1: "L", 3: "RGB", 4: "RGBA"}[1 if pixels.ndim == 2 else shape[2]]
        assert_equal(np.asarray(im), pixels)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels.ndim == 3:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA if shape[2] == 4
                               else cv2.COLOR_BGR2RGB)
    assert_equal(decoded.reshape(shape), pixels)


def test_encode_png_takes_a_view_of_another_array() -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    view = pixels[::2, 5:25, :]
    with Image.open(io.BytesIO(imaging.encode_png(view))) as im:
        assert_equal(np.asarray(im), view)


def test_encode_jpeg_and_encoders_reject_wrong_arrays() -> None:
    pixels = np.full((16, 16, 3), (30, 160, 220), np.uint8)
    decoded = decode_image(imaging.encode_jpeg(pixels, quality=90))
    assert decoded.shape == pixels.shape and np.abs(decoded.astype(int) - pixels).max() <= 3
    for bad in (np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4), np.float32)):
        with pytest.raises(ValueError, match="uint8"):
            imaging.encode_png(bad)
    with pytest.raises(ValueError, match="HxWx3"):
        imaging.encode_jpeg(np.zeros((4, 4, 4), np.uint8))


def test_read_image_paths(tmp_path) -> None:
    path = tmp_path / "é photo 1.jpg"
    path.write_bytes(_encode(Image.new("RGB", (12, 9), "blue"), "JPEG"))
    assert read_image(path).shape == read_image(str(path)).shape == (9, 12, 3)
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageError) as info:
        read_image(missing)
    assert info.value.source == str(missing) and str(missing) in str(info.value)
    assert "cannot read file" in info.value.reason
    with pytest.raises(ImageError, match="cannot read file"):
        read_image(tmp_path)
