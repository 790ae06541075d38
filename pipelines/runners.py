"""Which Beam runner a pipeline runs on, pinned so that nothing downloads a binary."""

from __future__ import annotations

import importlib.util

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

DIRECT_RUNNERS = ("DirectRunner", "SwitchingDirectRunner")
DASK_RUNNERS = ("dask", "DaskRunner")  # pipelines.dask_runner on a dask.distributed cluster
DASK_MISSING = ("the Dask runner needs dask and distributed: "
                "pip install 'u2net-matting[dask]' (requirements.txt pins them)")


def is_dask(runner: str) -> bool:
    return runner.lower() in (name.lower() for name in DASK_RUNNERS)


def runner_name(pipeline_options: PipelineOptions) -> str:
    runner = pipeline_options.view_as(StandardOptions).runner or "DirectRunner"
    return runner if isinstance(runner, str) else type(runner).__name__


def pinned_runner(pipeline_options: PipelineOptions):
    """The Python FnApiRunner for "DirectRunner", our DaskRunner for "dask"/"DaskRunner", else
    None (Beam creates the runner asked for).

    Beam 2.77's DirectRunner first tries PrismRunner, which downloads a Go binary; the
    FnApiRunner is the Python direct runner and honours --direct_running_mode and
    --direct_num_workers. Beam's own DaskRunner loses tagged outputs (pipelines.dask_translation).
    """
    if is_dask(runner_name(pipeline_options)):
        from pipelines.dask_runner import DaskRunner

        return DaskRunner()
    if runner_name(pipeline_options) not in DIRECT_RUNNERS:
        return None
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner()


def beam_options(argv: list[str], **values) -> PipelineOptions:
    """PipelineOptions from ``argv``, refusing what no Beam option class knows: Beam itself
    only warns and drops a mistyped flag (``--runnr``), and the run would go on without it.
    Beam knows the ``--dask_*`` options once its Dask runner is imported, which imports dask:
    only when a Dask runner or a ``--dask_*`` option is asked for."""
    words = [str(values.get("runner", "")), *(part for arg in argv for part in arg.split("=", 1))]
    if any(word.startswith("--dask") or is_dask(word) for word in words):
        if importlib.util.find_spec("distributed") is None:
            raise ValueError(DASK_MISSING)
        import apache_beam.runners.dask.dask_runner  # noqa: F401  (registers DaskOptions)
    pipeline_options = PipelineOptions(argv, **values)
    known = pipeline_options.get_all_options()
    given = pipeline_options.get_all_options(retain_unknown_options=True)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError("unknown option " + ", ".join(f"--{name}" for name in unknown)
                         + " (neither a matte flag nor a Beam pipeline option)")
    if any(word.startswith("--dask") for word in words) and not is_dask(
            runner_name(pipeline_options)):
        raise ValueError("a dask scheduler address or --dask_* option needs --runner dask")
    return pipeline_options


def with_dask_address(argv: list[str], address: str | None) -> list[str]:
    """``argv`` with Beam's ``--dask_client_address`` for our ``--dask-address`` (CLI) or
    ``dask_address`` (flow); without an address, ``--runner dask`` starts a LocalCluster."""
    if not address:
        return list(argv)
    if any(arg.split("=", 1)[0] == "--dask_client_address" for arg in argv):
        raise ValueError("give the scheduler once: --dask-address or --dask_client_address")
    return [*argv, "--dask_client_address", address]
