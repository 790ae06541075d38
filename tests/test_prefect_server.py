"""A real Prefect server on 127.0.0.1, a process worker, prefect.yaml's deployments, one
triggered nightly-matting run, its artifacts through the API, and the dashboard in Chromium."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows import local_stack


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _artifacts(flow_run_id: str) -> dict[str, str]:
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        run = await client.read_flow_run(flow_run_id)
    return {"run_name": run.name, **{a.key: a.type for a in found if a.key}}


@pytest.fixture()
def uploads(tmp_path, official_testdata) -> Path:
    folder = tmp_path / "uploads"
    folder.mkdir()
    for name in ("girl.png", "hockey.png"):
        image = Image.open(official_testdata / "test_images" / name).convert("RGB")
        image.thumbnail((128, 128))
        image.save(folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return folder


def test_server_worker_deployment_run_and_dashboard(tmp_path, uploads, u2netp_onnx):
    port = _free_port()
    output = tmp_path / "cutouts"
    env = local_stack.stack_env(tmp_path / "prefect-home", port, {
        "MATTE_INPUT_URI": str(uploads), "MATTE_OUTPUT_URI": str(output),
        "MATTE_REGISTRY_URI": str(tmp_path / "registry"), "MATTE_TRAIN_CONFIG": "smoke",
        "MATTE_P3M_SOURCE": str(tmp_path / "p3m"), "MATTE_DATA_ROOT": str(tmp_path / "shards"),
        "MATTE_RUN_DIR": str(tmp_path / "run")})
    (tmp_path / "prefect-home").mkdir()
    server = local_stack.start_server(env, tmp_path / "server.log", timeout_s=180)
    worker = None
    try:
        local_stack.deploy(env)
        worker = local_stack.start_worker(env, tmp_path / "worker.log")
        run_id = local_stack.trigger(env, "nightly-matting/nightly-matting", {"params": {
            "input_uri": str(uploads), "output_uri": str(output), "model": str(u2netp_onnx)}})
        state = local_stack.wait_for(env, run_id, timeout_s=600)
        logs = (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
        assert state == "COMPLETED", logs  # one bad photo is a dead letter, not a failed run
        assert sorted(p.name for p in output.glob("*.png")) == ["girl.png", "hockey.png"]

        with local_stack.api(env):
            found = asyncio.run(_artifacts(run_id))
        assert found["matting-summary"] == "table"
        assert found["matting-dead-letters"] == "table"
        assert found["matting-thumbnails"] == "markdown"
        assert found["matting-progress"] == "progress"

        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            pytest.skip("chromium is not installed (make test installs it as root): "
                        "the dashboard screenshot was not taken")
        url = f"http://127.0.0.1:{port}/runs/flow-run/{run_id}"
        flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1000",
                 "--virtual-time-budget=20000"]
        screenshot = tmp_path / "flow-run.png"
        subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True,
                       timeout=120, check=True)
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True,
                             timeout=120, check=True).stdout
        assert found["run_name"] in dom  # the SPA rendered this run's page
        assert "nightly-matting" in dom
        if os.environ.get("MATTE_SCREENSHOT_DIR"):  # keep it for a person to look at
            shutil.copy(screenshot, os.environ["MATTE_SCREENSHOT_DIR"])
        with Image.open(screenshot) as shot:
            assert shot.size == (1400, 1000)
            assert len(set(shot.convert("L").getdata())) > 20  # a page, not a blank frame
    finally:
        local_stack.stop(*[p for p in (worker, server) if p is not None])
