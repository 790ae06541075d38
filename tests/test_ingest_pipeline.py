"""The ingestion pipeline end to end on a synthetic P3M-10k holding every kind of bad pair."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline  # not the class: pytest would try to collect it
from apache_beam.testing.util import assert_that, equal_to

from pipelines import ingest_p3m
from pipelines.ingest_p3m import NAMESPACE, IngestOptions, build, run, staging_prefix
from pipelines.p3m_layout import REASONS
from tests.p3m_synth import make_p3m


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_p3m(tmp_path_factory.mktemp("p3m") / "P3M-10k")


def files_below(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_graph_accepts_and_rejects_exactly_the_right_pairs(synth, tmp_path):
    p = test_pipeline.TestPipeline(runner=FnApiRunner(), options=PipelineOptions([]))
    outputs = build(p, IngestOptions(str(synth.root), str(tmp_path / "out")))
    assert_that(outputs["rejects"] | beam.Map(lambda r: ((r.split, r.key), r.reason)),
                equal_to(list(synth.rejects.items())), label="Rejects")
    assert_that(outputs["manifest"] | beam.Map(lambda m: m["pairs"]),
                equal_to([sum(len(keys) for keys in synth.accepted.values())]), label="Pairs")
    result = p.run()
    result.wait_until_finish()
    counters = {counter.key.metric.name: counter.committed for counter in
                result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]}
    expected = Counter(f"rejected_{reason}" for reason in synth.rejects.values())
    assert set(expected) == {f"rejected_{reason}" for reason in REASONS}  # every kind is made
    assert {name: n for name, n in counters.items() if name.startswith("rejected_")} == expected
    assert counters["pairs_accepted"] == sum(len(keys) for keys in synth.accepted.values())
    assert counters["masks_resized"] == len(synth.resized)
    assert counters["files_listed"] == sum(1 for path in synth.root.rglob("*")
                                           if path.is_file() or path.is_symlink())


def test_manifest_accounts_for_every_file(synth, tmp_path):
    manifest = run([str(synth.root), str(tmp_path / "out")])
    assert manifest == json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"] == str(synth.root)
    assert {split: info["pairs"] for split, info in manifest["splits"].items()} == {
        split: len(keys) for split, keys in synth.accepted.items()}
    assert {(r["split"], r["key"]): r["reason"] for r in manifest["rejects"]} == synth.rejects
    assert all(r["detail"] and r["files"] for r in manifest["rejects"])
    assert manifest["ignored"] == synth.ignored
    assert manifest["rejected_by_reason"] == {
        reason: list(synth.rejects.values()).count(reason) for reason in REASONS}
    assert set(manifest["code_version"]) >= {"sources_sha256", "pillow", "tensorflow"}
    for info in manifest["splits"].values():
        for shard in info["shards"]:
            data = (tmp_path / "out" / shard["path"]).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (shard["bytes"],
                                                                     shard["sha256"])
    listed = {shard["path"] for info in manifest["splits"].values() for shard in info["shards"]}
    assert set(files_below(tmp_path / "out")) == listed | {"manifest.json"}  # no staging left


def test_rerun_is_byte_identical_and_replaces_the_previous_shards(synth, tmp_path):
    out = tmp_path / "out"
    run([str(synth.root), str(out)])
    first = files_below(out)
    # A killed earlier run with these options left a staged shard behind: it must not leak.
    leftover = Path(staging_prefix(IngestOptions(str(synth.root), str(out)))) / "train"
    leftover.mkdir(parents=True)
    (leftover / "train-00099.tfrecord").write_bytes(b"half a shard")
    # And one that died mid-publish left a shard no manifest lists: it must go too.
    (out / "train" / "train-00042.tfrecord").write_bytes(b"orphan")
    run([str(synth.root), str(out)])
    assert files_below(out) == first
    small = run([str(synth.root), str(out), "--shard-mb", "0.002"])  # ~2 KB: several shards
    assert len(small["splits"]["train"]["shards"]) > 1
    assert small["splits"]["train"]["pairs"] == len(synth.accepted["train"])
    listed = {shard["path"] for info in small["splits"].values() for shard in info["shards"]}
    assert set(files_below(out)) == listed | {"manifest.json"}  # old shards removed


def test_clean_data_has_no_rejects(tmp_path):
    clean = make_p3m(tmp_path / "P3M-10k", train=3, validation=1, bad=False)
    manifest = run([str(clean.root), str(tmp_path / "out")])
    assert manifest["rejected"] == 0 and manifest["rejects"] == []
    assert manifest["pairs"] == sum(len(keys) for keys in clean.accepted.values())


def test_a_source_without_files_fails_and_publishes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no files found"):
        run([str(tmp_path / "empty"), str(tmp_path / "out")])
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cli_subcommands(synth, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="matte")
    commands = parser.add_subparsers(dest="command", required=True)
    ingest_p3m.add_cli(commands)
    args = parser.parse_args(["ingest", str(synth.root), str(tmp_path / "out"),
                              "--shard-mb", "1", "--direct_num_workers", "1"])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "train: 9 pairs in 1 shards, 10 rejected" in printed
    assert "1 duplicate_stem" in printed
    args = parser.parse_args(["arrange-p3m", str(tmp_path / "plain"), str(tmp_path / "p3m")])
    assert args.handler.__name__ == "_cmd_arrange"


def test_direct_runner_is_pinned_to_the_in_process_runner():
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from pipelines.options import pinned_runner

    assert isinstance(pinned_runner(PipelineOptions([])), FnApiRunner)
    assert isinstance(pinned_runner(PipelineOptions(["--runner", "DirectRunner"])), FnApiRunner)
    assert pinned_runner(PipelineOptions(["--runner", "DataflowRunner"])) is None
