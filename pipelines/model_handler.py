"""RunInference's ModelHandler for U²-Net: photos of any size in, full-resolution alphas out.

Beam's TensorFlow handler loads SavedModel directories, which Keras 3 cannot load; this one
loads ``model.matting.Matter`` once per worker process (or once per machine with
``share_model``), the object the CLI uses, so the pipeline and ``matte i`` give the same pixels.
Photos of different sizes share a batch: Matter resizes each to the model's 320×320 input and
each alpha back to its photo's size.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from model.matting import Matter
from pipelines.gpu import check_gpu

METRICS_NAMESPACE = "matte_bucket"


class Inference(NamedTuple):
    """One photo's result: its alpha (HxW float32 in [0, 1]) and the batch it ran in."""

    alpha: np.ndarray
    batch_size: int
    batch_ms: float


def failed_keys(failure: tuple) -> Iterator[tuple[Any, str]]:
    """RunInference's dead letter ``(batch, (type, repr, traceback))`` -> (key, reason) each."""
    batch, (_, message, _) = failure
    for key, _ in batch:
        yield key, message


class MattingModelHandler(ModelHandler[np.ndarray, PredictionResult, Matter]):
    """HxWx3 uint8 photos -> PredictionResult(photo, Inference, model version)."""

    def __init__(
        self,
        variant: str = "lite",
        weights: str | None = None,
        *,
        expected_version: str = "",
        official_normalization: bool = False,
        min_batch_size: int = 1,
        max_batch_size: int = 8,
        share_model: bool = False,
        require_gpu: bool = False,
    ):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                         large_model=share_model)
        self._variant = variant
        self._weights = weights
        self._expected_version = expected_version
        self._official_normalization = official_normalization
        self._require_gpu = require_gpu

    def load_model(self) -> Matter:
        if self._require_gpu:
            check_gpu()
        # GPU workers run the Keras model on TensorFlow's CUDA build; onnxruntime's CPU
        # package has no GPU provider. On CPU, onnxruntime (model.onnx_engine).
        matter = Matter.load(self._variant, self._weights, self._official_normalization,
                             engine="keras" if self._require_gpu else "onnxruntime")
        # Skips were decided against the launcher's version; a worker must not differ from it.
        if self._expected_version and matter.version != self._expected_version:
            raise RuntimeError(f"worker loaded model {matter.version}, but the run was planned "
                               f"for {self._expected_version}")
        return matter

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: Matter,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        start = time.perf_counter()
        alphas = model.predict_alpha(list(batch))
        batch_ms = (time.perf_counter() - start) * 1000.0
        Metrics.distribution(METRICS_NAMESPACE, "batch_size").update(len(batch))
        per_image_us = int(batch_ms * 1000 / max(len(batch), 1))
        latency = Metrics.distribution(METRICS_NAMESPACE, "inference_latency_us")
        for _ in batch:
            latency.update(per_image_us)
        # A shared model (--share-model) is a proxy that forwards method calls only.
        version = self._expected_version or model.version
        return [
            PredictionResult(image, Inference(alpha, len(batch), batch_ms), version)
            for image, alpha in zip(batch, alphas, strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        # The default pickles the whole batch just to measure it.
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE + "_inference"

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        if inference_args:
            raise ValueError(f"MattingModelHandler takes no inference_args, got {inference_args}")

