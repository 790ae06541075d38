"""The model registry: versions named by their weights, create-only version folders, models
checked on load, direction-aware promotion with a margin and a photo minimum, local and gs://."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from cli import training
from model.export import save_keras
from model.u2net import build_u2net
from operations.registry import CHAMPION, Registry, RegistryError

EVAL = "P3M-500-P-0123abcd-p3m-max1600-x32"


def tiny_model(path: Path, name: str) -> Path:
    """A real, tiny ``.keras`` whose weights follow from ``name`` (a fresh model each call, so
    its auto-generated layer names differ between calls, as they do between processes)."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:6], 16)
    model.layers[0].set_weights([np.full((2, 1), seed, "float32"), np.zeros(1, "float32")])
    return save_keras(model, path)


def add_version(registry: Registry, tmp_path, name: str, photos: int | None = 3,
                **scores: float) -> str:
    """A registered version with an evaluation over ``photos`` photos; its weights follow from
    ``name``, so the same name is the same version."""
    model = tiny_model(tmp_path / f"{name}.keras", name)
    version = registry.register(model, {"name": name}, "f" * 64, {"loss": b"\x89PNG fake"})
    metrics = {"iou": 0.5, "mad": 0.1, **scores}
    summary = {"metrics": metrics} if photos is None else {"metrics": metrics, "images": photos}
    registry.record_evaluation(version, EVAL, summary, b"key,iou\n")
    return version


@pytest.fixture(scope="module")
def lite_model():
    return build_u2net("lite", (32, 32, 3))


@pytest.fixture
def registry(tmp_path):
    return Registry(str(tmp_path / "registry"))


def test_register_writes_a_complete_version_once(registry, tmp_path):
    first = add_version(registry, tmp_path, "a")
    created = json.loads((tmp_path / "registry/versions" / first / "version.json").read_text())
    again = add_version(registry, tmp_path, "a")  # a retried task: same file, same version
    assert again == first and registry.versions() == [first]
    folder = tmp_path / "registry" / "versions" / first
    names = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    assert names == {"model.keras", "config.json", "data.json", "version.json", "plots/loss.png",
                     f"eval/{EVAL}/summary.json", f"eval/{EVAL}/per_image.csv"}
    assert json.loads((folder / "version.json").read_text()) == created
    assert json.loads((folder / "data.json").read_text()) == {"manifest_sha256": "f" * 64}


def test_the_same_weights_saved_twice_are_one_version(registry, tmp_path, lite_model):
    first = save_keras(lite_model, tmp_path / "first.keras")
    time.sleep(1.1)  # metadata.json records the save time in seconds: the bytes differ
    second = save_keras(lite_model, tmp_path / "second.keras")
    assert first.read_bytes() != second.read_bytes()
    version = registry.register(first, {"name": "lite"}, None)
    assert registry.register(second, {"name": "lite"}, None) == version
    assert registry.versions() == [version]
    folder = tmp_path / "registry" / "versions" / version
    assert (folder / "model.keras").read_bytes() == first.read_bytes()  # the first file kept
    record = json.loads((folder / "version.json").read_text())
    assert record["model_sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()

    # Other weights (a tiny model: a third save of the lite one would take seconds).
    one, other = (registry.register(tiny_model(tmp_path / f"{name}.keras", name), {}, None)
                  for name in ("one", "other"))
    assert len({version, one, other}) == 3


def test_a_version_folder_is_never_rewritten(registry, tmp_path):
    version = add_version(registry, tmp_path, "a")
    folder = tmp_path / "registry" / "versions" / version
    before = {path: path.read_bytes() for path in folder.glob("*.json")}
    model = tiny_model(tmp_path / "again.keras", "a")  # the same weights, other file bytes
    # The same weights from another config or dataset: the same version, its files kept, the
    # other provenance recorded beside them.
    assert registry.register(model, {"name": "other settings"}, "f" * 64) == version
    assert registry.register(model, {"name": "a"}, "e" * 64) == version
    assert {path: path.read_bytes() for path in folder.glob("*.json")} == before
    others = [json.loads(path.read_text()) for path in (folder / "registrations").glob("*")]
    assert sorted(record["data_manifest_sha256"] for record in others) == ["e" * 64, "f" * 64]
    # An interrupted upload (no version.json) is completed by the retry, keeping its model.
    stored = (folder / "model.keras").read_bytes()
    (folder / "version.json").unlink()
    assert registry.register(model, {"name": "a"}, "f" * 64) == version
    assert (folder / "model.keras").read_bytes() == stored
    record = json.loads((folder / "version.json").read_text())
    assert record["model_sha256"] == hashlib.sha256(stored).hexdigest()
    (tmp_path / "not.keras").write_bytes(b"not a zip")
    with pytest.raises(RegistryError, match="not a .keras model file"):
        registry.register(tmp_path / "not.keras", {"name": "x"}, None)


def test_a_changed_model_file_is_refused_on_load(registry, tmp_path):
    version = add_version(registry, tmp_path, "a")
    registry.promote(version, EVAL, "iou")
    assert registry.local_model().read_bytes() == (tmp_path / "a.keras").read_bytes()
    model = tmp_path / "registry" / "versions" / version / "model.keras"
    model.write_bytes(model.read_bytes()[:-1] + b"x")
    actual = hashlib.sha256(model.read_bytes()).hexdigest()
    for load in (registry.local_model, registry.model_uri):
        with pytest.raises(RegistryError, match=f"version {version}: .* has sha256 {actual}, "
                           "but version.json registered [0-9a-f]{64}; the model was changed"):
            load(version)
    assert registry.model_uri(version, verify=False).endswith("model.keras")


def test_first_version_becomes_champion(registry, tmp_path):
    version = add_version(registry, tmp_path, "a", iou=0.7)
    decision = registry.promote(version, EVAL, "iou")
    assert decision.promoted and decision.champion is None and decision.reason == "no champion yet"
    assert (decision.rule, decision.photos, decision.margin) == ("no champion", 3, 0.0)
    assert registry.champion() == version
    assert registry.model_uri().endswith(f"versions/{version}/model.keras")
    pointer = json.loads((tmp_path / "registry" / CHAMPION).read_text())
    assert pointer["score"] == 0.7 and pointer["previous"] is None
    again = registry.promote(version, EVAL, "iou")
    assert (again.promoted, again.rule, again.reason) == (False, "already champion",
                                                          "already the champion")


@pytest.mark.parametrize(("metric", "better", "worse"), [
    ("iou", {"iou": 0.8}, {"iou": 0.6}),  # higher is better
    ("mad", {"mad": 0.05}, {"mad": 0.2}),  # lower is better
])
def test_promotion_is_direction_aware_and_recorded(registry, tmp_path, metric, better, worse):
    champion = add_version(registry, tmp_path, "champion", iou=0.7, mad=0.1)
    registry.promote(champion, EVAL, metric)
    worse_version = add_version(registry, tmp_path, "worse", **worse)
    refused = registry.promote(worse_version, EVAL, metric)
    assert not refused.promoted and registry.champion() == champion
    assert (refused.candidate_score, refused.champion_score) == (worse[metric],
                                                                 {"iou": 0.7, "mad": 0.1}[metric])
    better_version = add_version(registry, tmp_path, "better", **better)
    accepted = registry.promote(better_version, EVAL, metric)
    assert accepted.promoted and accepted.champion == champion
    assert registry.champion() == better_version
    decisions = [json.loads(path.read_text())
                 for path in sorted((tmp_path / "registry" / "decisions").glob("*.json"))]
    assert [(d["candidate"], d["promoted"]) for d in decisions][-2:] == [
        (worse_version, False), (better_version, True)]


def test_an_equal_score_does_not_replace_the_champion(registry, tmp_path):
    champion = add_version(registry, tmp_path, "a", iou=0.7)
    registry.promote(champion, EVAL, "iou")
    assert not registry.promote(add_version(registry, tmp_path, "b", iou=0.7), EVAL, "iou").promoted


def test_promotion_needs_the_margin_in_the_metrics_direction(registry, tmp_path):
    champion = add_version(registry, tmp_path, "champion", iou=0.869, mad=0.1)
    registry.promote(champion, EVAL, "iou", margin=0.005)
    close = add_version(registry, tmp_path, "close", iou=0.871, mad=0.0999)
    refused = registry.promote(close, EVAL, "iou", margin=0.005)
    assert (refused.promoted, refused.rule, refused.margin) == (False, "margin", 0.005)
    assert refused.reason == "iou 0.871 vs 0.869: better by 0.002 < margin 0.005"
    assert not registry.promote(close, EVAL, "mad", margin=0.001).promoted  # min is better
    exact = registry.promote(close, EVAL, "iou", margin=0.002)  # 0.871 - 0.869 is 0.002
    assert exact.promoted and exact.reason == "iou 0.871 vs 0.869: better by 0.002 >= margin 0.002"
    assert registry.champion() == close


def test_promotion_needs_enough_evaluated_photos(registry, tmp_path):
    few = add_version(registry, tmp_path, "few", photos=3, iou=0.9)
    decision = registry.promote(few, EVAL, "iou", min_photos=10)
    assert (decision.promoted, decision.rule, decision.photos) == (False, "too few photos", 3)
    assert decision.reason == "the evaluation records 3 photos; at least 10 are needed"
    assert registry.champion() is None  # not even as the first champion
    uncounted = add_version(registry, tmp_path, "uncounted", photos=None, iou=0.9)
    assert registry.promote(uncounted, EVAL, "iou", min_photos=2).rule == "too few photos"
    assert registry.promote(uncounted, EVAL, "iou").promoted  # no minimum asked
    enough = add_version(registry, tmp_path, "enough", photos=10, iou=0.95)
    assert registry.promote(enough, EVAL, "iou", min_photos=10).promoted
    with pytest.raises(RegistryError, match="margin must be >= 0"):
        registry.promote(enough, EVAL, "iou", margin=-0.1)


def test_comparison_needs_both_evaluated_on_the_same_data(registry, tmp_path):
    champion = add_version(registry, tmp_path, "a")
    registry.promote(champion, EVAL, "iou")
    candidate = add_version(registry, tmp_path, "b")
    registry.record_evaluation(candidate, "other-data", {"metrics": {"iou": 0.9}})
    with pytest.raises(RegistryError, match="champion .* has no evaluation 'other-data'"):
        registry.promote(candidate, "other-data", "iou")
    assert registry.champion() == champion


@pytest.mark.parametrize(("content", "message"), [
    (b"{not json", "is corrupt"),
    (b'{"metric": "iou"}', "is corrupt"),
    (b'{"version": "0123456789abcdef"}', "points at a missing version"),
])
def test_an_untrustworthy_champion_pointer_is_refused(registry, tmp_path, content, message):
    candidate = add_version(registry, tmp_path, "a")
    (tmp_path / "registry" / CHAMPION).write_bytes(content)
    with pytest.raises(RegistryError, match=message):
        registry.champion()
    with pytest.raises(RegistryError, match=message):
        registry.promote(candidate, EVAL, "iou")
    assert (tmp_path / "registry" / CHAMPION).read_bytes() == content  # left for a human


def test_last_good_champion_survives_a_broken_pointer(registry, tmp_path):
    assert registry.last_good_champion() is None
    first = add_version(registry, tmp_path, "a", iou=0.6)
    second = add_version(registry, tmp_path, "b", iou=0.9)
    registry.promote(first, EVAL, "iou")
    registry.promote(second, EVAL, "iou")
    registry.promote(add_version(registry, tmp_path, "c", iou=0.1), EVAL, "iou")  # refused
    (tmp_path / "registry" / CHAMPION).write_bytes(b"{broken")
    assert registry.last_good_champion() == second
    shutil.rmtree(tmp_path / "registry" / "versions" / second)  # a deleted version is skipped
    assert registry.last_good_champion() == first


def test_concurrent_promotions_end_with_the_best_version(registry, tmp_path, monkeypatch):
    versions = [add_version(registry, tmp_path, f"v{i}", iou=0.5 + i / 100) for i in range(6)]
    read_pointer = Registry._champion_entry

    def slow_read_pointer(self):
        pointer = read_pointer(self)
        time.sleep(0.05)  # slow storage: every thread reads before any writes, unless locked
        return pointer

    monkeypatch.setattr(Registry, "_champion_entry", slow_read_pointer)
    start = threading.Barrier(len(versions))

    def promote(version):
        start.wait()
        registry.promote(version, EVAL, "iou")

    order = random.Random(0).sample(versions, len(versions))
    threads = [threading.Thread(target=promote, args=(version,)) for version in order]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.champion() == versions[-1]
    decisions = [json.loads(path.read_text())
                 for path in (tmp_path / "registry" / "decisions").glob("*.json")]
    replaced = [decision["champion"] for decision in decisions if decision["promoted"]]
    # Serialised swaps replace each champion at most once; racing ones replace one twice.
    assert len(replaced) == len(set(replaced)) and replaced.count(None) == 1
    for decision in decisions:  # every swap replaced a worse champion than the candidate
        if decision["promoted"] and decision["champion_score"] is not None:
            assert decision["candidate_score"] > decision["champion_score"]


def test_registry_on_gcs(gcs_emulator, tmp_path):
    gcs_emulator.create_bucket("registry-test")
    registry = Registry("gs://registry-test/matting")
    first = add_version(registry, tmp_path, "a", iou=0.6)
    second = add_version(registry, tmp_path, "b", iou=0.9)
    assert registry.promote(first, EVAL, "iou").promoted
    assert registry.promote(second, EVAL, "iou").promoted
    assert registry.champion() == second and set(registry.versions()) == {first, second}
    assert registry.model_uri() == f"gs://registry-test/matting/versions/{second}/model.keras"
    assert registry.local_model().read_bytes() == (tmp_path / "b.keras").read_bytes()
    gcs_emulator.bucket("registry-test").blob(f"matting/{CHAMPION}").upload_from_string(b"[]")
    with pytest.raises(RegistryError, match="is corrupt"):
        registry.champion()


def test_a_changed_model_on_gcs_or_in_the_download_cache_is_refused(gcs_emulator, tmp_path):
    gcs_emulator.create_bucket("registry-tamper")
    registry = Registry("gs://registry-tamper/matting")
    version = add_version(registry, tmp_path, "a")
    cached = registry.local_model(version)
    cached.write_bytes(b"damaged in the cache")
    with pytest.raises(RegistryError, match=f"version {version}: .*local copy .* has sha256"):
        registry.local_model(version)
    assert registry.local_model(version).read_bytes() == (tmp_path / "a.keras").read_bytes()
    blob = gcs_emulator.bucket("registry-tamper").blob(f"matting/versions/{version}/model.keras")
    blob.upload_from_string(b"replaced in the bucket")
    with pytest.raises(RegistryError, match="the model was changed or damaged"):
        registry.model_uri(version)


def run_promote(*argv: str) -> int:
    """``matte promote`` through ``cli.training``'s parser alone, as ``cli.main`` runs it."""
    parser = argparse.ArgumentParser(prog="matte")
    training.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["promote", *argv])
    return args.handler(args)


def test_promote_command_exits_3_when_the_champion_is_kept(registry, tmp_path, capsys):
    champion = add_version(registry, tmp_path, "a", iou=0.7)
    worse = add_version(registry, tmp_path, "b", iou=0.6)
    assert run_promote(registry.root, champion, "--eval-key", EVAL) == 0
    capsys.readouterr()
    assert run_promote(registry.root, worse, "--eval-key", EVAL, "--metric", "iou") == 3
    printed = json.loads(capsys.readouterr().out)  # the decision, for the calling script
    assert (printed["candidate"], printed["promoted"]) == (worse, False)
    assert registry.champion() == champion


def test_promote_command_takes_a_margin_and_a_photo_minimum(registry, tmp_path, capsys):
    champion = add_version(registry, tmp_path, "a", iou=0.7)
    better = add_version(registry, tmp_path, "b", photos=12, iou=0.71)
    assert run_promote(registry.root, champion, "--eval-key", EVAL) == 0
    assert run_promote(registry.root, better, "--eval-key", EVAL, "--margin", "0.05") == 3
    assert run_promote(registry.root, better, "--eval-key", EVAL, "--min-photos", "20") == 3
    capsys.readouterr()
    assert run_promote(registry.root, better, "--eval-key", EVAL, "--margin", "0.01",
                       "--min-photos", "12") == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["rule"], printed["margin"], printed["photos"]) == ("margin", 0.01, 12)
    assert registry.champion() == better


def test_training_commands_load_no_tensorflow_until_they_run():
    # `matte -h` builds every parser: registering `train` must not import TensorFlow.
    code = ("import sys, argparse; from cli import training; "
            "training.add_commands(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'operations.registry') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"


def run_command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="matte")
    training.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.handler(args)


def test_register_command_files_a_run_folder_and_its_evaluations(registry, tmp_path, capsys):
    from model.evaluate import EvalResult, evaluation_key, write_report
    from model.metrics import METRIC_NAMES
    from model.weights import weights_version

    data_root = tmp_path / "shards"
    data_root.mkdir()
    (data_root / "manifest.json").write_text(json.dumps({"splits": {}}))
    run = tmp_path / "run"
    model = tiny_model(run / "model.keras", "trained")
    (run / "config.json").write_text(json.dumps({"name": "portrait_lite"}))
    (run / "data.json").write_text(json.dumps({"manifest_sha256": "e" * 64}))
    rows = [{"key": "1", **dict.fromkeys(METRIC_NAMES, 0.04), "iou": 0.9}]
    evaluation = tmp_path / "eval"
    write_report(EvalResult("square-320", rows), evaluation,
                 {"model": weights_version(model), "data": f"{data_root}#P3M-500-NP"})
    assert run_command("register", registry.root, str(run), "--eval", str(evaluation)) == 0
    (version,) = registry.versions()
    assert f"version {version}" in capsys.readouterr().out
    from model.data import manifest_sha256

    key = evaluation_key("P3M-500-NP", manifest_sha256(str(data_root)), "square-320")
    assert registry.evaluation(version, key)["metrics"]["iou"] == pytest.approx(0.9)
    assert json.loads((tmp_path / "registry/versions" / version / "data.json").read_text()) == \
        {"manifest_sha256": "e" * 64}
    assert run_promote(registry.root, version, "--eval-key", key) == 0
    # An evaluation of another model is not filed under this version.
    other = tmp_path / "other-eval"
    write_report(EvalResult("square-320", rows), other,
                 {"model": "u2netp-md5:0123456789ab", "data": f"{data_root}#P3M-500-NP"})
    with pytest.raises(ValueError, match="evaluated u2netp-md5"):
        run_command("register", registry.root, str(run), "--eval", str(other))
