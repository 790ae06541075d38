"""Keras metrics for training logs: IoU and MAE of the fused alpha, per epoch on validation.

These stream over batches inside ``fit``/``evaluate`` (so the dashboard can show them as
training goes); the per-photo P3M metrics at full resolution are ``model.metrics``.
``keras.metrics.BinaryIoU`` does not fit soft alpha labels: it thresholds the prediction but
casts the label to int, which turns 0.99 into 0.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="u2net")
class AlphaIoU(keras.metrics.Metric):
    """Foreground IoU with prediction and label both thresholded (IoU@0.5 of model.metrics)."""

    def __init__(self, threshold: float = 0.5, name: str = "iou", dtype: str | None = None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = threshold
        self.intersection = self.add_variable((), "zeros", name="intersection")
        self.union = self.add_variable((), "zeros", name="union")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        label = ops.cast(ops.cast(y_true, "float32") >= self.threshold, "float32")
        prediction = ops.cast(ops.cast(y_pred, "float32") >= self.threshold, "float32")
        self.intersection.assign_add(ops.sum(label * prediction))
        self.union.assign_add(ops.sum(ops.maximum(label, prediction)))

    def result(self):
        # An empty union (no foreground anywhere) is a perfect match, as in model.metrics.
        return ops.where(self.union > 0, self.intersection / ops.maximum(self.union, 1.0), 1.0)

    def reset_state(self) -> None:
        self.intersection.assign(0.0)
        self.union.assign(0.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "threshold": self.threshold}


def fused_metrics() -> dict:
    """``compile(metrics=...)``: logged as ``fused_iou``/``fused_mae`` (``val_`` on validation)."""
    return {"fused": [AlphaIoU(name="iou"), keras.metrics.MeanAbsoluteError(name="mae")]}
