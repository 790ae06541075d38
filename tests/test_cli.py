"""The ``matte`` CLI as a user runs it: one photo, a folder with bad files, eval."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.main import main
from model.imaging import decode_image, decode_mask


@pytest.fixture()
def photos(tmp_path, official_testdata) -> Path:
    """Three small real photos, in nested folders with awkward names, plus bad files."""
    root = tmp_path / "in"
    (root / "sub dir").mkdir(parents=True)
    for name, target in (("girl.png", "girl.png"), ("hockey.png", "sub dir/hockey é.png"),
                         ("im_14.png", "im_14.png")):
        image = Image.open(official_testdata / "test_images" / name).convert("RGB")
        image.thumbnail((120, 120))
        image.save(root / target)
    (root / "notes.txt").write_text("not a photo")
    (root / "empty.jpg").write_bytes(b"")
    good = (root / "im_14.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    return root


def test_single_image_gives_rgba_cutout_at_full_size(photos, u2netp_onnx, tmp_path):
    out = tmp_path / "girl.png"
    assert main(["i", str(photos / "girl.png"), str(out), "--weights", str(u2netp_onnx)]) == 0
    source = decode_image((photos / "girl.png").read_bytes())
    with Image.open(out) as result:
        assert result.mode == "RGBA"
        rgba = np.asarray(result)
    assert rgba.shape[:2] == source.shape[:2]
    alpha = rgba[:, :, 3]
    # The photo's own colours wherever anything shows, zeros under alpha 0 (as rembg).
    np.testing.assert_array_equal(rgba[alpha > 0, :3], source[alpha > 0])
    assert not rgba[alpha == 0, :3].any()
    assert alpha.min() < 30 and alpha.max() > 225  # a person on a background: both present


def test_folder_run_reports_failures_and_skips_done_files(photos, u2netp_onnx, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["p", str(photos), str(out), "--weights", str(u2netp_onnx), "--batch-size", "2"]
    assert main(args) == 1  # some inputs are bad
    report = capsys.readouterr().out
    assert "ok: 3  skipped: 0  failed: 3" in report
    assert "failed notes.txt: not an image" in report
    assert "failed empty.jpg: empty file" in report
    assert "failed truncated.png: truncated or corrupt" in report
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    cutouts = ["girl.png", "im_14.png", "sub dir/hockey é.png"]
    # Each cut-out and its "done" record (the planner's, shared with `matte bucket`).
    assert written == sorted([*cutouts, *(f"_state/{key}.json" for key in cutouts)])
    assert not list(out.rglob(".*"))  # no temp files left behind

    assert main(args) == 1
    assert "ok: 0  skipped: 3  failed: 3" in capsys.readouterr().out

    os.utime(photos / "girl.png")  # a newer source is done again
    assert main(args) == 1
    assert "ok: 1  skipped: 2  failed: 3" in capsys.readouterr().out


def test_only_mask_and_bgcolor(photos, u2netp_onnx, tmp_path):
    weights = ["--weights", str(u2netp_onnx)]
    mask_path, flat_path = tmp_path / "mask.png", tmp_path / "flat.jpg"
    assert main(["i", str(photos / "girl.png"), str(mask_path), "--only-mask", *weights]) == 0
    assert main(["i", str(photos / "girl.png"), str(flat_path), "--bgcolor", "#00ff00",
                 "--jpeg", *weights]) == 0
    mask = decode_mask(mask_path.read_bytes())
    flat = decode_image(flat_path.read_bytes())
    assert mask.shape == flat.shape[:2]
    background = mask < 5
    assert background.any()
    # Where alpha is ~0 the composite is the background colour (JPEG: within a few levels).
    assert np.abs(flat[background].astype(int) - [0, 255, 0]).mean() < 12


def test_bad_single_input_is_one_clear_error(tmp_path, u2netp_onnx, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    code = main(["i", str(bad), str(tmp_path / "o.png"), "--weights", str(u2netp_onnx)])
    assert code == 2
    assert f"{bad}: truncated or corrupt" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_eval_of_a_prediction_folder(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt = np.zeros((20, 20), np.uint8)
    gt[5:15, 5:15] = 255
    pred = gt.copy()
    pred[5:15, 5:10] = 0  # half the square missed: IoU 0.5, MAD 50/400
    Image.fromarray(gt).save(gt_dir / "a.png")
    Image.fromarray(pred).save(pred_dir / "a.png")
    report = tmp_path / "report"
    assert main(["evaluate", str(pred_dir), "--masks", str(gt_dir), "--out", str(report)]) == 0
    table = capsys.readouterr().out
    assert "       iou 0.5000" in table
    assert "       mad 0.1250" in table
    assert (report / "per_image.csv").read_text().startswith("key,sad,mse,mad")


def test_console_script_runs_as_installed(photos, u2netp_onnx, tmp_path):
    """The ``matte`` entry point, in its own process, as a user types it."""
    matte = shutil.which("matte", path=str(Path(sys.executable).parent))
    if matte is None:
        pytest.skip("the package is not installed in this interpreter's environment (make test)")
    out = tmp_path / "cli.png"
    result = subprocess.run([matte, "i", str(photos / "im_14.png"), str(out), "--weights",
                             str(u2netp_onnx)], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.is_file()


def test_export_to_onnx_and_keras_then_matte_with_it(u2netp_onnx, photos, tmp_path):
    import onnxruntime

    weights = ["--weights", str(u2netp_onnx)]
    assert main(["export", str(tmp_path / "m.onnx"), "--format", "onnx", *weights]) == 0
    assert main(["export", str(tmp_path / "m.keras"), "--format", "keras", *weights]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"),
                                           providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == "fused"
    official, exported = tmp_path / "official.png", tmp_path / "exported.png"
    assert main(["i", str(photos / "girl.png"), str(official), *weights]) == 0
    assert main(["i", str(photos / "girl.png"), str(exported), "--weights",
                 str(tmp_path / "m.keras")]) == 0
    a = np.asarray(Image.open(official)).astype(int)
    b = np.asarray(Image.open(exported)).astype(int)
    assert np.abs(a - b).max() <= 1  # same model through .keras: at most one level of rounding


def test_output_inside_input_with_relative_paths_is_never_reread(
        photos, u2netp_onnx, capsys, monkeypatch):
    monkeypatch.chdir(photos.parent)
    args = ["p", "in", "in/cutouts", "--weights", str(u2netp_onnx)]
    main(args)
    first = capsys.readouterr().out
    assert "ok: 3" in first
    main(args)
    second = capsys.readouterr().out
    assert "ok: 0  skipped: 3  failed: 3" in second  # the cut-outs were not taken as inputs
    assert not (photos / "cutouts" / "cutouts").exists()


def test_a_write_failure_is_reported_and_the_run_goes_on(photos, u2netp_onnx, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "girl.png").mkdir(parents=True)  # a folder where the cut-out should go
    code = main(["p", str(photos), str(out), "--weights", str(u2netp_onnx)])
    report = capsys.readouterr().out
    assert code == 1
    assert "ok: 2  skipped: 0  failed: 4" in report
    assert "failed girl.png: cannot write" in report
    assert (out / "im_14.png").is_file()


@pytest.mark.parametrize("command", [
    ["ingest", "{tmp}/nope", "{tmp}/out"],
    ["arrange-p3m", "{tmp}/nope", "{tmp}/out"],
    ["train", "smoke", "--data", "{tmp}/nope", "--run-dir", "{tmp}/out"],
    ["p", "{tmp}/nope", "{tmp}/out"],
    ["i", "{tmp}/nope.png", "{tmp}/out/x.png"],
    ["evaluate", "{tmp}/nope", "--masks", "{tmp}/nope"],
    ["bucket", "{tmp}", "{tmp}/out", "--runnr", "DirectRunner"],
    ["train", "smoke", "--data", "{tmp}", "--run-dir", "{tmp}/out", "--set", "epochs"],
])
def test_each_user_mistake_is_one_line_and_exit_2(tmp_path, capsys, command):
    """A missing path, an unknown option or a bad override: one line on stderr, exit 2, no
    traceback, and nothing left behind where the output would have gone."""
    code = main([arg.format(tmp=tmp_path) for arg in command])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"matte {command[0]}: error: ")
    assert not (tmp_path / "out").exists()


def test_a_photo_replaced_with_the_same_size_and_mtime_is_redone(tmp_path, official_testdata,
                                                                  u2netp_onnx, capsys):
    """``cp -p`` / ``rsync -a`` keep size and mtime; the file is still another photo."""
    photos, out = tmp_path / "in", tmp_path / "out"
    photos.mkdir()
    for name in ("girl", "im_14"):  # BMP: the same pixel size gives the same file size
        image = Image.open(official_testdata / "test_images" / f"{name}.png").convert("RGB")
        image.resize((96, 96)).save(tmp_path / f"{name}.bmp")
    target = photos / "photo.bmp"
    shutil.copy2(tmp_path / "girl.bmp", target)
    args = ["p", str(photos), str(out), "--weights", str(u2netp_onnx)]
    assert main(args) == 0
    first = (out / "photo.png").read_bytes()
    stat = target.stat()
    replacement = tmp_path / "replacement.bmp"
    shutil.copy2(tmp_path / "im_14.bmp", replacement)
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, target)
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "ok: 1" in capsys.readouterr().out
    assert (out / "photo.png").read_bytes() != first
    assert main(args) == 0 and "skipped: 1" in capsys.readouterr().out


def test_a_second_run_on_the_same_output_folder_fails_at_once(tmp_path, official_testdata,
                                                             u2netp_onnx, capsys):
    from storage import run_lock

    photos = tmp_path / "in"
    photos.mkdir()
    shutil.copy(official_testdata / "test_images" / "girl.png", photos)
    with run_lock(tmp_path / "out"):  # a run in progress
        code = main(["p", str(photos), str(tmp_path / "out"), "--weights", str(u2netp_onnx)])
        err = capsys.readouterr().err
        assert code == 2 and f"pid {os.getpid()}" in err and "another run" in err
        assert not (tmp_path / "out" / "girl.png").exists()
    assert main(["p", str(photos), str(tmp_path / "out"), "--weights", str(u2netp_onnx)]) == 0
    assert (tmp_path / "out" / "girl.png").is_file()


def test_an_output_whose_source_was_deleted_is_reported_and_pruned(tmp_path, official_testdata,
                                                                   u2netp_onnx, capsys):
    photos, out = tmp_path / "in", tmp_path / "out"
    photos.mkdir()
    for name in ("girl.png", "im_14.png"):
        Image.open(official_testdata / "test_images" / name).resize((64, 64)).save(photos / name)
    args = ["p", str(photos), str(out), "--weights", str(u2netp_onnx)]
    assert main(args) == 0
    (photos / "im_14.png").unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "orphaned im_14.png: its source is gone (--prune removes it)" in capsys.readouterr().out
    assert (out / "im_14.png").is_file()  # reported, not removed without asking
    assert main([*args, "--prune"]) == 0
    assert "removed im_14.png" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["_state/girl.png.json", "girl.png"]
    assert main(args) == 0 and "orphaned" not in capsys.readouterr().out


def test_a_folder_run_loads_no_library_it_does_not_use(photos, u2netp_onnx, tmp_path):
    """Start-up is part of every run's cost: once the model version is exported, ``matte p``
    of plain cut-outs never imports TensorFlow, scipy (alpha matting) or OpenCV (16-bit
    PNGs), ~0.3 s of CPU each run. (Exit 1: the folder has three bad files.)"""
    assert main(["p", str(photos), str(tmp_path / "first"), "--weights", str(u2netp_onnx)]) == 1
    code = ("import sys; from cli.main import main; "
            f"code = main(['p', {str(photos)!r}, {str(tmp_path / 'second')!r}, "
            f"'--weights', {str(u2netp_onnx)!r}]); "
            "print(code, sorted(m for m in ('tensorflow', 'keras', 'scipy', 'cv2') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=False, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "1 []"
    assert len(list((tmp_path / "second").rglob("*.png"))) == 3
