"""The honest split protocol of ``matte arrange-p3m``: train / validation / test by a hash of
each photo's stem, disjoint, stable as photos are added, and a test split that ingestion reads
but no training config may validate (or train) on."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from model.configs import TrainConfig
from pipelines.arrange import FOLDERS, arrange_p3m, split_of
from pipelines.p3m_layout import SPLITS, TEST_SPLIT, classify


def make_source(root: Path, stems: list[str]) -> None:
    """Photos + masks as arrange-p3m finds them; bytes only (arranging decodes nothing)."""
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        (root / "images" / f"{stem}.jpg").write_bytes(f"photo {stem}".encode())
        (root / "masks" / f"{stem}.png").write_bytes(f"mask {stem}".encode())


def placement(root: Path) -> dict[str, str]:
    """stem -> split, from the folders the files landed in (photos and masks must agree)."""
    found: dict[str, set[str]] = {}
    for split, folders in FOLDERS.items():
        for folder in folders:
            for path in (root / folder).glob("*") if (root / folder).is_dir() else ():
                found.setdefault(path.stem, set()).add(split)
    assert all(len(splits) == 1 for splits in found.values()), found  # disjoint
    return {stem: splits.pop() for stem, splits in found.items()}


def test_splits_are_disjoint_and_stable_as_photos_are_added(tmp_path):
    first = [f"photo_{i:03d}" for i in range(60)]
    make_source(tmp_path / "src", first)
    counts = arrange_p3m(tmp_path / "src", tmp_path / "p3m", validation=0.2, test=0.2)
    before = placement(tmp_path / "p3m")
    assert set(before) == set(first)
    assert before == {stem: split_of(stem, 0.2, 0.2) for stem in first}
    sizes = Counter(before.values())
    assert set(sizes) == {"train", "validation", "test"}  # 60 stems reach all three
    assert counts["test_images"] == counts["test_masks"] == sizes["test"]

    # New labels arrive: 60 more photos. No existing photo moves, the new ones spread too.
    make_source(tmp_path / "src", [f"new_{i:03d}" for i in range(60)])
    arrange_p3m(tmp_path / "src", tmp_path / "p3m", validation=0.2, test=0.2)
    after = placement(tmp_path / "p3m")
    assert {stem: after[stem] for stem in before} == before
    assert len(after) == 120
    assert set(Counter(split for stem, split in after.items() if stem.startswith("new"))) == {
        "train", "validation", "test"}


def test_a_changed_test_fraction_is_refused_before_anything_leaks(tmp_path):
    stems = [f"photo_{i:03d}" for i in range(40)]
    make_source(tmp_path / "src", stems)
    arrange_p3m(tmp_path / "src", tmp_path / "p3m", validation=0.2, test=0.0)  # the old layout
    assert "test" not in set(placement(tmp_path / "p3m").values())
    with pytest.raises(ValueError, match="would leak it between splits.*--test 0"):
        arrange_p3m(tmp_path / "src", tmp_path / "p3m", validation=0.2, test=0.3)
    with pytest.raises(ValueError, match="exceed 1"):
        arrange_p3m(tmp_path / "src", tmp_path / "other", validation=0.6, test=0.5)


def test_split_of_follows_the_hash_ranges():
    stems = [f"s{i}" for i in range(400)]
    splits = Counter(split_of(stem, 0.25, 0.25) for stem in stems)
    assert all(70 <= splits[name] <= 130 for name in ("validation", "test"))  # ~100 each
    # Growing the test fraction only takes stems from train, never from validation.
    for stem in stems:
        small, large = split_of(stem, 0.25, 0.1), split_of(stem, 0.25, 0.25)
        assert small == large or (small, large) == ("train", "test")


def test_the_test_split_is_read_by_ingestion_and_refused_for_config_choice():
    assert TEST_SPLIT in SPLITS
    assert classify("test/original_image/p_1.jpg") == ("test", "image", "p_1")
    assert classify("test/mask/p_1.png") == ("test", "mask", "p_1")
    with pytest.raises(ValueError, match="validation_split='test'"):
        TrainConfig(name="x", validation_split="test")
    with pytest.raises(ValueError, match="train_split='test'"):
        TrainConfig(name="x", train_split="test")
