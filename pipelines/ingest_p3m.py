"""Beam pipeline: a P3M-10k folder (local or gs://) -> deterministic TFRecord shards + manifest.

    matte ingest SRC DST [--shard-mb 150] [--runner DataflowRunner] [BEAM OPTIONS...]

``build(p, options, run_id)`` is the graph, ``launch(options, pipeline_options)`` runs it to the
end, publishes what it staged and returns the published manifest (``cli.data`` and
``flows.ingest_flow`` call it).

The graph: list SRC -> classify each file (layout in ``pipelines/p3m_layout.py``) -> group by
(split, stem) -> pair -> plan shards per split (key order, listed sizes) -> group by shard ->
read, validate and write each shard under the run's own DST/.staging-<run id>/ -> the candidate
manifest beside them. Then ``launch``, on the launcher, publishes (``pipelines/ingest_publish.
py``): the checks (``min_pairs``, ``max_rejected_fraction``) first, so a failing source raises
:class:`DatasetRejected` and leaves the published dataset as it was; else the shards move to
content-addressed names and ``manifest.json`` is swapped last, so readers (``model/data.py``,
which use only shards a manifest lists) see the whole old dataset or the whole new one.
Image bytes cross no shuffle: each shard is read and written by one worker, so memory stays at
about one shard. Every file and object is reached through ``storage`` (one listing rule, atomic
writes), so a folder and a gs:// prefix behave alike.

The same input gives byte-identical shards and manifest: records sorted by key, the shard plan
a function of the listing, ``tf.train.Example`` serialised deterministically, no timestamps.

"DirectRunner" (the default) runs Beam's in-process FnApiRunner (``pipelines.runners.
pinned_runner``): Beam 2.77's ``DirectRunner`` first tries the Prism runner, a Go binary it
downloads on first use.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import keras
import numpy as np
import PIL
import tensorflow as tf
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import AsList, AsSingleton, TaggedOutput

import storage
from model import data, imaging, preprocess
from pipelines import ingest_publish, p3m_layout
from pipelines.ingest_publish import DEFAULT_MAX_REJECTED, DEFAULT_MIN_PAIRS, MANIFEST
from pipelines.p3m_layout import REASONS, SPLITS, Entry, Pair, Reject, validate
from pipelines.runners import pinned_runner
from storage import ObjectInfo, Refused

FORMAT = "p3m-tfrecord/1"
NAMESPACE = "ingest_p3m"
DEFAULT_SHARD_MB = 150.0  # DESIGN.md §4: shards of ~100-200 MB


@dataclass(frozen=True)
class IngestOptions:
    source: str
    destination: str
    shard_bytes: int = int(DEFAULT_SHARD_MB * 2**20)
    # Reads wait on storage (tens of ms per GCS object) and decoding releases the GIL, so a
    # worker validates several pairs of its shard at once; results keep key order.
    threads: int = 8
    # Publish only with at least this many accepted pairs, and at most this fraction of
    # rejects, rejected / (accepted + rejected) over the whole source (ingest_publish.py).
    min_pairs: int = DEFAULT_MIN_PAIRS
    max_rejected_fraction: float = DEFAULT_MAX_REJECTED

    def __post_init__(self) -> None:
        if self.shard_bytes <= 0 or self.threads <= 0:
            raise ValueError(f"shard size and threads must be positive, got "
                             f"{self.shard_bytes} bytes and {self.threads} threads")
        if self.min_pairs < 0 or not 0 <= self.max_rejected_fraction <= 1:
            raise ValueError(f"min pairs must be >= 0 and the rejected fraction in [0, 1], got "
                             f"{self.min_pairs} and {self.max_rejected_fraction}")


def _route(entry: ObjectInfo | Refused) -> Iterator:
    """A listed entry is hidden, outside the layout, or part of a (split, stem) group."""
    Metrics.counter(NAMESPACE, "files_listed").inc()
    relative = p3m_layout.printable(entry.key)
    refused = entry.reason if isinstance(entry, Refused) else None
    if storage.is_hidden(relative):
        yield TaggedOutput("ignored", relative)
    elif (place := p3m_layout.classify(relative)) is None:
        yield TaggedOutput("rejects", p3m_layout.unexpected(relative) if refused is None else
                           Reject("", relative, "unreadable", refused, (relative,)))
    else:
        split, role, stem = place
        size = entry.size if refused is None else 0
        yield (split, stem), Entry(role, relative, size, refused)


class WriteShard(beam.DoFn):
    """Read, validate and serialise one planned shard; write it to the run's staging prefix."""

    def __init__(self, options: IngestOptions, staging: str):
        self.options, self.staging = options, staging

    def setup(self) -> None:
        # Stores hold per-thread clients that do not pickle: made on the worker.
        self.source = storage.open_store(self.options.source)
        self.destination = storage.open_store(self.options.destination)

    def process(self, element: tuple[tuple[str, int], list[Pair]]):
        (split, index), pairs = element
        buffer = io.BytesIO()
        count = resized = 0

        def check(pair: Pair) -> p3m_layout.Record | Reject:
            return validate(pair, self.source.read)

        with ThreadPoolExecutor(self.options.threads) as pool:
            results = list(pool.map(check, sorted(pairs, key=lambda pair: pair.key)))
        for result in results:
            if isinstance(result, Reject):
                yield TaggedOutput("rejects", result)
                continue
            # Beam's own TFRecord framing (length + masked CRC32C), so we keep no second copy.
            _TFRecordUtil.write_record(buffer, result.example)
            count, resized = count + 1, resized + result.mask_resized
        Metrics.counter(NAMESPACE, "pairs_accepted").inc(count)
        Metrics.counter(NAMESPACE, "masks_resized").inc(resized)
        if count:  # a shard whose pairs were all rejected leaves no empty file behind
            yield self._write(split, index, buffer.getvalue(), count, resized)

    def _write(self, split: str, index: int, shard: bytes, count: int, resized: int) -> dict:
        sha256 = hashlib.sha256(shard).hexdigest()
        path = ingest_publish.shard_name(split, index, sha256)
        self.destination.write(f"{self.staging}/{path}", shard)
        Metrics.counter(NAMESPACE, "shards_written").inc()
        Metrics.counter(NAMESPACE, "bytes_written").inc(len(shard))
        return {"split": split, "index": index, "path": path, "records": count,
                "bytes": len(shard), "sha256": sha256, "masks_resized": resized}


def _count_reject(reject: Reject) -> Reject:
    Metrics.counter(NAMESPACE, f"rejected_{reject.reason}").inc()
    return reject


def code_version() -> dict[str, str]:
    """What decides the output bytes: our sources (hashed) and the libraries that encode."""
    digest = hashlib.sha256()
    for module in (imaging, preprocess, data, p3m_layout, ingest_publish):  # shard names
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return {"sources_sha256": digest.hexdigest()[:16], "pillow": PIL.__version__,
            "numpy": np.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "apache_beam": beam.__version__}


def manifest_json(options: IngestOptions, version: dict, shards: list[dict],
                  rejects: list[Reject], ignored: list[str], listed: int) -> str:
    splits = {}
    for split in SPLITS:
        mine = sorted((shard for shard in shards if shard["split"] == split),
                      key=lambda shard: shard["index"])
        splits[split] = {
            "pairs": sum(shard["records"] for shard in mine),
            "bytes": sum(shard["bytes"] for shard in mine),
            "masks_resized": sum(shard["masks_resized"] for shard in mine),
            "rejected": sum(reject.split == split for reject in rejects),
            "shards": [{name: shard[name] for name in ("path", "records", "bytes", "sha256")}
                       for shard in mine]}
    reasons = Counter(reject.reason for reject in rejects)
    manifest = {
        "format": FORMAT, "source": options.source, "code_version": version,
        "shard_bytes": options.shard_bytes, "files_listed": listed,
        "pairs": sum(split["pairs"] for split in splits.values()),
        "bytes": sum(split["bytes"] for split in splits.values()),
        "rejected": len(rejects), "rejected_by_reason": {r: reasons[r] for r in REASONS},
        "splits": splits, "ignored": sorted(ignored),
        "rejects": sorted((reject.to_json() for reject in rejects),
                          key=lambda r: (r["split"], r["key"], r["reason"], r["files"]))}
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def stage_manifest(_, options: IngestOptions, staging: str, version: dict, shards: list[dict],
                   rejects: list[Reject], ignored: list[str], listed: int) -> Iterator[dict]:
    """The candidate manifest, written beside the staged shards for ``launch`` to check."""
    manifest = manifest_json(options, version, shards, rejects, ignored, listed)
    storage.open_store(options.destination).write(f"{staging}/{MANIFEST}", manifest.encode())
    yield json.loads(manifest)


def build(p: beam.Pipeline, options: IngestOptions,
          run_id: str | None = None) -> dict[str, beam.PCollection]:
    """The ingestion graph; returns its shard infos, rejects and the candidate manifest, all
    staged under DST/.staging-<run id>/ (a new run id unless given); nothing is published."""
    staging = ingest_publish.staging_key(run_id or ingest_publish.new_run_id())
    version = code_version()
    listed = (p | "Source" >> beam.Create([options.source])
              | "List" >> beam.FlatMap(p3m_layout.list_files))
    routed = listed | "Route" >> beam.FlatMap(_route).with_outputs("ignored", "rejects",
                                                                    main="grouped")
    paired = (routed.grouped | "ByStem" >> beam.GroupByKey()
              | "Pair" >> beam.MapTuple(lambda key, entries: p3m_layout.pair_files(*key, entries))
              | "Sort" >> beam.Partition(lambda item, _: int(isinstance(item, Reject)), 2))
    written = (paired[0] | "BySplit" >> beam.Map(lambda pair: (pair.split, pair))
               | "SplitPairs" >> beam.GroupByKey()
               | "Plan" >> beam.FlatMapTuple(lambda split, pairs: (
                   ((split, index), pair)
                   for index, pair in p3m_layout.plan_shards(pairs, options.shard_bytes)))
               | "ByShard" >> beam.GroupByKey()
               | "Write" >> beam.ParDo(WriteShard(options, staging)).with_outputs(
                   "rejects", main="shards"))
    rejects = ((routed.rejects, paired[1], written.rejects) | "AllRejects" >> beam.Flatten()
               | "CountRejects" >> beam.Map(_count_reject))
    count = listed | "CountFiles" >> beam.combiners.Count.Globally()
    manifest = (p | "Once" >> beam.Create([None])
                | "Stage" >> beam.FlatMap(stage_manifest, options, staging, version,
                                          AsList(written.shards), AsList(rejects),
                                          AsList(routed.ignored), AsSingleton(count)))
    return {"shards": written.shards, "rejects": rejects, "manifest": manifest}


def launch(options: IngestOptions, pipeline_options: PipelineOptions) -> dict:
    """Run the ingestion to the end on the runner ``pipeline_options`` names (the in-process
    one for "DirectRunner") and publish it; returns the published manifest.

    Raises ``ingest_publish.DatasetRejected`` (a ValueError naming the counts) when the checks
    fail, FileNotFoundError when the source holds no files: then nothing is published and the
    run's staging is gone, whatever DST held before is as it was.
    """
    if not storage.is_gcs(options.source) and not os.path.isdir(options.source):
        # Checked here, not only by the List step: a worker's failure comes back wrapped in
        # Beam's traceback, and a user who mistyped a path deserves one line.
        raise FileNotFoundError(f"not a folder: {options.source}")
    run_id = ingest_publish.new_run_id()
    try:
        with beam.Pipeline(runner=pinned_runner(pipeline_options),
                           options=pipeline_options) as p:
            build(p, options, run_id)
    except BaseException:
        # Not swallowed: the run's staged shards go, the error goes on to the caller.
        ingest_publish.remove_staging(
            storage.join(options.destination, ingest_publish.staging_key(run_id)))
        raise
    return ingest_publish.publish(options.destination, run_id, options.min_pairs,
                                  options.max_rejected_fraction)
