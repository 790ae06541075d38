"""Pre- and post-processing shared by the CLI, the Beam pipelines and tf.data (one implementation).

Written with ``keras.ops`` only, so it runs eagerly on any backend and, on the TensorFlow
backend, inside ``tf.data`` graphs too.
"""

from __future__ import annotations

from keras import ops

MODEL_SIZE = 320
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize(images, size: tuple[int, int]):
    """Bilinear resize of HWC or NHWC images to ``size`` = (height, width).

    Antialiased, so a 4000-px photo shrunk to 320 px does not alias; this matches PIL's
    bilinear resize, which the official outputs were made with, and is a plain half-pixel
    bilinear interpolation when enlarging.
    """
    return ops.image.resize(
        ops.cast(images, "float32"), size, interpolation="bilinear", antialias=True
    )


def normalize(images):
    """Official U²-Net normalisation: divide by the image's maximum, then ImageNet mean/std."""
    images = ops.cast(images, "float32")
    axes = tuple(range(-3, 0))
    peak = ops.max(images, axis=axes, keepdims=True)
    # An all-black image would divide by zero in the official code; treat its peak as 1.
    peak = ops.where(peak > 0, peak, ops.ones_like(peak))
    mean = ops.convert_to_tensor(IMAGENET_MEAN, dtype="float32")
    std = ops.convert_to_tensor(IMAGENET_STD, dtype="float32")
    return (images / peak - mean) / std


def preprocess(images, size: int = MODEL_SIZE):
    """uint8 (or float) RGB HWC/NHWC at any size -> normalised float32 at ``size``×``size``."""
    return normalize(resize(images, (size, size)))


def alpha_to_size(alpha, size: tuple[int, int]):
    """Resize a model probability map (HW1/NHW1) back to the photo's (height, width), in [0, 1]."""
    return ops.clip(resize(alpha, size), 0.0, 1.0)


def min_max(alpha):
    """The official demo's output normalisation: (p - min) / (max - min) per image."""
    axes = tuple(range(-3, 0))
    low = ops.min(alpha, axis=axes, keepdims=True)
    high = ops.max(alpha, axis=axes, keepdims=True)
    return (alpha - low) / ops.maximum(high - low, 1e-8)
