"""What time and change do to a nightly run: sources replaced while listed, sources deleted
between nights, two runs with different models racing on one gs:// output, a flow stopped by
its timeout. Real photos, real Beam runs, the GCS emulator, a real Prefect flow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from cli.bucket import run
from model.imaging import decode_image
from model.outputs import OutputOptions, render
from pipelines import run_records
from pipelines.matte_bucket import cancel_jobs, counter
from pipelines.planner import STATE_KEY
from storage import SourceChanged, crc32c, open_store
from tests.test_matte_bucket import write_photo

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("0002-01.jpg", "0003.jpg", "girl.png", "hockey.png", "im_01.png", "im_14.png",
          "im_21.png", "im_27.png")


def test_reads_are_pinned_to_the_listed_version(tmp_path, gcs_emulator):
    """A photo replaced between listing and reading is refused, not matted under the old
    version's state: on a folder and on gs://."""
    (tmp_path / "a.jpg").write_bytes(b"first")
    folder = open_store(tmp_path)
    (listed,) = folder.list()
    assert folder.read("a.jpg", expect=listed) == b"first"
    (tmp_path / "a.jpg").write_bytes(b"other")  # same size, new content
    with pytest.raises(SourceChanged):
        folder.read("a.jpg", expect=listed)

    gcs_emulator.create_bucket("pinned")
    bucket = open_store("gs://pinned/in")
    bucket.write("a.jpg", b"first")
    (listed,) = bucket.list()
    assert bucket.read("a.jpg", expect=listed) == b"first"
    bucket.write("a.jpg", b"other")
    with pytest.raises(SourceChanged):
        bucket.read("a.jpg", expect=listed)


@pytest.mark.slow
def test_outputs_of_deleted_sources_are_reported_then_pruned(tmp_path, official_testdata,
                                                            u2netp_onnx):
    root, out = tmp_path / "in", tmp_path / "out"
    for name in ("girl.png", "hockey.png", "im_01.png"):
        write_photo(official_testdata / "test_images" / name, root / name, 64)
    args = [str(root), str(out), "--weights", str(u2netp_onnx)]
    assert counter(run([*args, "--run-id", "one"]), "ok") == 3

    (root / "hockey.png").unlink()
    (root / "girl.png").rename(root / "renamed.png")
    result = run([*args, "--run-id", "two"])
    summary, _, _, orphans = run_records.read_all(str(out), "two")
    assert summary["counts"] == {"ok": 1, "skipped": 1, "failed": 0, "orphaned": 2}
    assert counter(result, "orphaned") == 2
    assert [(line["key"], line["source"]) for line in orphans] == [
        ("girl.png", "girl.png"), ("hockey.png", "hockey.png")]
    assert (out / "hockey.png").is_file()  # reported, kept without --prune

    run([*args, "--run-id", "three", "--prune"])
    summary, _, _, orphans = run_records.read_all(str(out), "three")
    assert summary["counts"]["orphaned"] == 2 and summary["orphans_pruned"]
    assert not (out / "hockey.png").exists() and not (out / "girl.png").exists()
    assert not (out / STATE_KEY.format("hockey.png")).exists()
    run([*args, "--run-id", "four"])
    assert run_records.read_all(str(out), "four")[0]["counts"] == {
        "ok": 0, "skipped": 2, "failed": 0, "orphaned": 0}
    assert not list((out / "_runs" / "four").rglob("progress/*"))  # gone at the run's end


def _other_weights(onnx_path: Path, target: Path) -> Path:
    """The official U²-Net† with its fused output's bias shifted: another model version whose
    alphas differ visibly."""
    graph = onnx.load(str(onnx_path))
    convs = [node for node in graph.graph.node if node.op_type == "Conv"]
    bias_name = convs[-1].input[2]
    for index, initializer in enumerate(graph.graph.initializer):
        if initializer.name == bias_name:
            bias = numpy_helper.to_array(initializer) + np.float32(1.5)
            graph.graph.initializer[index].CopyFrom(numpy_helper.from_array(bias, bias_name))
    onnx.save(graph, str(target))
    return target


@pytest.mark.slow
def test_two_runs_with_different_models_on_one_bucket_leave_outputs_matching_their_state(
        tmp_path, gcs_emulator, official_testdata, u2netp_onnx):
    """Two `matte bucket` processes with different weights race on one gs:// output. Every
    output whose state record names its current generation holds exactly the bytes of the
    model that record names; nothing else counts as done, and a third run makes it so."""
    from model.matting import Matter

    gcs_emulator.create_bucket("race")
    bucket = gcs_emulator.bucket("race")
    photos = {}
    for index, name in enumerate(PHOTOS * 2):
        write_photo(official_testdata / "test_images" / name, tmp_path / "p.png", 64)
        key = f"p{index:02d}.png"
        bucket.blob(f"in/{key}").upload_from_filename(tmp_path / "p.png")
        photos[key] = decode_image((tmp_path / "p.png").read_bytes())
    other = _other_weights(u2netp_onnx, tmp_path / "other.onnx")
    matters = {str(weights): Matter.load("lite", weights) for weights in (u2netp_onnx, other)}
    expected = {matter.version: {key: render(image, matter.predict_alpha([image])[0],
                                             OutputOptions())
                                 for key, image in photos.items()}
                for matter in matters.values()}
    assert len(expected) == 2

    def launch(weights: Path, run_id: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", "bucket", "gs://race/in", "gs://race/out",
             "--weights", str(weights), "--max-batch-size", "1", "--min-batch-size", "1",
             "--run-id", run_id], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first, second = launch(u2netp_onnx, "a"), launch(other, "b")
    for process in (first, second):
        output, _ = process.communicate(timeout=600)
        assert process.returncode in (0, 1), output[-3000:]  # 1: conflicts dead-lettered

    def vouched() -> dict[str, str]:
        """output key -> model version, for outputs their state record vouches for."""
        found = {}
        for key in photos:
            blob = bucket.get_blob(f"out/{key}")
            state_blob = bucket.get_blob(f"out/{STATE_KEY.format(key)}")
            if blob is None or state_blob is None:
                continue
            state = json.loads(state_blob.download_as_bytes())
            if state["output_version"] != f"generation:{blob.generation}":
                continue  # the state names another run's write: not done, redone next run
            data = blob.download_as_bytes()
            assert state["output_crc32c"] == crc32c(data), key
            assert data == expected[state["model_version"]][key], key
            found[key] = state["model_version"]
        return found

    vouched()
    for run_id in ("a", "b"):  # a loser's conflicts are dead letters that say so
        _, _, letters, _ = run_records.read_all("gs://race/out", run_id)
        assert all(letter["stage"] == "write" and "meanwhile" in letter["reason"]
                   for letter in letters), letters
    run(["gs://race/in", "gs://race/out", "--weights", str(u2netp_onnx), "--run-id", "c"])
    final = vouched()
    assert set(final) == set(photos)
    assert set(final.values()) == {matters[str(u2netp_onnx)].version}


@pytest.mark.slow
def test_a_flow_stopped_by_its_timeout_leaves_no_half_written_output(
        tmp_path, official_testdata, u2netp_onnx):
    """The nightly flow with a timeout far shorter than the night: it ends TimedOut (red);
    every output it left is a whole PNG, no temp file remains, and the next run finishes
    the rest, skipping what the stopped run recorded."""
    uploads, out = tmp_path / "uploads", tmp_path / "out"
    TOTAL = 200  # noqa: N806  (far more than the flow's 10 s allow on this machine)
    for index in range(TOTAL):
        name = PHOTOS[index % len(PHOTOS)]
        write_photo(official_testdata / "test_images" / name, uploads / f"p{index:03d}.png", 64)
    script = (
        "import sys\n"
        "from flows.matting_flow import MattingParams, matting_flow\n"
        "params = MattingParams(input_uri=sys.argv[1], output_uri=sys.argv[2], "
        "model=sys.argv[3], max_batch_size=1)\n"
        "state = matting_flow.with_options(timeout_seconds=float(sys.argv[4]))"
        "(params, return_state=True)\n"
        "print('STATE', state.name, state.type.value)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL", None)

    def flow(timeout_s: float) -> str:
        done = subprocess.run([sys.executable, "-c", script, str(uploads), str(out),
                               str(u2netp_onnx), str(timeout_s)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900)
        return done.stdout + done.stderr

    stopped = flow(10)
    assert "STATE TimedOut FAILED" in stopped, stopped[-3000:]
    leftovers = [path for path in out.rglob("*") if path.name.endswith(".tmp")]
    assert leftovers == []
    recorded = {path.relative_to(out / "_state").as_posix().removesuffix(".json")
                for path in (out / "_state").rglob("*.json")}
    outputs = sorted(path.name for path in out.iterdir() if path.is_file())
    assert len(outputs) < TOTAL  # stopped part way
    for name in outputs:
        with Image.open(out / name) as image:
            image.load()  # a half-written PNG fails here
            assert image.mode == "RGBA"

    finished = flow(900)
    assert "STATE Completed COMPLETED" in finished, finished[-3000:]
    (run_id,) = [path.name for path in (out / "_runs").iterdir()
                 if (path / "summary.json").exists()]
    counts = run_records.read_all(str(out), run_id)[0]["counts"]
    assert counts["skipped"] >= len(recorded) and counts["ok"] + counts["skipped"] == TOTAL
    assert sorted(path.name for path in out.iterdir() if path.is_file()) == \
        [f"p{index:03d}.png" for index in range(TOTAL)]


def test_cancelling_a_flow_run_cancels_only_its_own_recorded_job(tmp_path):
    """The on-cancellation hook finds the remote jobs its flow run recorded and no other."""
    records = run_records.folder(str(tmp_path), "r1")
    records.write("job.json", json.dumps({
        "runner": "DataflowPipelineResult", "job_id": "2026-12-02_01", "project": "p",
        "region": "europe-west4", "launched_by": "flow-run-1", "run_id": "r1"}).encode())
    assert cancel_jobs(str(tmp_path), "another-flow-run") == []
    assert cancel_jobs(str(tmp_path), "") == []
