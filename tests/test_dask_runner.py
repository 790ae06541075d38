"""The bucket pipeline on Beam's DaskRunner (ours, pipelines.dask_runner) over a real
dask.distributed LocalCluster of two worker processes gives what the DirectRunner gives: the
same output bytes, dead letters, run records and metrics, and the same skips on a rerun."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.bucket import run
from pipelines.matte_bucket import counter
from tests.test_matte_bucket import BAD, GOOD, make_input, outputs, run_records, write_photo

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed "
                                  "(pip install 'u2net-matting[dask]')")
TASK_PREFIX = pytest.importorskip("pipelines.dask_translation").TASK_PREFIX

UNDECODABLE = {"broken.jpg": b"\xff\xd8\xff\xe0 this is no JPEG"}
COUNTERS = ("ok", "skipped", "failed", "read")
VOLATILE = ("timings_ms", "written_at", "batch_size")  # differ run to run, not output to output


@pytest.fixture(scope="module")
def cluster():
    from pipelines.dask_runner import KeptEnviron

    before, kept = dict(os.environ), KeptEnviron()
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=":0") as local:
        kept.restore()
        local.environ_before = before
        yield local
    kept.restore()


def test_a_local_cluster_leaves_this_process_environment_alone(cluster):
    """dask's nanny writes OMP_NUM_THREADS=1 and more into the starting process's environment;
    left there, every later subprocess (a training run a flow starts) ran on one thread."""
    assert os.environ.get("OMP_NUM_THREADS") == cluster.environ_before.get("OMP_NUM_THREADS")
    now = {key: value for key, value in os.environ.items() if key != "PYTEST_CURRENT_TEST"}
    assert now == {key: value for key, value in cluster.environ_before.items()
                   if key != "PYTEST_CURRENT_TEST"}


def stable(records: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in record.items() if k not in VOLATILE} for record in records),
                  key=lambda record: record["key"])


def letters_of(letters: list[dict]) -> list[tuple[str, str, str]]:
    return sorted((letter["key"], letter["stage"], letter["reason"]) for letter in letters)


@pytest.mark.slow
def test_dask_runner_matches_the_direct_runner(tmp_path, official_testdata, u2netp_onnx,
                                               cluster):
    root = make_input(tmp_path / "in", official_testdata)
    for key, data in UNDECODABLE.items():
        (root / key).write_bytes(data)
    common = [str(root), "--weights", str(u2netp_onnx), "--max-batch-size", "4"]
    dask_flags = ["--runner", "dask", "--dask-address", cluster.scheduler_address]
    direct, on_dask = tmp_path / "direct", tmp_path / "dask"

    results = {}
    for run_id in ("first", "rerun"):
        results["direct", run_id] = run([common[0], str(direct), *common[1:],
                                         "--run-id", run_id])
        with distributed.Client(cluster) as client, distributed.get_task_stream(client) as tasks:
            results["dask", run_id] = run([common[0], str(on_dask), *common[1:], *dask_flags,
                                           "--run-id", run_id])
        # The bundles ran on both worker processes (the groups of a GroupByKey are dealt
        # out to the workers), none in this process.
        workers = {task["worker"] for task in tasks.data
                   if distributed.utils.key_split(task["key"]).startswith(TASK_PREFIX)}
        assert workers == set(cluster.scheduler_info["workers"]), workers

    expected = sorted(key.rsplit(".", 1)[0] + ".png" for key in GOOD)
    assert outputs(on_dask) == outputs(direct) == expected
    for key in expected:
        assert (on_dask / key).read_bytes() == (direct / key).read_bytes(), key

    for run_id in ("first", "rerun"):
        manifest, letters, summary = run_records(on_dask, run_id)
        direct_manifest, direct_letters, direct_summary = run_records(direct, run_id)
        assert stable(manifest) == stable(direct_manifest), run_id
        assert letters_of(letters) == letters_of(direct_letters), run_id
        assert {key for key, _, _ in letters_of(letters)} == {*BAD, *UNDECODABLE}
        assert summary["counts"] == direct_summary["counts"], run_id
        for name in COUNTERS:  # Beam metrics, summed from every bundle on the workers
            assert (counter(results["dask", run_id], name)
                    == counter(results["direct", run_id], name)), (run_id, name)

    _, _, first = run_records(on_dask, "first")
    _, _, rerun = run_records(on_dask, "rerun")
    assert first["counts"]["ok"] == len(GOOD) and first["counts"]["skipped"] == 0
    assert rerun["counts"]["ok"] == 0 and rerun["counts"]["skipped"] == len(GOOD)


@pytest.mark.slow
def test_console_script_without_an_address_starts_a_local_cluster(tmp_path, official_testdata,
                                                                   u2netp_onnx):
    """``matte bucket --runner dask`` as a user types it, outside the checkout: dask starts a
    LocalCluster for the run. Its workers put dask's scratch folder, which holds a ``storage``
    spill directory, first on sys.path; an editable install must still import our package."""
    matte = shutil.which("matte", path=str(Path(sys.executable).parent))
    if matte is None:
        pytest.skip("the package is not installed in this interpreter's environment (make test)")
    root, out = tmp_path / "in", tmp_path / "out"
    for name in ("girl.png", "im_14.png"):
        write_photo(official_testdata / "test_images" / name, root / name, max_side=64)
    (root / "empty.jpg").write_bytes(b"")
    result = subprocess.run([matte, "bucket", str(root), str(out), "--weights", str(u2netp_onnx),
                             "--runner", "dask", "--run-id", "local"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 1, result.stderr[-3000:]  # 1: the empty file is a dead letter
    assert "ok: 2  skipped: 0  failed: 1" in result.stdout
    assert "starting a dask LocalCluster" in result.stderr
    assert outputs(out) == ["girl.png", "im_14.png"]
