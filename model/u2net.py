"""U²-Net and U²-Net† (lite) as backend-agnostic Keras 3 functional models.

Input: NHWC float32, already normalised (see ``model.preprocess``). Output: a dict of
probabilities ``{"fused", "side1".."side6"}``. The official PyTorch model returns the same
maps as ``d0..d6`` with ``d0`` the fused one; ``OUTPUT_NAMES`` keeps that order.
"""

from __future__ import annotations

import keras
from keras import layers

from model.blocks import ResizeLike, SharpenedSigmoid, block, block_conv_names, max_pool

OUTPUT_NAMES = ("fused", "side1", "side2", "side3", "side4", "side5", "side6")
VARIANTS = ("full", "lite")
DEFAULT_SIZE = 320

# (RSU height, mid channels, out channels) per stage, as in the paper's Table 1 / official code.
_ENCODER = {
    "full": [(7, 32, 64), (6, 32, 128), (5, 64, 256), (4, 128, 512), ("4F", 256, 512),
             ("4F", 256, 512)],
    "lite": [(7, 16, 64), (6, 16, 64), (5, 16, 64), (4, 16, 64), ("4F", 16, 64), ("4F", 16, 64)],
}
_DECODER = {  # stage5d .. stage1d
    "full": [("4F", 256, 512), (4, 128, 256), (5, 64, 128), (6, 32, 64), (7, 16, 64)],
    "lite": [("4F", 16, 64), (4, 16, 64), (5, 16, 64), (6, 16, 64), (7, 16, 64)],
}


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown U²-Net variant {variant!r}; expected one of {VARIANTS}")


def build_u2net(
    variant: str = "lite",
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    name: str | None = None,
    batch_norm: bool = True,
    sharpness: float = 1.0,
) -> keras.Model:
    """Build ``"full"`` (U²-Net, 44.0 M params) or ``"lite"`` (U²-Net†, 1.13 M params).

    ``batch_norm=False`` builds the inference form, with BN folded into the convs.
    ``sharpness`` scales the fused logit in inference (``model.blocks.SharpenedSigmoid``).
    """
    _check_variant(variant)
    inputs = keras.Input(shape=input_shape, name="image")
    hx = inputs
    encoded = []
    for index, (height, mid, out) in enumerate(_ENCODER[variant], start=1):
        if index > 1:
            hx = max_pool(hx, f"pool{index - 1}{index}")
        hx = block(hx, height, mid, out, f"stage{index}", batch_norm)
        encoded.append(hx)

    decoded = {6: encoded[5]}
    for offset, (height, mid, out) in enumerate(_DECODER[variant]):
        stage = 5 - offset
        up = ResizeLike(name=f"up{stage + 1}")(hx, encoded[stage - 1])
        hx = layers.Concatenate(name=f"cat{stage}d")([up, encoded[stage - 1]])
        hx = block(hx, height, mid, out, f"stage{stage}d", batch_norm)
        decoded[stage] = hx

    side_logits = []
    for stage in range(1, 7):
        logit = layers.Conv2D(1, 3, padding="same", name=f"side{stage}")(decoded[stage])
        if stage > 1:
            logit = ResizeLike(name=f"side{stage}.up")(logit, side_logits[0])
        side_logits.append(logit)
    fused_logit = layers.Conv2D(1, 1, name="outconv")(
        layers.Concatenate(name="sides")(side_logits)
    )
    # float32 outputs keep the BCE stable under mixed precision.
    outputs = {"fused": SharpenedSigmoid(sharpness, dtype="float32", name="fused")(fused_logit)}
    for stage, logit in enumerate(side_logits, start=1):
        outputs[f"side{stage}"] = layers.Activation(
            "sigmoid", dtype="float32", name=f"side{stage}_prob"
        )(logit)
    return keras.Model(inputs, outputs, name=name or f"u2net_{variant}")


def conv_names(variant: str) -> list[str]:
    """Every conv layer name in the order the official forward pass (and its ONNX export) runs."""
    _check_variant(variant)
    names = []
    for index, (height, _, _) in enumerate(_ENCODER[variant], start=1):
        names += block_conv_names(height, f"stage{index}")
    for offset, (height, _, _) in enumerate(_DECODER[variant]):
        names += block_conv_names(height, f"stage{5 - offset}d")
    return names + [f"side{i}" for i in range(1, 7)] + ["outconv"]


def official_parameter_count(model: keras.Model) -> int:
    """Parameters as PyTorch counts them: conv weights/biases and BN gamma/beta (no BN stats)."""
    return sum(int(keras.ops.size(w)) for w in model.trainable_weights)
