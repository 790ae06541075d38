"""Evaluation: the P3M test-resolution rule, per-image metrics, CSV and JSON reports, CLI."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest
from PIL import Image

from cli.main import main
from model.evaluate import (
    Example,
    eval_size,
    evaluate_model,
    folder_examples,
    write_report,
)
from model.metrics import METRIC_NAMES
from model.u2net import build_u2net


@pytest.mark.parametrize(("shape", "expected"), [
    ((1080, 1920), (896, 1600)),  # scaled by 1600/1920, then down to multiples of 32
    ((500, 333), (480, 320)),  # never scaled up
    ((20, 20), (32, 32)),  # at least one multiple of 32
    ((3000, 100), (1600, 32)),
])
def test_eval_size_follows_the_p3m_rule(shape, expected):
    assert eval_size(*shape) == expected
    assert max(eval_size(*shape)) <= 1600


def red_channel_model(gain: float, bias: float = 0.0) -> keras.Model:
    """alpha = sigmoid(gain · normalised red + bias): red 255 -> ~1, red 0 -> ~0 for a large
    gain; gain 0 gives the constant sigmoid(bias)."""
    image = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
    fused = conv(image)
    conv.set_weights([np.array([gain, 0.0, 0.0], "float32").reshape(1, 1, 3, 1),
                      np.full(1, bias, "float32")])
    return keras.Model(image, {"fused": fused})


def photo_and_mask(rng: np.random.Generator, height: int, width: int):
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: 3 * height // 4, width // 3: 2 * width // 3] = 255
    photo = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    photo[..., 0] = mask  # the red channel is the answer
    return photo, mask


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for stem, (height, width) in {"a": (96, 64), "b": (70, 90)}.items():
        photo, mask = photo_and_mask(rng, height, width)
        Image.fromarray(photo).save(images / f"{stem}.png")
        # Masks at half size, as human-seg ships most of them: compared at the mask's size.
        Image.fromarray(mask).resize((width // 2, height // 2), Image.NEAREST).save(
            masks / f"{stem}.png")
    (images / "unpaired.png").write_bytes((images / "a.png").read_bytes())
    return images, masks


def test_a_model_that_reads_the_answer_scores_near_perfect(folder):
    result = evaluate_model(red_channel_model(20.0), folder_examples(*folder))
    assert [row["key"] for row in result.rows] == ["a", "b"]
    assert result.summary["iou"] > 0.95 and result.summary["mad"] < 0.03
    assert result.protocol == "p3m-max1600-x32"
    key, image, alpha, truth = result.samples[0]
    assert key == "a" and image.shape[2] == 3 and alpha.shape == truth.shape


def test_a_constant_model_gets_the_exact_errors():
    rng = np.random.default_rng(1)
    photo, mask = photo_and_mask(rng, 64, 96)
    share = np.mean(mask > 127)  # the foreground's share of the image
    constant = red_channel_model(0.0, bias=np.log(0.6 / 0.4))  # alpha = 0.6 everywhere
    result = evaluate_model(constant, [Example("k", photo, mask)], size=320)
    row = result.rows[0]
    assert result.protocol == "square-320"
    assert row["mad"] == pytest.approx(0.4 * share + 0.6 * (1 - share), abs=1e-6)
    assert row["mse"] == pytest.approx(0.16 * share + 0.36 * (1 - share), abs=1e-6)
    assert row["sad"] == pytest.approx(row["mad"] * 64 * 96 / 1000, rel=1e-6)
    # 0.6 is foreground everywhere: the union is the image, the intersection the person.
    assert row["iou"] == pytest.approx(share, abs=1e-12)


def test_report_files_agree_with_each_other(folder, tmp_path):
    result = evaluate_model(red_channel_model(5.0), folder_examples(*folder))
    paths = write_report(result, tmp_path / "report", {"model": "red", "data": "folder"})
    with open(paths["per_image"]) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["key", *METRIC_NAMES] and len(rows) == 2
    summary = json.loads(paths["summary"].read_text())
    assert summary["images"] == 2 and summary["model"] == "red"
    for name in METRIC_NAMES:
        assert summary["metrics"][name] == pytest.approx(np.mean([float(r[name]) for r in rows]))


def test_cli_evaluates_a_saved_keras_model(folder, tmp_path):
    model_path = tmp_path / "lite.keras"
    build_u2net("lite").save(model_path)
    out = tmp_path / "cli"
    assert main(["evaluate", str(model_path), "--images", str(folder[0]),
                 "--masks", str(folder[1]), "--out", str(out), "--size", "64"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 2 and summary["protocol"] == "square-64"
    assert summary["model"].startswith("lite-md5:")
    assert set(summary["metrics"]) == set(METRIC_NAMES)


def test_cli_needs_exactly_one_data_source(tmp_path, capsys):
    assert main(["evaluate", "lite", "--out", str(tmp_path)]) == 2
    assert "either --data" in capsys.readouterr().err
