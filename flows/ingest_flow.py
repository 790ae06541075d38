"""Prefect flow: run the P3M-10k ingestion pipeline, then publish what it accepted and rejected.

Thin by design: the work is ``pipelines.ingest_p3m.launch`` (what ``matte ingest`` calls too),
given typed options; the flow adds retries, typed parameters and its artifacts: a table of
counts per split (plus one of rejects) and a markdown summary.

A source that fails the publishing checks (fewer than ``min_pairs`` pairs, more than
``max_rejected`` of rejects) leaves the published dataset as it was and turns the flow red with
the counts; its artifacts still show what was rejected, so the reason is one click away.

    python -m flows.ingest_flow SRC DST                      # DirectRunner (in-process)
    ingest_flow(SRC, DST, runner="DataflowRunner", beam_args=["--project", "P", ...])
"""

from __future__ import annotations

import sys
from typing import Annotated

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

from pipelines import ingest_p3m
from pipelines.ingest_p3m import IngestOptions
from pipelines.ingest_publish import MANIFEST, REJECTED_MANIFEST, DatasetRejected
from pipelines.runners import beam_options

COUNTS_KEY = "p3m-ingest-counts"
REJECTS_KEY = "p3m-ingest-rejects"
SUMMARY_KEY = "p3m-ingest-summary"
MAX_REJECT_ROWS = 1000  # the manifest keeps them all; an artifact this long is already a scroll


def _transient(task, task_run, state) -> bool:
    """Retry what may pass next time; a rejected or empty source would fail the same way."""
    return not isinstance(state.data, DatasetRejected | FileNotFoundError)


# Ingestion is idempotent (same input, same shards; each run stages apart and publishing
# swaps the manifest last), so retrying it after a transient storage or worker error is safe.
@task(retries=1, retry_delay_seconds=30, retry_condition_fn=_transient)
def run_ingestion(source: str, destination: str, runner: str, shard_mb: float,
                  min_pairs: int, max_rejected: float, beam_args: list[str]) -> dict:
    options = IngestOptions(source, destination, int(shard_mb * 2**20), min_pairs=min_pairs,
                            max_rejected_fraction=max_rejected)
    # beam_args carry what only a runner needs (a Dataflow project, region, temp location).
    return ingest_p3m.launch(options, beam_options(beam_args, runner=runner))


def count_rows(manifest: dict) -> list[dict]:
    rows = []
    for split, info in manifest["splits"].items():
        rows.append({"split": split, "pairs": info["pairs"], "rejected": info["rejected"],
                     "masks_resized": info["masks_resized"], "shards": len(info["shards"]),
                     "MB": round(info["bytes"] / 2**20, 2)})
    unplaced = sum(1 for reject in manifest["rejects"] if not reject["split"])
    rows.append({"split": "(outside the layout)", "pairs": 0, "rejected": unplaced,
                 "masks_resized": 0, "shards": 0, "MB": 0.0})
    return rows


def summary_markdown(manifest: dict, destination: str, refused: str | None = None) -> str:
    """The run in a few lines; ``refused`` is why it was not published, if it was not."""
    lines = [f"# P3M ingestion: {manifest['pairs']} pairs, {manifest['rejected']} rejected, "
             f"{'NOT published' if refused else 'published'}", ""]
    if refused:
        lines += [f"**{refused}**", ""]
    lines += [f"From `{manifest['source']}` to `{destination}` "
              f"({manifest['files_listed']} files listed, {len(manifest['ignored'])} hidden "
              f"files ignored, {manifest['bytes'] / 2**20:.1f} MB of shards).", "",
              "| split | pairs | rejected | shards |", "|---|---:|---:|---:|"]
    for split, info in manifest["splits"].items():
        lines.append(f"| {split} | {info['pairs']} | {info['rejected']} | "
                     f"{len(info['shards'])} |")
    reasons = {reason: n for reason, n in manifest["rejected_by_reason"].items() if n}
    if reasons:
        lines += ["", "Rejected by reason: " + ", ".join(f"{reason} {n}"
                                                       for reason, n in reasons.items())]
    listing = REJECTED_MANIFEST if refused else MANIFEST
    lines += ["", f"Code version `{manifest['code_version']['sources_sha256']}`; every reject "
              f"with its reason is in `{listing}`."]
    return "\n".join(lines)


@task
def publish_artifacts(manifest: dict, destination: str, refused: str | None = None) -> None:
    create_table_artifact(key=COUNTS_KEY, table=count_rows(manifest),
                          description=f"P3M ingestion into {destination}")
    if manifest["rejects"]:
        rows = [{name: reject[name] for name in ("split", "key", "reason", "detail")}
                for reject in manifest["rejects"][:MAX_REJECT_ROWS]]
        create_table_artifact(key=REJECTS_KEY, table=rows,
                              description=f"{manifest['rejected']} rejected pairs")
    create_markdown_artifact(key=SUMMARY_KEY,
                             markdown=summary_markdown(manifest, destination, refused))


@flow(name="ingest-p3m")
def ingest_flow(source: str, destination: str, runner: str = "DirectRunner",
                shard_mb: Annotated[float, Field(gt=0)] = ingest_p3m.DEFAULT_SHARD_MB,
                min_pairs: Annotated[int, Field(ge=0)] = ingest_p3m.DEFAULT_MIN_PAIRS,
                max_rejected: Annotated[float, Field(ge=0, le=1)] = (
                    ingest_p3m.DEFAULT_MAX_REJECTED),
                beam_args: list[str] | None = None) -> dict:
    """P3M-10k at ``source`` (folder or gs://) -> TFRecord shards + manifest at ``destination``,
    published only with at least ``min_pairs`` pairs and at most ``max_rejected`` (a fraction)
    of rejects; else the flow fails with the counts and the published dataset stays.

    Returns the counts: pairs and rejects per split, rejects per reason.
    """
    try:
        manifest = run_ingestion(source, destination, runner, shard_mb, min_pairs,
                                 max_rejected, list(beam_args or []))
    except DatasetRejected as rejected:
        if rejected.manifest is not None:
            publish_artifacts(rejected.manifest, destination, str(rejected))
        raise  # the flow run fails with the counts as its message
    publish_artifacts(manifest, destination)
    return {"pairs": manifest["pairs"], "rejected": manifest["rejected"],
            "splits": {split: {"pairs": info["pairs"], "rejected": info["rejected"]}
                       for split, info in manifest["splits"].items()},
            "rejected_by_reason": manifest["rejected_by_reason"]}


if __name__ == "__main__":
    ingest_flow(sys.argv[1], sys.argv[2], beam_args=sys.argv[3:])
