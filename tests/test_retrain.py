"""The retrain loop learns from new labels, as the weekly schedule and the label trigger run it.

The same flow parameters every time (the ``retrain`` deployment's: the smoke preset with
``init: champion``; here also a small evaluation size to keep the test short), with new
human-seg labels arranged into the same source between runs. Each run must train its whole
schedule on its own data in its own run folder; a run killed mid-training and started again
resumes itself, not an earlier run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.train_flow import TrainFlowParams, train_flow
from operations.registry import Registry
from pipelines.arrange import arrange_p3m
from tests.conftest import shared_path

# The deployment's ``init: champion``; a config file as MATTE_TRAIN_CONFIG names one, whose
# schedule covers every training pair (smoke's 4 fixed steps of 2 would see the same first
# records of each dataset and could give the same weights twice).
CONFIG = """base: smoke
steps_per_epoch: null
batch_per_replica: 8
image_size: 32
epochs: 1
eval_max_side: 128
"""
OVERRIDES = {"init": "champion"}


def params(root: Path, u2netp_onnx: Path) -> TrainFlowParams:
    config = root / "retrain.yaml"
    config.write_text(CONFIG)
    return TrainFlowParams(config=str(config), source=str(root / "p3m"),
                           data_root=str(root / "tfrecords"), run_dir=str(root / "runs"),
                           registry=str(root / "registry"), overrides=OVERRIDES,
                           baseline_weights=str(u2netp_onnx))


def weights_of(model_path: str) -> bytes:
    import zipfile

    with zipfile.ZipFile(model_path) as archive:
        return archive.read("model.weights.h5")


def train_steps(root: Path) -> int:
    """One epoch over the ingested training pairs, in global batches of 8."""
    manifest = json.loads((root / "tfrecords" / "manifest.json").read_text())
    return manifest["splits"]["train"]["pairs"] // 8


def checkpoints(root: Path) -> set[Path]:
    return set((root / "runs").glob("*/checkpoints/latest.json"))


@pytest.mark.slow
def test_each_retrain_trains_on_its_new_labels(tmp_path, u2netp_onnx, prefect_harness):
    human_seg = shared_path("human-seg-vikramshenoy")
    arrange_p3m(human_seg, tmp_path / "p3m", limit=60)
    first = train_flow(params(tmp_path, u2netp_onnx))
    assert first["resumed_from"] is None and first["steps"] == train_steps(tmp_path)

    arrange_p3m(human_seg, tmp_path / "p3m", limit=120)  # new labels arrived
    second = train_flow(params(tmp_path, u2netp_onnx))
    assert second["resumed_from"] is None and second["steps"] == train_steps(tmp_path)
    assert second["steps"] > first["steps"]  # the whole schedule, over the new pairs too
    assert second["run_dir"] != first["run_dir"]
    assert second["eval_key"] != first["eval_key"]  # evaluated on the grown validation split
    assert weights_of(second["run_dir"] + "/model.keras") != \
        weights_of(first["run_dir"] + "/model.keras")
    registry = Registry(str(tmp_path / "registry"))
    decisions = sorted((tmp_path / "registry" / "decisions").glob("*.json"))
    candidates = [json.loads(path.read_text())["candidate"] for path in decisions]
    assert candidates[-2:] == [first["version"], second["version"]]
    assert first["version"] != second["version"]
    # init champion: the second run started from whatever the first decision left in charge.
    assert json.loads((Path(second["run_dir"]) / "config.json").read_text())["init"] == \
        "champion"

    # A third retrain on more labels, killed after its first checkpoint, then run again.
    arrange_p3m(human_seg, tmp_path / "p3m", limit=160)
    before = checkpoints(tmp_path)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    command = [sys.executable, "-m", "flows.train_flow", str(tmp_path / "retrain.yaml"), "--source",
               str(tmp_path / "p3m"), "--data-root", str(tmp_path / "tfrecords"), "--run-dir",
               str(tmp_path / "runs"), "--registry", str(tmp_path / "registry"),
               "--baseline-weights", str(u2netp_onnx),
               *[f"--set={key}={json.dumps(value)}" for key, value in OVERRIDES.items()]]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not checkpoints(tmp_path) - before and process.poll() is None:
            assert time.monotonic() < deadline, "the third run never wrote a checkpoint"
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    (killed,) = checkpoints(tmp_path) - before
    killed_step = json.loads(killed.read_text())["step"]
    assert killed_step < train_steps(tmp_path), "the run finished before it could be killed"
    state = train_flow(params(tmp_path, u2netp_onnx), return_state=True)
    third = state.result()
    # The dashboard's state message says what was decided and why.
    verdict = "promoted" if third["decision"]["promoted"] else "not promoted"
    assert state.message == f"{third['version']} {verdict}: {third['decision']['reason']}"
    assert Path(third["run_dir"]) == killed.parent.parent
    assert third["resumed_from"] == killed_step and third["steps"] == train_steps(tmp_path)
    assert len(registry.versions()) >= 3
