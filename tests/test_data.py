"""model/data.py: the record schema, pixel-exact reading, augmentation, and fit-ready batches."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from model import augment, data
from model.imaging import decode_image, decode_mask
from model.losses import deep_supervision_loss
from model.preprocess import preprocess
from model.u2net import OUTPUT_NAMES
from pipelines.ingest_p3m import IngestOptions, launch
from pipelines.p3m_layout import SPLIT_FOLDERS, fit_mask
from tests.p3m_synth import encode, make_p3m, photo


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("data")
    synth = make_p3m(root / "src", train=5)
    # The synth holds every kind of bad pair: allow any fraction of rejects.
    launch(IngestOptions(str(root / "src"), str(root / "out"), max_rejected_fraction=1.0),
           PipelineOptions([]))
    return root / "out", synth


def _source(root: Path, split: str, role: str, key: str) -> bytes:
    prefix, roles = SPLIT_FOLDERS[split]
    folder = next(name for name, kind in roles.items() if kind == role)
    (path,) = (root / prefix / folder).glob(f"{key}.*")
    return path.read_bytes()


def test_every_accepted_pair_reads_back_as_its_source_pixels(shards):
    out, synth = shards
    seen = {}
    for split in SPLIT_FOLDERS:
        for record in data.records(str(out), split):
            key = record["key"].numpy().decode()
            seen.setdefault(split, []).append(key)
            image = decode_image(_source(synth.root, split, "image", key))
            mask = decode_mask(_source(synth.root, split, "mask", key))
            if (split, key) in synth.resized:
                mask = fit_mask(mask, image.shape[:2])
            np.testing.assert_array_equal(record["image"].numpy(), image, err_msg=key)
            np.testing.assert_array_equal(record["alpha"].numpy()[..., 0], mask, err_msg=key)
            for role in ("trimap", "facemask"):
                if role in SPLIT_FOLDERS[split][1].values():
                    label = decode_mask(_source(synth.root, split, role, key))
                    np.testing.assert_array_equal(record[role].numpy()[..., 0], label)
                else:
                    assert record[role].shape == (0, 0, 1)
    assert seen == synth.accepted


def test_rgb_mask_uses_channel_zero_and_exif_photo_is_upright(shards):
    out, synth = shards
    by_key = {r["key"].numpy().decode(): r for r in data.records(str(out), "train")}
    rgb_mask = decode_image(_source(synth.root, "train", "mask", "p_rgbmask"))
    np.testing.assert_array_equal(by_key["p_rgbmask"]["alpha"].numpy()[..., 0], rgb_mask[..., 0])
    assert by_key["p_exif"]["image"].shape == (80, 48, 3)  # stored 48x80, EXIF says rotate


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_decode_image(orientation):
    tags = Image.Exif()
    tags[0x0112] = orientation
    jpeg = encode(photo(np.random.default_rng(orientation), 20, 31), "JPEG", exif=tags)
    expected = decode_image(jpeg)
    example = data.encode_example(
        key="k", split="train", image=jpeg, orientation=orientation, height=expected.shape[0],
        width=expected.shape[1], alpha=encode(np.zeros(expected.shape[:2], np.uint8), "PNG"))
    np.testing.assert_array_equal(data.decode_record(tf.constant(example))["image"], expected)


def test_augmentation_is_the_same_eagerly_and_inside_tf_data():
    rng = np.random.default_rng(5)
    image = photo(rng, 70, 50)
    alpha = rng.integers(0, 256, (70, 50, 1), dtype=np.uint8)
    seed = tf.constant([3, 4], tf.int64)
    eager = data.augment_pair(image, alpha, seed, 32, data.Augment())
    dataset = tf.data.Dataset.from_tensors((image, alpha, seed)).map(
        lambda i, a, s: data.augment_pair(i, a, s, 32, data.Augment()))
    graph = next(iter(dataset))
    for a, b in zip(eager, graph, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert eager[0].shape == (32, 32, 3) and eager[1].shape == (32, 32, 1)
    assert 0.0 <= float(tf.reduce_min(eager[1])) and float(tf.reduce_max(eager[1])) <= 1.0


def test_no_augmentation_and_full_crop_is_plain_preprocessing():
    image = photo(np.random.default_rng(6), 40, 40)
    alpha = np.full((40, 40, 1), 255, np.uint8)
    off = data.Augment(crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0), flip=False, brightness=0,
                       contrast=0, saturation=0, hue=0)
    out, label = data.augment_pair(image, alpha, tf.constant([1, 2], tf.int64), 24, off)
    np.testing.assert_allclose(out, preprocess(image, 24), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(label, 1.0, rtol=1e-6)


def test_new_background_changes_only_pixels_with_alpha_below_one_and_follows_the_seed():
    rng = np.random.default_rng(8)
    rgb = tf.constant(rng.random((40, 30, 3)), tf.float32)
    alpha = np.ones((40, 30, 1), np.float32)
    alpha[:, :10] = 0.0  # background
    alpha[:, 10:14] = np.linspace(0.2, 0.9, 4)[None, :, None]  # a soft edge
    seeds = [tf.constant([seed, 1], tf.int64) for seed in range(12)]
    outputs = [augment.composite_background(rgb, alpha, seed, 1.0).numpy() for seed in seeds]
    for out in outputs:
        np.testing.assert_array_equal(out[:, 14:], rgb.numpy()[:, 14:])  # alpha == 1: as is
        assert np.all(np.abs(out[:, :14] - rgb.numpy()[:, :14]).max(axis=-1) > 0)
        # Where alpha is 0 the pixel is the background alone; a blend of it elsewhere.
        assert 0.0 <= out.min() and out.max() <= 1.0
    again = augment.composite_background(rgb, alpha, seeds[0], 1.0)
    np.testing.assert_array_equal(again, outputs[0])
    assert not np.array_equal(outputs[0], outputs[1])
    kept = [augment.composite_background(rgb, alpha, seed, 0.5).numpy() for seed in seeds]
    assert 0 < sum(np.array_equal(out, rgb.numpy()) for out in kept) < len(seeds)
    np.testing.assert_array_equal(augment.composite_background(rgb, alpha, seeds[0], 0.0), rgb)


def test_a_composited_pair_keeps_its_label_and_is_the_same_inside_tf_data():
    rng = np.random.default_rng(9)
    image = photo(rng, 60, 44)
    alpha = np.zeros((60, 44, 1), np.uint8)
    alpha[10:50, 12:32] = 255
    seed = tf.constant([5, 6], tf.int64)
    plain, composited = data.Augment(), data.Augment(composite=1.0)
    eager = data.augment_pair(image, alpha, seed, 32, composited)
    dataset = tf.data.Dataset.from_tensors((image, alpha, seed)).map(
        lambda i, a, s: data.augment_pair(i, a, s, 32, composited))
    for a, b in zip(eager, next(iter(dataset)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    before = data.augment_pair(image, alpha, seed, 32, plain)
    np.testing.assert_array_equal(eager[1], before[1])  # same crop and flip: the same label
    assert not np.allclose(eager[0], before[0])


def _first_batch(dataset) -> np.ndarray:
    return next(iter(dataset))[0].numpy()


def test_training_batches_are_seeded_global_and_fresh_each_epoch(shards):
    """Each epoch is a new seed (model.train); one seed's batches are the same however often
    the dataset is iterated, as an exact resume needs."""
    out, synth = shards
    first = data.train_dataset(str(out), 4, size=32, seed=7)
    x, labels = next(iter(first))
    assert x.shape == (4, 32, 32, 3) and set(labels) == set(OUTPUT_NAMES)
    assert all(label.shape == (4, 32, 32, 1) for label in labels.values())
    np.testing.assert_array_equal(x.numpy(), _first_batch(first))  # iterated again
    again = data.train_dataset(str(out), 4, size=32, seed=7, cache=True)
    np.testing.assert_array_equal(x.numpy(), _first_batch(again))
    other = data.train_dataset(str(out), 4, size=32, seed=8)
    assert not np.array_equal(x.numpy(), _first_batch(other))
    assert sum(1 for _ in first) == synth.pairs("train") // 4  # partial batch dropped


def test_eval_batches_keep_every_record_at_a_fixed_size(shards):
    out, synth = shards
    batches = list(data.eval_dataset(str(out), "P3M-500-P", 3, size=40, cache=True))
    assert [x.shape[0] for x, _ in batches] == [synth.pairs("P3M-500-P")]  # 2 of them
    record = next(iter(data.records(str(out), "P3M-500-P")))
    np.testing.assert_allclose(batches[0][0][0], preprocess(record["image"], 40), atol=1e-5)


def test_fit_one_step_under_a_distribution_strategy(shards):
    out, _ = shards
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        inputs = keras.Input((32, 32, 3))
        outputs = {name: keras.layers.Conv2D(1, 1, activation="sigmoid", name=name)(inputs)
                   for name in OUTPUT_NAMES}
        model = keras.Model(inputs, outputs)
        model.compile(optimizer="sgd", loss=deep_supervision_loss())
    history = model.fit(data.train_dataset(str(out), 2, size=32, seed=1), epochs=1, shuffle=False,
                        steps_per_epoch=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_unknown_split_is_refused_and_an_empty_one_is_empty(shards, tmp_path):
    out, _ = shards
    (tmp_path / "manifest.json").write_text(
        '{"splits": {"P3M-500-P": {"pairs": 0, "shards": []}}}')
    assert list(data.records(str(tmp_path), "P3M-500-P")) == []
    with pytest.raises(ValueError, match="not in"):
        data.shard_files(str(out), "holdout")


def test_a_changed_shard_is_refused_before_training(shards, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(shards[0], out)  # the module's shards stay intact for the other tests
    data.train_dataset(str(out), 2, size=32)  # verified, and the hash cached
    manifest = data.read_manifest(str(out))
    shard = out / manifest["splits"]["train"]["shards"][0]["path"]
    original = shard.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF  # same size: only the sha256 can tell
    shard.write_bytes(bytes(tampered))
    # A new mtime is what invalidates the cached hash; make sure the clock moved for it.
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    with pytest.raises(data.ShardMismatch, match=rf"{re.escape(str(shard))}: sha256 .* says"):
        data.train_dataset(str(out), 2, size=32)
    shard.write_bytes(original[:-1])
    with pytest.raises(data.ShardMismatch, match=rf"{len(original) - 1} bytes, .* says "
                                                 rf"{len(original)}"):
        data.eval_dataset(str(out), "train", 2, size=32)
    shard.unlink()
    with pytest.raises(data.ShardMismatch, match="missing"):
        data.records(str(out), "train")
