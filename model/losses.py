"""Deep-supervision loss of U²-Net, with optional matting terms for real alpha labels.

Keras sums per-output losses, so the paper's loss (Eq. 1: BCE on the fused map plus BCE on
each of the six side maps, all weights 1) is a dict of one loss per output, and the label is
repeated per output with ``repeat_label``.
"""

from __future__ import annotations

import keras
from keras import ops

from model.u2net import OUTPUT_NAMES


@keras.saving.register_keras_serializable(package="u2net")
class AlphaLoss(keras.losses.Loss):
    """BCE, plus optional L1 on alpha and L1 on its image gradients (for alpha-matte labels)."""

    def __init__(self, l1_weight: float = 0.0, gradient_weight: float = 0.0,
                 name: str = "alpha_loss", reduction: str = "sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.l1_weight = l1_weight
        self.gradient_weight = gradient_weight

    def call(self, y_true, y_pred):
        label = ops.cast(y_true, "float32")
        probability = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
        bce = -(label * ops.log(probability) + (1.0 - label) * ops.log(1.0 - probability))
        total = ops.mean(bce, axis=(1, 2, 3))
        if self.l1_weight:
            total = total + self.l1_weight * ops.mean(ops.abs(probability - label), axis=(1, 2, 3))
        if self.gradient_weight:
            total = total + self.gradient_weight * _gradient_l1(probability, label)
        return total

    def get_config(self) -> dict:
        return {**super().get_config(), "l1_weight": self.l1_weight,
                "gradient_weight": self.gradient_weight}


def _gradient_l1(prediction, label):
    def gradients(x):
        return x[:, 1:, :, :] - x[:, :-1, :, :], x[:, :, 1:, :] - x[:, :, :-1, :]

    (pdy, pdx), (ldy, ldx) = gradients(prediction), gradients(label)
    return ops.mean(ops.abs(pdy - ldy), axis=(1, 2, 3)) + ops.mean(
        ops.abs(pdx - ldx), axis=(1, 2, 3)
    )


def deep_supervision_loss(l1_weight: float = 0.0, gradient_weight: float = 0.0) -> dict:
    """One loss per model output; matting terms apply to the fused map only."""
    losses = {name: AlphaLoss(name=f"{name}_bce") for name in OUTPUT_NAMES}
    losses["fused"] = AlphaLoss(l1_weight, gradient_weight, name="fused_loss")
    return losses


def repeat_label(alpha) -> dict:
    """The same label for every output, as ``fit`` expects for a dict of losses."""
    return {name: alpha for name in OUTPUT_NAMES}
