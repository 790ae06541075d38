"""What one bucket matting run is asked to do, and the checks before it is launched.

Mistakes that would only surface on a Dataflow worker (no temp_location, a local path the
workers cannot see, a GPU type on the wrong machine) are refused up front with a message saying
what to pass. The command line that fills these options is ``cli.bucket``; flows build them
directly.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import time
from dataclasses import dataclass

from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
    WorkerOptions,
)

from model.imaging import DEFAULT_MAX_PIXELS
from model.outputs import OutputOptions
from pipelines.planner import DEFAULT_MAX_BYTES, RunSettings, exclude_for
from pipelines.runners import runner_name
from storage import is_gcs

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ACCELERATOR = re.compile(r"(?:^|[;,\s])(?:worker_accelerator|accelerator)=(?P<spec>\S+)")


class OptionsError(ValueError):
    """Options that cannot work; the message says what to pass instead."""


@dataclass(frozen=True)
class BucketOptions:
    """What one run mattes, with which model, and how it batches."""

    input_uri: str
    output_uri: str
    output: OutputOptions = OutputOptions()
    model: str = "lite"
    weights: str | None = None
    official_normalization: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    min_batch_size: int = 8  # = max: fixed batches keep one traced input shape
    max_batch_size: int = 8
    writer_threads: int = 0  # 0: one per CPU core
    share_model: bool = False
    require_gpu: bool = False
    run_id: str = ""
    prune: bool = False  # remove outputs whose source is gone (reported either way)
    launched_by: str = ""  # the Prefect flow run that launched it, in the run's job.json
    started_at: float = 0.0
    model_version: str = ""  # filled in at launch from the weights file's hash

    @property
    def exclude(self) -> str | None:
        """OUT_URI's key prefix when it lies inside IN_URI, so outputs are never inputs."""
        return exclude_for(self.input_uri, self.output_uri)

    @property
    def threads(self) -> int:
        return self.writer_threads or os.cpu_count() or 1

    @property
    def settings(self) -> RunSettings:
        """What the planner compares against an output's state record."""
        return RunSettings(self.output, self.model_version, self.official_normalization,
                           self.max_bytes)


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def validate(options: BucketOptions, pipeline_options: PipelineOptions) -> BucketOptions:
    """``options`` (run id and start time filled in, GPU requirement added when an accelerator
    is asked for), or OptionsError."""
    accelerator = accelerator_spec(pipeline_options)
    if runner_name(pipeline_options) == "DataflowRunner":
        _validate_dataflow(options, pipeline_options, accelerator)
    if not is_gcs(options.input_uri) and not os.path.isdir(options.input_uri):
        raise OptionsError(f"input folder not found: {options.input_uri}")
    try:
        exclude_for(options.input_uri, options.output_uri)
    except ValueError as error:
        raise OptionsError(str(error)) from error
    if not 1 <= options.min_batch_size <= options.max_batch_size:
        raise OptionsError("need 1 <= --min-batch-size <= --max-batch-size")
    if options.max_pixels <= 0 or options.max_bytes <= 0 or options.writer_threads < 0:
        raise OptionsError("--max-pixels and --max-bytes must be positive, "
                           "--writer-threads >= 0")
    run_id = options.run_id or new_run_id()
    if not _RUN_ID.match(run_id):
        raise OptionsError(f"--run-id {run_id!r}: use letters, digits, '.', '_', '-'")
    return dataclasses.replace(options, run_id=run_id,
                               started_at=options.started_at or time.time(),
                               require_gpu=options.require_gpu or accelerator is not None)


def accelerator_spec(pipeline_options: PipelineOptions) -> str | None:
    """The GPU asked for by a Dataflow service option or a resource hint, if any."""
    service = pipeline_options.view_as(GoogleCloudOptions).dataflow_service_options or []
    hints = pipeline_options.view_as(StandardOptions).resource_hints or []
    for text in [*service, *hints]:
        match = _ACCELERATOR.search(text)
        if match:
            return match.group("spec")
    return None


def _validate_dataflow(options: BucketOptions, pipeline_options: PipelineOptions,
                       accelerator: str | None) -> None:
    cloud = pipeline_options.view_as(GoogleCloudOptions)
    worker = pipeline_options.view_as(WorkerOptions)
    missing = [flag for flag, value in (("--project", cloud.project), ("--region", cloud.region),
                                        ("--temp_location", cloud.temp_location)) if not value]
    if missing:
        raise OptionsError(f"DataflowRunner needs {', '.join(missing)} (see infra/README.md)")
    if not is_gcs(cloud.temp_location):
        raise OptionsError("--temp_location must be a gs:// path on Dataflow")
    for name, uri in (("IN_URI", options.input_uri), ("OUT_URI", options.output_uri)):
        if not is_gcs(uri):
            raise OptionsError(f"{name} must be gs:// on Dataflow: workers cannot see {uri}")
    if options.weights is not None and not is_gcs(options.weights):
        raise OptionsError("--weights must be gs:// on Dataflow (or omitted: the worker image "
                           "holds the official weights)")
    if not worker.sdk_container_image:
        raise OptionsError("DataflowRunner needs --sdk_container_image (build infra/Dockerfile): "
                           "Beam's default image has no TensorFlow or model code")
    if accelerator is None:
        return
    if "install-nvidia-driver" not in accelerator:
        raise OptionsError(f"accelerator {accelerator!r} lacks install-nvidia-driver: the "
                           "workers would have a GPU without a driver")
    if "nvidia-l4" in accelerator and not (worker.machine_type or "").startswith("g2-"):
        raise OptionsError("nvidia-l4 GPUs need a G2 machine: pass --machine_type g2-standard-4")
