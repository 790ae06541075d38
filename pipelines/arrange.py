"""``matte arrange-p3m``: a plain folder of photos + masks -> the P3M-10k layout, split by stem.

    matte arrange-p3m SRC DST [--images NAME] [--masks NAME] [--validation 0.2] [--limit N]

SRC holds one folder of photos and one of masks, found by name (``IMAGE_FOLDERS``,
``MASK_FOLDERS``, e.g. human-seg's ``Training_Images`` and ``Ground_Truth``) or given. Files are
copied byte for byte and nothing is decoded: checking is ingestion's job, so a bad file travels
on and is rejected there, with its reason, instead of vanishing here.

A stem goes to validation when its SHA-256 falls in the first ``validation`` fraction, so a
photo's split never changes when others are added or removed. Validation lands in
``validation/P3M-500-NP/original_image`` (these faces are not blurred), training in
``train/blurred_image``, the folder name P3M-10k uses for training photos. ``--limit N`` keeps
the first N stems in natural order (2 before 10), for quick runs.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
from pathlib import Path

IMAGE_FOLDERS = ("images", "image", "Training_Images", "original_image", "blurred_image", "img")
MASK_FOLDERS = ("masks", "mask", "Ground_Truth", "alpha", "matte", "gt")
TRAIN = ("train/blurred_image", "train/mask")
VALIDATION = ("validation/P3M-500-NP/original_image", "validation/P3M-500-NP/mask")


def find_folder(root: Path, candidates: tuple[str, ...], given: str | None) -> Path:
    """The given subfolder of ``root``, or the one candidate name that exists there."""
    if given is not None:
        names = (given,)
    else:
        names = tuple(name for name in candidates if (root / name).is_dir())
    if len(names) != 1 or not (root / names[0]).is_dir():
        found = sorted(path.name for path in root.iterdir() if path.is_dir())
        raise ValueError(f"cannot tell which folder of {root} to use (looked for "
                         f"{', '.join(names or candidates)}; it has {', '.join(found) or 'none'})")
    return root / names[0]


def is_validation(stem: str, fraction: float) -> bool:
    return int(hashlib.sha256(stem.encode()).hexdigest()[:8], 16) < fraction * 2**32


def natural_key(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", text) if part]


def _files(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if path.is_file() and not path.name.startswith(".")]


def arrange_p3m(source: str | Path, destination: str | Path, *, images: str | None = None,
                masks: str | None = None, validation: float = 0.2,
                limit: int | None = None) -> dict[str, int]:
    """Copy photos and masks into the P3M layout; returns how many files went where."""
    source, destination = Path(source), Path(destination)
    if not 0.0 <= validation <= 1.0:
        raise ValueError(f"validation fraction must be in [0, 1], got {validation}")
    if destination.exists() and any(destination.iterdir()):
        raise ValueError(f"destination {destination} is not empty")
    roles = (_files(find_folder(source, IMAGE_FOLDERS, images)),
             _files(find_folder(source, MASK_FOLDERS, masks)))
    stems = sorted({path.stem for files in roles for path in files}, key=natural_key)
    keep = set(stems if limit is None else stems[:limit])
    counts = {"train_images": 0, "train_masks": 0, "validation_images": 0,
              "validation_masks": 0}
    for role, files in enumerate(roles):
        for path in sorted(files):
            if path.stem not in keep:
                continue
            split = "validation" if is_validation(path.stem, validation) else "train"
            folder = destination / (VALIDATION if split == "validation" else TRAIN)[role]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / path.name)
            counts[f"{split}_{('images', 'masks')[role]}"] += 1
    return counts


def _cmd_arrange(args: argparse.Namespace) -> int:
    counts = arrange_p3m(args.source, args.destination, images=args.images, masks=args.masks,
                         validation=args.validation, limit=args.limit)
    print(", ".join(f"{name.replace('_', ' ')}: {count}" for name, count in counts.items())
          + f"  -> {args.destination}")
    return 0


def add_cli(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser("arrange-p3m", help="photos + masks folder -> P3M-10k layout",
                                  description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_argument("source", help="folder holding a photo folder and a mask folder")
    command.add_argument("destination", help="new P3M-10k root (must be absent or empty)")
    command.add_argument("--images", help="photo subfolder name (default: found by name)")
    command.add_argument("--masks", help="mask subfolder name (default: found by name)")
    command.add_argument("--validation", type=float, default=0.2,
                         help="fraction of stems for validation (default %(default)s)")
    command.add_argument("--limit", type=int, help="keep only the first N stems")
    command.set_defaults(handler=_cmd_arrange)
