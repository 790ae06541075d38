"""Pre- and post-processing shared by the CLI, the Beam pipelines and tf.data: one rule, two forms.

The ``keras.ops`` form (``resize``, ``normalize``, ``preprocess``, ``alpha_to_size``, ``min_max``)
runs eagerly on any backend and, on the TensorFlow backend, inside ``tf.data`` graphs too: the
training reader and ``model.evaluate`` use it. The ``*_array`` form is the same arithmetic in
numpy and Pillow, for inference (``model.matting.Matter``, whatever its engine): it needs no
TensorFlow, which costs seconds to import and hundreds of MB in a ``matte`` process, and Pillow
releases the GIL while it resizes, so photos are resized on several threads at once.
``tests/test_preprocess.py`` holds the two forms within 1e-4 of each other.

``keras`` is imported inside the ``keras.ops`` functions, so importing this module (as the
TensorFlow-free inference path does) does not load a backend.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MODEL_SIZE = 320
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize(images, size: tuple[int, int]):
    """Bilinear resize of HWC or NHWC images to ``size`` = (height, width).

    Antialiased, so a 4000-px photo shrunk to 320 px does not alias; this matches PIL's
    bilinear resize, which the official outputs were made with, and is a plain half-pixel
    bilinear interpolation when enlarging.
    """
    from keras import ops

    return ops.image.resize(
        ops.cast(images, "float32"), size, interpolation="bilinear", antialias=True
    )


def normalize(images):
    """Official U²-Net normalisation: divide by the image's maximum, then ImageNet mean/std."""
    from keras import ops

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
    from keras import ops

    return ops.clip(resize(alpha, size), 0.0, 1.0)


def min_max(alpha):
    """The official demo's output normalisation: (p - min) / (max - min) per image."""
    from keras import ops

    axes = tuple(range(-3, 0))
    low = ops.min(alpha, axis=axes, keepdims=True)
    high = ops.max(alpha, axis=axes, keepdims=True)
    return (alpha - low) / ops.maximum(high - low, 1e-8)


def resize_array(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``resize`` for one HxWxC (uint8 or float) array: float32 (height, width, C).

    Pillow's bilinear filter on 32-bit float planes is the same antialiased triangle filter
    as ``resize`` (support scaled by the shrink factor, half-pixel centres, weights renormalised
    at the borders), so no 8-bit rounding happens between the photo and the model.
    """
    height, width = size
    if image.dtype == np.uint8:  # Pillow splits and widens 8-bit planes in C
        planes = [plane.convert("F") for plane in Image.fromarray(image).split()] \
            if image.shape[2] in (3, 4) else [Image.fromarray(image[..., 0]).convert("F")]
    else:
        planes = [Image.fromarray(np.ascontiguousarray(image[..., channel], np.float32), "F")
                  for channel in range(image.shape[2])]
    return np.stack([np.asarray(plane.resize((width, height), Image.BILINEAR))
                     for plane in planes], axis=-1)


def preprocess_array(image: np.ndarray, size: int = MODEL_SIZE) -> np.ndarray:
    """``preprocess`` for one HxWx3 uint8 photo: size×size×3 float32."""
    resized = resize_array(image, (size, size))
    peak = resized.max()
    resized /= peak if peak > 0 else 1.0
    return (resized - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)


def alpha_to_size_array(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``alpha_to_size`` for one S×S×1 map: HxW float32 in [0, 1]."""
    return np.clip(resize_array(alpha, size)[..., 0], 0.0, 1.0)


def min_max_array(alpha: np.ndarray) -> np.ndarray:
    """``min_max`` for an N×S×S×1 batch, per image."""
    low = alpha.min(axis=(1, 2, 3), keepdims=True)
    high = alpha.max(axis=(1, 2, 3), keepdims=True)
    return (alpha - low) / np.maximum(high - low, np.float32(1e-8))
