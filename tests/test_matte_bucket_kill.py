"""Kill a run mid-way, rerun it: every output once, complete, and the done ones skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from cli.bucket import run
from pipelines.matte_bucket import counter
from tests.test_matte_bucket import outputs, run_records, write_photo

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("0002-01.jpg", "0003.jpg", "girl.png", "hockey.png", "im_01.png", "im_14.png",
          "im_21.png", "im_27.png")


def wait_for_partial_progress(process: subprocess.Popen, state: Path, total: int) -> None:
    """Return once some but not all outputs are recorded; fail if the run ends first."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        done = len(list(state.rglob("*.json"))) if state.is_dir() else 0
        if 2 <= done < total:
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended (rc {process.returncode}) with {done} of {total} done "
                        "before it could be killed")
        time.sleep(0.005)
    pytest.fail("no progress within 180 s")


@pytest.mark.slow
def test_rerun_after_a_kill_finishes_the_rest_exactly_once(tmp_path, official_testdata,
                                                          u2netp_onnx):
    root, out = tmp_path / "in", tmp_path / "out"
    for index, name in enumerate(PHOTOS):
        write_photo(official_testdata / "test_images" / name, root / f"p{index} {name}", 160)
    keys = sorted(f"p{index} {Path(name).stem}.png" for index, name in enumerate(PHOTOS))
    args = [str(root), str(out), "--weights", str(u2netp_onnx), "--min-batch-size", "1",
            "--max-batch-size", "1", "--writer-threads", "1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "bucket", *args, "--run-id", "killed"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_partial_progress(process, out / "_state", len(PHOTOS))
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    recorded = {path.relative_to(out / "_state").as_posix().removesuffix(".json")
                for path in (out / "_state").rglob("*.json")}
    assert 2 <= len(recorded) < len(PHOTOS)
    # The killed run may have left progress markers, never a summary or record shards.
    assert not (out / "_runs" / "killed" / "summary.json").exists()
    for key in outputs(out):  # whatever a killed run left under an output name is complete
        if not Path(key).name.startswith("."):  # a killed writer's temp file is hidden
            with Image.open(out / key) as image:
                image.load()

    result = run([*args, "--run-id", "rerun"])
    manifest, letters, summary = run_records(out, "rerun")
    assert letters == []
    assert sorted(record["output"] for record in manifest) == keys  # every key exactly once
    skipped = {record["output"] for record in manifest if record["status"] == "skipped"}
    assert skipped == recorded  # done ones skipped, the rest (incl. unrecorded writes) redone
    assert counter(result, "skipped") == len(recorded)
    assert counter(result, "ok") == len(PHOTOS) - len(recorded)
    assert outputs(out) == keys  # no duplicates, no leftover temp files
    for index, name in enumerate(PHOTOS):
        with Image.open(root / f"p{index} {name}") as source, \
                Image.open(out / f"p{index} {Path(name).stem}.png") as matted:
            matted.load()
            assert matted.mode == "RGBA" and matted.size == source.size
    assert summary["counts"]["ok"] + summary["counts"]["skipped"] == len(PHOTOS)
