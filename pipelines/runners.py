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
