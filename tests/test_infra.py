"""infra/: what can be checked without a Docker engine or a GPU.

The image itself is built only where Docker works and MATTE_DOCKER_BUILD=1 asks for it (it
pulls CUDA and TensorFlow, several GB); otherwise that test is reported as skipped.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.bucket import parse
from pipelines.gpu import visible_gpus

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"


def pins() -> dict[str, str]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line)


def test_dockerfile_pins_the_beam_sdk_and_python_of_the_requirements():
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^ARG BEAM_VERSION=(\S+)$", dockerfile, re.M).group(1) == \
        pins()["apache-beam"]
    python = re.search(r"^ARG PYTHON_VERSION=(\S+)$", dockerfile, re.M).group(1)
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}"  # the locked one
    assert "FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam_sdk" in dockerfile
    assert "COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam" in dockerfile
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}$", dockerfile, re.M)
    assert "pip check" in dockerfile and "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in dockerfile
    assert 'ENTRYPOINT ["/opt/app/infra/entrypoint.sh"]' in dockerfile


def test_the_gpu_requirements_swap_keeps_the_tensorflow_version():
    dockerfile = (INFRA / "Dockerfile").read_text()
    swap = re.search(r"sed -E '(s/.+?/.+?/)'", dockerfile).group(1)
    pattern, replacement = swap[2:-1].split("/")
    swapped = [re.sub(pattern, replacement.replace("\\", ""), line)
               for line in (REPO / "requirements.txt").read_text().splitlines()]
    tensorflow = [line for line in swapped if line.startswith("tensorflow[")]
    assert tensorflow == [f"tensorflow[and-cuda]=={pins()['tensorflow']}"]
    assert not [line for line in swapped if line.lower().startswith(("tensorflow==",
                                                                      "tensorflow_cpu",
                                                                      "tensorflow-cpu"))]


def test_the_worker_image_installs_the_runtime_lock_only():
    """Test and benchmark tools stay out of the image: they have their own locks."""
    instructions = "\n".join(line for line in (INFRA / "Dockerfile").read_text().splitlines()
                              if not line.lstrip().startswith("#"))
    assert "COPY requirements.txt" in instructions
    assert "requirements-test" not in instructions and "requirements-bench" not in instructions
    runtime = {name.lower().replace("_", "-") for name in pins()}
    assert not runtime & {"pytest", "ruff", "jax", "jaxlib", "gcp-storage-emulator", "rembg"}
    test_lock = (REPO / "requirements-test.txt").read_text().splitlines()
    assert "-r requirements.txt" in test_lock
    assert {line.split("==")[0] for line in test_lock if "==" in line} >= {"pytest", "ruff"}


def run_entrypoint(require_gpu: str, tmp_path: Path) -> subprocess.CompletedProcess:
    marker = tmp_path / "boot-ran"
    boot = tmp_path / "boot.sh"
    boot.write_text(f'#!/usr/bin/env bash\necho "$@" > {shlex.quote(str(marker))}\n')
    boot.chmod(0o755)
    env = {**os.environ, "REQUIRE_GPU": require_gpu, "BEAM_BOOT": str(boot),
           "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    return subprocess.run(["bash", str(INFRA / "entrypoint.sh"), "--id=1", "--logging=x"],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(bool(visible_gpus()), reason="this machine has a GPU")
def test_entrypoint_fails_fast_without_a_gpu_when_one_is_required(tmp_path):
    result = run_entrypoint("1", tmp_path)
    assert result.returncode != 0
    assert "GPU was asked for" in result.stderr
    assert not (tmp_path / "boot-ran").exists()  # Beam's boot never started


def test_entrypoint_hands_over_to_beams_boot(tmp_path):
    result = run_entrypoint("0", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "boot-ran").read_text().split() == ["--id=1", "--logging=x"]


def test_the_documented_dataflow_command_passes_validation():
    readme = (INFRA / "README.md").read_text()
    block = re.search(r"```bash\n(matte bucket gs://.+?)\n```", readme, re.S)
    command = block.group(1).replace("\\\n", " ")
    values = {"BUCKET": "my-bucket", "PROJECT": "my-project", "REGION": "us-central1",
              "IMAGE": "us-central1-docker.pkg.dev/my-project/matting/matte-worker:abc"}
    command = re.sub(r"\$(\w+)", lambda match: values[match.group(1)], command)
    argv = shlex.split(command)[2:]
    options, pipeline_options = parse(argv)
    assert options.require_gpu and options.input_uri == "gs://my-bucket/uploads"
    assert pipeline_options.get_all_options()["dataflow_service_options"] == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]


def docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(os.environ.get("MATTE_DOCKER_BUILD") != "1" or not docker_works(),
                    reason="needs a working Docker engine and MATTE_DOCKER_BUILD=1")
def test_the_worker_image_builds():
    subprocess.run(["docker", "build", "-f", "infra/Dockerfile", "-t", "matte-worker:test", "."],
                   cwd=REPO, check=True, timeout=3600)
