"""onnxruntime as the inference engine: our BN-folded Keras model, exported once per model version.

``matte i``, ``matte p`` and the bucket handler run the Keras model through its ONNX export
(``model.onnx_export``) with onnxruntime: it imports in ~0.3 s where TensorFlow takes seconds,
and a lite run needs a few hundred MB instead of TensorFlow's ~2 GB at batch 8. The export is
made from the Keras model (official ONNX weights are imported into it first), so a trained
``.keras`` model and the official files take the same road, and the parity tests hold it to
the official outputs. It is cached beside the weights cache (``$U2NET_HOME/onnx/``), keyed by
the model version and ``EXPORT_REVISION``, and written atomically; only the first run of a
new model version imports TensorFlow to make it.

The export is fixed at 320² (``to_onnx(..., input_size=MODEL_SIZE, fused_only=True)``):
onnxruntime then keeps the decoder's upsampling in its blocked layout, ~7 % less CPU per
image, and without the side outputs' nodes, which it would run even when only ``fused`` is
asked for, ~3 % less again; each side conv to one channel is written as a conv to its nine
taps and a one-hot conv (onnxruntime computes output channels in blocks of 8), ~5 % less
again on the 2-core AMD EPYC (``model.onnx_export._single_channel_conv``).

Threads (measured on the 2-core development CPU, ``benchmarks/RESULTS.md``): one image runs
on a session with all cores; a batch runs image by image on single-threaded sessions, one per
core, side by side: the same throughput with up to ~15 % less CPU than splitting each image
over the cores while other jobs load the machine (about the same when it is idle), and memory
bounded by one image's activations per core whatever the batch size (a lite run at batch 8
would hold ~1.4 GB).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from model.preprocess import MODEL_SIZE
from storage import write_atomic

# Bump when model.onnx_export changes what it writes: cached exports of older revisions are
# then ignored (and stay on disk under their old name).
EXPORT_REVISION = 4  # 3: fused output only; 4: side convs as taps + one-hot conv
FUSED = "fused"


def cpu_count() -> int:
    """The cores this process may run on (a container's CPU set, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cache_path(version: str) -> Path:
    """Where the export of model ``version`` lives: beside the weights cache."""
    from model.weights import weights_home

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in version)
    return weights_home() / "onnx" / f"{safe}.r{EXPORT_REVISION}.onnx"


def exported(version: str, build: Callable[[], object]) -> Path | bytes:
    """The cached export of ``version``, made from ``build()`` (a Keras model) when absent.

    An unwritable cache (a read-only image, a full disk) is not an error: the export is then
    used from memory and made again by the next process.
    """
    path = cache_path(version)
    if path.is_file():
        return path
    data = engine_export(build())
    try:
        write_atomic(path, data)
    except OSError:
        return data
    return path


def engine_export(model) -> bytes:
    """The engine's ONNX file of a Keras model (fixed 320², ``fused`` only; module doc)."""
    from model.onnx_export import to_onnx  # TensorFlow: only when a version is new

    return to_onnx(model, input_size=MODEL_SIZE, fused_only=True).SerializeToString()


def _session(model: Path | bytes, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # The memory pattern pre-plans one block for every activation of a run: a lite image
    # peaks at 417 MB with it and 248 MB without, at the same speed.
    options.enable_mem_pattern = False
    # Spinning workers would take the cores from the threads that decode and encode photos.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxNetwork:
    """The fused probability map of a preprocessed NHWC batch, by onnxruntime."""

    def __init__(self, model: Path | bytes, threads: int | None = None):
        self.threads = max(1, threads or cpu_count())
        self._model = model
        # Both made on first use: a folder run never needs the wide one (its weights and
        # arena would only add memory), a single photo never needs the narrow one.
        self._wide = None
        self._narrow = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def fused(self, batch: np.ndarray) -> np.ndarray:
        """N×S×S×3 float32 -> N×S×S×1 float32 (safe to call from several threads).

        Once batches have run, a lone image runs on a single-threaded session too: their
        arenas already hold one image's activations per core, and the wide session's arena
        beside them would add another (~180 MB for lite) to the process's peak.
        """
        images = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))[:, None]  # N×1×3×S×S
        if self.threads == 1 or (len(images) == 1 and self._narrow is None):
            wide = self._wide_session()
            maps = [self._run(wide, image) for image in images]
        elif len(images) == 1:
            maps = [self._run(self._narrow, images[0])]
        else:
            narrow, pool = self._parallel()
            maps = list(pool.map(lambda image: self._run(narrow, image), images))
        return np.concatenate(maps).transpose(0, 2, 3, 1)

    @staticmethod
    def _run(session, image: np.ndarray) -> np.ndarray:
        return session.run([FUSED], {session.get_inputs()[0].name: image})[0]

    def _wide_session(self):
        with self._lock:
            if self._wide is None:
                self._wide = _session(self._model, self.threads)
            return self._wide

    def _parallel(self):
        with self._lock:
            if self._narrow is None:
                self._narrow = _session(self._model, 1)
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="onnx")
            return self._narrow, self._pool
