"""Beam's DaskRunner on a ``dask.distributed`` cluster, with our translation
(``pipelines.dask_translation``: why Beam 2.77's own loses tagged outputs and more).

``--runner dask`` (``pipelines.runners.pinned_runner``) with ``--dask_client_address`` or
``--dask_scheduler_file``; ``--dask_npartitions`` sets how many partitions a GroupByKey's
groups are dealt into (default: the cluster's worker threads when the run starts). The result
waits on one future (the metric updates of every bundle, which runs every step), sums the
Beam counters from them, and closes the client at the end, which also stops a LocalCluster
that dask started for a run without an address.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import apache_beam as beam
from apache_beam.runners.dask.dask_runner import DaskOptions
from apache_beam.runners.dask.dask_runner import DaskRunner as BeamDaskRunner
from apache_beam.runners.dask.overrides import dask_overrides
from apache_beam.runners.direct.direct_metrics import DirectMetrics
from apache_beam.runners.runner import PipelineResult, PipelineState
from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

from pipelines.dask_translation import Translator

_LOG = logging.getLogger(__name__)


class ShadowedPackages(WorkerPlugin):
    """Imports our ``storage`` package on each worker the way this process finds it.

    A dask worker puts its scratch folder first on ``sys.path``, and that folder holds its
    spill directory, named ``storage``: with an editable install (a meta-path finder, asked
    after the path entries), ``import storage`` then found that empty directory as a
    namespace package and every task failed to unpickle, so the run never ended. A regular
    install or PYTHONPATH (the infra image) finds ours first anyway. (This module must not
    import ``storage`` itself: the plugin is unpickled on the worker before its setup runs.)
    """

    idempotent = True
    name = "matte-shadowed-packages"
    PACKAGES = ("storage",)

    def setup(self, worker) -> None:
        for package in self.PACKAGES:
            module = sys.modules.get(package)
            if module is not None and getattr(module, "__file__", None):
                continue  # a regular package already
            sys.modules.pop(package, None)
            saved = list(sys.path)
            sys.path[:] = [entry for entry in saved if not _is_namespace_dir(entry, package)]
            try:
                importlib.import_module(package)
            finally:
                sys.path[:] = saved


class KeptEnviron:
    """Undoes what starting a LocalCluster does to this process's ``os.environ``.

    dask's nanny sets ``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``, ``PYTHONHASHSEED`` and more
    in the *parent's* environment for its worker processes, and leaves them there: every later
    subprocess of a long-lived process (a Prefect worker, a test run) would then run its
    TensorFlow on one thread, with other float sums than before (a resumed training run no
    longer matched its uninterrupted twin). Entered before the cluster starts; ``restore``
    after it started and again after it stopped (a restarted worker sets them again).
    """

    def __init__(self):
        import dask

        keys = {"PYTHONHASHSEED", "__DASK_PARENT_PID"}
        for name in ("distributed.nanny.pre-spawn-environ", "distributed.nanny.environ"):
            keys |= set(dask.config.get(name, default=None) or {})
        self._saved = {key: os.environ.get(key) for key in keys}

    def restore(self) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _is_namespace_dir(entry: str, package: str) -> bool:
    folder = os.path.join(entry or ".", package)
    return os.path.isdir(folder) and not os.path.exists(os.path.join(folder, "__init__.py"))


class DaskRunnerResult(PipelineResult):
    """A run on the cluster; closing the client also stops a LocalCluster it started."""

    def __init__(self, client: Client, future, environ: KeptEnviron | None = None):
        super().__init__(PipelineState.RUNNING)
        self._client, self._future = client, future
        self._environ = environ or KeptEnviron()
        self._metrics = DirectMetrics()

    def _close(self) -> None:
        self._client.close()
        self._environ.restore()

    def wait_until_finish(self, duration: int | None = None) -> str:
        """The state after the run ends, or after ``duration`` ms (still RUNNING then)."""
        if PipelineState.is_terminal(self._state):
            return self._state
        try:
            updates = self._future.result(timeout=None if duration is None
                                          else duration / 1000)
        except TimeoutError:
            return self._state
        except BaseException:
            self._state = PipelineState.FAILED
            self._close()
            raise
        for update in updates:
            self._metrics.commit_physical(None, update)
            self._metrics.commit_logical(None, update)
        self._state = PipelineState.DONE
        self._close()
        return self._state

    def cancel(self) -> str:
        self._future.cancel()
        self._close()
        self._state = PipelineState.CANCELLED
        return self._state

    def metrics(self) -> DirectMetrics:
        return self._metrics


class DaskRunner(BeamDaskRunner):
    """Runs a pipeline on the dask.distributed scheduler at ``--dask_client_address`` (or
    ``--dask_scheduler_file``); without either, dask starts a LocalCluster in this process
    (worker processes sized to the machine's cores) for the run, closed when the run ends."""

    def run_pipeline(self, pipeline: beam.Pipeline, options) -> DaskRunnerResult:
        dask_options = options.view_as(DaskOptions).get_all_options(drop_default=True,
                                                                    current_only=True)
        bag_options = DaskOptions._extract_bag_kwargs(dask_options)
        if not dask_options.get("address") and not dask_options.get("scheduler_file"):
            _LOG.warning("no --dask_client_address: starting a dask LocalCluster in this "
                         "process for the run")
        environ = KeptEnviron()
        try:
            client = Client(**dask_options)
        except OSError as error:  # unreachable or refusing: most likely a wrong address
            raise ConnectionError(f"cannot reach the dask scheduler "
                                  f"{dask_options.get('address')}: {error}") from error
        finally:
            environ.restore()
        try:
            client.register_plugin(ShadowedPackages())
            # One slot per worker thread, in a fixed order (workers that join later only get
            # work that dask's work stealing gives them).
            slots = [address for address, threads in sorted(client.nthreads().items())
                     for _ in range(threads)]
            pipeline.replace_all(dask_overrides())
            translator = Translator(slots, bag_options.get("npartitions"),
                                     bag_options.get("partition_size"))
            pipeline.visit(translator)
            # Unoptimised, each task is one bundle of one step, computed once: dask's fusion
            # renames tasks, and a side input's tasks would no longer be the main graph's.
            future = client.compute(translator.metric_updates(), optimize_graph=False)
        except BaseException:
            client.close()
            environ.restore()
            raise
        return DaskRunnerResult(client, future, environ)
