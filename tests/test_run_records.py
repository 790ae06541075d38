"""A run's records: readers take the shards its summary names (a run id used again leaves
the older run's other shards behind), and ``heads`` returns the first lines in key order."""

from __future__ import annotations

import json

from pipelines import run_records


def write_run(output_uri: str, run_id: str, keys: list[str], failed: list[str]) -> None:
    """What the bucket job writes: shards by key hash, then the summary naming them."""
    records = run_records.folder(output_uri, run_id)
    lines = {"manifest": [{"key": key, "output": f"{key}.png",
                           "status": "ok" if i % 2 else "skipped"}
                          for i, key in enumerate(keys)],
             "dead_letter": [{"key": key, "stage": "decode", "reason": "empty file"}
                             for key in failed]}
    shards = []
    for kind, kind_lines in lines.items():
        by_shard: dict[int, list[dict]] = {}
        for line in kind_lines:
            by_shard.setdefault(run_records.shard_of(line["key"]), []).append(line)
        shards += [run_records.write_shard(records, kind, index, group)
                   for index, group in by_shard.items()]
    summary = {"run_id": run_id, "counts": {"ok": len(keys) // 2, "failed": len(failed)},
               "record_shards": sorted(shards)}
    records.write("summary.json", json.dumps(summary).encode())


def test_a_reused_run_id_reads_only_the_shards_of_its_last_run(tmp_path):
    out = str(tmp_path / "out")
    write_run(out, "night", [f"photo-{i:03d}.jpg" for i in range(40)],
              failed=[f"junk-{i}.bin" for i in range(12)])
    write_run(out, "night", ["new.jpg"], failed=["bad.gif"])  # fewer shards this time
    folder = run_records.folder(out, "night")
    assert sum(1 for info in folder.list() if info.key.endswith(".jsonl")) > 2  # old ones left
    _, manifest, letters, orphans = run_records.read_all(out, "night")
    assert [line["key"] for line in manifest] == ["new.jpg"]
    assert [line["key"] for line in letters] == ["bad.gif"]
    assert orphans == []


def test_heads_are_the_first_lines_in_key_order(tmp_path):
    out = str(tmp_path / "out")
    keys = [f"photo-{i:03d}.jpg" for i in range(40)]
    failed = [f"junk-{i:02d}.bin" for i in range(30)]
    write_run(out, "night", keys, failed)
    summary, matted, letters, orphans = run_records.heads(out, "night", matted=3, letters=5,
                                                          orphans=2)
    assert summary["counts"] == {"ok": 20, "failed": 30}
    assert [line["key"] for line in matted] == ["photo-001.jpg", "photo-003.jpg",
                                                "photo-005.jpg"]  # only photos matted
    assert [line["key"] for line in letters] == sorted(failed)[:5]
    assert orphans == []
    _, manifest, all_letters, _ = run_records.read_all(out, "night")
    assert len(manifest) == 40 and len(all_letters) == 30
