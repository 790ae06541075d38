"""Shared fixtures: the read-only data in ../shared/data and the imported official U²-Net†."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# A loaded 2-core machine can take longer than Prefect's 20-30 s to start an ephemeral API.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# The weights cache of this test session (the onnxruntime engine's exports of every model
# version the tests make land there), never the user's ~/.u2net; weights come from
# ../shared/data by path.
os.environ["U2NET_HOME"] = tempfile.mkdtemp(prefix="matte-tests-u2net-home-")
atexit.register(shutil.rmtree, os.environ["U2NET_HOME"], ignore_errors=True)

SHARED_DATA = Path(
    os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason if it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path} (tests read it from ../shared/data)")
    return path


@pytest.fixture(scope="session")
def u2netp_onnx() -> Path:
    return shared_path("u2netp-onnx", "u2netp.onnx")


@pytest.fixture(scope="session")
def official_testdata() -> Path:
    return shared_path("u2net-official-testdata")


@pytest.fixture(scope="session")
def lite_matter(u2netp_onnx):
    from model.matting import Matter

    return Matter.load("lite", u2netp_onnx)


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real GCS JSON-API server (gcp-storage-emulator) on 127.0.0.1 for ``gs://`` paths.

    Sets ``STORAGE_EMULATOR_HOST`` for google-cloud-storage (and Beam's GCS filesystem,
    which uses it) for the rest of the session; yields a ``google.cloud.storage.Client``.
    """
    import socket

    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    previous = {key: os.environ.get(key) for key in ("STORAGE_EMULATOR_HOST",
                                                     "GOOGLE_CLOUD_PROJECT")}
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    os.environ["GOOGLE_CLOUD_PROJECT"] = "test-project"
    try:
        yield storage.Client(project="test-project", credentials=AnonymousCredentials())
    finally:
        server.stop()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API (SQLite) for every flow test in the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):  # the variable above
        yield


def latest_artifact(key: str):
    """The newest Prefect artifact with ``key`` on the current API (fails if there is none)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no artifact {key}"
    return max(found, key=lambda artifact: artifact.created)
