"""The ingestion pipeline end to end on a synthetic P3M-10k holding every kind of bad pair.

Every expected count comes from what ``tests/p3m_synth.py`` wrote, never from the pipeline.
The synth is more than half rejects on purpose, so the tests that count them allow any
fraction; the last tests hold the publishing checks and the dataset swap.
"""

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

from cli import data as data_cli
from cli.main import main as cli_main
from model import data
from pipelines.ingest_p3m import NAMESPACE, IngestOptions, build, launch
from pipelines.ingest_publish import DEFAULT_MAX_REJECTED, DatasetRejected, new_run_id, problems
from pipelines.p3m_layout import REASONS
from tests.p3m_synth import make_p3m


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_p3m(tmp_path_factory.mktemp("p3m") / "P3M-10k")


def ingest(source: Path, destination: Path, shard_mb: float = 150) -> dict:
    options = IngestOptions(str(source), str(destination), int(shard_mb * 2**20),
                            max_rejected_fraction=1.0)
    return launch(options, PipelineOptions([]))


def files_below(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_graph_accepts_and_rejects_exactly_the_right_pairs(synth, tmp_path):
    p = test_pipeline.TestPipeline(runner=FnApiRunner(), options=PipelineOptions([]))
    outputs = build(p, IngestOptions(str(synth.root), str(tmp_path / "out")))
    assert_that(outputs["rejects"] | beam.Map(lambda r: ((r.split, r.key), r.reason)),
                equal_to(list(synth.rejects.items())), label="Rejects")
    assert_that(outputs["manifest"] | beam.Map(lambda m: m["pairs"]),
                equal_to([synth.pairs()]), label="Pairs")
    result = p.run()
    result.wait_until_finish()
    counters = {counter.key.metric.name: counter.committed for counter in
                result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]}
    expected = Counter(f"rejected_{reason}" for reason in synth.rejects.values())
    assert set(expected) == {f"rejected_{reason}" for reason in REASONS}  # every kind is made
    assert {name: n for name, n in counters.items() if name.startswith("rejected_")} == expected
    assert counters["pairs_accepted"] == synth.pairs()
    assert counters["masks_resized"] == len(synth.resized)
    assert counters["files_listed"] == len(synth.files)


def test_manifest_accounts_for_every_file(synth, tmp_path):
    manifest = ingest(synth.root, tmp_path / "out")
    assert manifest == json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"] == str(synth.root)
    assert manifest["files_listed"] == len(synth.files)
    assert {split: info["pairs"] for split, info in manifest["splits"].items()} == {
        split: synth.pairs(split) for split in synth.accepted}
    assert {split: info["rejected"] for split, info in manifest["splits"].items()} == {
        split: synth.rejected(split) for split in synth.accepted}
    assert {(r["split"], r["key"]): r["reason"] for r in manifest["rejects"]} == synth.rejects
    assert all(r["detail"] and r["files"] for r in manifest["rejects"])
    details = {r["key"]: r["detail"] for r in manifest["rejects"]}
    assert details["p_loop"] == "train/blurred_image/p_loop.jpg: symlink loop"
    assert details["train/fg/p_gone.jpg"] == "dangling symlink"
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
    assert [path.name for path in (tmp_path / "out").iterdir() if path.is_dir()
            and path.name.startswith(".")] == []  # nor its folders


def test_rerun_is_byte_identical_and_replaces_the_previous_shards(synth, tmp_path):
    out = tmp_path / "out"
    ingest(synth.root, out)
    first = files_below(out)
    # A run killed long ago left its staging behind: the next publish sweeps it. One started
    # recently may be a run still going, so it stays.
    stale, recent = out / ".staging-20200101T000000Z-0badc0de", out / f".staging-{new_run_id()}"
    for leftover in (stale / "train", recent / "train"):
        leftover.mkdir(parents=True)
        (leftover / "train-00099-0123456789abcdef.tfrecord").write_bytes(b"half a shard")
    # And one that died mid-publish left a shard no manifest lists: it must go too.
    (out / "train" / "train-00042.tfrecord").write_bytes(b"orphan")
    (out / "train" / "notes.txt").write_bytes(b"not ours")  # never deleted: not a shard name
    ingest(synth.root, out)
    assert not stale.exists()
    recent_files = {f"{recent.name}/train/train-00099-0123456789abcdef.tfrecord": b"half a shard"}
    assert files_below(out) == {**first, "train/notes.txt": b"not ours", **recent_files}
    small = ingest(synth.root, out, shard_mb=0.002)  # ~2 KB: several shards
    assert len(small["splits"]["train"]["shards"]) > 1
    assert small["splits"]["train"]["pairs"] == synth.pairs("train")
    listed = {shard["path"] for info in small["splits"].values() for shard in info["shards"]}
    assert set(files_below(out)) == listed | {"manifest.json", "train/notes.txt", *recent_files}


def test_clean_data_has_no_rejects(tmp_path):
    clean = make_p3m(tmp_path / "P3M-10k", train=3, validation=1, bad=False)
    manifest = ingest(clean.root, tmp_path / "out")
    assert manifest["rejected"] == 0 and manifest["rejects"] == []
    # train + awkward + P + NP + our held-out test split
    assert manifest["pairs"] == clean.pairs() == 3 + 5 + 1 + 1 + 1


def test_a_source_without_files_fails_and_publishes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no files found"):
        ingest(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_options_refuse_a_non_positive_shard_size():
    with pytest.raises(ValueError, match="positive"):
        IngestOptions("src", "dst", 0)


def test_cli_subcommands(synth, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="matte")
    commands = parser.add_subparsers(dest="command", required=True)
    data_cli.add_commands(commands)
    args = parser.parse_args(["ingest", str(synth.root), str(tmp_path / "out"),
                              "--shard-mb", "0.002", "--direct_num_workers", "1",
                              "--max-rejected", "1"])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["splits"]["train"]["shards"]) > 1  # --shard-mb after SRC DST counted
    assert (f"train: {synth.pairs('train')} pairs in {len(manifest['splits']['train']['shards'])}"
            f" shards, {synth.rejected('train')} rejected") in printed
    assert "1 duplicate_stem" in printed
    args = parser.parse_args(["arrange-p3m", str(tmp_path / "plain"), str(tmp_path / "p3m")])
    assert args.handler.__name__ == "_arrange"


def test_direct_runner_is_pinned_to_the_in_process_runner():
    from pipelines.runners import pinned_runner

    assert isinstance(pinned_runner(PipelineOptions([])), FnApiRunner)
    assert isinstance(pinned_runner(PipelineOptions(["--runner", "DirectRunner"])), FnApiRunner)
    assert pinned_runner(PipelineOptions(["--runner", "DataflowRunner"])) is None


def test_checks_word_the_counts():
    assert problems({"pairs": 412, "rejected": 31}, 1, 0.05) == [
        "412 pairs, 31 rejected (7.0%) > max 5%"]
    assert problems({"pairs": 0, "rejected": 0}, 1, 0.05) == ["0 pairs < min 1"]
    assert problems({"pairs": 20, "rejected": 1}, 20, 0.05) == []  # 4.8%: within
    with pytest.raises(ValueError, match="rejected fraction"):
        IngestOptions("src", "dst", max_rejected_fraction=1.5)


def test_too_many_rejects_leave_the_previous_dataset_then_a_good_source_replaces_it(tmp_path):
    out = tmp_path / "out"
    old = make_p3m(tmp_path / "old", train=3, validation=1, bad=False)
    launch(IngestOptions(str(old.root), str(out)), PipelineOptions([]))  # default checks
    before = files_below(out)
    old_train = [record["key"].numpy() for record in data.records(str(out), "train")]

    bad = make_p3m(tmp_path / "bad", seed=1)
    fraction = bad.rejected() / (bad.pairs() + bad.rejected())
    assert fraction > DEFAULT_MAX_REJECTED  # the synth makes more than allowed
    with pytest.raises(DatasetRejected) as rejected:
        launch(IngestOptions(str(bad.root), str(out)), PipelineOptions([]))
    message = str(rejected.value)
    assert (f"{bad.pairs()} pairs, {bad.rejected()} rejected ({fraction:.1%}) > max 5%"
            in message)
    assert "unchanged" in message and "manifest.rejected.json" in message
    after = files_below(out)
    candidate = json.loads(after.pop("manifest.rejected.json"))
    assert after == before  # same manifest bytes, same shards, no staging left
    assert {(r["split"], r["key"]): r["reason"] for r in candidate["rejects"]} == bad.rejects
    assert [record["key"].numpy() for record in data.records(str(out), "train")] == old_train

    new = make_p3m(tmp_path / "new", train=5, validation=1, bad=False, seed=2)
    manifest = launch(IngestOptions(str(new.root), str(out)), PipelineOptions([]))
    assert manifest["pairs"] == new.pairs()
    listed = {shard["path"] for info in manifest["splits"].values() for shard in info["shards"]}
    # Old shards no manifest lists are gone, and so is the rejected candidate.
    assert set(files_below(out)) == listed | {"manifest.json"}
    assert not listed & set(before)  # new content, new names: nothing old was overwritten


def test_too_few_pairs_publish_nothing(tmp_path):
    clean = make_p3m(tmp_path / "P3M-10k", train=1, validation=1, bad=False)
    with pytest.raises(DatasetRejected, match=f"{clean.pairs()} pairs < min 100"):
        launch(IngestOptions(str(clean.root), str(tmp_path / "out"), min_pairs=100),
               PipelineOptions([]))
    assert sorted(files_below(tmp_path / "out")) == ["manifest.rejected.json"]


def test_cli_refusal_is_one_line_and_exit_2(tmp_path, capsys):
    bad = make_p3m(tmp_path / "P3M-10k", train=1, validation=1)
    code = cli_main(["ingest", str(bad.root), str(tmp_path / "out"), "--min-pairs", "2"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("matte ingest: error: ")
    assert f"{bad.pairs()} pairs, {bad.rejected()} rejected" in line
    assert not (tmp_path / "out" / "manifest.json").exists()
