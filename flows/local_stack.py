"""A real Prefect stack on this machine: server on 127.0.0.1, a process worker, the deployments
of prefect.yaml, and a triggered run. ``make server`` runs ``up``; the integration test uses the
same functions with bounded waits.

    python -m flows.local_stack up [--port 4200]   # start, deploy, trigger; Ctrl-C stops all
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

POOL = "matting-process"
PROJECT_DIR = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def stack_env(home: Path, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of every process of the stack: its own PREFECT_HOME, API on loopback."""
    return {**os.environ, "PREFECT_HOME": str(home),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
            "MATTE_PROJECT_DIR": str(PROJECT_DIR), **(extra or {})}


def _logged(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "ab")  # noqa: SIM115 - the child keeps it open for its lifetime
    return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT,
                            cwd=PROJECT_DIR, start_new_session=True)


def start_server(env: dict[str, str], log: Path, timeout_s: float = 120) -> subprocess.Popen:
    server = _logged([PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                      env["PREFECT_SERVER_API_PORT"]], env, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}; see {log}")
        try:
            with urllib.request.urlopen(env["PREFECT_API_URL"] + "/health", timeout=2) as reply:
                if reply.status == 200:
                    return server
        except OSError:
            time.sleep(1)
    server.terminate()
    raise TimeoutError(f"prefect server not healthy after {timeout_s} s; see {log}")


def prefect_cli(env: dict[str, str], *arguments: str, timeout_s: float = 300) -> str:
    result = subprocess.run([PREFECT, "--no-prompt", *arguments], env=env, cwd=PROJECT_DIR,
                            capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(arguments)} failed:\n{result.stdout}\n"
                           f"{result.stderr}")
    return result.stdout


def deploy(env: dict[str, str]) -> None:
    """The process work pool and every deployment of prefect.yaml."""
    prefect_cli(env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    prefect_cli(env, "deploy", "--all")


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    return _logged([PREFECT, "worker", "start", "--pool", POOL, "--limit", "1"], env, log)


async def _trigger(deployment: str, parameters: dict) -> str:
    async with get_client() as client:
        found = await client.read_deployment_by_name(deployment)
        run = await client.create_flow_run_from_deployment(found.id, parameters=parameters)
        return str(run.id)


async def _state(flow_run_id: str) -> str:
    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
        return run.state.type.value if run.state else "PENDING"


def api(env: dict[str, str]):
    """Settings context pointing this process's Prefect client at the stack's server
    (settings are read once at import, so changing os.environ later would not do it)."""
    return temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]})


def trigger(env: dict[str, str], deployment: str, parameters: dict) -> str:
    with api(env):
        return asyncio.run(_trigger(deployment, parameters))


def wait_for(env: dict[str, str], flow_run_id: str, timeout_s: float) -> str:
    """The run's final state type, or TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with api(env):
            state = asyncio.run(_state(flow_run_id))
        if state in TERMINAL_STATES:
            return state
        time.sleep(2)
    raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout_s} s")


def stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, 15)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)


def demo_parameters(shared: Path, output: Path) -> dict:
    """One nightly-matting run over the demo photos with the official U²-Net† weights."""
    return {"params": {"input_uri": str(shared / "u2net-official-testdata" / "test_images"),
                       "output_uri": str(output),
                       "model": str(shared / "u2netp-onnx" / "u2netp.onnx")}}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--home", default=str(PROJECT_DIR / ".prefect-stack"))
    parser.add_argument("--shared", default=os.environ.get("SHARED_DATA",
                                                           str(PROJECT_DIR.parent / "shared/data")))
    args = parser.parse_args(argv)
    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    env = stack_env(home, args.port, {
        "MATTE_INPUT_URI": str(PROJECT_DIR / "uploads"), "MATTE_OUTPUT_URI": str(
            PROJECT_DIR / "out" / "nightly"), "MATTE_REGISTRY_URI": str(PROJECT_DIR / "registry"),
        "MATTE_TRAIN_CONFIG": "smoke", "MATTE_P3M_SOURCE": str(PROJECT_DIR / "data" / "p3m"),
        "MATTE_DATA_ROOT": str(PROJECT_DIR / "data" / "shards"),
        "MATTE_RUN_DIR": str(PROJECT_DIR / "runs" / "retrain")})
    signal.signal(signal.SIGINT, _interrupt)  # Prefect's client may have replaced it
    signal.signal(signal.SIGTERM, _interrupt)
    server = start_server(env, home / "server.log")
    worker = None
    try:
        deploy(env)
        worker = start_worker(env, home / "worker.log")
        run_id = trigger(env, "nightly-matting/nightly-matting",
                         demo_parameters(Path(args.shared), PROJECT_DIR / "out" / "nightly"))
        print(f"dashboard: http://127.0.0.1:{args.port}/runs/flow-run/{run_id}")
        print(f"logs: {home}/server.log, {home}/worker.log. Ctrl-C stops the stack.")
        print(f"nightly-matting run: {wait_for(env, run_id, timeout_s=1800)}")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        stop(*[p for p in (worker, server) if p is not None])


if __name__ == "__main__":
    sys.exit(main())
