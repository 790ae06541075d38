"""Output options are part of an output's "already done" record (``pipelines/planner.py``):
``matte p`` redoes a folder when they change, skips it when they do not, and writes what
``matte i`` and ``matte bucket`` write for each photo with the new options too."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cli.bucket import main as bucket_main
from cli.main import main


@pytest.fixture()
def folder(tmp_path, official_testdata) -> Path:
    root = tmp_path / "in"
    root.mkdir()
    for name in ("girl", "im_14"):
        image = Image.open(official_testdata / "test_images" / f"{name}.png").convert("RGB")
        image.thumbnail((96, 96))
        image.save(root / f"{name}.png")
    return root


def run_p(folder: Path, out: Path, weights: Path, capsys, *flags: str) -> str:
    assert main(["p", str(folder), str(out), "--weights", str(weights), *flags]) == 0
    return capsys.readouterr().out


def test_changed_output_options_redo_and_same_ones_skip(folder, u2netp_onnx, tmp_path, capsys):
    out = tmp_path / "out"
    assert "ok: 2  skipped: 0" in run_p(folder, out, u2netp_onnx, capsys, "--bgcolor", "white")
    # A colour is recorded as JSON (a list) and compared with the options (a tuple).
    assert "ok: 0  skipped: 2" in run_p(folder, out, u2netp_onnx, capsys, "--bgcolor", "white")
    assert "ok: 2  skipped: 0" in run_p(folder, out, u2netp_onnx, capsys, "-a", "--fg")
    assert "ok: 0  skipped: 2" in run_p(folder, out, u2netp_onnx, capsys, "-a", "--fg")
    assert "ok: 2  skipped: 0" in run_p(folder, out, u2netp_onnx, capsys, "-a", "-ae", "4",
                                        "--fg")
    # `matte bucket` (Beam) with the same flags writes the same bytes as `matte p`...
    bucket_out = tmp_path / "bucket"
    assert bucket_main([str(folder), str(bucket_out), "--weights", str(u2netp_onnx), "-a",
                        "-ae", "4", "--fg"]) == 0
    for photo in sorted(folder.iterdir()):
        assert (bucket_out / photo.name).read_bytes() == (out / photo.name).read_bytes()
        # ...and `matte i`, one photo at a time.
        single = tmp_path / f"single-{photo.name}"
        assert main(["i", str(photo), str(single), "--weights", str(u2netp_onnx), "-a", "-ae",
                     "4", "--fg"]) == 0
        assert (out / photo.name).read_bytes() == single.read_bytes(), photo.name
