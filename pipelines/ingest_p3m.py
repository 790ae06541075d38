"""Beam pipeline: a P3M-10k folder (local or gs://) -> deterministic TFRecord shards + manifest.

    matte ingest SRC DST [--shard-mb 150] [--runner DataflowRunner] [BEAM OPTIONS...]
    python -m pipelines.ingest_p3m SRC DST [same options]

``build``: list SRC -> classify each file (layout in ``pipelines/p3m_layout.py``) -> group by
(split, stem) -> pair -> plan shards per split (key order, listed sizes) -> group by shard ->
read, validate and write each shard under DST/.tmp-<token>/ -> publish. Publishing removes the
old manifest, moves the shards into DST/<split>/, deletes the previous run's stale shards and
writes ``manifest.json`` last: readers (``model/data.py``) use only shards the manifest lists,
so a run that dies part-way never exposes a partial dataset. Image bytes cross no shuffle: each
shard is read and written by one worker, so memory stays at about one shard.

The same input gives byte-identical shards and manifest: records sorted by key, the shard plan
a function of the listing, ``tf.train.Example`` serialised deterministically, no timestamps.

"DirectRunner" (the default) runs Beam's in-process FnApiRunner (``pipelines.options.
pinned_runner``): Beam 2.77's ``DirectRunner`` first tries the Prism runner, a Go binary it
downloads on first use.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import keras
import numpy as np
import PIL
import tensorflow as tf
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import AsList, AsSingleton, TaggedOutput

from model import data, imaging, preprocess
from pipelines import arrange, p3m_layout
from pipelines.options import pinned_runner
from pipelines.p3m_layout import REASONS, SPLITS, Pair, Reject, join, validate
from pipelines.storage import is_hidden

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


def read_bytes(path: str) -> bytes:
    # UNCOMPRESSED: the default (AUTO) would gunzip a file that happens to end in ".gz".
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def _route(entry: tuple[str, int]) -> Iterator:
    """A listed file is hidden, outside the layout, or part of a (split, stem) group."""
    relative, size = entry
    Metrics.counter(NAMESPACE, "files_listed").inc()
    if is_hidden(relative):
        yield TaggedOutput("ignored", relative)
    elif (place := p3m_layout.classify(relative)) is None:
        yield TaggedOutput("rejects", p3m_layout.unexpected(relative))
    else:
        split, role, stem = place
        yield (split, stem), (role, relative, size)


class WriteShard(beam.DoFn):
    """Read, validate and serialise one planned shard; write it to the staging prefix."""

    def __init__(self, options: IngestOptions):
        self.options = options

    def process(self, element: tuple[tuple[str, int], list[Pair]]):
        (split, index), pairs = element
        buffer = io.BytesIO()
        count = resized = 0

        def check(pair: Pair) -> p3m_layout.Record | Reject:
            return validate(pair, lambda relative: read_bytes(join(self.options.source,
                                                                   relative)))

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
        path = f"{split}/{split}-{index:05d}.tfrecord"
        staged = join(staging_prefix(self.options), path)
        with FileSystems.create(staged, compression_type=CompressionTypes.UNCOMPRESSED) as out:
            out.write(shard)
        Metrics.counter(NAMESPACE, "shards_written").inc()
        Metrics.counter(NAMESPACE, "bytes_written").inc(len(shard))
        return {"split": split, "index": index, "path": path, "records": count,
                "bytes": len(shard), "sha256": hashlib.sha256(shard).hexdigest(),
                "masks_resized": resized}


def _count_reject(reject: Reject) -> Reject:
    Metrics.counter(NAMESPACE, f"rejected_{reject.reason}").inc()
    return reject


def code_version() -> dict[str, str]:
    """What decides the output bytes: our sources (hashed) and the libraries that encode."""
    digest = hashlib.sha256()
    for module in (imaging, preprocess, data, p3m_layout):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return {"sources_sha256": digest.hexdigest()[:16], "pillow": PIL.__version__,
            "numpy": np.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "apache_beam": beam.__version__}


def staging_prefix(options: IngestOptions) -> str:
    """A fixed name per (source, destination, shard size): a rerun reuses, then removes it."""
    token = f"{options.source}\n{options.destination}\n{options.shard_bytes}".encode()
    return join(options.destination, f".tmp-{hashlib.sha256(token).hexdigest()[:12]}")


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


def _shard_paths(manifest: dict) -> set[str]:
    return {shard["path"] for split in manifest["splits"].values() for shard in split["shards"]}


def _move(source: str, target: str) -> None:
    if not p3m_layout.is_remote(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
    FileSystems.rename([source], [target])


def publish(_, options: IngestOptions, version: dict, shards: list[dict],
            rejects: list[Reject], ignored: list[str], listed: int) -> Iterator[dict]:
    """Staged shards -> DST; idempotent, so a retried bundle finishes a half-done publish."""
    if listed == 0:
        raise FileNotFoundError(f"no files found under {options.source}")
    manifest = manifest_json(options, version, shards, rejects, ignored, listed)
    destination, staging = options.destination, staging_prefix(options)
    manifest_path = join(destination, "manifest.json")
    if FileSystems.exists(manifest_path):
        FileSystems.delete([manifest_path])  # from here on readers see no dataset
    current = _shard_paths(json.loads(manifest))
    for path in sorted(current):
        if FileSystems.exists(join(staging, path)):  # gone if a retry already moved it
            _move(join(staging, path), join(destination, path))
    # Stale: any shard name of ours not in this manifest, from the previous run or an older
    # one that died mid-publish (its manifest already gone, so a manifest diff would miss it).
    patterns = [join(destination, f"{split}/{split}-*.tfrecord") for split in SPLITS]
    found = [meta.path for match in FileSystems.match(patterns) for meta in match.metadata_list]
    stale = [path for path in found if "/".join(path.rsplit("/", 2)[-2:]) not in current]
    if stale:
        FileSystems.delete(stale)
    with FileSystems.create(join(staging, "manifest.json"),
                            compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(manifest.encode())
    _move(join(staging, "manifest.json"), manifest_path)  # last: this publishes the dataset
    # GCS deletes a "folder" by its prefix with a slash; locally the folder path itself.
    FileSystems.delete([staging + "/" if p3m_layout.is_remote(staging) else staging])
    yield json.loads(manifest)


def build(p: beam.Pipeline, options: IngestOptions) -> dict[str, beam.PCollection]:
    """The ingestion graph; returns its shard infos, rejects and the published manifest."""
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
               | "Write" >> beam.ParDo(WriteShard(options)).with_outputs("rejects", main="shards"))
    rejects = ((routed.rejects, paired[1], written.rejects) | "AllRejects" >> beam.Flatten()
               | "CountRejects" >> beam.Map(_count_reject))
    count = listed | "CountFiles" >> beam.combiners.Count.Globally()
    manifest = (p | "Once" >> beam.Create([None])
                | "Publish" >> beam.FlatMap(publish, options, version, AsList(written.shards),
                                            AsList(rejects), AsList(routed.ignored),
                                            AsSingleton(count)))
    return {"shards": written.shards, "rejects": rejects, "manifest": manifest}


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="P3M-10k root (holds train/ and validation/), or gs://")
    parser.add_argument("destination", help="output folder or gs:// prefix")
    parser.add_argument("--shard-mb", type=float, default=DEFAULT_SHARD_MB,
                        help="target shard size in MiB (default %(default)s)")


def run(argv: Sequence[str] | None = None) -> dict:
    """Command line: our arguments, and any others passed on to Beam. Returns the manifest."""
    parser = argparse.ArgumentParser(prog="ingest_p3m", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    options = IngestOptions(args.source, args.destination, int(args.shard_mb * 2**20))
    beam_options = PipelineOptions(list(beam_args))
    with beam.Pipeline(runner=pinned_runner(beam_options), options=beam_options) as p:
        build(p, options)
    return json.loads(read_bytes(join(args.destination, "manifest.json")))


def _cmd_ingest(args: argparse.Namespace) -> int:
    # Options after the positionals land in beam_args; run() parses ours out of them again.
    manifest = run([args.source, args.destination, "--shard-mb", str(args.shard_mb),
                    *(arg for arg in args.beam_args if arg != "--")])
    _print_summary(manifest, args.destination)
    return 0


def _print_summary(manifest: dict, destination: str) -> None:
    for split, info in manifest["splits"].items():
        print(f"{split:>11}: {info['pairs']} pairs in {len(info['shards'])} shards, "
              f"{info['rejected']} rejected")
    reasons = ", ".join(f"{n} {r}" for r, n in manifest["rejected_by_reason"].items() if n)
    print(f"rejected: {reasons or 'none'}  -> {join(destination, 'manifest.json')}")


def add_cli(commands: argparse._SubParsersAction) -> None:
    """Register ``matte ingest`` and ``matte arrange-p3m`` on ``build_parser``'s subparsers."""
    command = commands.add_parser("ingest", help="P3M-10k folder -> TFRecord shards (Beam)",
                                  description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(command)
    command.add_argument("beam_args", nargs=argparse.REMAINDER,
                         help="Beam options, e.g. --runner DataflowRunner --project P")
    command.set_defaults(handler=_cmd_ingest)
    arrange.add_cli(commands)


if __name__ == "__main__":
    _print_summary(run(), sys.argv[2] if len(sys.argv) > 2 else "")
