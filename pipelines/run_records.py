"""A bucket run's records under ``OUT/_runs/<run-id>/``: written in shards by the workers,
read back whole by whoever reports on the run (``matte bucket``, the nightly flow, tests).

    manifest-SSSSS-of-NNNNN.jsonl     one line per output matted ("ok") or found done ("skipped")
    dead_letter-SSSSS-of-NNNNN.jsonl  one line per photo not matted: key, stage, reason
    orphans-SSSSS-of-NNNNN.jsonl      outputs whose source is gone (removed with --prune)
    summary.json                      counts and mean timings, combined; written last
    job.json                          the runner and its job id, for cancelling a remote job
    progress/                         per-bundle counts while the run goes; removed at its end

A line's shard is a hash of its key, so a retried worker rewrites the same shard with the same
lines, and no worker holds more than its shards' lines. summary.json names the shards its run
wrote, and readers read those alone: a run id used again leaves the older run's other shards
behind, never in this run's counts. A reporter that shows a few lines (``heads``) holds only
those, whatever the size of the run. Beam-free.
"""

from __future__ import annotations

import heapq
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


def read(records: Store, kind: str, names: Iterable[str] | None = None) -> Iterator[dict]:
    """Every line of ``kind``, shard by shard: of the shards ``names`` lists (a summary's
    ``record_shards``), or of every shard of ``kind`` in the folder."""
    if names is None:
        names = [info.key for info in records.list()]
    for name in sorted(name for name in names
                       if name.startswith(kind + "-") and name.endswith(".jsonl")):
        for line in records.read(name).decode().splitlines():
            if line:
                yield json.loads(line)


def _summary(records: Store) -> tuple[dict, list[str] | None]:
    summary = json.loads(records.read("summary.json"))
    return summary, summary.get("record_shards")  # absent in summaries of older versions


def read_all(output_uri: str, run_id: str) -> tuple[dict, list[dict], list[dict], list[dict]]:
    """(summary, manifest lines, dead letters, orphans) of one finished run, whole."""
    records = folder(output_uri, run_id)
    summary, names = _summary(records)
    return summary, *(sorted(read(records, kind, names), key=lambda line: line["key"])
                      for kind in KINDS)


def heads(output_uri: str, run_id: str, matted: int, letters: int,
          orphans: int) -> tuple[dict, list[dict], list[dict], list[dict]]:
    """(summary, the first ``matted`` lines of photos this run matted, the first ``letters``
    dead letters, the first ``orphans`` orphans), first in key order. The shards are streamed,
    so memory holds these lines alone, whatever the run's size; the counts are the summary's."""
    records = folder(output_uri, run_id)
    summary, names = _summary(records)

    def first(count: int, lines: Iterable[dict]) -> list[dict]:
        return heapq.nsmallest(count, lines, key=lambda line: line["key"])

    return (summary,
            first(matted, (line for line in read(records, "manifest", names)
                           if line.get("status") == "ok")),
            first(letters, read(records, "dead_letter", names)),
            first(orphans, read(records, "orphans", names)))


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
