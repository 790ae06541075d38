"""Bucket-scale matting: every photo under IN_URI becomes a cut-out under OUT_URI (same keys).

    matte bucket IN_URI OUT_URI [--only-mask | --bgcolor C [--jpeg]] [Beam options]  (cli.bucket)

list -> check keys -> one source per output -> skip done -> read + decode -> RunInference ->
render + write -> run records under OUT_URI/_runs/<run-id>/ (``pipelines.run_records``: manifest,
dead letters and orphaned outputs in shards written by the workers, then summary.json).
Which keys need work, where their outputs go and when an output counts as done is
``pipelines.planner``, the same rules ``matte p`` follows; this module spreads its steps over
Beam workers. ``launch(options, pipeline_options)`` is what the CLI and the flows call.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from apache_beam.pvalue import AsDict, AsList, AsSingleton, TaggedOutput
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.window import GlobalWindows

from model.imaging import ImageError, decode_image
from model.outputs import render
from model.weights import model_version
from pipelines import model_handler, planner, run_records
from pipelines.model_handler import METRICS_NAMESPACE, MattingModelHandler
from pipelines.options import BucketOptions, validate
from pipelines.planner import DeadLetter, Job
from pipelines.runners import pinned_runner
from storage import IO_ERRORS, ObjectInfo, open_store, run_lock

DEAD, SKIPPED = "dead", "skipped"
STAGES = ("read", "decode", "inference", "render", "write")


class BucketResult(NamedTuple):
    records: beam.PCollection  # manifest lines: status "ok" or "skipped"
    dead_letters: beam.PCollection  # {"key", "stage", "reason"}
    summary: beam.PCollection  # one dict, also written to summary.json


def dead(key: str, stage: str, reason: str) -> TaggedOutput:
    """A dead letter: the key that failed, at which stage, and why."""
    return TaggedOutput(DEAD, DeadLetter(key, stage, reason).to_json())


def _observe(stage: str, start: float) -> float:
    """Milliseconds since ``start``, also recorded in the stage's latency distribution."""
    milliseconds = (time.perf_counter() - start) * 1000.0
    Metrics.distribution(METRICS_NAMESPACE, f"{stage}_latency_us").update(int(milliseconds * 1e3))
    return milliseconds


def classify(entry, options: BucketOptions) -> list:
    """The planner's classification as Beam outputs: (output, source) or a dead letter."""
    result = planner.classify(entry, options.settings)
    if isinstance(result, DeadLetter):
        return [TaggedOutput(DEAD, result.to_json())]
    return [result]


def pick_source(item: tuple[str, list[ObjectInfo]]) -> Iterator:
    output, sources = item
    chosen, others = planner.pick_source(output, sources)
    yield output, chosen
    for letter in others:
        yield TaggedOutput(DEAD, letter.to_json())


class _RunFn(beam.DoFn):
    """A stage of a run: holds the options, opens the stores on the worker."""

    def __init__(self, options: BucketOptions):
        self._options = options

    def setup(self):
        self._in = open_store(self._options.input_uri)
        self._out = open_store(self._options.output_uri)


class PlanFn(_RunFn):
    """Skip outputs that are done for this source version, model and output options."""

    def process(self, item: tuple[str, ObjectInfo]) -> Iterator:
        output, source = item
        job = planner.plan_output(self._out, output, source, self._options.settings)
        if job is None:
            Metrics.counter(METRICS_NAMESPACE, "skipped").inc()
            yield TaggedOutput(SKIPPED, planner.skipped_record(source, output,
                                                               self._options.settings))
            return
        yield job


class ReadDecodeFn(_RunFn):
    def process(self, job: Job) -> Iterator:
        key, start = job.source.key, time.perf_counter()
        try:
            data = self._in.read(key, expect=job.source)  # the version listed and planned for
        except IO_ERRORS as error:
            yield TaggedOutput(DEAD, planner.read_failure(key, error).to_json())
            return
        Metrics.counter(METRICS_NAMESPACE, "read").inc()
        read_ms, start = _observe("read", start), time.perf_counter()
        try:
            image = decode_image(data, key, self._options.max_pixels)
        except ImageError as error:
            yield dead(key, "decode", error.reason)
            return
        timings = {"read": read_ms, "decode": _observe("decode", start)}
        yield dataclasses.replace(job, timings=timings), image


class RenderWriteFn(_RunFn):
    """Encodes and writes on a thread pool, so PNG encoding overlaps the next batch's inference.
    Results and metrics go out on the bundle's thread: Beam's metric containers are per thread."""

    def setup(self):
        super().setup()
        self._pool = ThreadPoolExecutor(self._options.threads, thread_name_prefix="render")

    def start_bundle(self):
        self._pending = collections.deque()

    def process(self, item: tuple[Job, PredictionResult]) -> Iterator:
        self._pending.append(self._pool.submit(self._write, *item))
        # Each pending item holds a full-resolution photo: bound them.
        while self._pending and (self._pending[0].done()
                                 or len(self._pending) > 2 * self._options.threads):
            yield self._emit(*self._pending.popleft().result(), windowed=False)

    def finish_bundle(self) -> Iterator:
        while self._pending:
            yield self._emit(*self._pending.popleft().result(), windowed=True)

    def teardown(self):
        self._pool.shutdown(wait=True)

    def _emit(self, record: dict | None, letter: TaggedOutput | None, windowed: bool):
        if record is not None:
            Metrics.counter(METRICS_NAMESPACE, "ok").inc()
            for stage in ("render", "write"):
                Metrics.distribution(METRICS_NAMESPACE, f"{stage}_latency_us").update(
                    int(record["timings_ms"][stage] * 1e3))
        if windowed:  # finish_bundle has no input element to take the window from
            return (GlobalWindows.windowed_value(record) if record is not None else
                    TaggedOutput(DEAD, GlobalWindows.windowed_value(letter.value)))
        return record if record is not None else letter

    def _write(self, job: Job, result: PredictionResult) -> tuple[dict | None, TaggedOutput | None]:
        inference = result.inference
        try:
            start = time.perf_counter()
            data = render(result.example, inference.alpha, self._options.output)
            render_ms, start = (time.perf_counter() - start) * 1000.0, time.perf_counter()
            written = planner.commit(self._out, job, data, self._options.settings)
            write_ms = (time.perf_counter() - start) * 1000.0
        except IO_ERRORS as error:
            return None, dead(job.source.key, "write", f"{type(error).__name__}: {error}")
        timings = {**job.timings, "inference": inference.batch_ms / inference.batch_size,
                   "render": render_ms, "write": write_ms}
        return {"key": job.source.key, "output": job.output, "status": "ok",
                "model_version": result.model_id, "source_size": job.source.size,
                "source_version": job.source.version, "output_size": written.size,
                "batch_size": inference.batch_size, "written_at": time.time(),
                "timings_ms": {stage: round(ms, 3) for stage, ms in timings.items()}}, None


class RecordStats(beam.CombineFn):
    """Counts and summed stage timings of the manifest lines: the summary without the lines."""

    def create_accumulator(self) -> dict:
        return {"ok": 0, "skipped": 0, "ms": dict.fromkeys(STAGES, 0.0)}

    def add_input(self, stats: dict, record: dict) -> dict:
        if record["status"] == "ok":
            stats["ok"] += 1
            for stage in STAGES:
                stats["ms"][stage] += record["timings_ms"][stage]
        else:
            stats["skipped"] += 1
        return stats

    def merge_accumulators(self, accumulators) -> dict:
        merged = self.create_accumulator()
        for stats in accumulators:
            merged["ok"] += stats["ok"]
            merged["skipped"] += stats["skipped"]
            for stage in STAGES:
                merged["ms"][stage] += stats["ms"][stage]
        return merged

    def extract_output(self, stats: dict) -> dict:
        return stats


class WriteShardFn(_RunFn):
    """(shard, lines) -> that shard of the run's ``kind`` records, written by this worker."""

    def __init__(self, options: BucketOptions, kind: str):
        super().__init__(options)
        self._kind = kind

    def process(self, item: tuple[int, list[dict]]) -> Iterator[str]:
        index, lines = item
        records = run_records.folder(self._options.output_uri, self._options.run_id)
        yield run_records.write_shard(records, self._kind, index, lines)


class ProgressFn(_RunFn):
    """Counts finished photos per bundle and leaves one marker per bundle, so the flow's
    progress follows this run's work without listing every state record ever written."""

    def start_bundle(self):
        self._done = 0

    def process(self, _) -> None:
        self._done += 1

    def finish_bundle(self) -> None:
        if self._done:
            records = run_records.folder(self._options.output_uri, self._options.run_id)
            try:
                run_records.add_progress(records, self._done)
            except IO_ERRORS as error:  # progress is for watching; the run goes on
                logging.getLogger(__name__).warning("no progress marker: %s", error)


class FindOrphansFn(_RunFn):
    """(output, {"state": [...], "planned": [...]}) -> (the state's source key, output) for an
    output that has a state record but was not planned this run."""

    def process(self, item: tuple[str, dict]) -> Iterator[tuple[str, str]]:
        output, joined = item
        if joined["planned"] or not joined["state"]:
            return
        state, _ = planner.read_state(self._out, output)
        yield (state or {}).get("key", ""), output


def orphaned(item: tuple[str, dict]) -> Iterator[dict]:
    """(source key, {"orphan": outputs, "listed": [...]}) -> a line per output whose source
    the listing does not have (the rule of ``planner.is_orphan``, as a join)."""
    key, joined = item
    if joined["listed"]:
        return
    for output in joined["orphan"]:
        yield {"key": output, "source": key,
               "reason": f"its source {key} is gone" if key else "its state record is unreadable"}


class PruneFn(_RunFn):
    def process(self, line: dict) -> Iterator[dict]:
        planner.prune(self._out, [line["key"]])
        yield line


def write_summary(_, stats: dict, failed_by_stage: dict, orphans: int, shards: list[str],
                  options: BucketOptions) -> dict:
    """summary.json, after every shard (the side inputs make it wait for them)."""
    records = run_records.folder(options.output_uri, options.run_id)
    out, failed = open_store(options.output_uri), sum(failed_by_stage.values())
    wall_s = time.time() - options.started_at
    summary = {
        "run_id": options.run_id, "input_uri": options.input_uri,
        "output_uri": options.output_uri, "model_version": options.model_version,
        "output_options": dataclasses.asdict(options.output),
        "counts": {"ok": stats["ok"], "skipped": stats["skipped"], "failed": failed,
                   "orphaned": orphans},
        "orphans_pruned": options.prune,
        "failed_by_stage": dict(sorted(failed_by_stage.items())),
        "mean_ms": {stage: round(stats["ms"][stage] / stats["ok"], 3)
                    for stage in STAGES} if stats["ok"] else {},
        "record_shards": sorted(shards),
        "started_at": options.started_at, "wall_s": round(wall_s, 3),
        "images_per_s": round(stats["ok"] / wall_s, 3),
        "temp_files_swept": out.sweep_temps(older_than=options.started_at),
    }
    records.write("summary.json", json.dumps(summary, indent=2).encode())
    run_records.clear_progress(records)
    Metrics.counter(METRICS_NAMESPACE, "failed").inc(failed)
    Metrics.counter(METRICS_NAMESPACE, "orphaned").inc(orphans)
    return summary


def _shards(lines: beam.PCollection, kind: str, options: BucketOptions) -> beam.PCollection:
    return (lines | f"Shard{kind}" >> beam.Map(lambda line: (run_records.shard_of(line["key"]),
                                                              line))
            | f"Group{kind}" >> beam.GroupByKey()
            | f"Write{kind}" >> beam.ParDo(WriteShardFn(options, kind)))


def build(p: beam.Pipeline, options: BucketOptions) -> BucketResult:
    """The graph of one run (``options.model_version`` must be set: skips depend on it)."""
    listing = (p | "Root" >> beam.Create([options.input_uri])
               | "List" >> beam.FlatMap(lambda uri: open_store(uri).scan(
                   exclude=options.exclude)))
    listed = listing | "CheckKeys" >> beam.FlatMap(classify, options).with_outputs(
        DEAD, main="ok")
    picked = (listed.ok | "ByOutput" >> beam.GroupByKey()
              | "PickSource" >> beam.FlatMap(pick_source).with_outputs(DEAD, main="ok"))
    planned = picked.ok | "SkipDone" >> beam.ParDo(PlanFn(options)).with_outputs(
        SKIPPED, main="todo")
    decoded = planned.todo | "ReadDecode" >> beam.ParDo(ReadDecodeFn(options)).with_outputs(
        DEAD, main="ok")
    handler = MattingModelHandler(
        options.model, options.weights, expected_version=options.model_version,
        official_normalization=options.official_normalization,
        min_batch_size=options.min_batch_size, max_batch_size=options.max_batch_size,
        share_model=options.share_model, require_gpu=options.require_gpu)
    matted, failed = decoded.ok | "Matte" >> RunInference(
        KeyedModelHandler(handler)).with_exception_handling()
    written = matted | "RenderWrite" >> beam.ParDo(RenderWriteFn(options)).with_outputs(
        DEAD, main="ok")
    failed_inference = failed.failed_inferences | "PerKey" >> beam.FlatMap(
        lambda failure: (dead(job.source.key, "inference", reason).value
                         for job, reason in model_handler.failed_keys(failure)))
    letters = ((listed[DEAD], picked[DEAD], decoded[DEAD], failed_inference, written[DEAD])
               | "DeadLetters" >> beam.Flatten())
    records = (planned[SKIPPED], written.ok) | "Records" >> beam.Flatten()
    _ = (records, letters) | "Finished" >> beam.Flatten() | "Progress" >> beam.ParDo(
        ProgressFn(options))

    # Orphans: state records of outputs not planned this run whose source is not listed.
    states = (p | "OutRoot" >> beam.Create([options.output_uri])
              | "ListStates" >> beam.FlatMap(lambda uri: planner.state_outputs(open_store(uri)))
              | "ByStateOutput" >> beam.Map(lambda output: (output, None)))
    planned_outputs = picked.ok | "PlannedOutputs" >> beam.Map(lambda item: (item[0], None))
    unplanned = ({"state": states, "planned": planned_outputs} | "JoinPlanned" >>
                 beam.CoGroupByKey() | "Unplanned" >> beam.ParDo(FindOrphansFn(options)))
    listed_keys = listing | "ListedKeys" >> beam.Map(lambda entry: (entry.key, None))
    orphans = ({"orphan": unplanned, "listed": listed_keys} | "JoinListed" >>
               beam.CoGroupByKey() | "Orphaned" >> beam.FlatMap(orphaned))
    if options.prune:
        orphans = orphans | "Prune" >> beam.ParDo(PruneFn(options))

    shards = ((_shards(records, "manifest", options), _shards(letters, "dead_letter", options),
               _shards(orphans, "orphans", options)) | "Shards" >> beam.Flatten())
    stats = records | "RecordStats" >> beam.CombineGlobally(RecordStats())
    stages = (letters | "Stage" >> beam.Map(lambda letter: letter["stage"])
              | "ByStage" >> beam.combiners.Count.PerElement())
    orphan_count = orphans | "CountOrphans" >> beam.combiners.Count.Globally()
    summary = (p | "Once" >> beam.Create([None])
               | "Summary" >> beam.Map(write_summary, AsSingleton(stats), AsDict(stages),
                                       AsSingleton(orphan_count), AsList(shards), options))
    return BucketResult(records, letters, summary)


def launch(options: BucketOptions, pipeline_options: PipelineOptions,
           timeout_s: float | None = None) -> beam.runners.runner.PipelineResult:
    """Validate ``options`` and run them to the end on the runner the pipeline options name;
    the PipelineResult carries the counters (``counter``).

    ``timeout_s`` bounds the wait for a runner that returns before the job ends (Dataflow):
    past it, or when the wait itself is interrupted, the job is cancelled, so a failed or
    timed-out flow leaves no job running. The in-process runner finishes inside ``run()``.
    """
    options = validate(options, pipeline_options)
    options = dataclasses.replace(options, model_version=model_version(options.model,
                                                                       options.weights))
    pipeline = beam.Pipeline(runner=pinned_runner(pipeline_options), options=pipeline_options)
    build(pipeline, options)
    with run_lock(options.output_uri):  # a local output folder: one run at a time
        return _run_to_the_end(pipeline, timeout_s, options, pipeline_options)


def _run_to_the_end(pipeline: beam.Pipeline, timeout_s: float | None, options: BucketOptions,
                    pipeline_options: PipelineOptions) -> beam.runners.runner.PipelineResult:
    result = pipeline.run()
    try:
        record_job(options, pipeline_options, result)
        state = result.wait_until_finish(
            duration=None if timeout_s is None else int(timeout_s * 1000))
    except BaseException:
        _cancel(result)
        raise
    if not PipelineState.is_terminal(state):
        _cancel(result)
        raise TimeoutError(f"the pipeline did not finish within {timeout_s:.0f} s "
                           f"(state {state}); the job was cancelled")
    return result


def record_job(options: BucketOptions, pipeline_options: PipelineOptions,
               result: beam.runners.runner.PipelineResult) -> None:
    """``job.json`` for a runner whose job outlives this process (Dataflow): what a flow's
    cancellation hook needs to cancel it (:func:`cancel_jobs`). An in-process runner has
    returned by now, its job finished."""
    job_id = getattr(result, "job_id", None)
    if not callable(job_id):
        return
    cloud = pipeline_options.view_as(GoogleCloudOptions)
    record = {"runner": type(result).__name__, "job_id": job_id(), "project": cloud.project,
              "region": cloud.region, "launched_by": options.launched_by,
              "run_id": options.run_id}
    run_records.folder(options.output_uri, options.run_id).write(
        "job.json", json.dumps(record).encode())


def cancel_jobs(output_uri: str, launched_by: str) -> list[str]:
    """Cancel the remote jobs that runs launched by ``launched_by`` (a flow run id) recorded;
    the job ids asked to cancel. For a flow cancelled or crashed while its job runs on."""
    from apache_beam.runners.dataflow.internal.apiclient import DataflowApplicationClient

    runs, cancelled = open_store(f"{output_uri.rstrip('/')}/_runs"), []
    for info in runs.list():
        if not info.key.endswith("/job.json"):
            continue
        record = json.loads(runs.read(info.key))
        if record.get("launched_by") != launched_by or not launched_by:
            continue
        client = DataflowApplicationClient(PipelineOptions(
            project=record["project"], region=record["region"]))
        if not client.modify_job_state(record["job_id"], "JOB_STATE_CANCELLED"):
            raise RuntimeError(f"Dataflow refused to cancel job {record['job_id']}")
        cancelled.append(record["job_id"])
    return cancelled


def _cancel(result: beam.runners.runner.PipelineResult) -> None:
    try:
        result.cancel()
    except (NotImplementedError, RuntimeError) as error:  # finished meanwhile, or no API
        logging.getLogger(__name__).warning("could not cancel the pipeline: %s", error)


def counter(result: beam.runners.runner.PipelineResult, name: str) -> int:
    """A matte_bucket counter summed over steps (committed where the runner has them)."""
    query = MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name)
    return sum(c.committed if c.committed is not None else c.attempted
               for c in result.metrics().query(query)["counters"])

