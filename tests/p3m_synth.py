"""Small synthetic P3M-10k-shaped datasets holding every kind of bad pair, for ingestion tests.

``make_p3m(root)`` writes the layout of DESIGN.md §4 with photos of 32-96 px and returns a
:class:`Synth` that says what ingestion must accept, reject (and why) and ignore. Accepted pairs
include the awkward-but-valid cases: EXIF-rotated JPEG, PNG photo, greyscale JPEG, RGB mask
(channel 0 counts), and a mask at 0.5x the photo's size (resized by the documented rule).
It also records every name it wrote (``files``), so counts never come from the code under test.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN = "train"
PRIVATE = "validation/P3M-500-P"
PUBLIC = "validation/P3M-500-NP"
TEST = "test"  # ours (``matte arrange-p3m``'s held-out split), not P3M-10k's


@dataclass
class Synth:
    root: Path
    accepted: dict[str, list[str]] = field(default_factory=dict)  # split -> keys
    rejects: dict[tuple[str, str], str] = field(default_factory=dict)  # (split, key) -> reason
    ignored: list[str] = field(default_factory=list)
    resized: set[tuple[str, str]] = field(default_factory=set)
    files: list[str] = field(default_factory=list)  # every entry written, links included

    def accept(self, split: str, key: str) -> None:
        self.accepted.setdefault(split, []).append(key)

    def write(self, relative: str, data: bytes) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files.append(relative)

    def link(self, relative: str, target: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)
        self.files.append(relative)

    def pairs(self, split: str | None = None) -> int:
        """How many pairs ingestion must accept (in ``split``, or in all)."""
        return sum(len(keys) for name, keys in self.accepted.items() if split in (None, name))

    def rejected(self, split: str | None = None) -> int:
        """How many rejects ingestion must report (in ``split``; "" is outside the layout)."""
        return sum(1 for name, _ in self.rejects if split in (None, name))


def photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth gradient plus noise: compresses like a photo, unlike pure noise."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def matte(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An ellipse of 255 with a soft ramp edge: real alpha values, not only 0/255."""
    y, x = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0.4, 0.6) * height, rng.uniform(0.4, 0.6) * width
    radius = np.hypot((y - cy) / (0.35 * height), (x - cx) / (0.3 * width))
    return (np.clip((1.2 - radius) / 0.4, 0, 1) * 255).round().astype(np.uint8)


def trimap_of(alpha: np.ndarray) -> np.ndarray:
    return np.where(alpha == 255, 255, np.where(alpha == 0, 0, 128)).astype(np.uint8)


def encode(array: np.ndarray, fmt: str, mode: str | None = None, **params) -> bytes:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def make_p3m(root: Path, *, train: int = 4, validation: int = 2, test: int = 1, seed: int = 0,
             bad: bool = True, filesystem: bool = True) -> Synth:
    """Write a dataset under ``root``; ``filesystem=False`` leaves out the entries only a
    file system has (symlinks, names that are not UTF-8), ``bad=False`` writes good pairs only.
    """
    rng = np.random.default_rng(seed)
    synth = Synth(root)
    _write = synth.write

    def size() -> tuple[int, int]:
        return int(rng.integers(32, 97)), int(rng.integers(32, 97))

    def pair(folder: str, image_dir: str, key: str, extras: tuple[str, ...] = ()) -> None:
        height, width = size()
        alpha = matte(rng, height, width)
        _write(f"{folder}/{image_dir}/{key}.jpg",
               encode(photo(rng, height, width), "JPEG", quality=90))
        _write(f"{folder}/mask/{key}.png", encode(alpha, "PNG"))
        if "trimap" in extras:
            _write(f"{folder}/trimap/{key}.png", encode(trimap_of(alpha), "PNG"))
        if "facemask" in extras:
            _write(f"{folder}/facemask/{key}.png", encode(alpha // 255 * 255, "PNG"))

    for i in range(train):
        pair(TRAIN, "blurred_image", f"p_train{i:02d}")
        synth.accept("train", f"p_train{i:02d}")
    for i in range(validation):
        pair(PRIVATE, "blurred_image", f"p_private{i:02d}", ("trimap", "facemask"))
        synth.accept("P3M-500-P", f"p_private{i:02d}")
        pair(PUBLIC, "original_image", f"p_public{i:02d}", ("trimap",))
        synth.accept("P3M-500-NP", f"p_public{i:02d}")
    for i in range(test):
        pair(TEST, "original_image", f"p_test{i:02d}", ("trimap",))
        synth.accept("test", f"p_test{i:02d}")
    _awkward_but_valid(synth, rng)
    if bad:
        _bad_pairs(synth, rng)
        if filesystem:
            _unlistable(synth, rng)
    for keys in synth.accepted.values():
        keys.sort()
    return synth


def _awkward_but_valid(synth: Synth, rng: np.random.Generator) -> None:
    images, masks, _write = f"{TRAIN}/blurred_image", f"{TRAIN}/mask", synth.write
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the upright photo is 48 x 80
    _write(f"{images}/p_exif.jpg", encode(photo(rng, 48, 80), "JPEG", exif=exif))
    _write(f"{masks}/p_exif.png", encode(matte(rng, 80, 48), "PNG"))
    _write(f"{images}/p_png.png", encode(photo(rng, 40, 56), "PNG"))
    _write(f"{masks}/p_png.png", encode(matte(rng, 40, 56), "PNG"))
    _write(f"{images}/p_grey.jpg", encode(photo(rng, 50, 36)[..., 0], "JPEG"))
    _write(f"{masks}/p_grey.png", encode(matte(rng, 50, 36), "PNG"))
    rgb_mask = np.stack([matte(rng, 44, 60), np.full((44, 60), 7, np.uint8),
                         np.full((44, 60), 200, np.uint8)], -1)
    _write(f"{images}/p_rgbmask.jpg", encode(photo(rng, 44, 60), "JPEG"))
    _write(f"{masks}/p_rgbmask.png", encode(rgb_mask, "PNG"))
    _write(f"{images}/p_halfmask.jpg", encode(photo(rng, 64, 96), "JPEG"))
    _write(f"{masks}/p_halfmask.png", encode(matte(rng, 32, 48), "PNG"))
    synth.resized.add(("train", "p_halfmask"))
    for key in ("p_exif", "p_png", "p_grey", "p_rgbmask", "p_halfmask"):
        synth.accept("train", key)


def _bad_pairs(synth: Synth, rng: np.random.Generator) -> None:
    images, masks, _write = f"{TRAIN}/blurred_image", f"{TRAIN}/mask", synth.write
    good_jpeg = encode(photo(rng, 48, 64), "JPEG")
    good_mask = encode(matte(rng, 48, 64), "PNG")
    cases = {
        "p_nomask": ({f"{images}/p_nomask.jpg": good_jpeg}, "missing_mask"),
        "p_orphan": ({f"{masks}/p_orphan.png": good_mask}, "orphan_file"),
        "p_truncated": ({f"{images}/p_truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
                         f"{masks}/p_truncated.png": good_mask}, "corrupt"),
        "p_empty": ({f"{images}/p_empty.jpg": b"", f"{masks}/p_empty.png": good_mask},
                    "corrupt"),
        "p_badmask": ({f"{images}/p_badmask.jpg": good_jpeg,
                       f"{masks}/p_badmask.png": b"\x89PNG\r\n\x1a\n garbage"}, "corrupt"),
        "p_size": ({f"{images}/p_size.jpg": good_jpeg,
                    f"{masks}/p_size.png": encode(matte(rng, 40, 40), "PNG")}, "size_mismatch"),
        "p_cmyk": ({f"{images}/p_cmyk.jpg": encode(photo(rng, 48, 64), "JPEG", "CMYK"),
                    f"{masks}/p_cmyk.png": good_mask}, "wrong_mode"),
        "p_mask16": ({f"{images}/p_mask16.jpg": good_jpeg,
                      f"{masks}/p_mask16.png": encode(
                          matte(rng, 48, 64).astype(np.uint16) * 257, "PNG")}, "wrong_mode"),
        "p_dup": ({f"{images}/p_dup.jpg": good_jpeg, f"{images}/p_dup.png":
                   encode(photo(rng, 48, 64), "PNG"), f"{masks}/p_dup.png": good_mask},
                  "duplicate_stem"),
    }
    for key, (files, reason) in cases.items():
        for relative, data in files.items():
            _write(relative, data)
        synth.rejects[("train", key)] = reason
    alpha = matte(rng, 40, 40)
    odd_trimap = trimap_of(alpha)
    odd_trimap[0, 0] = 77
    for folder, image_dir, key, trimap, reason in (
            (PRIVATE, "blurred_image", "p_badtrimap", odd_trimap, "bad_trimap"),
            (PUBLIC, "original_image", "p_trimapsize", trimap_of(matte(rng, 20, 20)),
             "size_mismatch")):
        _write(f"{folder}/{image_dir}/{key}.jpg", encode(photo(rng, 40, 40), "JPEG"))
        _write(f"{folder}/mask/{key}.png", encode(alpha, "PNG"))
        _write(f"{folder}/trimap/{key}.png", encode(trimap, "PNG"))
        synth.rejects[(folder.rsplit("/", 1)[-1], key)] = reason
    _write(f"{TRAIN}/fg/p_stray.jpg", good_jpeg)
    synth.rejects[("", "train/fg/p_stray.jpg")] = "unexpected_path"
    for hidden in (f"{masks}/.DS_Store", ".cache/notes.txt"):
        _write(hidden, b"not data")
        synth.ignored.append(hidden)
    synth.ignored.sort()


def _unlistable(synth: Synth, rng: np.random.Generator) -> None:
    """Entries the store refuses to list as data: each is an ``unreadable`` reject."""
    images, masks = f"{TRAIN}/blurred_image", f"{TRAIN}/mask"
    synth.write(f"{masks}/p_link.png", encode(matte(rng, 48, 64), "PNG"))
    synth.link(f"{images}/p_link.jpg", "no-such-file.jpg")  # dangling
    synth.rejects[("train", "p_link")] = "unreadable"
    synth.write(f"{masks}/p_loop.png", encode(matte(rng, 48, 64), "PNG"))
    synth.link(f"{images}/p_loop.jpg", "p_loop.jpg")  # points at itself
    synth.rejects[("train", "p_loop")] = "unreadable"
    # A name that is not UTF-8: reported with its bad byte spelled out.
    synth.write(os.fsdecode(f"{masks}/p_".encode() + b"\xff.png"), b"not decodable")
    synth.rejects[("train", "p_\\xff")] = "unreadable"
    synth.link(f"{TRAIN}/fg/p_gone.jpg", "nowhere.jpg")  # outside the layout, and dangling
    synth.rejects[("", "train/fg/p_gone.jpg")] = "unreadable"
