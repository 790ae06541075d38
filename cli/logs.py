"""Library log noise: quiet by default in every ``matte`` command, restored by ``matte -v``.

TensorFlow 2.21 logs through absl before absl is initialised, so ``TF_CPP_MIN_LOG_LEVEL``
does not reach its import-time lines ("All log messages before absl::InitializeLog()...",
"oneDNN custom operations are on...", the cpu_feature_guard notice): they are written to file
descriptor 2 while ``tensorflow`` is imported. Quiet mode catches that descriptor for the
import only (an import hook, since TensorFlow is imported deep inside Keras, and only by the
commands that need it) and writes back every line that is not an INFO or WARNING record, so
errors still show. It also sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless the environment sets it,
absl's Python logging to ERROR, and drops Beam's "Resource module is not available" warning
(Beam looks for torch to measure memory when RunInference loads a model).

``-v`` leaves every library at its own default and sets ``TF_CPP_MIN_LOG_LEVEL=0``.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

# absl/glog INFO and WARNING records ("I0000 00:00:1796.. 14177 port.cc:153] ..."), absl's
# pre-initialisation notice, and the second line of TensorFlow's cpu_feature_guard record.
NOISE = re.compile(r"^(?:[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\]"
                   r"|WARNING: All log messages before absl::InitializeLog\(\)"
                   r"|To enable the following instructions: )")
BEAM_NOISE = "Resource module is not available"


def configure(verbose: bool) -> None:
    """Set the library log levels for this process, before any library is imported."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger().addFilter(_drop_beam_resource_warning)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)  # "no GPU, using CPU"
    if "tensorflow" not in sys.modules and not any(
            isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def _drop_beam_resource_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(BEAM_NOISE)


@contextlib.contextmanager
def _filtered_stderr():
    """File descriptor 2 goes to a temp file; on exit, its lines that are not noise are
    written to the real stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True) if not NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``tensorflow`` inside :func:`_filtered_stderr`, once, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__spec__.loader = module.__loader__ = self._loader
        with _filtered_stderr():
            self._loader.exec_module(module)
        if "absl.logging" in sys.modules:  # TensorFlow brings absl; its warnings go too
            sys.modules["absl.logging"].set_verbosity("error")
