"""A plain folder of photos + masks -> the P3M-10k layout, split by stem (``matte arrange-p3m``).

    matte arrange-p3m SRC DST [--images NAME] [--masks NAME] [--validation 0.2] [--test 0.1]
                      [--limit N]

SRC holds one folder of photos and one of masks, found by name (``IMAGE_FOLDERS``,
``MASK_FOLDERS``, e.g. human-seg's ``Training_Images`` and ``Ground_Truth``) or given. Files are
copied byte for byte and nothing is decoded: checking is ingestion's job, so a bad file travels
on and is rejected there, with its reason, instead of vanishing here. Entries the listing refuses
(a dangling link, a name that is not UTF-8) hold nothing to copy: they are counted as
``unreadable``. SRC and DST are folders or gs:// prefixes; listing (hidden files are not data),
reading and writing go through ``storage``.

Each stem's split comes from its SHA-256 alone: the first ``validation`` fraction of the hash
range is validation, the next ``test`` fraction test, the rest training. A photo's split
therefore never changes when others are added or removed, and the three are disjoint by
construction. Validation (config choice, per-epoch curves, promotion) lands in
``validation/P3M-500-NP/original_image`` (these faces are not blurred), test in
``test/original_image`` (read by nothing but a final ``matte evaluate --split test``), training
in ``train/blurred_image``, the folder name P3M-10k uses for training photos. ``--limit N``
keeps the first N stems in natural order (2 before 10), for quick runs.

New labels arrive by arranging again into the same DST: an existing layout gets the new pairs
(and the old ones rewritten with the same bytes); a DST holding anything else is refused, and
so is a stem that would move between splits (a changed ``--validation`` or ``--test``; a
layout arranged before the test split existed takes new pairs with ``--test 0``).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import PurePosixPath

import storage
from storage import ObjectInfo, Refused

IMAGE_FOLDERS = ("images", "image", "Training_Images", "original_image", "blurred_image", "img")
MASK_FOLDERS = ("masks", "mask", "Ground_Truth", "alpha", "matte", "gt")
TRAIN = ("train/blurred_image", "train/mask")
VALIDATION = ("validation/P3M-500-NP/original_image", "validation/P3M-500-NP/mask")
TEST = ("test/original_image", "test/mask")
FOLDERS = {"train": TRAIN, "validation": VALIDATION, "test": TEST}


def find_folder(folders: set[str], candidates: tuple[str, ...], given: str | None,
                root: str) -> str:
    """The given subfolder of ``root`` (one of ``folders``), or the one candidate there."""
    names = (given,) if given is not None else tuple(
        name for name in candidates if name in folders)
    if len(names) != 1 or names[0] not in folders:
        raise ValueError(f"cannot tell which folder of {root} to use (looked for "
                         f"{', '.join(names or candidates)}; it has "
                         f"{', '.join(sorted(folders)) or 'none'})")
    return names[0]


def stem_hash(stem: str) -> float:
    """Where ``stem`` falls in [0, 1): the first 32 bits of its SHA-256."""
    return int(hashlib.sha256(stem.encode()).hexdigest()[:8], 16) / 2**32


def split_of(stem: str, validation: float, test: float) -> str:
    """"validation", "test" or "train": a function of the stem and the two fractions only."""
    position = stem_hash(stem)
    if position < validation:
        return "validation"
    return "test" if position < validation + test else "train"


def natural_key(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", text) if part]


def _existing_layout(uri: str) -> set[str]:
    """The keys of an existing P3M layout at ``uri`` (empty if there is nothing yet); anything
    else there is refused, so arranging never mixes into a folder of other files."""
    try:
        keys = {entry.key for entry in storage.open_store(uri).scan(hidden=True)}
    except FileNotFoundError:  # not there yet: it will be made
        return set()
    folders = {PurePosixPath(key).parent.as_posix() for key in keys}
    if not folders <= set(TRAIN + VALIDATION + TEST):
        raise ValueError(f"destination {uri} is not empty and not a P3M layout "
                         f"(it holds {sorted(folders - set(TRAIN + VALIDATION + TEST))[:3]})")
    return keys


def arrange_p3m(source: str | os.PathLike, destination: str | os.PathLike, *,
                images: str | None = None, masks: str | None = None, validation: float = 0.2,
                test: float = 0.1, limit: int | None = None) -> dict[str, int]:
    """Copy photos and masks into the P3M layout; returns how many files went where."""
    source, destination = str(source), str(destination)
    for name, fraction in (("validation", validation), ("test", test)):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"{name} fraction must be in [0, 1], got {fraction}")
    if validation + test > 1.0:
        raise ValueError(f"validation + test fractions exceed 1 ({validation} + {test})")
    existing = _existing_layout(destination)
    reader = storage.open_store(source)
    # Only files directly inside a top folder count, as the layout has no deeper folders.
    by_folder: dict[str, list[ObjectInfo | Refused]] = {}
    for entry in reader.scan():
        folder, _, name = entry.key.partition("/")
        if name and "/" not in name:
            by_folder.setdefault(folder, []).append(entry)
    roles = (by_folder[find_folder(set(by_folder), IMAGE_FOLDERS, images, source)],
             by_folder[find_folder(set(by_folder), MASK_FOLDERS, masks, source)])
    stems = sorted({PurePosixPath(entry.key).stem for entries in roles for entry in entries},
                   key=natural_key)
    keep = set(stems if limit is None else stems[:limit])
    writer = storage.open_store(destination)
    counts = {f"{split}_{role}": 0 for split in FOLDERS for role in ("images", "masks")}
    counts["unreadable"] = 0
    for role, entries in enumerate(roles):
        for entry in sorted(entries, key=lambda entry: entry.key):
            path = PurePosixPath(entry.key)
            if path.stem not in keep:
                continue
            if isinstance(entry, Refused):
                counts["unreadable"] += 1
                continue
            split = split_of(path.stem, validation, test)
            folder = FOLDERS[split][role]
            for other in (folders[role] for name, folders in FOLDERS.items() if name != split):
                if any(key.startswith(f"{other}/{path.stem}.") for key in existing):
                    raise ValueError(f"{path.stem} is in {other} of {destination} already: "
                                     f"arranging it into {split} would leak it between "
                                     "splits (was --validation or --test changed? A layout "
                                     "arranged before the test split takes --test 0)")
            writer.write(f"{folder}/{path.name}", reader.read(entry.key))
            counts[f"{split}_{('images', 'masks')[role]}"] += 1
    return counts
