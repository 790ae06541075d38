"""The command line of a bucket matting run: our flags, Beam's, checks before launch, main().

Our flags are parsed here; every other ``--flag`` goes to Beam's ``PipelineOptions``. Mistakes
that would only surface on a Dataflow worker (no temp_location, a local path the workers cannot
see, a GPU type on the wrong machine) are refused up front with a message saying what to pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass

from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
    WorkerOptions,
)

from model.imaging import DEFAULT_MAX_PIXELS, parse_color
from model.outputs import OutputOptions
from pipelines.storage import is_gcs, relative_location

DEFAULT_MAX_BYTES = 200 * 1024 * 1024  # larger files are refused before they are read
DIRECT_RUNNERS = ("DirectRunner", "SwitchingDirectRunner")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ACCELERATOR = re.compile(r"(?:^|[;,\s])(?:worker_accelerator|accelerator)=(?P<spec>\S+)")

BEAM_HELP = """\
Any other --flag is a Beam pipeline option, e.g.
  DirectRunner (default): --direct_running_mode in_memory|multi_threading|multi_processing
                          --direct_num_workers N
  Dataflow: --runner DataflowRunner --project P --region R --temp_location gs://B/tmp
            --sdk_container_image REGION-docker.pkg.dev/P/REPO/matte-worker:TAG
            --sdk_location container --machine_type g2-standard-4
            --dataflow_service_options \\
              "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
See infra/README.md."""


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
    started_at: float = 0.0
    model_version: str = ""  # filled in at launch from the loaded weights

    @property
    def exclude(self) -> str | None:
        """OUT_URI's key prefix when it lies inside IN_URI, so outputs are never inputs."""
        return relative_location(self.output_uri, self.input_uri)

    @property
    def threads(self) -> int:
        return self.writer_threads or os.cpu_count() or 1


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def argument_parser(prog: str = "matte bucket") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Matte every photo under IN_URI into OUT_URI (same keys).",
        epilog=BEAM_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_uri", metavar="IN_URI", help="a folder or gs://bucket/prefix")
    parser.add_argument("output_uri", metavar="OUT_URI", help="a folder or gs://bucket/prefix")
    parser.add_argument("--model", choices=("lite", "full"), default="lite")
    parser.add_argument("--weights", help="an official .onnx or a trained .keras (path or gs://)")
    parser.add_argument("--official-normalization", action="store_true")
    parser.add_argument("--only-mask", action="store_true", help="write the alpha matte only")
    parser.add_argument("--bgcolor", type=parse_color, help="composite on a colour")
    parser.add_argument("--jpeg", action="store_true", help="with --bgcolor: write JPEG")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--min-batch-size", type=int, default=None,
                        help="default: --max-batch-size; lower lets Beam adapt the batch size")
    parser.add_argument("--writer-threads", type=int, default=0,
                        help="threads encoding and writing outputs (0: one per core)")
    parser.add_argument("--share-model", action="store_true",
                        help="one model per machine, shared by its SDK processes (GPU)")
    parser.add_argument("--require-gpu", action="store_true",
                        help="fail when no GPU is visible (implied by a GPU accelerator flag)")
    parser.add_argument("--run-id", default=None, help="default: UTC time + random suffix")
    return parser


def parse(argv: list[str] | None) -> tuple[BucketOptions, PipelineOptions]:
    """Our options and Beam's from one command line, validated (OptionsError otherwise)."""
    args, beam_args = argument_parser().parse_known_args(argv)
    pipeline_options = PipelineOptions(beam_args)
    try:
        output = OutputOptions(args.only_mask, args.bgcolor, args.jpeg)
    except ValueError as error:
        raise OptionsError(str(error)) from error
    options = BucketOptions(
        input_uri=args.input_uri, output_uri=args.output_uri, output=output,
        model=args.model, weights=args.weights,
        official_normalization=args.official_normalization,
        max_pixels=args.max_pixels, max_bytes=args.max_bytes,
        min_batch_size=(args.max_batch_size if args.min_batch_size is None
                        else args.min_batch_size),
        max_batch_size=args.max_batch_size,
        writer_threads=args.writer_threads, share_model=args.share_model,
        require_gpu=args.require_gpu, run_id=args.run_id or new_run_id(),
        started_at=time.time())
    return validate(options, pipeline_options), pipeline_options


def validate(options: BucketOptions, pipeline_options: PipelineOptions) -> BucketOptions:
    """``options`` (GPU requirement added when an accelerator is asked for), or OptionsError."""
    accelerator = accelerator_spec(pipeline_options)
    if runner_name(pipeline_options) == "DataflowRunner":
        _validate_dataflow(options, pipeline_options, accelerator)
    if not is_gcs(options.input_uri) and not os.path.isdir(options.input_uri):
        raise OptionsError(f"input folder not found: {options.input_uri}")
    if relative_location(options.input_uri, options.output_uri) is not None:
        raise OptionsError("IN_URI must not be OUT_URI or lie inside it (outputs would be "
                           "read as inputs)")
    if not 1 <= options.min_batch_size <= options.max_batch_size:
        raise OptionsError("need 1 <= --min-batch-size <= --max-batch-size")
    if options.max_pixels <= 0 or options.max_bytes <= 0 or options.writer_threads < 0:
        raise OptionsError("--max-pixels and --max-bytes must be positive, "
                           "--writer-threads >= 0")
    if not _RUN_ID.match(options.run_id):
        raise OptionsError(f"--run-id {options.run_id!r}: use letters, digits, '.', '_', '-'")
    if accelerator is not None:
        options = dataclasses.replace(options, require_gpu=True)
    return options


def runner_name(pipeline_options: PipelineOptions) -> str:
    runner = pipeline_options.view_as(StandardOptions).runner or "DirectRunner"
    return runner if isinstance(runner, str) else type(runner).__name__


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


def pinned_runner(pipeline_options: PipelineOptions):
    """The Python FnApiRunner for "DirectRunner", else None (Beam creates the runner asked for).

    Beam 2.77's DirectRunner first tries PrismRunner, which downloads a Go binary; the
    FnApiRunner is the Python direct runner and honours --direct_running_mode and
    --direct_num_workers.
    """
    if runner_name(pipeline_options) not in DIRECT_RUNNERS:
        return None
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner()


def main(argv: list[str] | None = None) -> int:
    """0 when every photo was matted or skipped, 1 with dead letters, 2 on bad options."""
    from model.weights import WeightsError
    from pipelines.matte_bucket import counter, launch  # the pipeline module imports this one

    try:
        options, pipeline_options = parse(argv)
        result = launch(options, pipeline_options)
    except (OptionsError, WeightsError) as error:
        print(f"matte bucket: error: {error}", file=sys.stderr)
        return 2
    counts = {name: counter(result, name) for name in ("ok", "skipped", "failed")}
    print("  ".join(f"{name}: {value}" for name, value in counts.items())
          + f"  -> {options.output_uri} (records in _runs/{options.run_id}/)")
    return 1 if counts["failed"] else 0


def add_cli(commands) -> None:
    """Register ``matte bucket`` on the CLI's subparsers; its arguments go verbatim to main().

    Beam's flags are open-ended, so the subcommand parses nothing itself: with '+' as its only
    prefix character, argparse takes every '--flag' (even --help) as plain text.
    """
    parser = commands.add_parser("bucket", add_help=False, prefix_chars="+",
                                 help="matte a folder or gs:// prefix with Beam (local/Dataflow)")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=_cli_handler)


def _cli_handler(args: argparse.Namespace) -> int:
    return main(args.argv)
