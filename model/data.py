"""The TFRecord schema written by ``pipelines/ingest_p3m.py`` and the tf.data reader of its shards.

One ``tf.train.Example`` per accepted pair (DESIGN.md §4):

* ``image``: the source file's bytes exactly as given (JPEG, or an 8-bit PNG), never re-encoded;
  ``orientation``: its EXIF orientation (1-8, 1 when absent), applied here as
  ``model.imaging.decode_image`` applies it, so ``height``/``width`` are the upright size;
* ``alpha``: 8-bit greyscale PNG at the upright image size; ``trimap`` and ``facemask``
  (optional, empty when absent): 8-bit greyscale PNGs of the same size;
* ``key`` (the file stem) and ``split``.

Decoding reproduces ``decode_image`` pixel for pixel: JPEG via libjpeg's accurate integer IDCT
(TensorFlow's default, the fast IDCT, differs from Pillow by up to ~20 levels).

Preprocessing is ``model.preprocess`` (keras.ops), the same functions the inference path uses,
so the training/eval datasets need the TensorFlow Keras backend (``records`` does not); the
training augmentation is ``model.augment`` (``Augment``, ``augment_pair``).
``batch_size`` is always the global batch, which ``tf.distribute`` splits across replicas; the
dataset starts from the shard list, so multi-worker input sharding can go by file. Every shard
is checked against the size and sha256 its manifest records before a dataset is built from it.
"""

from __future__ import annotations

import functools
import hashlib
import json

import keras
import tensorflow as tf

import storage
from model.augment import Augment, augment_pair
from model.losses import repeat_label
from model.preprocess import MODEL_SIZE, alpha_to_size, preprocess

AUTOTUNE = tf.data.AUTOTUNE
_FEATURES = {
    "key": tf.io.FixedLenFeature([], tf.string),
    "split": tf.io.FixedLenFeature([], tf.string),
    "image": tf.io.FixedLenFeature([], tf.string),
    "orientation": tf.io.FixedLenFeature([], tf.int64, default_value=1),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
    "alpha": tf.io.FixedLenFeature([], tf.string),
    "trimap": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    "facemask": tf.io.FixedLenFeature([], tf.string, default_value=b""),
}


def encode_example(*, key: str, split: str, image: bytes, orientation: int, height: int,
                   width: int, alpha: bytes, trimap: bytes | None = None,
                   facemask: bytes | None = None) -> bytes:
    """One serialised record; ``deterministic`` so equal inputs give equal bytes on rerun."""
    def data(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def number(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    feature = {"key": data(key.encode()), "split": data(split.encode()), "image": data(image),
               "orientation": number(orientation), "height": number(height),
               "width": number(width), "alpha": data(alpha)}
    for name, value in (("trimap", trimap), ("facemask", facemask)):
        if value is not None:
            feature[name] = data(value)
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def read_manifest(root: str) -> dict:
    """The dataset's ``manifest.json``, through the storage home like every other file read.

    The shards it lists are not: tf.data streams them itself (TFRecordDataset reads local
    files and gs:// alike, record by record, which a whole-object read could not).
    """
    return json.loads(storage.read_bytes(storage.join(root, "manifest.json")))


def manifest_sha256(root: str) -> str:
    """SHA-256 of the manifest as canonical JSON; it lists every shard's checksum, so equal
    hashes mean the same training data (a run folder and a registry version record it)."""
    canonical = json.dumps(read_manifest(root), indent=2, sort_keys=True) + "\n"
    return hashlib.sha256(canonical.encode()).hexdigest()


def shard_files(root: str, split: str, manifest: dict | None = None) -> list[str]:
    """The split's shards as listed in the manifest (the commit point), never by globbing."""
    splits = (manifest or read_manifest(root))["splits"]
    if split not in splits:
        raise ValueError(f"split {split!r} not in {root}/manifest.json (has {sorted(splits)})")
    return [f"{root.rstrip('/')}/{shard['path']}" for shard in splits[split]["shards"]]


class ShardMismatch(ValueError):
    """A shard is missing or differs from what its manifest says was written."""


def verified_shard_files(root: str, split: str) -> list[str]:
    """``shard_files``, each first checked against its manifest entry (size, then sha256), so a
    shard replaced, truncated or tampered with after ingestion stops a run before it trains."""
    manifest = read_manifest(root)  # read once: the list and the checksums of one version
    files = shard_files(root, split, manifest)
    for uri, shard in zip(files, manifest["splits"][split]["shards"], strict=True):
        folder, name = storage.split_uri(uri)
        store = storage.open_store(folder)
        info = store.stat(name)
        if info is None:
            raise ShardMismatch(f"{uri}: missing, but {root}/manifest.json lists it")
        if info.size != shard["bytes"]:
            raise ShardMismatch(f"{uri}: {info.size} bytes, {root}/manifest.json says "
                                f"{shard['bytes']}; re-ingest the dataset")
        if (actual := _shard_sha256(uri, info.size, info.version)) != shard["sha256"]:
            raise ShardMismatch(f"{uri}: sha256 {actual[:16]}..., {root}/manifest.json says "
                                f"{shard['sha256'][:16]}...; re-ingest the dataset")
    return files


# Hashing reads the whole shard (150 MB each, ~10 GB for P3M-10k), so once per process per
# (uri, size, version): version is the file's mtime or the object's generation, so a shard
# rewritten since is hashed again, while the next epoch's or the eval's check is a stat.
@functools.lru_cache(maxsize=4096)
def _shard_sha256(uri: str, size: int, version: str) -> str:
    folder, name = storage.split_uri(uri)
    store = storage.open_store(folder)
    if isinstance(store, storage.LocalStore):
        digest = hashlib.sha256()
        with open(store.path(name), "rb") as handle:  # streamed: no shard-sized buffer
            while chunk := handle.read(2**20):
                digest.update(chunk)
        return digest.hexdigest()
    return hashlib.sha256(store.read(name)).hexdigest()


def _orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Apply EXIF orientation as Pillow's ``exif_transpose`` does (rot90 turns anticlockwise)."""
    def transpose(x):
        return tf.transpose(x, [1, 0, 2])

    branches = [
        lambda: image,
        lambda: tf.reverse(image, [1]),
        lambda: tf.image.rot90(image, 2),
        lambda: tf.reverse(image, [0]),
        lambda: transpose(image),
        lambda: tf.image.rot90(image, 3),
        lambda: tf.image.rot90(transpose(image), 2),
        lambda: tf.image.rot90(image, 1),
    ]
    # Values outside 1..8 mean "no rotation", as in Pillow.
    index = tf.where((orientation >= 1) & (orientation <= 8), orientation - 1, 0)
    return tf.switch_case(tf.cast(index, tf.int32), branches)


def _decode_grey(data: tf.Tensor) -> tf.Tensor:
    return tf.ensure_shape(tf.io.decode_png(data, channels=1), [None, None, 1])


def decode_record(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Serialised record -> uint8 ``image`` HxWx3 and ``alpha`` HxWx1 (upright), and the rest."""
    record = tf.io.parse_single_example(serialized, _FEATURES)
    data = record["image"]
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_png(data, channels=3),
    )
    image = tf.ensure_shape(_orient(image, record["orientation"]), [None, None, 3])
    decoded = {"key": record["key"], "split": record["split"], "image": image,
               "alpha": _decode_grey(record["alpha"])}
    for name in ("trimap", "facemask"):
        present = tf.strings.length(record[name]) > 0
        decoded[name] = tf.cond(
            present, lambda n=name: _decode_grey(record[n]),
            lambda: tf.zeros([0, 0, 1], tf.uint8))
    return decoded


def records(root: str, split: str, cache: bool | str = False) -> tf.data.Dataset:
    """Every record of a split in manifest order, decoded at full resolution (no resizing)."""
    files = verified_shard_files(root, split)
    # dtype given: an empty split (human-seg arranged has no P3M-500-P) would infer float32.
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string)).interleave(
        tf.data.TFRecordDataset, cycle_length=max(1, min(len(files), 4)),
        num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache is not False:
        # Caches the compressed records, not decoded pixels: full-resolution P3M decoded would
        # need ~60 GB, while the JPEG/PNG bytes are what remote storage makes slow to re-read.
        dataset = dataset.cache("" if cache is True else cache)
    return dataset.map(decode_record, num_parallel_calls=AUTOTUNE, deterministic=True)


def _require_tensorflow_backend() -> None:
    # keras.ops on another backend would fail inside tf.data with a far less clear message.
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("model.data needs KERAS_BACKEND=tensorflow: its preprocessing runs "
                           f"inside tf.data (the backend is {keras.backend.backend()!r})")


def _label(alpha: tf.Tensor, size: int) -> tf.Tensor:
    return alpha_to_size(tf.cast(alpha, tf.float32) / 255.0, (size, size))


def train_dataset(root: str, batch_size: int, *, split: str = "train", size: int = MODEL_SIZE,
                  seed: int | None = None, augment: Augment | None = None,
                  shuffle_buffer: int = 256, cache: bool | str = False) -> tf.data.Dataset:
    """``(image, labels)`` batches for ``fit``: augmented, normalised, ``labels`` per output.

    With ``seed`` the order and every augmentation are reproducible, and iterating the dataset
    again gives the same batches: training passes a new seed per epoch, and a resumed run must
    see what an uninterrupted one saw whatever extra reads Keras makes (its first ``fit``
    reads once more to build the loss, on some backends only). The last partial batch is
    dropped so every step has the same shape on every replica.
    """
    _require_tensorflow_backend()
    augment = augment or Augment()
    dataset = records(root, split, cache).shuffle(shuffle_buffer, seed=seed,
                                                  reshuffle_each_iteration=False)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=False).batch(2)

    def prepare(record, pair_seed):
        image, alpha = augment_pair(record["image"], record["alpha"], pair_seed, size, augment)
        return image, repeat_label(alpha)

    dataset = tf.data.Dataset.zip((dataset, seeds)).map(
        prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def eval_dataset(root: str, split: str, batch_size: int, *, size: int = MODEL_SIZE,
                 cache: bool | str = False) -> tf.data.Dataset:
    """``(image, labels)`` batches at a fixed ``size``² for ``evaluate``; every record kept."""
    _require_tensorflow_backend()

    def prepare(record):
        return preprocess(record["image"], size), repeat_label(_label(record["alpha"], size))

    dataset = records(root, split).map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache is not False:
        dataset = dataset.cache("" if cache is True else cache)
    return dataset.batch(batch_size).prefetch(AUTOTUNE)
