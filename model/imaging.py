"""Image I/O at the edges of the pipelines: bytes in -> RGB/mask arrays -> cutouts -> bytes out.

Decoding turns anything we accept into ``HxWx3 uint8`` RGB (or an ``HxW uint8`` mask) with the
EXIF orientation applied, and anything we reject into one typed :class:`ImageError`:

* Size is checked from the header before any pixel is decoded (``max_pixels``); Pillow's own
  decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, left untouched) applies as well.
* Animated GIF/WebP/APNG and multi-page files are rejected. MPO, the JPEG flavour phones write
  with extra frames such as depth or gain maps, is not: its primary image is used.
* Alpha is dropped, not composited: a transparent pixel keeps the colour stored under it.
* 16-bit samples become 8 bit by ``round(v / 257)`` (65535 -> 255), never by clipping. Pillow
  would keep only the high byte of 16-bit colour PNGs, so OpenCV decodes those.
* 32-bit float ('F') images are taken as [0, 1] when their maximum is <= 1, else [0, 255].
* Masks are channel 0 of what an image decode would give: L as is, R of RGB/RGBA, L of LA,
  0/255 for 1-bit, and the red component of the palette colour for palette images (so a grey
  palette maps to its grey levels, whatever the index order).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS: int = 50_000_000
# Every PNG written: each row filtered by "Up" (its difference from the row above), then zlib
# level 2 (encode_png). Pillow (and rembg) choose a filter per row by trying all five, then
# deflate at level 6. On 96 ~500 px portrait cut-outs (2-core AMD EPYC, 2026-12-04): Pillow
# at level 3, what we wrote before, 2.38 s of CPU, 28.0 MB; Up + level 2 1.05 s, 28.9 MB
# (+3 %). Per-row choice among None/Sub/Up/Average cost more and compressed no better here.
PNG_COMPRESS_LEVEL = 2
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> grey, RGB, RGBA
_PNG_FILTER_UP = 2
_PNG_BLOCK_BYTES = 1 << 20  # rows filtered and deflated ~1 MB at a time: bounded memory

# Pillow's plugins report malformed input through many exception types; all mean "corrupt".
_CORRUPT_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
    struct.error, zlib.error, ZeroDivisionError,
)  # fmt: skip
_SIGNATURES = (
    (_PNG_SIGNATURE, "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
_PNG_COLOUR_TYPES_WITH_RGB_OR_ALPHA = (2, 4, 6)


class ImageError(ValueError):
    """One typed error for any input we cannot turn into an RGB image (or mask)."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self):
        # Beam pickles exceptions between workers; the default would call __init__(message).
        return type(self), (self.source, self.reason)


def decode_image(
    data: bytes, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """HxWx3 uint8 RGB, EXIF orientation applied."""
    return _rgb(_to_array(_open_upright(data, source, max_pixels), source))


def image_to_rgb(im: Image.Image, source: str = "<image>") -> np.ndarray:
    """HxWx3 uint8 RGB of an image already in memory (the Python API's input), by the rules
    above: EXIF orientation applied, alpha dropped, 16-bit and float samples scaled."""
    try:
        upright = ImageOps.exif_transpose(im)
    except _CORRUPT_ERRORS as exc:
        raise ImageError(source, f"truncated or corrupt image data ({exc})") from exc
    return _rgb(_to_array(upright, source))


def _rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read bytes from a local path (OSError -> ImageError with the path) and decode_image."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ImageError(str(source), f"cannot read file ({exc.strerror or exc})") from exc
    return decode_image(data, str(source), max_pixels)


def decode_mask(
    data: bytes, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """HxW uint8 alpha/mask, EXIF orientation applied; channel rules in the module docstring."""
    pixels = _to_array(_open_upright(data, source, max_pixels), source)
    return np.ascontiguousarray(pixels[..., 0]) if pixels.ndim == 3 else pixels


def alpha_to_uint8(alpha: np.ndarray) -> np.ndarray:
    """Float alpha in [0, 1] -> uint8, rounded and clipped (NaN -> 0)."""
    scaled = np.rint(np.nan_to_num(np.asarray(alpha, dtype=np.float32), nan=0.0) * 255.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def cutout_rgba(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 + HxW float alpha in [0, 1] -> HxWx4 uint8; RGB unchanged, A = alpha."""
    _check_image_and_alpha(image, alpha)
    return np.concatenate([image, alpha_to_uint8(alpha)[..., None]], axis=2)


def composite(image: np.ndarray, alpha: np.ndarray, bgcolor: tuple[int, int, int]) -> np.ndarray:
    """HxWx3 uint8 ``image * a + bgcolor * (1 - a)``, rounded half to even."""
    _check_image_and_alpha(image, alpha)
    if len(bgcolor) != 3 or not all(0 <= int(c) <= 255 for c in bgcolor):
        raise ValueError(f"bgcolor must be three integers in 0..255, got {bgcolor!r}")
    # float32 rather than float64: a 12-MP photo would otherwise need ~300 MB of temporaries.
    a = np.clip(np.nan_to_num(np.asarray(alpha, dtype=np.float32), nan=0.0), 0.0, 1.0)[..., None]
    background = np.asarray(bgcolor, dtype=np.float32)
    blended = image.astype(np.float32) * a + background * (1.0 - a)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def parse_color(text: str) -> tuple[int, int, int]:
    """Accept "#RRGGBB", "#RGB", "R,G,B" (0-255) or a colour name such as "white"."""
    spec = text.strip()
    expected = "expected '#RRGGBB', '#RGB', 'R,G,B' with values 0-255, or a name like 'white'"
    if "," in spec:
        parts = [part.strip() for part in spec.split(",")]
        if len(parts) != 3 or not all(part.isdecimal() for part in parts):
            raise ValueError(f"invalid colour {text!r}: {expected}")
        red, green, blue = (int(part) for part in parts)
        if not all(0 <= c <= 255 for c in (red, green, blue)):
            raise ValueError(f"invalid colour {text!r}: values must be in 0-255")
        return red, green, blue
    try:
        rgb = ImageColor.getrgb(spec)
    except ValueError as exc:
        raise ValueError(f"invalid colour {text!r}: {expected}") from exc
    if len(rgb) != 3:
        # "#RRGGBBAA" parses to RGBA; a background with alpha would need a different output.
        raise ValueError(f"invalid colour {text!r}: alpha is not supported; {expected}")
    return rgb[0], rgb[1], rgb[2]


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of HxW (L), HxWx3 (RGB) or HxWx4 (RGBA) uint8; same input -> same bytes."""
    if array.dtype != np.uint8 or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    ):
        raise ValueError(f"encode_png needs HxW, HxWx3 or HxWx4 uint8, got {_describe(array)}")
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    rows = np.ascontiguousarray(array).reshape(height, width * channels)
    # Only what a PNG needs (no time or text chunks): the bytes depend on the pixels alone.
    # zlib releases the GIL, so writer threads encode side by side.
    deflate = zlib.compressobj(PNG_COMPRESS_LEVEL)
    block_rows = max(1, _PNG_BLOCK_BYTES // (rows.shape[1] + 1))
    compressed = []
    for start in range(0, height, block_rows):
        block = rows[start:start + block_rows]
        filtered = np.empty((len(block), rows.shape[1] + 1), np.uint8)
        filtered[:, 0] = _PNG_FILTER_UP
        np.subtract(block[1:], block[:-1], out=filtered[1:, 1:])  # uint8: modulo 256
        first = filtered[0, 1:]
        if start:
            np.subtract(block[0], rows[start - 1], out=first)
        else:
            first[:] = block[0]  # the row above the first is zeros
        compressed.append(deflate.compress(filtered))
    compressed.append(deflate.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPE[channels], 0, 0, 0)
    return b"".join((_PNG_SIGNATURE, _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", b"".join(compressed)), _png_chunk(b"IEND", b"")))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))


def encode_jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an HxWx3 uint8 RGB array."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"encode_jpeg needs HxWx3 uint8, got {_describe(array)}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _open_upright(data: bytes, source: str, max_pixels: int) -> Image.Image:
    """Fully decoded, EXIF-rotated PIL image; every failure becomes an ImageError."""
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if not data:
        raise ImageError(source, "empty file")
    # Scoped instead of raising Image.MAX_IMAGE_PIXELS: callers in the same process keep theirs.
    # catch_warnings is process-wide: a thread race may leave this filter on (stricter only).
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                _check_header(im, source, max_pixels)
                # Forced here so truncation surfaces now, not later in some convert() call.
                im.load()
                if _is_deep_colour_png(data, im):
                    return _decode_deep_png(data, im, source)
                return ImageOps.exif_transpose(im)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(source, f"too large ({exc})") from exc
        except UnidentifiedImageError as exc:
            raise ImageError(source, _unidentified_reason(data)) from exc
        except _CORRUPT_ERRORS as exc:
            raise ImageError(source, f"truncated or corrupt image data ({exc})") from exc


def _check_header(im: Image.Image, source: str, max_pixels: int) -> None:
    width, height = im.size
    if width * height > max_pixels:
        raise ImageError(
            source,
            f"too large: {width}x{height} = {width * height} pixels "
            f"exceeds the limit of {max_pixels}",
        )
    if im.format != "MPO" and getattr(im, "is_animated", False):
        raise ImageError(source, f"animated image with {im.n_frames} frames is not supported")


def _is_deep_colour_png(data: bytes, im: Image.Image) -> bool:
    # IHDR is always the first chunk: bit depth at byte 24, colour type at byte 25.
    return (
        im.format == "PNG"
        and data[12:16] == b"IHDR"
        and data[24] == 16
        and data[25] in _PNG_COLOUR_TYPES_WITH_RGB_OR_ALPHA
    )


def _decode_deep_png(data: bytes, im: Image.Image, source: str) -> Image.Image:
    import cv2  # ~0.1 s of import, for 16-bit colour PNGs only

    samples = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if samples is None or samples.dtype != np.uint16 or samples.ndim != 3:
        raise ImageError(source, "truncated or corrupt image data (OpenCV rejected the PNG)")
    rgb = _scale16(samples[..., 2::-1])  # BGR(A) -> RGB; alpha dropped as everywhere else
    upright = Image.fromarray(np.ascontiguousarray(rgb))
    # exif_transpose reads the orientation from info (EXIF or XMP), as it does for PIL's decode.
    upright.info = dict(im.info)
    return ImageOps.exif_transpose(upright)


def _to_array(im: Image.Image, source: str) -> np.ndarray:
    """uint8 HxW for single-channel modes, HxWx3 RGB otherwise (always a writable copy)."""
    mode = im.mode
    if mode == "L":
        return np.array(im)
    if mode == "1":
        return np.array(im.convert("L"))
    if mode == "LA":
        return np.array(im.getchannel(0))
    if mode == "I" or mode.startswith("I;16"):
        return _scale16(np.asarray(im))
    if mode == "F":
        return _float_to_uint8(np.asarray(im))
    if mode in ("P", "PA"):
        # Via RGBA so transparency in the palette is honoured (and Pillow does not warn).
        im = im.convert("RGBA")
    try:
        return np.array(im.convert("RGB"))
    except ValueError as exc:
        raise ImageError(source, f"unsupported pixel mode {mode!r}") from exc


def _scale16(samples: np.ndarray) -> np.ndarray:
    # Integer round(v * 255 / 65535); 'I' images may hold values outside 16 bits, hence the clip.
    wide = np.clip(samples.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _float_to_uint8(samples: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(samples.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.max() <= 1.0:
        values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _unidentified_reason(data: bytes) -> str:
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return f"truncated or corrupt image data (looks like {name}, but cannot be parsed)"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "truncated or corrupt image data (looks like WebP, but cannot be parsed)"
    # Reasons name the problem, never the file's bytes: they go to logs and dashboards.
    if data[4:8] == b"ftyp":
        brand = data[8:12].decode("ascii", "replace")
        known = brand if brand.isascii() and brand.isalnum() else "unknown"
        return f"not an image (unsupported container format, brand {known}, e.g. HEIC)"
    return "not an image (unrecognised format)"


def _check_image_and_alpha(image: np.ndarray, alpha: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 uint8, got {_describe(image)}")
    if np.shape(alpha) != image.shape[:2]:
        raise ValueError(f"alpha must be {image.shape[:2]}, got shape {np.shape(alpha)}")


def _describe(array: np.ndarray) -> str:
    return f"shape {array.shape} dtype {array.dtype}"
