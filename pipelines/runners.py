"""Which Beam runner a pipeline runs on, pinned so that nothing downloads a binary."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

DIRECT_RUNNERS = ("DirectRunner", "SwitchingDirectRunner")


def runner_name(pipeline_options: PipelineOptions) -> str:
    runner = pipeline_options.view_as(StandardOptions).runner or "DirectRunner"
    return runner if isinstance(runner, str) else type(runner).__name__


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


def beam_options(argv: list[str], **values) -> PipelineOptions:
    """PipelineOptions from ``argv``, refusing what no Beam option class knows: Beam itself
    only warns and drops a mistyped flag (``--runnr``), and the run would go on without it."""
    pipeline_options = PipelineOptions(argv, **values)
    known = pipeline_options.get_all_options()
    given = pipeline_options.get_all_options(retain_unknown_options=True)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError("unknown option " + ", ".join(f"--{name}" for name in unknown)
                         + " (neither a matte flag nor a Beam pipeline option)")
    return pipeline_options
