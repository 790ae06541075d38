"""Evaluation as in the P3M benchmark: every metric of DESIGN.md §3, per image, at test resolution.

Test resolution rule: the photo is scaled down (never up) until its longest side is at most
``max_side`` (1600), and each side is then rounded down to a multiple of 32, the stride of the
deepest pooling, so every skip connection lines up without padding. The model is fully
convolutional and takes that size as is; its alpha is resized back to the ground truth's size
(some datasets ship masks smaller than their photos) and compared there. ``size=S`` instead
runs the model at S×S, the official U²-Net demo protocol.

Inputs are an ingested split (``model/data.py``) or a folder of photos and one of masks paired
by stem, or (``evaluate_predictions``) a folder of mattes some model already made. Outputs:
``per_image.csv`` and ``summary.json``. The command is ``matte evaluate`` (``cli.evaluation``).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from model.imaging import decode_image, decode_mask
from model.metrics import METRIC_NAMES, evaluate, summarize
from model.preprocess import alpha_to_size, normalize, resize
from storage import open_store, write_atomic

MAX_SIDE = 1600
MULTIPLE = 32
SAMPLE_SIDE = 160  # thumbnails kept for the prediction grid


@dataclass(frozen=True)
class Example:
    key: str
    image: np.ndarray  # HxWx3 uint8 RGB
    alpha: np.ndarray  # ground truth HxW, uint8 or float in [0, 1]


@dataclass
class EvalResult:
    protocol: str
    rows: list[dict] = field(default_factory=list)  # {"key", *METRIC_NAMES}
    samples: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, float]:
        return summarize([{name: row[name] for name in METRIC_NAMES} for row in self.rows])


def eval_size(height: int, width: int, max_side: int = MAX_SIDE,
              multiple: int = MULTIPLE) -> tuple[int, int]:
    """The model input size for a photo under the P3M test-resolution rule."""
    scale = min(1.0, max_side / max(height, width))

    def fit(side: int) -> int:
        return max(multiple, int(side * scale) // multiple * multiple)

    return fit(height), fit(width)


def protocol_name(max_side: int | None, size: int | None) -> str:
    return f"square-{size}" if size else f"p3m-max{max_side}-x{MULTIPLE}"


def evaluation_key(split: str, data_hash: str, protocol: str) -> str:
    """What the registry files an evaluation under: promotion compares two versions only on
    the same key (same split of the same data, same protocol)."""
    return f"{split}-{data_hash[:12]}-{protocol}"


def predict(model: keras.Model, image: np.ndarray, target: tuple[int, int],
            max_side: int = MAX_SIDE, size: int | None = None) -> np.ndarray:
    """Alpha (HxW float32 in [0, 1]) at ``target`` = (height, width) for one uint8 photo."""
    shape = (size, size) if size else eval_size(*image.shape[:2], max_side)
    batch = normalize(resize(image, shape))[None]
    # An eager call: every photo has its own size, and a traced predict would retrace per size.
    fused = model(batch, training=False)["fused"][0]
    return np.asarray(alpha_to_size(fused, target), dtype=np.float32)[:, :, 0]


def _thumbnail(array: np.ndarray) -> np.ndarray:
    height, width = array.shape[:2]
    scale = SAMPLE_SIDE / max(height, width)
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = array if array.ndim == 3 else array[:, :, None]
    return np.asarray(resize(image, shape)).astype(np.float32)


def evaluate_model(model: keras.Model, examples: Iterable[Example], *, max_side: int = MAX_SIDE,
                   size: int | None = None, samples: int = 4) -> EvalResult:
    """Every metric for every example; the first ``samples`` kept as thumbnails for plots."""
    result = EvalResult(protocol_name(max_side, size))
    for example in examples:
        gt = example.alpha.astype(np.float32) / 255 if example.alpha.dtype == np.uint8 \
            else example.alpha.astype(np.float32)
        alpha = predict(model, example.image, gt.shape, max_side, size)
        result.rows.append({"key": example.key, **evaluate(alpha, gt)})
        if len(result.samples) < samples:
            result.samples.append((example.key, _thumbnail(example.image) / 255,
                                   _thumbnail(alpha)[:, :, 0], _thumbnail(gt)[:, :, 0]))
    if not result.rows:
        raise ValueError("no examples to evaluate")
    return result


def files_by_stem(uri: str | os.PathLike) -> dict[str, str]:
    """Every file below a folder (or gs:// prefix) by its key without extension, so photos,
    masks and predictions pair by relative path whatever their formats."""
    return {os.path.splitext(info.key)[0]: info.key for info in open_store(uri).list()}


def folder_examples(images: str | os.PathLike, masks: str | os.PathLike) -> Iterator[Example]:
    """Photos and masks paired by stem, in stem order; unpaired files are skipped."""
    photos, truths = files_by_stem(images), files_by_stem(masks)
    if not set(photos) & set(truths):
        raise ValueError(f"no photo in {images} has a mask with the same stem in {masks}")
    photo_store, mask_store = open_store(images), open_store(masks)
    for stem in sorted(set(photos) & set(truths)):
        alpha = decode_mask(mask_store.read(truths[stem]), truths[stem])
        yield Example(stem, decode_image(photo_store.read(photos[stem]), photos[stem]), alpha)


def evaluate_predictions(predictions: str | os.PathLike,
                         masks: str | os.PathLike) -> EvalResult:
    """Metrics of a folder of predicted mattes against masks with the same stems, compared at
    the mask's size (several datasets ship masks smaller than their photos)."""
    result = EvalResult("predictions")
    truths, sources = files_by_stem(masks), files_by_stem(predictions)
    truth_store, prediction_store = open_store(masks), open_store(predictions)
    for stem in sorted(truths):
        if stem not in sources:
            raise ValueError(f"no prediction for {truths[stem]} in {predictions}")
        gt = decode_mask(truth_store.read(truths[stem]), truths[stem]).astype(np.float32) / 255
        raw = decode_mask(prediction_store.read(sources[stem]), sources[stem])
        pred = np.asarray(alpha_to_size(raw.astype(np.float32)[:, :, None] / 255, gt.shape))
        result.rows.append({"key": stem, **evaluate(pred[:, :, 0], gt)})
    if not result.rows:
        raise ValueError(f"no mask found in {masks}")
    return result


def split_examples(root: str, split: str) -> Iterator[Example]:
    """Every record of an ingested split, in manifest order, at full resolution."""
    from model.data import records

    for record in records(root, split).as_numpy_iterator():
        yield Example(record["key"].decode(), record["image"], record["alpha"][:, :, 0])


def write_report(result: EvalResult, out_dir: str | os.PathLike, info: dict) -> dict[str, Path]:
    """``per_image.csv`` (one row per image) and ``summary.json`` (means, count, ``info``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"per_image": out / "per_image.csv", "summary": out / "summary.json"}
    with open(paths["per_image"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["key", *METRIC_NAMES])
        writer.writeheader()
        writer.writerows(result.rows)
    document = {**info, "protocol": result.protocol, "images": len(result.rows),
                "metrics": result.summary}
    # Atomic: promotion reads this file, possibly while a re-evaluation rewrites it.
    write_atomic(paths["summary"], (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
    return paths
