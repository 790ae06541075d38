"""Prefect flow: the nightly matting run over a bucket, with the champion model.

Thin by design: the work is ``pipelines.matte_bucket.launch`` with typed options (what
``matte bucket`` calls too). The flow resolves the model, shows progress while the pipeline
runs, and publishes a table artifact (counts, throughput, dead letters) and a markdown
artifact with a few before/after thumbnails. Individual bad photos never fail the run: they
are dead letters. It fails (red in the dashboard) only for systemic errors: the pipeline
raising, or every photo failing at the model or write stage.

    python -m flows.matting_flow IN_URI OUT_URI [--model lite]     # one run, ephemeral API
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from apache_beam.options.pipeline_options import PipelineOptions
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from pydantic import BaseModel, Field

from model.imaging import ImageError, parse_color
from model.outputs import OutputOptions
from model.refine import AlphaMatting
from model.weights import MODEL_NAMES, canonical_model
from operations import markdown
from operations.pictures import before_after, markdown_image
from operations.registry import Registry, RegistryError
from pipelines import matte_bucket, run_records
from pipelines.options import BucketOptions, new_run_id
from pipelines.runners import beam_options, with_dask_address
from storage import IO_ERRORS, open_store

SUMMARY_KEY = "matting-summary"
DEAD_LETTERS_KEY = "matting-dead-letters"
THUMBNAILS_KEY = "matting-thumbnails"
PROGRESS_EVERY_S = 10.0
# Bounds on an unattended night: the pipeline's own limit is a parameter; the flow's and the
# tasks' (static in Prefect) sit above it so the pipeline's limit, which cancels the job,
# normally fires first.
FLOW_TIMEOUT_S = 13 * 3600
PIPELINE_TASK_TIMEOUT_S = 12 * 3600
IO_TASK_TIMEOUT_S = 600
SYSTEMIC_STAGES = {"inference", "write"}  # failing there for every photo is not the photos


class MattingParams(BaseModel):
    input_uri: str = Field(description="folder or gs://bucket/prefix of uploaded photos")
    output_uri: str = Field(description="folder or gs://bucket/prefix for the cut-outs")
    model: str = Field("champion", description="champion | lite | full | rembg's u2netp, u2net, "
                       "u2net_human_seg | path or gs:// URI of an .onnx/.keras file")
    registry_uri: str = Field("registry", description="model registry holding the champion")
    runner: str = Field("DirectRunner", description="DirectRunner | dask | DataflowRunner")
    dask_address: str | None = Field(None, description="dask scheduler for runner dask, e.g. "
                                     "tcp://dask-scheduler:8786; unset: a LocalCluster here")
    beam_args: list[str] = Field(default_factory=list, description="extra Beam options")
    max_batch_size: int = Field(8, ge=1)
    only_mask: bool = False
    bgcolor: str | None = None
    jpeg: bool = Field(False, description="with bgcolor: write JPEG")
    estimate_foreground: bool = Field(False, description="the subject's own colour in the soft "
                                      "edge instead of the old background's (`matte --fg`)")
    alpha_matting: bool = Field(False, description="refine the alpha by closed-form matting "
                                "(rembg's -a; then the foreground is estimated too)")
    alpha_matting_foreground_threshold: int = Field(240, ge=0, le=255)
    alpha_matting_background_threshold: int = Field(10, ge=0, le=255)
    alpha_matting_erode_size: int = Field(10, ge=0)
    thumbnails: int = Field(4, ge=0, le=12)
    prune: bool = Field(False, description="remove outputs whose source is gone (they are "
                        "reported either way)")
    pipeline_timeout_s: int = Field(6 * 3600, ge=60, le=11 * 3600, description="the pipeline "
                                    "is cancelled and the night red past this")
    # What makes a night red (README, "What makes a night red"):
    max_failure_ratio: float = Field(0.5, ge=0, le=1, description="red when more of this "
                                     "night's photos than this fraction are dead letters...")
    min_photos_for_ratio: int = Field(10, ge=1, description="...among at least this many")
    fail_on_empty_listing: bool = Field(True, description="red when the input lists nothing "
                                        "while the previous run found photos")
    fail_on_champion_fallback: bool = Field(True, description="red (the photos are still "
                                            "matted) when the champion pointer was refused and "
                                            "an older champion served")


# Reading the registry is idempotent I/O: safe to retry on a transient storage error.
@task(retries=2, retry_delay_seconds=10, timeout_seconds=IO_TASK_TIMEOUT_S)
def resolve_model(model: str, registry_uri: str) -> tuple[str, str | None, str | None]:
    """(variant, weights URI, fallback reason): the champion's .keras for ``"champion"``;
    the reason is set when the pointer was refused and the last good champion serves."""
    if model in MODEL_NAMES:  # ours and rembg's names: the official weights from the cache
        return canonical_model(model), None, None
    if model != "champion":
        return "lite", model, None
    registry = Registry(registry_uri)
    # The model's URI (gs:// stays gs://, as Dataflow workers need); the pipeline downloads it.
    try:
        uri = registry.model_uri()
    except RegistryError as error:
        fallback = registry.last_good_champion()
        if fallback is None:
            raise
        reason = f"champion pointer refused ({error}); served the previous champion {fallback}"
        get_run_logger().error(reason)
        return "lite", registry.model_uri(fallback), reason
    return "lite", uri, None


def bucket_options(params: MattingParams, variant: str, weights: str | None,
                   run_id: str) -> tuple[BucketOptions, PipelineOptions]:
    """The pipeline's typed options for one run of this flow."""
    matting = (AlphaMatting(params.alpha_matting_foreground_threshold,
                            params.alpha_matting_background_threshold,
                            params.alpha_matting_erode_size)
               if params.alpha_matting else None)
    output = OutputOptions(only_mask=params.only_mask,
                           bgcolor=parse_color(params.bgcolor) if params.bgcolor else None,
                           jpeg=params.jpeg, estimate_foreground=params.estimate_foreground,
                           alpha_matting=matting)
    options = BucketOptions(params.input_uri, params.output_uri, output, model=variant,
                            weights=weights, min_batch_size=params.max_batch_size,
                            max_batch_size=params.max_batch_size, run_id=run_id,
                            prune=params.prune, launched_by=_flow_run_id())
    return options, beam_options(with_dask_address(params.beam_args, params.dask_address),
                                 runner=params.runner)


def _flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


@task(timeout_seconds=PIPELINE_TASK_TIMEOUT_S)
def run_pipeline(params: MattingParams, variant: str, weights: str | None, run_id: str) -> str:
    """The Beam run; a progress artifact follows this run's per-bundle counts as they land."""
    options, pipeline_options = bucket_options(params, variant, weights, run_id)
    total = max(sum(1 for _ in open_store(params.input_uri).list()), 1)
    records = run_records.folder(params.output_uri, run_id)
    progress = create_progress_artifact(0.0, key="matting-progress",
                                        description=f"run {run_id}")
    finished = threading.Event()

    def follow() -> None:
        while not finished.wait(PROGRESS_EVERY_S):
            done = run_records.progress(records)
            update_progress_artifact(progress, min(100.0, 100.0 * done / total))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        matte_bucket.launch(options, pipeline_options, timeout_s=params.pipeline_timeout_s)
    except Exception as error:
        raise _unwrapped_cancellation(error) from None
    finally:
        finished.set()
        follower.join()
    update_progress_artifact(progress, 100.0)
    return run_id


def _unwrapped_cancellation(error: BaseException) -> BaseException:
    """Prefect's flow timeout raises a CancelledError wherever the flow's thread is; inside a
    Beam step, Beam wraps it in a RuntimeError naming the step. Unwrapped, Prefect ends the
    run TimedOut (its timeout) instead of Failed with a puzzling message."""
    from prefect._internal.concurrency.cancellation import CancelledError

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, CancelledError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return error


# The artifacts show this many lines of each kind; the counts come from the summary.
SHOWN_LETTERS, SHOWN_ORPHANS = 1000, 20


# Reading the run records is idempotent I/O.
@task(retries=2, retry_delay_seconds=5, timeout_seconds=IO_TASK_TIMEOUT_S)
def read_run(output_uri: str, run_id: str,
             thumbnails: int) -> tuple[dict, list[dict], list[dict], list[dict]]:
    """(summary, the first matted photos, dead letters and orphaned outputs): what the
    artifacts show, never the whole run (a bucket's manifest can hold millions of lines)."""
    return run_records.heads(output_uri, run_id, matted=thumbnails, letters=SHOWN_LETTERS,
                             orphans=SHOWN_ORPHANS)


@task(timeout_seconds=IO_TASK_TIMEOUT_S)
def publish(params: MattingParams, summary: dict, records: list[dict],
            letters: list[dict], orphans: list[dict]) -> None:
    counts = summary["counts"]
    create_table_artifact(key=SUMMARY_KEY, description=f"matting run {summary['run_id']}",
                          table=[{
                              "ok": counts["ok"], "skipped": counts["skipped"],
                              "failed": counts["failed"], "orphaned": counts["orphaned"],
                              "images_per_s": summary["images_per_s"],
                              "wall_s": summary["wall_s"],
                              "model_version": summary["model_version"],
                              "output": params.output_uri}])
    if letters:
        create_table_artifact(key=DEAD_LETTERS_KEY, table=letters,
                              description=f"{counts['failed']} photos not matted, with reasons"
                              + (f" (the first {len(letters)})"
                                 if counts["failed"] > len(letters) else ""))
    lines = [f"# Matting run `{summary['run_id']}`", "",
             f"{counts['ok']} matted, {counts['skipped']} already done, {counts['failed']} "
             f"dead letters, {summary['images_per_s']} images/s, model "
             f"`{summary['model_version']}`.", ""]
    source, out = open_store(params.input_uri), open_store(params.output_uri)
    for record in records:  # read_run kept the first params.thumbnails
        try:
            png = before_after(source.read(record["key"]), out.read(record["output"]))
        except (*IO_ERRORS, ImageError) as error:  # e.g. deleted since the run
            get_run_logger().warning("no thumbnail for %s: %s", record["key"], error)
            continue
        lines += [f"**{markdown.escape(record['key'])}**", "",
                  markdown_image(markdown.escape(record["key"]), png), ""]
    for letter in letters[:20]:
        lines.append(f"- dead letter {markdown.code(letter['key'])} ({letter['stage']}): "
                     f"{markdown.escape(letter['reason'])}")
    if orphans:
        verb = ("removed" if summary.get("orphans_pruned")
                else "kept (the prune parameter removes them)")
        lines += ["", f"{counts['orphaned']} outputs whose source is "
                  f"gone, {verb}:"]
        lines += [f"- {markdown.code(line['key'])}: {markdown.escape(line['reason'])}"
                  for line in orphans]  # the first SHOWN_ORPHANS
    create_markdown_artifact(key=THUMBNAILS_KEY, markdown="\n".join(lines))


def check_systemic(summary: dict, letters: list[dict]) -> None:
    """Raise when the failures say the system, not the photos, is broken: nothing matted or
    already done, and several photos all failing at the model or write stage (the summary's
    counts by stage; ``letters`` only names the first)."""
    counts, stages = summary["counts"], summary["failed_by_stage"]
    if counts["ok"] == 0 and counts["skipped"] == 0 and counts["failed"] > 1 and \
            set(stages) <= SYSTEMIC_STAGES:
        first = f"; first: {letters[0]['reason']}" if letters else ""
        raise RuntimeError(f"every photo failed at the model or write stage "
                           f"({counts['failed']}{first})")


def previous_listing(output_uri: str, run_id: str) -> tuple[str, int] | None:
    """(run id, photos listed) of the newest earlier run with a summary, if any. Run ids
    start with their UTC start time, so name order is time order."""
    records = open_store(f"{output_uri.rstrip('/')}/_runs")  # not every cut-out
    runs = sorted({info.key.split("/")[0] for info in records.list()
                   if info.key.endswith("/summary.json") and info.key.split("/")[0] < run_id})
    for previous in reversed(runs):
        try:
            counts = json.loads(records.read(f"{previous}/summary.json"))["counts"]
        except (*IO_ERRORS, ValueError, KeyError):
            continue
        return previous, counts["ok"] + counts["skipped"] + counts["failed"]
    return None


def night_verdict(params: MattingParams, summary: dict, previous: tuple[str, int] | None,
                  fallback: str | None) -> str | None:
    """Why this night is red (None: green). Bad photos alone are dead letters in a green run;
    a night is red when so many fail that the cause is likely upstream (a broken uploader, a
    codec missing), when the input suddenly lists nothing, or when the champion was refused."""
    counts = summary["counts"]
    attempted = counts["ok"] + counts["failed"]
    if attempted >= params.min_photos_for_ratio and \
            counts["failed"] > params.max_failure_ratio * attempted:
        return (f"{counts['failed']} of {attempted} photos failed "
                f"(> {params.max_failure_ratio:.0%}); see the dead letters")
    listed = attempted + counts["skipped"]
    if params.fail_on_empty_listing and listed == 0 and previous and previous[1] > 0:
        return (f"the input {params.input_uri} listed nothing, but the previous run "
                f"{previous[0]} found {previous[1]} photos: is the input prefix right?")
    if params.fail_on_champion_fallback and fallback:
        return fallback
    return None


def cancel_pipeline_jobs(flow, flow_run, state) -> None:
    """A flow run cancelled, crashed or failed: cancel the remote pipeline job (Dataflow) it
    launched and recorded, so no job keeps running and writing after its flow is gone. The
    in-process runner needs nothing: it stops with the flow's process."""
    import logging

    log = logging.getLogger("flows.matting_flow")
    params = (flow_run.parameters or {}).get("params") or {}
    output_uri = params.get("output_uri") if isinstance(params, dict) else getattr(
        params, "output_uri", None)
    if not output_uri:
        return
    try:
        cancelled = matte_bucket.cancel_jobs(output_uri, str(flow_run.id))
    except Exception as error:  # a hook must not hide the state that called it
        log.error("could not cancel the pipeline job of flow run %s: %s", flow_run.id, error)
        return
    for job_id in cancelled:
        log.warning("cancelled pipeline job %s (flow run %s is %s)", job_id, flow_run.id,
                    state.name)


@flow(name="nightly-matting", timeout_seconds=FLOW_TIMEOUT_S,
      on_cancellation=[cancel_pipeline_jobs], on_crashed=[cancel_pipeline_jobs],
      on_failure=[cancel_pipeline_jobs])
def matting_flow(params: MattingParams) -> dict:
    """Matte every new photo under ``params.input_uri`` into ``params.output_uri``."""
    run_id = new_run_id()
    variant, weights, fallback = resolve_model(params.model, params.registry_uri)
    previous = previous_listing(params.output_uri, run_id)
    run_pipeline(params, variant, weights, run_id)
    summary, records, letters, orphans = read_run(params.output_uri, run_id,
                                                  params.thumbnails)
    publish(params, summary, records, letters, orphans)
    check_systemic(summary, letters)
    red = night_verdict(params, summary, previous, fallback)
    if red:
        raise RuntimeError(red)
    if orphans:
        get_run_logger().warning("%d outputs whose source is gone %s",
                                 summary["counts"]["orphaned"],
                                 "were removed" if params.prune else "are kept (prune: true "
                                 "removes them)")
    return {"run_id": run_id, "counts": summary["counts"],
            "report": f"{params.output_uri.rstrip('/')}/_runs/{run_id}/summary.json"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one nightly-matting flow run")
    parser.add_argument("input_uri")
    parser.add_argument("output_uri")
    parser.add_argument("--model", default="champion")
    parser.add_argument("--registry", default="registry")
    args = parser.parse_args(argv)
    result = matting_flow(MattingParams(input_uri=args.input_uri, output_uri=args.output_uri,
                                        model=args.model, registry_uri=args.registry))
    counts = result["counts"]
    print(f"ok: {counts['ok']}  skipped: {counts['skipped']}  failed: {counts['failed']}")
    print(f"cut-outs in {args.output_uri}; run report: {result['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
