"""The bucket pipeline end to end on real photos and bad files, on the pinned DirectRunner.

Helpers here are shared by the other tests/test_matte_bucket_*.py modules.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from PIL import Image

from cli.bucket import run
from cli.main import main as cli_main
from model.imaging import decode_image, decode_mask
from model.outputs import OutputOptions, render
from pipelines import run_records as records
from pipelines.matte_bucket import counter

GOOD = {  # key in the input folder -> official test photo
    "girl.png": "girl.png",
    "sub dir/hockey é.png": "hockey.png",
    "im_14.jpg": "im_14.png",
    "deep/x..y/im_21.png": "im_21.png",
    "dup.jpg": "im_27.png",
}
BAD = {  # key -> part of the dead letter's reason
    "empty.jpg": "empty file",
    "truncated.png": "truncated or corrupt",
    "notes.txt": "not an image",
    "bomb.png": "too large",
    "animated.gif": "animated image",
    "dup.png": "output dup.png is already written for dup.jpg",  # same output key
}


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims 10 gigapixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


def write_photo(source: Path, target: Path, max_side: int = 120) -> None:
    with Image.open(source) as image:
        photo = image.convert("RGB")
    photo.thumbnail((max_side, max_side))
    target.parent.mkdir(parents=True, exist_ok=True)
    photo.save(target)


def make_input(root: Path, official_testdata: Path, bad: bool = True) -> Path:
    for key, name in GOOD.items():
        write_photo(official_testdata / "test_images" / name, root / key)
    if bad:
        (root / "empty.jpg").write_bytes(b"")
        whole = (root / "girl.png").read_bytes()
        (root / "truncated.png").write_bytes(whole[: len(whole) // 2])
        (root / "notes.txt").write_text("not a photo")
        (root / "bomb.png").write_bytes(bomb_png())
        (root / "animated.gif").write_bytes(animated_gif())
        write_photo(official_testdata / "test_images" / "im_01.png", root / "dup.png")
        (root / ".hidden.jpg").write_bytes((root / "girl.png").read_bytes())
    return root


def read_jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines()]


def run_records(out: Path, run_id: str) -> tuple[list[dict], list[dict], dict]:
    summary, manifest, letters, _ = records.read_all(str(out), run_id)
    return manifest, letters, summary


def outputs(out: Path) -> list[str]:
    """Output keys: every file below ``out`` except the run records."""
    return sorted(path.relative_to(out).as_posix() for path in out.rglob("*")
                  if path.is_file() and path.relative_to(out).parts[0] not in ("_runs", "_state"))


@pytest.mark.slow
def test_folder_run_matches_the_cli_and_reruns_incrementally(tmp_path, official_testdata,
                                                            u2netp_onnx, lite_matter, capsys):
    root, out = make_input(tmp_path / "in", official_testdata), tmp_path / "out"
    args = [str(root), str(out), "--weights", str(u2netp_onnx), "--max-batch-size", "4"]
    result = run([*args, "--run-id", "first"])

    expected = sorted(key.rsplit(".", 1)[0] + ".png" for key in GOOD)
    assert outputs(out) == expected
    manifest, letters, summary = run_records(out, "first")
    assert {letter["key"]: letter["reason"] for letter in letters}.keys() == BAD.keys()
    for letter in letters:
        assert BAD[letter["key"]] in letter["reason"], letter
    assert [record["key"] for record in manifest] == sorted(GOOD)
    assert {record["model_version"] for record in manifest} == {lite_matter.version}
    assert all(set(r["timings_ms"]) == {"read", "decode", "inference", "render", "write"}
               for r in manifest)
    assert summary["counts"] == {"ok": len(GOOD), "skipped": 0, "failed": len(BAD),
                                 "orphaned": 0}
    assert summary["model_version"] == lite_matter.version

    # Beam metrics, read from the PipelineResult.
    assert counter(result, "ok") == len(GOOD) and counter(result, "failed") == len(BAD)
    assert counter(result, "read") == len(GOOD) + 5  # the decode failures were read too
    query = MetricsFilter().with_namespace("matte_bucket")
    latencies = {d.key.metric.name: d.committed for d in
                 result.metrics().query(query)["distributions"]}
    for stage in ("read", "decode", "inference", "render", "write"):
        assert latencies[f"{stage}_latency_us"].count >= len(GOOD), stage

    # One implementation: `matte i` writes the same bytes for the same photo.
    for key in ("girl.png", "sub dir/hockey é.png", "im_14.jpg"):
        cli_out = tmp_path / "cli" / (Path(key).stem + ".png")
        cli_out.parent.mkdir(exist_ok=True)
        assert cli_main(["i", str(root / key), str(cli_out), "--weights", str(u2netp_onnx)]) == 0
        pipeline_out = out / (key.rsplit(".", 1)[0] + ".png")
        assert pipeline_out.read_bytes() == cli_out.read_bytes(), key
        rgba = np.asarray(Image.open(pipeline_out))
        visible = rgba[..., 3] > 0  # RGB is the photo's where alpha > 0, else zero
        np.testing.assert_array_equal(rgba[visible, :3],
                                      decode_image((root / key).read_bytes())[visible])
        assert not rgba[~visible, :3].any()

    # Nothing was written outside OUT_URI (the CLI's own outputs aside).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli", "in", "out"]

    # `matte p` plans with the same planner: the same output keys, bytes and dead letters...
    folder_out = tmp_path / "p"
    capsys.readouterr()
    assert cli_main(["p", str(root), str(folder_out), "--weights", str(u2netp_onnx)]) == 1
    printed = capsys.readouterr().out
    assert outputs(folder_out) == expected
    for key in expected:
        assert (folder_out / key).read_bytes() == (out / key).read_bytes(), key
    assert f"ok: {len(GOOD)}  skipped: 0  failed: {len(BAD)}" in printed
    for key, reason in BAD.items():
        assert f"failed {key}: " in printed and reason in printed, key
    # ...and the same "done" records: the bucket job finds nothing left to do there.
    result = run([str(root), str(folder_out), "--weights", str(u2netp_onnx), "--run-id", "p"])
    assert counter(result, "skipped") == len(GOOD) and counter(result, "ok") == 0
    shutil.rmtree(folder_out)

    os.utime(root / "girl.png")  # a changed source is redone, the rest skipped
    result = run([*args, "--run-id", "second"])
    manifest, letters, summary = run_records(out, "second")
    assert summary["counts"] == {"ok": 1, "skipped": len(GOOD) - 1, "failed": len(BAD),
                                 "orphaned": 0}
    assert [r["key"] for r in manifest if r["status"] == "ok"] == ["girl.png"]
    assert counter(result, "skipped") == len(GOOD) - 1
    assert outputs(out) == expected


@pytest.mark.slow
def test_multi_processing_with_two_workers_and_a_shared_model(tmp_path, official_testdata,
                                                              u2netp_onnx, lite_matter,
                                                              monkeypatch):
    # Beam's model sharing leaves *.address/*.lock files in the temp folder: keep them here.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    root, out = make_input(tmp_path / "in", official_testdata, bad=False), tmp_path / "out"
    out.mkdir()
    (out / "deep").write_text("a file where the output needs a folder: that write fails")
    # Two SDK worker processes sharing one model process, as on a GPU worker (--share-model).
    result = run([str(root), str(out), "--weights", str(u2netp_onnx), "--only-mask",
                  "--direct_running_mode", "multi_processing", "--direct_num_workers", "2",
                  "--share-model", "--run-id", "mp"])
    unwritable = "deep/x..y/im_21.png"
    assert counter(result, "ok") == len(GOOD) - 1 and counter(result, "failed") == 1
    options = OutputOptions(only_mask=True)
    for key in set(GOOD) - {unwritable}:
        image = decode_image((root / key).read_bytes())
        expected = render(image, lite_matter.predict_alpha([image])[0], options)
        written = (out / (key.rsplit(".", 1)[0] + ".png")).read_bytes()
        assert written == expected, key
        assert decode_mask(written).shape == image.shape[:2]
    _, letters, summary = run_records(out, "mp")
    assert [(letter["key"], letter["stage"]) for letter in letters] == [(unwritable, "write")]
    assert summary["counts"] == {"ok": len(GOOD) - 1, "skipped": 0, "failed": 1,
                                 "orphaned": 0}
