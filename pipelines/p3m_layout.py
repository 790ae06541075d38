"""The P3M-10k folder layout: listing it, pairing files by stem, and the rules for a valid pair.

Relative to the dataset root (the folder that holds ``train/`` and ``validation/``)::

    train/{blurred_image,mask}/                              -> split "train"
    validation/P3M-500-P/{blurred_image,mask,trimap,facemask}/  -> split "P3M-500-P"
    validation/P3M-500-NP/{original_image,mask,trimap}/      -> split "P3M-500-NP"
    test/{original_image,mask,trimap}/                       -> split "test"

``test/`` is ours, not P3M-10k's: ``matte arrange-p3m`` puts its held-out test stems there,
photos that no training run, validation or promotion ever reads, only a final report
(``matte evaluate --data DST --split test``). P3M-10k itself has none (its two P3M-500 sets
are its test sets; a config validating on one leaves the other for the report).

Files pair by stem within a split. Hidden files (any path part starting with ".") are not data:
they are listed in the manifest's ``ignored``. Every other file ends in exactly one accepted
pair or one :class:`Reject` (``REASONS`` are its codes). A pair is valid when:

* every file can be listed and read (``unreadable``: the store refused the entry, e.g. a
  dangling link, or reading it failed) and decoded by ``model.imaging`` (``corrupt``);
* the image is an 8-bit RGB or greyscale JPEG or PNG (``wrong_mode``): exactly what the tf.data
  reader decodes to the same pixels as ``decode_image``, so its bytes are stored as given;
* mask, trimap and facemask are 8-bit (``wrong_mode``; channel 0 of a 3-channel file is used);
* they have the image's upright size (``size_mismatch``), with one documented exception: a mask
  that is the image scaled by one factor s (0.25 <= s <= 4, each side rounded, +-1 px) is
  resized to the image size, bilinearly (``model.preprocess.resize``), and counted. Datasets
  such as human-seg ship such smaller masks; bilinear rather than nearest because the result is
  an alpha matte, where soft edges are right and nearest's staircase is not;
* trimaps hold only 0, 128 and 255 (``bad_trimap``).

Labels are stored as 8-bit greyscale PNGs: the given bytes when they already hold exactly the
decoded pixels (the usual P3M mask), else ``encode_png`` of them (RGB, palette, EXIF-turned
or resized masks).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image

import storage
from model.data import encode_example
from model.imaging import ImageError, alpha_to_uint8, decode_image, decode_mask, encode_png
from model.preprocess import resize
from storage import ObjectInfo, Refused

SPLIT_FOLDERS = {
    "train": ("train", {"blurred_image": "image", "mask": "mask"}),
    "P3M-500-P": ("validation/P3M-500-P", {"blurred_image": "image", "mask": "mask",
                                           "trimap": "trimap", "facemask": "facemask"}),
    "P3M-500-NP": ("validation/P3M-500-NP", {"original_image": "image", "mask": "mask",
                                             "trimap": "trimap"}),
    "test": ("test", {"original_image": "image", "mask": "mask", "trimap": "trimap"}),
}
TEST_SPLIT = "test"
SPLITS = tuple(SPLIT_FOLDERS)
REASONS = ("missing_mask", "orphan_file", "unexpected_path", "duplicate_stem", "unreadable",
           "corrupt", "wrong_mode", "size_mismatch", "bad_trimap")
IMAGE_FORMATS = ("JPEG", "MPO", "PNG")  # MPO: a JPEG whose primary image is what decodes
IMAGE_MODES = ("RGB", "L")
LABEL_MODES = ("L", "LA", "RGB", "RGBA", "P", "PA")
TRIMAP_VALUES = (0, 128, 255)
MIN_MASK_SCALE = 0.25
_FOLDER_TO_SPLIT_ROLE = {
    f"{prefix}/{folder}": (split, role)
    for split, (prefix, roles) in SPLIT_FOLDERS.items()
    for folder, role in roles.items()
}


class Entry(NamedTuple):
    """One listed file of a stem; ``refused`` is why the listing could not read it."""

    role: str
    relative: str
    size: int
    refused: str | None = None


@dataclass(frozen=True)
class Pair:
    """An image and its label files (relative paths by role), not yet read."""

    split: str
    key: str
    files: dict[str, str]
    size: int  # bytes of all its files, from the listing: what shard planning needs


@dataclass(frozen=True)
class Reject:
    split: str
    key: str
    reason: str
    detail: str
    files: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown reject reason {self.reason!r}")

    def to_json(self) -> dict:
        return {"split": self.split, "key": self.key, "reason": self.reason,
                "detail": self.detail, "files": list(self.files)}


def list_files(root: str) -> Iterator[ObjectInfo | Refused]:
    """Every entry below ``root`` (a folder or gs://), hidden ones included.

    Hidden files are listed so that the manifest can name them in ``ignored``; entries the
    store cannot read as data (loops, dangling links, EACCES folders, non-UTF-8 names) come as
    :class:`storage.Refused` and end as ``unreadable`` rejects rather than vanishing.
    """
    return storage.open_store(root).scan(hidden=True)


def printable(key: str) -> str:
    """``key`` with undecodable bytes spelled out (``\\xff``): a refused name still travels
    through Beam's coders and into the JSON manifest, which both need valid UTF-8."""
    return os.fsencode(key).decode("utf-8", "backslashreplace")


def classify(relative: str) -> tuple[str, str, str] | None:
    """``(split, role, stem)`` of a file in the layout, or None for a file outside it."""
    folder, _, name = relative.rpartition("/")
    split_role = _FOLDER_TO_SPLIT_ROLE.get(folder)
    stem = os.path.splitext(name)[0]
    if split_role is None or not stem:
        return None
    return split_role[0], split_role[1], stem


def unexpected(relative: str) -> Reject:
    known = ", ".join(sorted(_FOLDER_TO_SPLIT_ROLE))
    return Reject("", relative, "unexpected_path", f"not in a P3M-10k folder ({known})",
                  (relative,))


def pair_files(split: str, key: str, entries: Iterable[Entry]) -> Pair | Reject:
    """One stem's listed files -> a Pair, or the reason it is none."""
    entries = list(entries)
    by_role: dict[str, list[str]] = {}
    for entry in entries:
        by_role.setdefault(entry.role, []).append(entry.relative)
    files = tuple(sorted(entry.relative for entry in entries))
    # First: a file that cannot be read decides the pair whatever else is wrong with it.
    refused = sorted(f"{entry.relative}: {entry.refused}" for entry in entries if entry.refused)
    if refused:
        return Reject(split, key, "unreadable", "; ".join(refused), files)
    duplicated = {role: sorted(paths) for role, paths in by_role.items() if len(paths) > 1}
    if duplicated:
        detail = "; ".join(f"{len(paths)} {role} files: {', '.join(paths)}"
                           for role, paths in sorted(duplicated.items()))
        return Reject(split, key, "duplicate_stem", detail, files)
    if "image" not in by_role:
        labels = ", ".join(sorted(by_role))
        return Reject(split, key, "orphan_file", f"{labels} without an image", files)
    if "mask" not in by_role:
        return Reject(split, key, "missing_mask", "image without a mask", files)
    size = sum(entry.size for entry in entries)
    return Pair(split, key, {role: paths[0] for role, paths in by_role.items()}, size)


def plan_shards(pairs: Iterable[Pair], shard_bytes: int) -> Iterator[tuple[int, Pair]]:
    """Assign pairs, in key order, to consecutive shards of about ``shard_bytes`` each.

    Uses the listed source sizes, known before anything is read, so the plan (and with it every
    shard's content) depends on the input alone; a record is roughly its source files' size.
    """
    index, filled = 0, 0
    for pair in sorted(pairs, key=lambda pair: pair.key):
        if filled and filled + pair.size > shard_bytes:
            index, filled = index + 1, 0
        filled += pair.size
        yield index, pair


@dataclass(frozen=True)
class Record:
    key: str
    example: bytes  # a serialised tf.train.Example (model.data.encode_example)
    mask_resized: bool


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def validate(pair: Pair, read: Callable[[str], bytes]) -> Record | Reject:
    """Read and check one pair (rules in the module docstring) and build its record."""
    files = tuple(sorted(pair.files.values()))
    contents = {}
    for role, relative in sorted(pair.files.items()):
        try:
            contents[role] = read(relative)
        except storage.IO_ERRORS as error:
            return Reject(pair.split, pair.key, "unreadable", f"{relative}: {error}", files)
    try:
        return _record(pair, contents)
    except _Invalid as invalid:
        return Reject(pair.split, pair.key, invalid.reason, invalid.detail, files)


def _record(pair: Pair, contents: dict[str, bytes]) -> Record:
    path = pair.files
    image = _decode(decode_image, contents["image"], path["image"])
    header = _header(contents["image"])
    if header.format not in IMAGE_FORMATS or header.mode not in IMAGE_MODES or not (
            header.eight_bit):
        raise _Invalid("wrong_mode", f"{path['image']}: {header.format} {header.mode}"
                       f"{'' if header.eight_bit else ' (not 8-bit)'}; expected an 8-bit RGB "
                       "or greyscale JPEG or PNG")
    height, width = image.shape[:2]
    labels, resized = {}, False
    for role in ("mask", "trimap", "facemask"):
        if role not in contents:
            continue
        label = _decode(decode_mask, contents[role], path[role])
        stored = _header(contents[role])
        if stored.mode not in LABEL_MODES or not stored.eight_bit:
            raise _Invalid("wrong_mode", f"{path[role]}: mode {stored.mode}"
                           f"{'' if stored.eight_bit else ' (not 8-bit)'}; {role} must be 8-bit")
        # Bytes as given when they already hold exactly these pixels: re-encoding a 1080p
        # PNG costs more than the rest of a pair's checks.
        as_given = stored.pixels is not None and np.array_equal(stored.pixels, label)
        if label.shape != (height, width):
            if role != "mask" or not is_rescaled(label.shape, (height, width)):
                raise _Invalid("size_mismatch", f"{path[role]} is {label.shape[1]}x"
                               f"{label.shape[0]}, the image is {width}x{height}")
            label, resized, as_given = fit_mask(label, (height, width)), True, False
        if role == "trimap":
            extra = sorted(set(np.unique(label).tolist()) - set(TRIMAP_VALUES))
            if extra:
                raise _Invalid("bad_trimap", f"{path[role]} holds {extra[:5]}, not only "
                               "0/128/255")
        labels[role] = contents[role] if as_given else encode_png(label)
    example = encode_example(
        key=pair.key, split=pair.split, image=contents["image"], orientation=header.orientation,
        height=height, width=width, alpha=labels["mask"], trimap=labels.get("trimap"),
        facemask=labels.get("facemask"))
    return Record(pair.key, example, resized)


def _decode(decoder: Callable[[bytes, str], np.ndarray], data: bytes, path: str) -> np.ndarray:
    try:
        return decoder(data, path)
    except ImageError as error:
        raise _Invalid("corrupt", f"{path}: {error.reason}") from error


class _Header(NamedTuple):
    format: str
    mode: str
    eight_bit: bool
    orientation: int  # the EXIF orientation decode_image applied (1: none)
    pixels: np.ndarray | None  # as stored, for 8-bit greyscale PNGs without transparency


def _header(data: bytes) -> _Header:
    with Image.open(io.BytesIO(data)) as im:
        if im.format == "PNG":
            im.load()  # a PNG's eXIf chunk may follow the pixels; decode_image saw it
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
        # Pillow opens 16-bit RGB(A) PNGs as 8-bit modes, so read IHDR: bit depth, colour type.
        eight_bit = im.format != "PNG" or data[24] == 8 or data[25] == 3
        plain = im.format == "PNG" and im.mode == "L" and "transparency" not in im.info
        return _Header(im.format, im.mode, eight_bit, orientation if 1 <= orientation <= 8
                       else 1, np.asarray(im) if plain and eight_bit else None)


def is_rescaled(label_shape: tuple[int, ...], image_shape: tuple[int, int]) -> bool:
    """True when the label is the image scaled by one factor s, each side rounded (+-1 px)."""
    (label_h, label_w), (image_h, image_w) = label_shape[:2], image_shape
    low = max((label_h - 1) / image_h, (label_w - 1) / image_w, MIN_MASK_SCALE)
    high = min((label_h + 1) / image_h, (label_w + 1) / image_w, 1 / MIN_MASK_SCALE)
    return low <= high


def fit_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxW uint8 mask resized to ``size`` = (height, width) with the project's bilinear resize."""
    scaled = np.asarray(resize(mask[:, :, None], size))[:, :, 0]
    return alpha_to_uint8(scaled / 255.0)
