"""The model registry: versions, direction-aware promotion, refused pointers, local and gs://."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cli import training
from operations.registry import CHAMPION, Registry, RegistryError

EVAL = "P3M-500-P-0123abcd-p3m-max1600-x32"


def add_version(registry: Registry, tmp_path, name: str, **scores: float) -> str:
    """A registered version with an evaluation; the registry stores model bytes as given."""
    model = tmp_path / f"{name}.keras"
    model.write_bytes(f"model {name}".encode())
    version = registry.register(model, {"name": name}, "f" * 64, {"loss": b"\x89PNG fake"})
    metrics = {"iou": 0.5, "mad": 0.1, **scores}
    registry.record_evaluation(version, EVAL, {"metrics": metrics, "images": 3}, b"key,iou\n")
    return version


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


def test_first_version_becomes_champion(registry, tmp_path):
    version = add_version(registry, tmp_path, "a", iou=0.7)
    decision = registry.promote(version, EVAL, "iou")
    assert decision.promoted and decision.champion is None and decision.reason == "no champion yet"
    assert registry.champion() == version
    assert registry.model_uri().endswith(f"versions/{version}/model.keras")
    pointer = json.loads((tmp_path / "registry" / CHAMPION).read_text())
    assert pointer["score"] == 0.7 and pointer["previous"] is None
    assert registry.promote(version, EVAL, "iou").reason == "already the champion"


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
    assert registry.local_model().read_bytes() == b"model b"
    gcs_emulator.bucket("registry-test").blob(f"matting/{CHAMPION}").upload_from_string(b"[]")
    with pytest.raises(RegistryError, match="is corrupt"):
        registry.champion()


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


def test_training_commands_load_no_tensorflow_until_they_run():
    # `matte -h` builds every parser: registering `train` must not import TensorFlow.
    code = ("import sys, argparse; from cli import training; "
            "training.add_commands(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'operations.registry') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"
