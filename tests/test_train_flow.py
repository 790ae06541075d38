"""The training flow end to end: ingest -> train -> evaluate -> register -> promote, artifacts.

One run in a Prefect test harness on a synthetic P3M-shaped dataset that is not ingested yet,
with the official U²-Net† as the baseline champion of an empty registry.
"""

from __future__ import annotations

import json

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.testing.utilities import prefect_test_harness

from flows.train_flow import METRICS_KEY, REPORT_KEY, TrainFlowParams, train_flow
from operations.registry import Registry
from tests.p3m_synth import make_p3m

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory, u2netp_onnx):
    root = tmp_path_factory.mktemp("flow")
    make_p3m(root / "p3m", bad=False)
    params = TrainFlowParams(
        config="smoke", source=str(root / "p3m"), data_root=str(root / "tfrecords"),
        run_dir=str(root / "run"), registry=str(root / "registry"),
        baseline_weights=str(u2netp_onnx),
        overrides={"image_size": 32, "epochs": 1, "steps_per_epoch": 2,
                   "validation_split": "P3M-500-P"})
    with prefect_test_harness(server_startup_timeout=None):
        result = train_flow(params)
        with get_client(sync_client=True) as client:
            artifacts = {key: client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]))) for key in (REPORT_KEY, METRICS_KEY,
                                                                "p3m-ingest-counts")}
    return root, result, artifacts


def test_data_is_ingested_first_and_the_model_trained(flow_run):
    root, result, artifacts = flow_run
    assert (root / "tfrecords" / "manifest.json").is_file()
    assert artifacts["p3m-ingest-counts"], "the ingest subflow did not run"
    assert result["steps"] == 2
    assert result["eval_key"].startswith("P3M-500-P-") and result["eval_key"].endswith("x32")


def test_candidate_is_compared_with_the_baseline_champion(flow_run):
    root, result, _ = flow_run
    registry = Registry(str(root / "registry"))
    decision = result["decision"]
    assert decision["candidate"] == result["version"]
    baseline = decision["champion"]
    assert baseline is not None and baseline != result["version"]
    assert set(registry.versions()) == {baseline, result["version"]}
    assert decision["candidate_score"] == result["metrics"]["iou"]
    stored = registry.evaluation(baseline, result["eval_key"])["metrics"]["iou"]
    assert decision["champion_score"] == stored
    gain = decision["candidate_score"] - decision["champion_score"]
    assert decision["rule"] == "margin" and decision["margin"] == 0.002
    assert decision["promoted"] == (round(gain, 12) >= decision["margin"])
    assert registry.champion() == (result["version"] if decision["promoted"] else baseline)
    config = json.loads((root / "registry" / "versions" / result["version"] / "config.json")
                        .read_text())
    assert config["image_size"] == 32 and config["data_root"] == str(root / "tfrecords")


def test_plots_are_stored_and_published(flow_run):
    root, result, artifacts = flow_run
    plots = root / "registry" / "versions" / result["version"] / "plots"
    for name in ("loss", "metrics", "grid"):
        assert (plots / f"{name}.png").read_bytes().startswith(PNG)
    (report,) = artifacts[REPORT_KEY]
    assert report.type == "markdown"
    assert report.data.count("data:image/png;base64,") == 3
    assert f"Candidate `{result['version']}`" in report.data
    (table,) = artifacts[METRICS_KEY]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [row["model"] for row in rows][0] == "candidate" and len(rows) == 2
    assert rows[0]["iou"] == pytest.approx(result["metrics"]["iou"], abs=1e-6)
