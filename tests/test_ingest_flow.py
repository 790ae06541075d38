"""flows/ingest_flow.py in a throwaway Prefect server: the pipeline runs and artifacts appear;
a source with too many rejects turns the flow red and leaves the published dataset."""

from __future__ import annotations

import json
import os

import pytest

from tests.p3m_synth import make_p3m

# Before Prefect is imported: no telemetry from tests.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


from flows.ingest_flow import COUNTS_KEY, REJECTS_KEY, SUMMARY_KEY, ingest_flow  # noqa: E402
from pipelines.ingest_publish import DatasetRejected  # noqa: E402
from tests.conftest import latest_artifact  # noqa: E402


def test_flow_runs_the_pipeline_and_publishes_artifacts(prefect_harness, tmp_path):
    synth = make_p3m(tmp_path / "P3M-10k")
    # The synth holds every kind of bad pair: allow any fraction of rejects.
    result = ingest_flow(str(synth.root), str(tmp_path / "out"), shard_mb=1, max_rejected=1.0)

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
    assert "rejected, published" in summary
    assert "duplicate_stem 1" in summary and "| P3M-500-NP |" in summary


def test_flow_refuses_a_non_positive_shard_size(prefect_harness, tmp_path):
    with pytest.raises(Exception, match="greater than 0"):
        ingest_flow(str(tmp_path), str(tmp_path / "out"), shard_mb=0)


def test_too_many_rejects_turn_the_flow_red_and_keep_the_dataset(prefect_harness, tmp_path):
    out = tmp_path / "out"
    clean = make_p3m(tmp_path / "clean", train=2, validation=1, bad=False)
    ingest_flow(str(clean.root), str(out))
    published = (out / "manifest.json").read_bytes()

    bad = make_p3m(tmp_path / "bad", train=2, validation=1)
    state = ingest_flow(str(bad.root), str(out), max_rejected=0.1, return_state=True)
    assert state.is_failed()
    counts = f"{bad.pairs()} pairs, {bad.rejected()} rejected"
    assert counts in state.message and "> max 10%" in state.message
    with pytest.raises(DatasetRejected, match=counts):
        state.result()
    assert (out / "manifest.json").read_bytes() == published
    summary = latest_artifact(SUMMARY_KEY).data
    assert "NOT published" in summary and counts in summary
    rejects = {(row["split"], row["key"]): row["reason"]
               for row in json.loads(latest_artifact(REJECTS_KEY).data)}
    assert rejects == bad.rejects
