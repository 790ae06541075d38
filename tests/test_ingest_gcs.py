"""gs:// in and out: the same ingestion against gcp-storage-emulator on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.arrange import arrange_p3m
from pipelines.ingest_p3m import IngestOptions, launch
from pipelines.ingest_publish import DatasetRejected
from tests.p3m_synth import make_p3m


def run(source: str, destination: str, min_pairs: int = 1) -> dict:
    # The synth holds every kind of bad pair: allow any fraction of rejects.
    options = IngestOptions(source, destination, min_pairs=min_pairs, max_rejected_fraction=1.0)
    return launch(options, PipelineOptions([]))


@pytest.fixture()
def bucket(gcs_emulator):
    # storage's client goes anonymous by itself under STORAGE_EMULATOR_HOST; Beam never
    # touches gs:// here, so its slow credential lookup is not reached.
    name = "p3m-ingest"
    if gcs_emulator.lookup_bucket(name) is None:
        gcs_emulator.create_bucket(name)
    return gcs_emulator.bucket(name)


def test_gcs_source_and_destination_give_the_local_shards(bucket, tmp_path):
    synth = make_p3m(tmp_path / "P3M-10k", filesystem=False)  # no symlinks in a bucket
    for path in sorted(synth.root.rglob("*")):
        if path.is_file():
            bucket.blob(f"data/P3M-10k/{path.relative_to(synth.root).as_posix()}") \
                .upload_from_filename(str(path))
    local = run(str(synth.root), str(tmp_path / "out"))
    remote = run("gs://p3m-ingest/data/P3M-10k", "gs://p3m-ingest/out")

    assert remote["source"] == "gs://p3m-ingest/data/P3M-10k"
    # What the generator made, not what the local run says: both could be wrong alike.
    assert remote["files_listed"] == len(synth.files)
    assert {split: info["pairs"] for split, info in remote["splits"].items()} == {
        split: synth.pairs(split) for split in synth.accepted}
    assert {(r["split"], r["key"]): r["reason"] for r in remote["rejects"]} == synth.rejects
    assert remote["ignored"] == synth.ignored
    assert remote["splits"] == local["splits"]  # same shards, byte for byte (sha256)
    assert remote["rejects"] == local["rejects"] and remote["ignored"] == local["ignored"]
    written = sorted(blob.name for blob in bucket.list_blobs(prefix="out/"))
    shards = sorted(f"out/{shard['path']}" for info in remote["splits"].values()
                    for shard in info["shards"])
    assert written == sorted([*shards, "out/manifest.json"])  # staging prefix removed
    stored = json.loads(bucket.blob("out/manifest.json").download_as_bytes())
    assert stored == remote
    for info in remote["splits"].values():
        for shard in info["shards"]:
            data = bucket.blob(f"out/{shard['path']}").download_as_bytes()
            assert data == (tmp_path / "out" / shard["path"]).read_bytes()

    # A run that fails its checks leaves every published object as it was, staging removed.
    before = {blob.name: blob.md5_hash for blob in bucket.list_blobs(prefix="out/")}
    with pytest.raises(DatasetRejected, match=f"{synth.pairs()} pairs < min 1000"):
        run("gs://p3m-ingest/data/P3M-10k", "gs://p3m-ingest/out", min_pairs=1000)
    after = {blob.name: blob.md5_hash for blob in bucket.list_blobs(prefix="out/")}
    assert after.pop("out/manifest.rejected.json") and after == before


def test_arrange_reads_and_writes_a_bucket(bucket):
    files = {"plain/images/a1.jpg": b"photo 1", "plain/masks/a1.png": b"mask 1",
             "plain/images/a2.jpg": b"photo 2", "plain/masks/a2.png": b"mask 2",
             "plain/images/.DS_Store": b"hidden: not data", "plain/README": b"not a folder"}
    for name, data in files.items():
        bucket.blob(name).upload_from_string(data)
    counts = arrange_p3m("gs://p3m-ingest/plain", "gs://p3m-ingest/arranged", validation=0.0,
                         test=0.0)
    assert counts == {"train_images": 2, "train_masks": 2, "validation_images": 0,
                      "validation_masks": 0, "test_images": 0, "test_masks": 0,
                      "unreadable": 0}
    written = {blob.name: blob.download_as_bytes()
               for blob in bucket.list_blobs(prefix="arranged/")}
    assert written == {"arranged/train/blurred_image/a1.jpg": b"photo 1",
                       "arranged/train/blurred_image/a2.jpg": b"photo 2",
                       "arranged/train/mask/a1.png": b"mask 1",
                       "arranged/train/mask/a2.png": b"mask 2"}
    assert arrange_p3m("gs://p3m-ingest/plain", "gs://p3m-ingest/arranged",
                       validation=0.0, test=0.0) == counts  # arranging again adds nothing new
    with pytest.raises(ValueError, match="not a P3M layout"):
        arrange_p3m("gs://p3m-ingest/plain", "gs://p3m-ingest")
