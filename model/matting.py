"""The matting core: a loaded model that turns photos of any size into full-resolution alphas.

Used by the CLI, the Python API and the Beam ModelHandler, so all produce the same pixels.
The network is the Keras model (``model.u2net``) in its inference form, run by one of two
engines: ``onnxruntime`` (the default: its ONNX export, ``model.onnx_engine``; no TensorFlow in
the process once the export is cached) or ``keras`` (the model itself on the Keras backend:
TensorFlow's GPU build on Dataflow workers, or JAX). Both see the same numpy/Pillow pre- and
post-processing (``model.preprocess``'s ``*_array`` form), and the parity tests hold both to
the official outputs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from model.onnx_engine import OnnxNetwork, cpu_count, exported
from model.preprocess import MODEL_SIZE, alpha_to_size_array, min_max_array, preprocess_array
from model.weights import resolve_weights, weights_version

if TYPE_CHECKING:
    import keras

ENGINES = ("onnxruntime", "keras")
DEFAULT_ENGINE = "onnxruntime"


class Network(Protocol):
    def fused(self, batch: np.ndarray) -> np.ndarray:
        """N×S×S×3 preprocessed float32 -> the fused map, N×S×S×1 float32 probabilities."""


class KerasNetwork:
    """The Keras model on its backend, a whole batch per call."""

    def __init__(self, model: keras.Model):
        self.model = model

    def fused(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(batch)["fused"], dtype=np.float32)


def load_keras_model(path: Path) -> keras.Model:
    """The inference form (BN folded) of official ONNX weights or a trained ``.keras`` file."""
    from model.export import fold_batch_norm, load_keras
    from model.weights import import_onnx

    if path.suffix == ".keras":
        return fold_batch_norm(load_keras(path))
    return import_onnx(path, batch_norm=False)


@dataclass
class Matter:
    """A network plus the version string recorded next to every output it makes."""

    network: Network
    version: str
    weights: Path
    engine: str = DEFAULT_ENGINE
    size: int = MODEL_SIZE
    official_normalization: bool = False
    threads: int = field(default_factory=cpu_count)
    _keras: keras.Model | None = field(default=None, repr=False)
    _keras_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.threads > 1:  # its threads start on first use
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="resize")

    @classmethod
    def load(
        cls,
        variant: str = "lite",
        weights: str | os.PathLike | None = None,
        official_normalization: bool = False,
        engine: str = DEFAULT_ENGINE,
        threads: int | None = None,
    ) -> Matter:
        """Official ONNX weights (cache or ``weights``) or a trained ``.keras`` model, run by
        ``engine`` on ``threads`` cores (default: all this process may use)."""
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
        path = resolve_weights(variant, weights)
        version = weights_version(path)
        threads = max(1, threads or cpu_count())
        if engine == "keras":
            model = load_keras_model(path)
            return cls(KerasNetwork(model), version, path, engine, threads=threads,
                       official_normalization=official_normalization, _keras=model)
        network = OnnxNetwork(exported(version, lambda: load_keras_model(path)), threads)
        return cls(network, version, path, engine, threads=threads,
                   official_normalization=official_normalization)

    @property
    def model(self) -> keras.Model:
        """The Keras model (inference form): the keras engine's own, else loaded on first use
        (evaluation, export and tests need it; matting does not)."""
        with self._keras_lock:
            if self._keras is None:
                self._keras = load_keras_model(self.weights)
            return self._keras

    def predict_probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The fused map at model resolution, N×S×S×1 float32, for HxWx3 uint8 photos."""
        batch = np.stack(self._each(lambda image: preprocess_array(image, self.size), images))
        fused = self.network.fused(batch)
        return min_max_array(fused) if self.official_normalization else fused

    def predict_alpha(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One HxW float32 alpha in [0, 1] per photo, at the photo's own resolution."""
        if not len(images):
            return []
        probabilities = self.predict_probabilities(images)
        return self._each(lambda pair: alpha_to_size_array(pair[0], pair[1].shape[:2]),
                          list(zip(probabilities, images, strict=True)))

    def _each(self, function: Callable, items: Sequence) -> list:
        """``function`` over ``items``, on ``threads`` threads: Pillow's resize releases the GIL,
        so a batch of photos is resized on every core."""
        if len(items) < 2 or self._pool is None:
            return [function(item) for item in items]
        return list(self._pool.map(function, items))
