"""gs:// in and out: the same ingestion against gcp-storage-emulator on 127.0.0.1."""

from __future__ import annotations

import json

import google.auth
import pytest
from google.auth.credentials import AnonymousCredentials

from pipelines.ingest_p3m import run
from tests.p3m_synth import make_p3m


@pytest.fixture()
def bucket(gcs_emulator, monkeypatch):
    # Beam asks google.auth for default credentials and, finding none on a test machine,
    # retries for ~20 s before going anonymous; the emulator wants anonymous anyway.
    monkeypatch.setattr(google.auth, "default",
                        lambda scopes=None, **_: (AnonymousCredentials(), "test-project"))
    name = "p3m-ingest"
    if gcs_emulator.lookup_bucket(name) is None:
        gcs_emulator.create_bucket(name)
    return gcs_emulator.bucket(name)


def test_gcs_source_and_destination_give_the_local_shards(bucket, tmp_path):
    synth = make_p3m(tmp_path / "P3M-10k", links=False)  # object stores have no symlinks
    for path in sorted(synth.root.rglob("*")):
        if path.is_file():
            bucket.blob(f"data/P3M-10k/{path.relative_to(synth.root).as_posix()}") \
                .upload_from_filename(str(path))
    local = run([str(synth.root), str(tmp_path / "out")])
    remote = run(["gs://p3m-ingest/data/P3M-10k", "gs://p3m-ingest/out"])

    assert remote["source"] == "gs://p3m-ingest/data/P3M-10k"
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
