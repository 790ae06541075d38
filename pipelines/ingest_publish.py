"""Publishing an ingested dataset: checks first, then the manifest swap, then cleanup (Beam-free).

Each ingestion run stages its shards and its candidate manifest under its own hidden prefix,
``DST/.staging-<run id>/`` (``<run id>`` = UTC start time + a random nonce), so two runs never
share staged files and no listing of DST takes them for data. The launcher then publishes:

1. **Checks** on the candidate manifest: at least ``min_pairs`` accepted pairs, and at most
   ``max_rejected_fraction`` of rejects = rejected / (accepted + rejected) over the whole source
   (every reject counts, a stray file outside the layout too: it is something the source holds
   that did not become data). On failure nothing is published: the run's staging is removed,
   the candidate manifest is kept as ``DST/manifest.rejected.json`` (every reject with its
   reason, for inspection; the next successful publish removes it) and :class:`DatasetRejected`
   names the counts. The published dataset, ``manifest.json`` and its shards, is not touched.
2. **Shards into place**, under content-addressed names (``train/train-00003-<sha256[:16]>
   .tfrecord``): a name that already exists holds the same bytes, so the previous dataset's
   shards are never overwritten with other content while its manifest is still the published one.
3. **The commit**: ``manifest.json`` written in one atomic write. Readers (``model/data.py``)
   open only the shards a manifest lists, so they see the whole old dataset or the whole new one.
4. **Cleanup**: our shard names that the new manifest does not list (the previous dataset's, or
   those of a run that died between 2 and 3) are deleted, then the run's staging. A reader that
   opened the old manifest just before the swap may find its shards gone: one writer per
   destination and no training while it is re-ingested, as for any dataset swap.

Staging folders of killed runs older than ``STALE_STAGING`` are removed by the next successful
publish; younger ones may belong to a run still going, so they stay.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import storage
from pipelines.p3m_layout import SPLITS
from storage import ObjectInfo

MANIFEST = "manifest.json"
REJECTED_MANIFEST = "manifest.rejected.json"
STAGING = ".staging-"
STALE_STAGING = timedelta(hours=24)  # far longer than any ingest of P3M-10k takes
DEFAULT_MIN_PAIRS = 1  # an ingest that accepted nothing is never a dataset
DEFAULT_MAX_REJECTED = 0.05  # P3M-10k and human-seg have none; 1 in 20 bad is a broken copy
_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
# Our shard names (old ones without a hash too): only these are ever deleted from DST.
SHARD_NAME = re.compile(r"(?P<split>[^/]+)/(?P=split)-[^/]*\.tfrecord")


class DatasetRejected(ValueError):
    """An ingested dataset failed its checks and was not published; ``manifest`` is the
    candidate's (counts and every reject), for reports."""

    def __init__(self, message: str, manifest: dict | None = None):
        super().__init__(message)
        self.manifest = manifest

    def __reduce__(self):  # Prefect persists task failures: keep the manifest across pickling
        return type(self), (str(self), self.manifest)


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: the start time says how stale a leftover staging is."""
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime(_TIME_FORMAT)}-{uuid.uuid4().hex[:8]}"


def staging_key(run_id: str) -> str:
    return f"{STAGING}{run_id}"


def shard_name(split: str, index: int, sha256: str) -> str:
    """Content-addressed: equal names hold equal bytes, so publishing never changes a file the
    previous manifest lists, and a rerun on the same input writes the same names."""
    return f"{split}/{split}-{index:05d}-{sha256[:16]}.tfrecord"


def problems(manifest: dict, min_pairs: int, max_rejected_fraction: float) -> list[str]:
    """Why the candidate must not be published (empty when it may)."""
    pairs, rejected = manifest["pairs"], manifest["rejected"]
    found = []
    if pairs < min_pairs:
        found.append(f"{pairs} pairs < min {min_pairs}")
    fraction = rejected / (pairs + rejected) if pairs + rejected else 0.0
    if fraction > max_rejected_fraction:
        found.append(f"{pairs} pairs, {rejected} rejected ({fraction:.1%}) > max "
                     f"{max_rejected_fraction * 100:g}%")
    return found


def publish(destination: str, run_id: str, min_pairs: int,
            max_rejected_fraction: float) -> dict:
    """Check the run's staged dataset and publish it (steps in the module docstring)."""
    store, staging = storage.open_store(destination), staging_key(run_id)
    text = store.read(f"{staging}/{MANIFEST}")
    manifest = json.loads(text)
    if manifest["files_listed"] == 0:
        remove_staging(storage.join(destination, staging))
        raise FileNotFoundError(f"no files found under {manifest['source']}")
    found = problems(manifest, min_pairs, max_rejected_fraction)
    if found:
        remove_staging(storage.join(destination, staging))
        store.write(REJECTED_MANIFEST, text)
        raise DatasetRejected(
            f"{manifest['source']} not published: {'; '.join(found)}. The dataset at "
            f"{destination} is unchanged; every reject is listed in "
            f"{storage.join(destination, REJECTED_MANIFEST)}", manifest)
    current = shard_paths(manifest)
    for path in sorted(current):
        store.rename(f"{staging}/{path}", path)
    store.write(MANIFEST, text)  # atomic, and last: this publishes the dataset
    # Stale: any shard name of ours not in this manifest, from the previous dataset or from a
    # run that died after moving its shards (no manifest lists those, so a diff would miss it).
    for path in sorted(published_shards(destination) - current):
        store.delete(path)
    store.delete(REJECTED_MANIFEST)
    remove_staging(storage.join(destination, staging))
    for key in stale_stagings(destination, datetime.now(timezone.utc)):
        remove_staging(storage.join(destination, key))
    return manifest


def shard_paths(manifest: dict) -> set[str]:
    return {shard["path"] for split in manifest["splits"].values() for shard in split["shards"]}


def published_shards(destination: str) -> set[str]:
    """Every shard name of ours under DST/<split>/, whichever run wrote it."""
    found = set()
    for split in SPLITS:
        try:
            keys = [f"{split}/{info.key}"
                    for info in storage.open_store(storage.join(destination, split)).list()]
        except FileNotFoundError:  # no such folder: nothing was published for this split
            continue
        found.update(key for key in keys if SHARD_NAME.fullmatch(key))
    return found


def stale_stagings(destination: str, now: datetime) -> list[str]:
    """Staging folders of runs that started more than ``STALE_STAGING`` before ``now``."""
    if storage.is_gcs(destination):
        tops = {info.key.split("/", 1)[0]
                for info in storage.open_store(destination).list(hidden=True)}
    else:  # a folder may be left empty, which a listing of files would not show
        root = Path(destination)
        tops = {path.name for path in root.iterdir()} if root.is_dir() else set()
    stale = []
    for top in sorted(top for top in tops if top.startswith(STAGING)):
        started = top[len(STAGING):].split("-", 1)[0]
        try:
            when = datetime.strptime(started, _TIME_FORMAT).replace(tzinfo=timezone.utc)
        except ValueError:  # not a name we make: leave it alone
            continue
        if now - when > STALE_STAGING:
            stale.append(top)
    return stale


def remove_staging(uri: str) -> None:
    try:
        entries = list(storage.open_store(uri).scan(hidden=True))
    except FileNotFoundError:  # nothing was staged (an empty source), or already removed
        return
    store = storage.open_store(uri)
    for entry in entries:
        if isinstance(entry, ObjectInfo):
            store.delete(entry.key)
    if not storage.is_gcs(uri):
        # A folder is not an object, so the store leaves the emptied ones; a GCS prefix is
        # gone with its last object. rmdir refuses a folder holding what the listing refused.
        for folder, _, _ in os.walk(uri, topdown=False):
            os.rmdir(folder)
