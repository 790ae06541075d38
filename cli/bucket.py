"""``matte bucket IN_URI OUT_URI``: every photo of a folder or gs:// prefix, with Beam.

Our flags are parsed here; every other ``--flag`` goes to Beam's ``PipelineOptions``.
"""

from __future__ import annotations

import argparse
import sys

from cli.flags import add_limit_flags, add_model_flags, add_output_flags, output_options

BEAM_HELP = """\
Any other --flag is a Beam pipeline option, e.g.
  DirectRunner (default): --direct_running_mode in_memory|multi_threading|multi_processing
                          --direct_num_workers N
  Dask: --runner dask --dask-address tcp://SCHEDULER:8786 (Beam: --dask_client_address)
        [--dask_npartitions N: groups per stage, default the cluster's worker threads];
        without an address, dask starts a LocalCluster (worker processes sized to this
        machine's cores) in this process for the run. Workers need this package and must
        see the weights and IN/OUT at the same paths (gs:// on a remote cluster).
  Dataflow: --runner DataflowRunner --project P --region R --temp_location gs://B/tmp
            --sdk_container_image REGION-docker.pkg.dev/P/REPO/matte-worker:TAG
            --sdk_location container --machine_type g2-standard-4
            --dataflow_service_options \\
              "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
See infra/README.md.

exit codes: 0 every photo matted or already done, 1 some photos are dead letters,
2 options that cannot work (one line saying what to pass)."""


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``matte bucket``; its arguments go verbatim to :func:`main`.

    Beam's flags are open-ended, so the subcommand parses nothing itself: with '+' as its only
    prefix character, argparse takes every '--flag' (even --help) as plain text.
    """
    parser = commands.add_parser("bucket", add_help=False, prefix_chars="+",
                                 help="matte a folder or gs:// prefix with Beam (local/Dataflow)")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=lambda args: main(args.argv))


def argument_parser(prog: str = "matte bucket") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Matte every photo under IN_URI into OUT_URI (same keys).",
        epilog=BEAM_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_uri", metavar="IN_URI", help="a folder or gs://bucket/prefix")
    parser.add_argument("output_uri", metavar="OUT_URI", help="a folder or gs://bucket/prefix")
    add_model_flags(parser)
    add_output_flags(parser)
    add_limit_flags(parser)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--min-batch-size", type=int, default=None,
                        help="default: --max-batch-size; lower lets Beam adapt the batch size")
    parser.add_argument("--writer-threads", type=int, default=0,
                        help="threads encoding and writing outputs (0: one per core)")
    parser.add_argument("--share-model", action="store_true",
                        help="one model per machine, shared by its SDK processes (GPU)")
    parser.add_argument("--require-gpu", action="store_true",
                        help="fail when no GPU is visible (implied by a GPU accelerator flag)")
    parser.add_argument("--run-id", default="", help="default: UTC time + random suffix")
    parser.add_argument("--dask-address", default=None, metavar="ADDR",
                        help="dask scheduler for --runner dask, e.g. tcp://10.0.0.5:8786")
    parser.add_argument("--prune", action="store_true",
                        help="remove outputs whose source photo is gone (reported otherwise)")
    return parser


def parse(argv: list[str] | None):
    """(BucketOptions, PipelineOptions) from one command line, validated (OptionsError)."""
    from pipelines.options import BucketOptions, OptionsError, validate
    from pipelines.runners import beam_options, with_dask_address

    args, beam_args = argument_parser().parse_known_args(argv)
    try:
        pipeline_options = beam_options(with_dask_address(beam_args, args.dask_address))
        output = output_options(args)
    except ValueError as error:
        raise OptionsError(str(error)) from error
    options = BucketOptions(
        input_uri=args.input_uri, output_uri=args.output_uri, output=output,
        model=args.model, weights=args.weights,
        official_normalization=args.official_normalization,
        max_pixels=args.max_pixels, max_bytes=args.max_bytes,
        min_batch_size=(args.max_batch_size if args.min_batch_size is None
                        else args.min_batch_size),
        max_batch_size=args.max_batch_size, writer_threads=args.writer_threads,
        share_model=args.share_model, require_gpu=args.require_gpu, run_id=args.run_id,
        prune=args.prune)
    return validate(options, pipeline_options), pipeline_options


def run(argv: list[str] | None = None):
    """Parse and run to the end; the PipelineResult carries the counters."""
    from pipelines.matte_bucket import launch

    return launch(*parse(argv))


def main(argv: list[str] | None = None) -> int:
    """0 when every photo was matted or skipped, 1 with dead letters, 2 on bad options."""
    from model.weights import WeightsError
    from pipelines.matte_bucket import counter, launch
    from pipelines.options import OptionsError

    try:
        options, pipeline_options = parse(argv)
        result = launch(options, pipeline_options)
    # ConnectionError: no dask scheduler at --dask-address (pipelines.dask_runner)
    except (OptionsError, WeightsError, ConnectionError) as error:
        print(f"matte bucket: error: {error}", file=sys.stderr)
        return 2
    counts = {name: counter(result, name) for name in ("ok", "skipped", "failed")}
    print("  ".join(f"{name}: {value}" for name, value in counts.items())
          + f"  -> {options.output_uri} (records in _runs/{options.run_id}/)")
    orphaned = counter(result, "orphaned")
    if orphaned:
        print(f"  {orphaned} outputs whose source is gone were "
              + ("removed" if options.prune else "kept (--prune removes them; listed in "
                 f"_runs/{options.run_id}/orphans-*.jsonl)"))
    return 1 if counts["failed"] else 0
