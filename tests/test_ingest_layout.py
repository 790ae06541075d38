"""pipelines/p3m_layout.py without Beam: listing, classifying, pairing, the rules for a pair."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import p3m_layout as layout
from pipelines.p3m_layout import Entry, Pair, Record, Reject
from storage import ObjectInfo, Refused
from tests.p3m_synth import encode, matte, photo, trimap_of

RNG = np.random.default_rng(0)
JPEG = encode(photo(RNG, 48, 64), "JPEG")
MASK = encode(matte(RNG, 48, 64), "PNG")


def check(files: dict[str, bytes], split: str = "P3M-500-P") -> Record | Reject:
    pair = Pair(split, "k", {role: f"{role}/k" for role in files}, 0)
    return layout.validate(pair, lambda relative: files[relative.split("/")[0]])


@pytest.mark.parametrize(("relative", "expected"), [
    ("train/blurred_image/p_1.jpg", ("train", "image", "p_1")),
    ("train/mask/p_1.png", ("train", "mask", "p_1")),
    ("validation/P3M-500-P/facemask/p_2.png", ("P3M-500-P", "facemask", "p_2")),
    ("validation/P3M-500-NP/original_image/p_3.jpeg", ("P3M-500-NP", "image", "p_3")),
    ("validation/P3M-500-NP/facemask/p_3.png", None),  # NP ships no facemasks
    ("train/original_image/p_1.jpg", None),
    ("train/blurred_image/deeper/p_1.jpg", None),
    ("README.md", None),
])
def test_classify(relative, expected):
    assert layout.classify(relative) == expected


def test_hidden_files_and_refused_entries_are_listed(tmp_path):
    (tmp_path / "train" / "mask").mkdir(parents=True)
    (tmp_path / "train" / "mask" / "a.png").write_bytes(b"12345")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_bytes(b"x")
    (tmp_path / "train" / "mask" / "b.png").symlink_to(tmp_path / "missing.png")
    listed = {entry.key: entry for entry in layout.list_files(str(tmp_path))}
    assert set(listed) == {"train/mask/a.png", ".git/HEAD", "train/mask/b.png"}
    assert isinstance(listed["train/mask/a.png"], ObjectInfo)
    assert listed["train/mask/a.png"].size == 5 and listed[".git/HEAD"].size == 1
    assert listed["train/mask/b.png"] == Refused("train/mask/b.png", "dangling symlink")
    with pytest.raises(FileNotFoundError):
        list(layout.list_files(str(tmp_path / "nope")))


def test_an_undecodable_name_is_spelled_out():
    assert layout.printable("train/mask/p_\udcff.png") == "train/mask/p_\\xff.png"
    assert layout.printable("train/mask/é.png") == "train/mask/é.png"


def test_pairing_names_every_problem():
    image, mask = Entry("image", "i/k.jpg", 10), Entry("mask", "m/k.png", 5)
    assert layout.pair_files("train", "k", [image, mask]) == Pair(
        "train", "k", {"image": "i/k.jpg", "mask": "m/k.png"}, 15)
    assert layout.pair_files("train", "k", [image]).reason == "missing_mask"
    assert layout.pair_files("train", "k", [mask, Entry("trimap", "t/k.png", 1)]).reason == (
        "orphan_file")
    duplicate = layout.pair_files("train", "k", [image, Entry("image", "i/k.png", 3), mask])
    assert duplicate.reason == "duplicate_stem" and "i/k.png" in duplicate.detail
    assert duplicate.files == ("i/k.jpg", "i/k.png", "m/k.png")


def test_a_refused_file_makes_its_pair_unreadable():
    loop = Entry("image", "i/k.jpg", 0, "symlink loop")
    reject = layout.pair_files("train", "k", [loop, Entry("mask", "m/k.png", 5)])
    assert (reject.reason, reject.detail) == ("unreadable", "i/k.jpg: symlink loop")
    assert reject.files == ("i/k.jpg", "m/k.png")
    alone = layout.pair_files("train", "k", [loop])  # no mask either: unreadable comes first
    assert alone.reason == "unreadable"


@pytest.mark.parametrize(("label", "image", "ok"), [
    ((454, 551), (1055, 1280), True),   # human-seg's real 0.43x masks
    ((24, 32), (48, 64), True),
    ((96, 128), (48, 64), True),
    ((40, 40), (48, 64), False),        # another aspect ratio
    ((10, 13), (48, 64), False),        # 0.2x: too coarse to be an alpha matte
    ((24, 36), (48, 64), False),        # 2 px off in width
])
def test_mask_rescale_rule(label, image, ok):
    assert layout.is_rescaled(label, image) is ok


def test_plan_fills_shards_in_key_order():
    pairs = [Pair("train", key, {}, size) for key, size in
             (("d", 40), ("a", 60), ("c", 30), ("b", 50), ("e", 200))]
    plan = [(index, pair.key) for index, pair in layout.plan_shards(pairs, 100)]
    assert plan == [(0, "a"), (1, "b"), (1, "c"), (2, "d"), (3, "e")]


def test_valid_pair_with_all_labels():
    trimap = encode(trimap_of(matte(RNG, 48, 64)), "PNG")
    record = check({"image": JPEG, "mask": MASK, "trimap": trimap, "facemask": MASK})
    assert isinstance(record, Record) and not record.mask_resized


@pytest.mark.parametrize(("files", "reason"), [
    ({"image": JPEG, "mask": encode(matte(RNG, 48, 64), "PNG", "1")}, "wrong_mode"),
    ({"image": encode(photo(RNG, 48, 64), "PNG", "RGBA"), "mask": MASK}, "wrong_mode"),
    ({"image": encode(photo(RNG, 48, 64), "GIF"), "mask": MASK}, "wrong_mode"),
    ({"image": b"plain text", "mask": MASK}, "corrupt"),
    ({"image": JPEG, "mask": MASK, "trimap": MASK}, "bad_trimap"),
    ({"image": JPEG, "mask": MASK, "facemask": encode(matte(RNG, 24, 32), "PNG")},
     "size_mismatch"),  # only the mask may be rescaled
])
def test_invalid_pairs(files, reason):
    result = check(files)
    assert isinstance(result, Reject) and result.reason == reason, result


def test_unreadable_file_is_a_reject_not_a_crash():
    def read(relative: str) -> bytes:
        raise PermissionError(13, "Permission denied")

    result = layout.validate(Pair("train", "k", {"image": "a", "mask": "b"}, 0), read)
    assert result.reason == "unreadable" and "Permission denied" in result.detail


def test_reject_reasons_are_closed():
    with pytest.raises(ValueError):
        Reject("train", "k", "bad vibes", "")


def test_label_bytes_are_kept_when_they_already_hold_the_pixels():
    import tensorflow as tf

    def stored_alpha(mask: bytes) -> bytes:
        record = check({"image": JPEG, "mask": mask}, split="train")
        example = tf.train.Example.FromString(record.example)
        return example.features.feature["alpha"].bytes_list.value[0]

    assert stored_alpha(MASK) == MASK  # 8-bit greyscale PNG: as given
    rgb = encode(np.stack([matte(RNG, 48, 64)] * 3, -1), "PNG")
    assert stored_alpha(rgb) != rgb  # channel 0 of an RGB mask: re-encoded as greyscale
