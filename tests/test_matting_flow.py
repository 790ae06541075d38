"""The nightly-matting flow: artifacts, bad photos vs systemic errors, and a kill drill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from flows.matting_flow import (
    DEAD_LETTERS_KEY,
    SUMMARY_KEY,
    THUMBNAILS_KEY,
    MattingParams,
    check_systemic,
    matting_flow,
)
from tests.conftest import latest_artifact

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("0002-01.jpg", "0003.jpg", "girl.png", "hockey.png", "im_01.png", "im_14.png",
          "im_21.png", "im_27.png")


def _uploads(folder: Path, testdata: Path, names=PHOTOS, size: int = 128) -> list[str]:
    folder.mkdir(parents=True)
    for name in names:
        image = Image.open(testdata / "test_images" / name).convert("RGB")
        image.thumbnail((size, size))
        image.save(folder / f"{Path(name).stem}.png")
    return sorted(f"{Path(name).stem}.png" for name in names)


def test_run_publishes_artifacts_and_keeps_going_past_bad_photos(
        prefect_harness, tmp_path, official_testdata, u2netp_onnx):
    uploads = tmp_path / "uploads"
    _uploads(uploads, official_testdata, names=("girl.png", "hockey.png"))
    (uploads / "notes.txt").write_text("not a photo")
    params = MattingParams(input_uri=str(uploads), output_uri=str(tmp_path / "out"),
                           model=str(u2netp_onnx), thumbnails=2)
    result = matting_flow(params)
    assert result["counts"] == {"ok": 2, "skipped": 0, "failed": 1, "orphaned": 0}
    assert Path(result["report"]).is_file()

    summary = latest_artifact(SUMMARY_KEY).data
    assert '"ok": 2' in summary and '"failed": 1' in summary
    letters = latest_artifact(DEAD_LETTERS_KEY).data
    assert "notes.txt" in letters and "not an image" in letters
    thumbnails = latest_artifact(THUMBNAILS_KEY).data
    assert thumbnails.count("data:image/png;base64,") == 2

    again = matting_flow(params)  # nothing new: everything skipped, bad photo still reported
    assert again["counts"] == {"ok": 0, "skipped": 2, "failed": 1, "orphaned": 0}


def test_systemic_errors_fail_the_run_and_bad_photos_do_not():
    def summary(ok: int, skipped: int, **failed_by_stage: int) -> dict:
        return {"counts": {"ok": ok, "skipped": skipped,
                           "failed": sum(failed_by_stage.values())},
                "failed_by_stage": failed_by_stage}

    letters = [{"key": f"{name}.jpg", "stage": "inference", "reason": "model crashed"}
               for name in "ab"]
    with pytest.raises(RuntimeError, match=r"every photo failed at the model.*\(2; first: model"):
        check_systemic(summary(0, 0, inference=2), letters)
    # The verdict is the whole run's (the summary's counts), not the few letters shown.
    with pytest.raises(RuntimeError, match=r"\(5000; first"):
        check_systemic(summary(0, 0, inference=4000, write=1000), letters)
    check_systemic(summary(0, 0, inference=4000, decode=1), letters)  # a bad photo among them
    check_systemic(summary(3, 0, inference=2), letters)
    check_systemic(summary(0, 5, inference=2), letters)  # quiet night
    check_systemic(summary(0, 0, inference=1), letters[:1])  # one photo
    decode = [{"key": f"{name}.jpg", "stage": "decode", "reason": "empty file"} for name in "ab"]
    check_systemic(summary(0, 0, decode=2), decode)


def test_unusable_model_fails_the_run(prefect_harness, tmp_path, official_testdata):
    uploads = tmp_path / "uploads"
    _uploads(uploads, official_testdata, names=("girl.png",))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    state = matting_flow(MattingParams(input_uri=str(uploads), output_uri=str(tmp_path / "out"),
                                       model=str(broken)), return_state=True)
    assert state.is_failed()


def _flow_process(uploads: Path, out: Path, weights: Path, home: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)  # its own ephemeral API, as `make run`
    return subprocess.Popen([sys.executable, "-m", "flows.matting_flow", str(uploads), str(out),
                             "--model", str(weights)], cwd=REPO, env=env,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_killed_run_is_finished_by_the_next_run(tmp_path, official_testdata, u2netp_onnx):
    """The drill for a worker dying mid-run: kill the flow's process, run the flow again."""
    uploads, out = tmp_path / "uploads", tmp_path / "out"
    keys = _uploads(uploads, official_testdata, size=160)
    process = _flow_process(uploads, out, u2netp_onnx, tmp_path / "home")
    deadline = time.monotonic() + 300
    try:
        while True:
            done = len(list((out / "_state").rglob("*.json"))) if out.exists() else 0
            if 1 <= done < len(keys):
                break
            assert process.poll() is None, f"ended before the kill:\n{process.stdout.read()}"
            assert time.monotonic() < deadline, "no progress within 300 s"
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    recorded = {p.relative_to(out / "_state").as_posix().removesuffix(".json")
                for p in (out / "_state").rglob("*.json")}

    rerun = _flow_process(uploads, out, u2netp_onnx, tmp_path / "home")
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output[-3000:]
    assert "run report:" in output
    report = Path(output.split("run report: ")[1].split()[0])
    summary = json.loads(report.read_text())
    assert summary["counts"]["skipped"] == len(recorded)
    assert summary["counts"]["ok"] == len(keys) - len(recorded)
    written = sorted(p.name for p in out.iterdir() if p.is_file())
    assert written == keys  # every photo exactly once, no temp files left
    for key in keys:
        with Image.open(out / key) as image:
            image.load()
            assert image.mode == "RGBA"


def test_corrupted_champion_pointer_is_refused_and_the_last_champion_keeps_serving(
        prefect_harness, tmp_path, official_testdata, u2netp_onnx):
    from model.export import save_keras
    from model.weights import import_onnx
    from operations.registry import Registry, RegistryError

    registry = Registry(str(tmp_path / "registry"))
    model_file = save_keras(import_onnx(u2netp_onnx, batch_norm=False), tmp_path / "m.keras")
    version = registry.register(model_file, {"name": "official-lite"}, None)
    registry.record_evaluation(version, "val", {"metrics": {"iou": 0.8}})
    assert registry.promote(version, "val", "iou").promoted
    (tmp_path / "registry" / "champion.json").write_text("{ truncated")

    with pytest.raises(RegistryError):
        registry.champion()  # refused, with the reason, not silently replaced
    uploads = tmp_path / "uploads"
    _uploads(uploads, official_testdata, names=("girl.png",))
    state = matting_flow(MattingParams(input_uri=str(uploads), output_uri=str(tmp_path / "out"),
                                       model="champion", registry_uri=str(registry.root)),
                         return_state=True)
    # Red, with the reason, although the photos were matted by the last good champion.
    assert state.is_failed() and "champion pointer refused" in state.message
    (run,) = (tmp_path / "out" / "_runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["counts"]["ok"] == 1
    assert summary["model_version"].startswith("model-md5:")  # the registry's model.keras
    assert (tmp_path / "registry" / "champion.json").read_text() == "{ truncated"


def test_an_all_junk_night_and_an_empty_listing_are_red(prefect_harness, tmp_path,
                                                        official_testdata, u2netp_onnx):
    uploads, out = tmp_path / "uploads", tmp_path / "out"
    _uploads(uploads, official_testdata, names=("girl.png",))
    params = MattingParams(input_uri=str(uploads), output_uri=str(out), model=str(u2netp_onnx))
    assert matting_flow(params)["counts"]["ok"] == 1
    for index in range(12):  # a broken uploader: every new file is junk
        (uploads / f"junk{index:02d}.jpg").write_bytes(b"\xff\xd8 not a photo")
    state = matting_flow(params, return_state=True)
    assert state.is_failed() and "12 of 12 photos failed (> 50%)" in state.message
    # Below the minimum count the same ratio is a green night with dead letters.
    assert matting_flow(params.model_copy(update={"min_photos_for_ratio": 13}))["counts"] == \
        {"ok": 0, "skipped": 1, "failed": 12, "orphaned": 0}
    # A misconfigured prefix that lists nothing, after nights that found photos.
    empty = params.model_copy(update={"input_uri": str(tmp_path / "typo")})
    (tmp_path / "typo").mkdir()
    state = matting_flow(empty, return_state=True)
    assert state.is_failed() and "listed nothing, but the previous run" in state.message
    # A new, still empty bucket is not an alarm.
    fresh = empty.model_copy(update={"output_uri": str(tmp_path / "fresh-out")})
    assert matting_flow(fresh)["counts"] == {"ok": 0, "skipped": 0, "failed": 0, "orphaned": 0}


def test_rembg_model_names_and_soft_edge_options_match_the_cli(prefect_harness, tmp_path,
                                                              official_testdata, u2netp_onnx,
                                                              monkeypatch):
    """``model: u2netp`` (rembg's name, weights from $U2NET_HOME) with ``alpha_matting`` and
    then ``estimate_foreground``: each night's bytes are what ``matte i`` writes with -a/--fg,
    and changing the option redoes the photo."""
    from cli.main import main

    home = tmp_path / "u2net-home"
    home.mkdir()
    (home / "u2netp.onnx").symlink_to(u2netp_onnx)
    monkeypatch.setenv("U2NET_HOME", str(home))
    uploads, out = tmp_path / "uploads", tmp_path / "out"
    _uploads(uploads, official_testdata, names=("girl.png",), size=96)
    params = MattingParams(input_uri=str(uploads), output_uri=str(out), model="u2netp",
                           alpha_matting=True)
    assert matting_flow(params)["counts"]["ok"] == 1
    assert main(["i", str(uploads / "girl.png"), str(tmp_path / "a.png"), "-m", "u2netp",
                 "-a"]) == 0
    assert (out / "girl.png").read_bytes() == (tmp_path / "a.png").read_bytes()

    foreground = params.model_copy(update={"alpha_matting": False, "estimate_foreground": True})
    assert matting_flow(foreground)["counts"]["ok"] == 1  # other options: redone
    assert main(["i", str(uploads / "girl.png"), str(tmp_path / "fg.png"), "-m", "u2netp",
                 "--fg"]) == 0
    assert (out / "girl.png").read_bytes() == (tmp_path / "fg.png").read_bytes()
    assert (tmp_path / "fg.png").read_bytes() != (tmp_path / "a.png").read_bytes()
