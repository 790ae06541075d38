"""Building blocks of U²-Net: REBNCONV and the residual U-blocks RSU-L / RSU-4F.

Layer names mirror the official PyTorch module paths with dots instead of '/', which Keras 3
forbids in names (e.g. ``stage1.rebnconv1.conv``). The importer relies on that, and on
``conv_names`` below listing convolutions in the order the official forward pass runs them.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="u2net")
class ResizeLike(layers.Layer):
    """Bilinear resize of ``x`` to the spatial size of ``reference``.

    Half-pixel centres, no antialiasing: the same as PyTorch's
    ``F.interpolate(mode="bilinear", align_corners=False)`` used by the official model.
    """

    def call(self, x, reference):
        height, width = ops.shape(reference)[1], ops.shape(reference)[2]
        if isinstance(height, int) and isinstance(width, int):
            return ops.image.resize(x, (height, width), interpolation="bilinear",
                                    antialias=False)
        # Sizes only known at run time (a SavedModel traced with None dims): ops.image.resize
        # needs Python ints, so interpolate with gathers, one axis at a time.
        return _resize_axis(_resize_axis(x, height, axis=1), width, axis=2)

    def compute_output_shape(self, x_shape, reference_shape):
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])


@keras.saving.register_keras_serializable(package="u2net")
class SharpenedSigmoid(layers.Layer):
    """The fused output: ``sigmoid(sharpness · logit)`` in inference, ``sigmoid(logit)`` in
    training.

    Sharpness > 1 makes the alpha crisper (a faint 0.05 haze becomes 0.01 at 1.5) without
    moving its 0.5 level set. It is a setting of the model, never learnt: the loss sees the
    plain sigmoid, so fine-tuning a sharpened model does not sharpen it again; a model made
    by ``build_u2net`` takes the value it is given (``TrainConfig.output_sharpness``). The
    ONNX export folds it into ``outconv`` (``model.onnx_export``).
    """

    def __init__(self, sharpness: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not sharpness > 0:
            raise ValueError(f"sharpness must be positive, got {sharpness}")
        self.sharpness = float(sharpness)

    def call(self, logit, training=None):
        if training or self.sharpness == 1.0:
            return ops.sigmoid(logit)
        return ops.sigmoid(logit * self.sharpness)

    def compute_output_shape(self, shape):
        return shape

    def get_config(self) -> dict:
        return {**super().get_config(), "sharpness": self.sharpness}


def sharpness_of(model: keras.Model) -> float:
    """The fused output's sharpness (1.0 for models saved before it existed)."""
    return float(getattr(model.get_layer("fused"), "sharpness", 1.0))


def _resize_axis(x, size, axis: int):
    """Half-pixel linear interpolation of ``x`` along ``axis`` (1 or 2 of NHWC) to ``size``."""
    in_size = ops.shape(x)[axis]
    scale = ops.cast(in_size, "float32") / ops.cast(size, "float32")
    source = ops.maximum((ops.cast(ops.arange(size), "float32") + 0.5) * scale - 0.5, 0.0)
    lower = ops.floor(source)
    weight = ops.cast(source - lower, x.dtype)
    lower = ops.cast(lower, "int32")
    upper = ops.minimum(lower + 1, in_size - 1)
    weight = ops.reshape(weight, (1, -1, 1, 1) if axis == 1 else (1, 1, -1, 1))
    low_values, high_values = ops.take(x, lower, axis=axis), ops.take(x, upper, axis=axis)
    return low_values + (high_values - low_values) * weight


def rebnconv(x, filters: int, dilation: int, name: str, batch_norm: bool = True):
    """3×3 conv (with bias, as the official model) + BatchNorm + ReLU.

    ``batch_norm=False`` gives the inference form with BN folded into the conv (see
    ``model.export.fold_batch_norm``): conv + bias + ReLU fuse into one kernel, which is
    what makes the Keras path as fast as onnxruntime on the folded official export.
    """
    conv = layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation,
                         activation=None if batch_norm else "relu", name=f"{name}.conv")
    x = conv(x)
    if not batch_norm:
        return x
    # PyTorch BN defaults: eps 1e-5, momentum 0.1 (Keras counts momentum the other way).
    x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}.bn")(x)
    return layers.ReLU(name=f"{name}.relu")(x)


def max_pool(x, name: str):
    # "same" pads one row/column at the bottom/right when the size is odd, which is exactly
    # PyTorch's MaxPool2d(2, stride=2, ceil_mode=True).
    return layers.MaxPooling2D(2, strides=2, padding="same", name=name)(x)


def rsu(x, height: int, mid: int, out: int, name: str, batch_norm: bool = True):
    """RSU-L (L = height, 4..7): a small U-Net with pooling, residual connection to its input."""
    hxin = rebnconv(x, out, 1, f"{name}.rebnconvin", batch_norm)
    encoded = [rebnconv(hxin, mid, 1, f"{name}.rebnconv1", batch_norm)]
    for level in range(2, height):
        pooled = max_pool(encoded[-1], f"{name}.pool{level - 1}")
        encoded.append(rebnconv(pooled, mid, 1, f"{name}.rebnconv{level}", batch_norm))
    hx = rebnconv(encoded[-1], mid, 2, f"{name}.rebnconv{height}", batch_norm)
    for level in range(height - 1, 0, -1):
        skip = encoded[level - 1]
        if level < height - 1:
            hx = ResizeLike(name=f"{name}.up{level}")(hx, skip)
        hx = layers.Concatenate(name=f"{name}.cat{level}d")([hx, skip])
        hx = rebnconv(hx, out if level == 1 else mid, 1, f"{name}.rebnconv{level}d",
                      batch_norm)
    return layers.Add(name=f"{name}.residual")([hx, hxin])


def rsu4f(x, mid: int, out: int, name: str, batch_norm: bool = True):
    """RSU-4F: dilated convolutions instead of pooling, for the low-resolution stages."""
    hxin = rebnconv(x, out, 1, f"{name}.rebnconvin", batch_norm)
    hx1 = rebnconv(hxin, mid, 1, f"{name}.rebnconv1", batch_norm)
    hx2 = rebnconv(hx1, mid, 2, f"{name}.rebnconv2", batch_norm)
    hx3 = rebnconv(hx2, mid, 4, f"{name}.rebnconv3", batch_norm)
    hx4 = rebnconv(hx3, mid, 8, f"{name}.rebnconv4", batch_norm)
    hx = hx4
    for level, skip, dilation in ((3, hx3, 4), (2, hx2, 2), (1, hx1, 1)):
        hx = layers.Concatenate(name=f"{name}.cat{level}d")([hx, skip])
        hx = rebnconv(hx, out if level == 1 else mid, dilation, f"{name}.rebnconv{level}d",
                      batch_norm)
    return layers.Add(name=f"{name}.residual")([hx, hxin])


def block(x, height: int | str, mid: int, out: int, name: str, batch_norm: bool = True):
    """RSU-``height`` for 4..7, RSU-4F for ``"4F"``."""
    if height == "4F":
        return rsu4f(x, mid, out, name, batch_norm)
    return rsu(x, int(height), mid, out, name, batch_norm)


def block_conv_names(height: int | str, name: str) -> list[str]:
    """Names of the block's conv layers in the official forward order."""
    levels = 4 if height == "4F" else int(height)
    encoder = ["rebnconvin"] + [f"rebnconv{i}" for i in range(1, levels + 1)]
    decoder = [f"rebnconv{i}d" for i in range(levels - 1, 0, -1)]
    return [f"{name}.{part}.conv" for part in encoder + decoder]
