"""rembg's surface on our model: model names, short flags, ``-`` for stdin/stdout, and the
Python API ``remove``/``new_session``, each pinned against the bytes ``matte i`` writes.

Small real photos (official U²-Net test images shrunk to <= 120 px) and U²-Net† with the
official weights from ../shared/data (skipped with the reason where it is absent)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.flags import MODEL_NAMES, output_options
from cli.main import build_parser, main
from model import weights
from model.api import new_session, remove
from model.imaging import decode_image
from model.outputs import OutputOptions
from model.refine import AlphaMatting

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def photo(official_testdata, tmp_path_factory) -> Path:
    image = Image.open(official_testdata / "test_images" / "girl.png").convert("RGB")
    image.thumbnail((120, 120))
    path = tmp_path_factory.mktemp("photo") / "girl.png"
    image.save(path)
    return path


@pytest.fixture(scope="module")
def session(u2netp_onnx):
    return new_session("u2netp", weights=u2netp_onnx)


def matte_i(photo: Path, out: Path, weights_file: Path, *flags: str) -> bytes:
    assert main(["i", str(photo), str(out), "--weights", str(weights_file), *flags]) == 0
    return out.read_bytes()


@pytest.mark.parametrize("flags, kwargs", [
    ([], {}),
    (["-a"], {"alpha_matting": True}),
    (["--fg"], {"estimate_foreground": True}),
    (["-bgc", "0", "0", "255", "100"], {"bgcolor": (0, 0, 255, 100)}),
], ids=["cutout", "alpha-matting", "foreground", "translucent-bgcolor"])
def test_remove_bytes_is_what_matte_i_writes(photo, session, u2netp_onnx, tmp_path, flags,
                                            kwargs):
    written = matte_i(photo, tmp_path / "out.png", u2netp_onnx, *flags)
    assert remove(photo.read_bytes(), session=session, **kwargs) == written
    with Image.open(io.BytesIO(written)) as image:
        assert image.mode == "RGBA" and image.size == Image.open(photo).size


def test_only_mask_short_and_long_flags_and_api_give_one_file(photo, session, u2netp_onnx,
                                                              tmp_path):
    short = matte_i(photo, tmp_path / "short.png", u2netp_onnx, "-om")
    long = matte_i(photo, tmp_path / "long.png", u2netp_onnx, "--only-mask")
    assert short == long == remove(photo.read_bytes(), session=session, only_mask=True)
    with Image.open(io.BytesIO(short)) as mask:
        assert mask.mode == "L"


def test_rembg_short_flags_parse_as_the_long_ones():
    parser = build_parser()
    short = parser.parse_args(["i", "a.jpg", "b.png", "-m", "u2netp", "-a", "-af", "200",
                               "-ab", "20", "-ae", "5", "-bgc", "0", "255", "0", "255"])
    long = parser.parse_args(["i", "a.jpg", "b.png", "--model", "lite", "--alpha-matting",
                              "--alpha-matting-foreground-threshold", "200",
                              "--alpha-matting-background-threshold", "20",
                              "--alpha-matting-erode-size", "5", "--bgcolor", "0,255,0"])
    assert short.model == long.model == "lite"
    assert output_options(short) == output_options(long) == OutputOptions(
        bgcolor=(0, 255, 0), alpha_matting=AlphaMatting(200, 20, 5))
    assert parser.parse_args(["i", "a", "b", "-m", "u2net"]).model == "full"
    assert parser.parse_args(["i", "a", "b", "-om"]).only_mask
    # The same flags reach `matte p` and `matte bucket` (one definition, cli/flags.py).
    folder = parser.parse_args(["p", "in", "out", "-a", "--fg", "-om"])
    assert output_options(folder) == OutputOptions(only_mask=True, estimate_foreground=True,
                                                   alpha_matting=AlphaMatting())


def test_bucket_takes_the_same_output_flags(tmp_path):
    from cli.bucket import parse

    options, _ = parse([str(tmp_path), str(tmp_path / "out"), "-m", "u2netp", "--fg", "-a",
                        "-ae", "4", "-bgc", "1", "2", "3", "4"])
    assert options.model == "lite"
    assert options.output == OutputOptions(bgcolor=(1, 2, 3, 4), estimate_foreground=True,
                                           alpha_matting=AlphaMatting(erode_size=4))


def test_unknown_model_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["i", "a", "b", "-m", "isnet-general-use"])
    assert exit_info.value.code == 2
    assert "unknown model 'isnet-general-use'" in capsys.readouterr().err


def test_stdin_and_stdout_give_the_file_bytes(photo, u2netp_onnx, tmp_path):
    """``matte i - -`` in its own process, as in a shell pipe."""
    written = matte_i(photo, tmp_path / "file.png", u2netp_onnx, "-om")
    piped = subprocess.run(
        [sys.executable, "-m", "cli.main", "i", "-", "-", "--weights", str(u2netp_onnx), "-om"],
        input=photo.read_bytes(), capture_output=True, timeout=300, cwd=ROOT, check=False)
    assert piped.returncode == 0, piped.stderr.decode()[-2000:]
    assert piped.stdout == written


def test_pil_and_numpy_inputs_come_back_as_their_own_kind(photo, session):
    encoded = remove(photo.read_bytes(), session=session)
    expected = np.asarray(Image.open(io.BytesIO(encoded)))
    with Image.open(photo) as image:
        as_pil = remove(image, session=session)
    assert isinstance(as_pil, Image.Image) and as_pil.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(as_pil), expected)
    as_array = remove(decode_image(photo.read_bytes()), session=session)
    assert isinstance(as_array, np.ndarray)
    np.testing.assert_array_equal(as_array, expected)
    mask = remove(decode_image(photo.read_bytes()), session=session, only_mask=True)
    np.testing.assert_array_equal(mask, expected[..., 3])
    with pytest.raises(TypeError, match="bytes, a PIL image or a numpy array"):
        remove("photo.jpg", session=session)


def test_model_names_map_onto_variants_and_cache_files(tmp_path, monkeypatch):
    assert set(MODEL_NAMES) == set(weights.MODEL_NAMES)  # the CLI lists what weights knows
    assert [weights.canonical_model(name) for name in ("u2netp", "u2net", "u2net_human_seg",
                                                       "lite", "full")] == [
        "lite", "full", "u2net_human_seg", "lite", "full"]
    home = tmp_path / "cache"
    home.mkdir()
    for name in ("u2netp.onnx", "u2net.onnx", "u2net_human_seg.onnx"):
        (home / name).write_bytes(b"stand-in")  # found by name; never loaded here
    monkeypatch.setenv("U2NET_HOME", str(home))
    assert weights.resolve_weights("u2netp") == home / "u2netp.onnx"
    assert weights.resolve_weights("u2net") == home / "u2net.onnx"
    assert weights.resolve_weights("u2net_human_seg") == home / "u2net_human_seg.onnx"


def test_absent_human_seg_weights_offline_is_one_clear_error(photo, tmp_path, monkeypatch,
                                                            capsys):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("U2NET_BASE_URL", "http://127.0.0.1:9/")  # discard port: refused
    with pytest.raises(weights.WeightsError, match=r"u2net_human_seg\.onnx.*--weights PATH"):
        new_session("u2net_human_seg")
    code = main(["i", str(photo), str(tmp_path / "out.png"), "-m", "u2net_human_seg"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "u2net_human_seg.onnx" in err and "U2NET_HOME" in err
    assert not (tmp_path / "out.png").exists()
