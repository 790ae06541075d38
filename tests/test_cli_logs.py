"""Library log noise: a real ``matte`` process prints none of TensorFlow's, absl's, oneDNN's or
Beam's lines by default, and ``matte -v`` brings them back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.logs import BEAM_NOISE, NOISE


def run_bucket(matte: str, photo: Path, u2netp_onnx: Path, tmp_path: Path,
               verbose: bool) -> str:
    """``matte bucket`` on one photo with an empty weights cache: the ONNX export imports
    TensorFlow, and RunInference loading the model makes Beam's resource warning."""
    folder = tmp_path / f"in-{verbose}"
    folder.mkdir()
    shutil.copy(photo, folder / photo.name)
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CPP_MIN_LOG_LEVEL", "ABSL_MIN_LOG_LEVEL")}
    env["U2NET_HOME"] = str(tmp_path / f"home-{verbose}")
    out = tmp_path / f"out-{verbose}"
    result = subprocess.run(
        [matte, *(["-v"] if verbose else []), "bucket", str(folder), str(out),
         "--weights", str(u2netp_onnx)],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "im_14.png").is_file()
    assert list((tmp_path / f"home-{verbose}" / "onnx").glob("*.onnx")), "no export was made"
    return result.stderr


@pytest.mark.slow
def test_library_logs_are_quiet_by_default_and_back_with_verbose(official_testdata,
                                                                  u2netp_onnx, tmp_path):
    matte = shutil.which("matte", path=str(Path(sys.executable).parent))
    if matte is None:
        pytest.skip("the package is not installed in this interpreter's environment (make test)")
    photo = official_testdata / "test_images" / "im_14.png"

    quiet = run_bucket(matte, photo, u2netp_onnx, tmp_path, verbose=False)
    noisy = [line for line in quiet.splitlines()
             if NOISE.match(line) or BEAM_NOISE in line or "oneDNN" in line or "absl" in line]
    assert noisy == [], quiet[-3000:]

    verbose = run_bucket(matte, photo, u2netp_onnx, tmp_path, verbose=True)
    # TensorFlow's INFO records and Beam's warning are back. Which records depends on the
    # machine: oneDNN's notice only where TF turns oneDNN on (Intel CPUs, not this AMD EPYC),
    # cudart_stub's only where the GPU-capable build finds no driver; cpu_feature_guard's
    # wherever the CPU has instructions the wheel was not built for. Any one will do.
    records = [line for line in verbose.splitlines() if NOISE.match(line)]
    assert any(name in line for line in records
               for name in ("cpu_feature_guard", "cudart_stub", "oneDNN", "port.cc")), \
        verbose[-3000:]
    assert BEAM_NOISE in verbose
