"""flows/ingest_flow.py in a throwaway Prefect server: the pipeline runs and artifacts appear."""

from __future__ import annotations

import json
import os

import pytest

from tests.p3m_synth import make_p3m

# Before Prefect is imported: no telemetry from tests.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


from flows.ingest_flow import COUNTS_KEY, REJECTS_KEY, SUMMARY_KEY, ingest_flow  # noqa: E402
from tests.conftest import latest_artifact  # noqa: E402


def test_flow_runs_the_pipeline_and_publishes_artifacts(prefect_harness, tmp_path):
    synth = make_p3m(tmp_path / "P3M-10k")
    result = ingest_flow(str(synth.root), str(tmp_path / "out"), shard_mb=1)

    assert result["pairs"] == synth.pairs()
    assert result["rejected"] == synth.rejected()
    assert (tmp_path / "out" / "manifest.json").is_file()

    # Prefect stores a table artifact's rows as a JSON string.
    counts = {row["split"]: row for row in json.loads(latest_artifact(COUNTS_KEY).data)}
    assert counts["train"]["pairs"] == synth.pairs("train")
    assert counts["P3M-500-P"]["rejected"] == synth.rejected("P3M-500-P")
    assert counts["(outside the layout)"]["rejected"] == synth.rejected("")
    rejects = {(row["split"], row["key"]): row["reason"]
               for row in json.loads(latest_artifact(REJECTS_KEY).data)}
    assert rejects == synth.rejects
    summary = latest_artifact(SUMMARY_KEY).data
    assert summary.startswith(f"# P3M ingestion: {result['pairs']} pairs")
    assert "duplicate_stem 1" in summary and "| P3M-500-NP |" in summary


def test_flow_refuses_a_non_positive_shard_size(prefect_harness, tmp_path):
    with pytest.raises(Exception, match="greater than 0"):
        ingest_flow(str(tmp_path), str(tmp_path / "out"), shard_mb=0)
