"""Ingestion throughput: the Beam pipeline vs a plain copy of the same files, in one run.

Run: ``python benchmarks/ingest.py [--repeats N] [BEAM OPTIONS]``. Two real datasets from
../shared/data are arranged into the P3M layout: human-seg (194 small photos, two thirds with
smaller masks that get resized) and p3m-demo-samples (15 real P3M-10k photos, 1080p, with
full-size alphas: what P3M pairs cost). For each, a plain copy of the files and the pipeline run
``--repeats`` times (median), after one untimed warm-up ingestion so imports and first-call
costs are not counted. P3M-10k's 10,421 pairs are projected from the P3M-sized pairs' rate.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from apache_beam.options.pipeline_options import PipelineOptions
from timing import median_seconds

from pipelines.arrange import arrange_p3m
from pipelines.ingest_p3m import IngestOptions, launch

P3M_PAIRS = 10_421
SHARED = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data"))


def plain_copy(files: list[Path], root: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    for path in files:
        destination = target / path.relative_to(root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)


DATASETS = (("human-seg-vikramshenoy", None, None),
            ("p3m-demo-samples", "original", "p3mnet_pred_alpha"))


def measure(source: Path, images: str | None, masks: str | None, scratch: Path,
            repeats: int, beam_args: list[str]) -> dict:
    dataset = scratch / source.name
    arrange_p3m(source, dataset, images=images, masks=masks)
    files = sorted(path for path in dataset.rglob("*") if path.is_file())
    manifest: dict = {}

    def ingest() -> None:
        options = IngestOptions(str(dataset), str(scratch / f"{source.name}-shards"))
        manifest.update(launch(options, PipelineOptions(beam_args)))

    copy_s = median_seconds(lambda: plain_copy(files, dataset, scratch / "copy"), repeats)
    ingest_s = median_seconds(ingest, repeats)
    return {"name": source.name, "pairs": manifest["pairs"], "rejected": manifest["rejected"],
            "MB": sum(path.stat().st_size for path in files) / 1e6, "copy_s": copy_s,
            "ingest_s": ingest_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args, beam_args = parser.parse_known_args(argv)
    beam_args = [arg for arg in beam_args if arg != "--"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as scratch:
        scratch = Path(scratch)
        arrange_p3m(SHARED / DATASETS[0][0], scratch / "warm-up", limit=12)
        launch(IngestOptions(str(scratch / "warm-up"), str(scratch / "warm-up-out")),
               PipelineOptions(beam_args))
        for name, images, masks in DATASETS:
            rows.append(measure(SHARED / name, images, masks, scratch, args.repeats, beam_args))
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs; Beam options: "
          f"{' '.join(beam_args) or '(default: FnApiRunner, in_memory)'}; median of "
          f"{args.repeats}, after a warm-up run")
    print(f"{'dataset':<24}{'pairs':>6}{'MB':>7}  {'method':<11}{'seconds':>8}{'pairs/s':>9}"
          f"{'MB/s':>8}")
    for row in rows:
        for method, seconds in (("plain copy", row["copy_s"]), ("ingestion", row["ingest_s"])):
            print(f"{row['name']:<24}{row['pairs']:>6}{row['MB']:>7.1f}  {method:<11}"
                  f"{seconds:>8.2f}{row['pairs'] / seconds:>9.1f}{row['MB'] / seconds:>8.1f}")
        print(f"{row['name']:<24}  ingestion takes {row['ingest_s'] / row['copy_s']:.0f}x the "
              f"copy time ({row['rejected']} rejected)")
    p3m = rows[-1]
    rate, mb_per_pair = p3m["pairs"] / p3m["ingest_s"], p3m["MB"] / p3m["pairs"]
    print(f"P3M-10k projection ({P3M_PAIRS} pairs of ~{mb_per_pair:.2f} MB = "
          f"{P3M_PAIRS * mb_per_pair / 1e3:.1f} GB) at {rate:.1f} pairs/s: "
          f"{P3M_PAIRS / rate / 60:.1f} min on this machine and runner "
          f"(a plain copy: {P3M_PAIRS / (p3m['pairs'] / p3m['copy_s']) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
