"""Pre/post-processing: the official normalisation, sizes, and the same result in tf.data."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from model.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    alpha_to_size,
    alpha_to_size_array,
    min_max,
    min_max_array,
    normalize,
    preprocess,
    preprocess_array,
    resize,
)


def test_normalize_divides_by_the_peak_then_imagenet():
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 0] = (200, 100, 50)  # peak 200
    out = np.asarray(normalize(image))
    expected_corner = (np.array([1.0, 0.5, 0.25]) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(out[0, 0], expected_corner, rtol=1e-6)
    np.testing.assert_allclose(out[1, 1], -np.array(IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-6)


def test_black_image_does_not_divide_by_zero():
    out = np.asarray(normalize(np.zeros((4, 4, 3), np.uint8)))
    assert np.isfinite(out).all()


def test_peak_is_per_image_in_a_batch():
    batch = np.stack([np.full((2, 2, 3), 10, np.uint8), np.full((2, 2, 3), 250, np.uint8)])
    out = np.asarray(normalize(batch))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-6)  # both are "all at the peak"


def test_preprocess_gives_model_size_and_alpha_returns_to_photo_size():
    image = np.random.default_rng(0).integers(0, 256, (123, 77, 3), dtype=np.uint8)
    assert np.asarray(preprocess(image)).shape == (320, 320, 3)
    alpha = np.linspace(-0.5, 1.5, 320 * 320, dtype=np.float32).reshape(320, 320, 1)
    back = np.asarray(alpha_to_size(alpha, (123, 77)))
    assert back.shape == (123, 77, 1)
    assert back.min() >= 0.0 and back.max() <= 1.0


def test_resize_of_a_constant_is_constant():
    out = np.asarray(resize(np.full((50, 60, 3), 7, np.uint8), (13, 200)))
    np.testing.assert_allclose(out, 7.0, rtol=1e-6)


def test_min_max_spans_zero_to_one():
    alpha = np.array([[[0.2], [0.4]], [[0.6], [0.3]]], np.float32)
    out = np.asarray(min_max(alpha))
    np.testing.assert_allclose(out[:, :, 0], [[0.0, 0.5], [1.0, 0.25]], atol=1e-6)


def test_same_preprocessing_eagerly_and_inside_tf_data():
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((90, 64), (64, 100))]
    eager = [np.asarray(preprocess(image, 96)) for image in images]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec((None, None, 3), tf.uint8)
    ).map(lambda image: preprocess(image, 96))
    graph = [element.numpy() for element in dataset]
    for a, b in zip(eager, graph, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(1, 1), (7, 3)])
def test_tiny_targets(size):
    out = np.asarray(alpha_to_size(np.full((320, 320, 1), 0.75, np.float32), size))
    np.testing.assert_allclose(out, 0.75, rtol=1e-6)


@pytest.mark.parametrize("shape", [(2000, 3000, 3), (123, 77, 3), (320, 320, 3), (5, 900, 3)])
def test_the_numpy_form_is_the_keras_form(shape):
    """Inference resizes with Pillow (no TensorFlow in a ``matte`` process); tf.data and the
    evaluation with keras.ops: one rule, so both must give the same numbers."""
    image = np.random.default_rng(shape[0]).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_allclose(preprocess_array(image), np.asarray(preprocess(image)), atol=1e-4)
    alpha = np.random.default_rng(1).random((320, 320, 1), dtype=np.float32) * 1.4 - 0.2
    np.testing.assert_allclose(alpha_to_size_array(alpha, shape[:2]),
                               np.asarray(alpha_to_size(alpha, shape[:2]))[..., 0], atol=1e-4)
    batch = alpha[None] + np.float32([0.0, 0.3]).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(min_max_array(batch), np.asarray(min_max(batch)), atol=1e-6)
