"""A bucket run's records under ``OUT/_runs/<run-id>/``: written in shards by the workers,
read back whole by whoever reports on the run (``matte bucket``, the nightly flow, tests).

    manifest-SSSSS-of-NNNNN.jsonl     one line per output matted ("ok") or found done ("skipped")
    dead_letter-SSSSS-of-NNNNN.jsonl  one line per photo not matted: key, stage, reason
    orphans-SSSSS-of-NNNNN.jsonl      outputs whose source is gone (removed with --prune)
    summary.json                      counts and mean timings, combined; written last
    job.json                          the runner and its job id, for cancelling a remote job
    progress/                         per-bundle counts while the run goes; removed at its end

A line's shard is a hash of its key, so a retried worker rewrites the same shard with the same
lines, and no worker holds more than its shards' lines. Beam-free.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Iterable, Iterator

from storage import IO_ERRORS, Store, join, open_store

KINDS = ("manifest", "dead_letter", "orphans")
SHARDS = 8


def folder(output_uri: str, run_id: str) -> Store:
    return open_store(join(output_uri, f"_runs/{run_id}"))


def shard_of(key: str, shards: int = SHARDS) -> int:
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % shards


def shard_name(kind: str, index: int, shards: int = SHARDS) -> str:
    return f"{kind}-{index:05d}-of-{shards:05d}.jsonl"


def write_shard(records: Store, kind: str, index: int, lines: Iterable[dict]) -> str:
    """One shard, lines in key order (the same bytes whichever worker writes it)."""
    name = shard_name(kind, index)
    ordered = sorted(lines, key=lambda line: (line["key"], json.dumps(line, sort_keys=True)))
    records.write(name, "".join(json.dumps(line) + "\n" for line in ordered).encode())
    return name


def read(records: Store, kind: str) -> Iterator[dict]:
    """Every line of every shard of ``kind``, shard by shard."""
    names = sorted(info.key for info in records.list()
                   if info.key.startswith(kind + "-") and info.key.endswith(".jsonl"))
    for name in names:
        for line in records.read(name).decode().splitlines():
            if line:
                yield json.loads(line)


def read_all(output_uri: str, run_id: str) -> tuple[dict, list[dict], list[dict], list[dict]]:
    """(summary, manifest lines, dead letters, orphans) of one finished run."""
    records = folder(output_uri, run_id)
    summary = json.loads(records.read("summary.json"))
    return summary, *(sorted(read(records, kind), key=lambda line: line["key"])
                      for kind in KINDS)


def add_progress(records: Store, done: int) -> None:
    """A bundle's count of photos finished (matted, skipped or dead-lettered)."""
    records.write(f"progress/{uuid.uuid4().hex}.json", json.dumps({"done": done}).encode())


def progress(records: Store) -> int:
    """Photos this run has finished so far: only this run's progress markers are listed."""
    total = 0
    for info in open_store(join(records.uri, "progress")).list():
        try:
            total += json.loads(records.read(f"progress/{info.key}"))["done"]
        except (*IO_ERRORS, ValueError, KeyError):
            continue  # removed by the run's end meanwhile, or half-listed
    return total


def clear_progress(records: Store) -> None:
    for info in list(open_store(join(records.uri, "progress")).list()):
        records.delete(f"progress/{info.key}")
