"""Inference form and export formats give the same maps as the Keras model."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from keras import ops

from model.blocks import _resize_axis
from model.export import export_litert, export_saved_model, fold_batch_norm
from model.u2net import OUTPUT_NAMES, build_u2net


def _random_batch_norm(model, seed: int = 0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name.endswith(".bn"):
            channels = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.1, channels),
                               rng.normal(0, 0.1, channels), rng.uniform(0.5, 2.0, channels)])
    return model


def test_folding_batch_norm_keeps_the_function():
    model = _random_batch_norm(build_u2net("lite"))
    folded = fold_batch_norm(model)
    assert not any(layer.name.endswith(".bn") for layer in folded.layers)
    x = np.random.default_rng(1).normal(size=(1, 48, 40, 3)).astype("float32")
    ours, theirs = model.predict_on_batch(x), folded.predict_on_batch(x)
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(theirs[name], ours[name], atol=1e-4)


def test_gather_resize_equals_the_image_resize():
    x = np.random.default_rng(2).normal(size=(2, 5, 7, 3)).astype("float32")
    for size in ((10, 14), (9, 13), (3, 4), (5, 7)):
        gathered = _resize_axis(_resize_axis(x, size[0], axis=1), size[1], axis=2)
        direct = ops.image.resize(x, size, interpolation="bilinear", antialias=False)
        np.testing.assert_allclose(np.asarray(gathered), np.asarray(direct), atol=1e-5)


def test_saved_model_serves_any_size(tmp_path):
    model = build_u2net("lite", batch_norm=False)
    directory = export_saved_model(model, tmp_path / "saved_model")
    served = tf.saved_model.load(str(directory))
    x = np.random.default_rng(3).normal(size=(1, 75, 97, 3)).astype("float32")
    outputs = served.serve(x)
    np.testing.assert_allclose(outputs["fused"].numpy(), model.predict_on_batch(x)["fused"],
                               atol=1e-5)


def test_litert_flatbuffer_runs(tmp_path):
    model = build_u2net("lite", (64, 64, 3), batch_norm=False)
    path = export_litert(model, tmp_path / "lite.tflite")
    interpreter = tf.lite.Interpreter(model_path=str(path))
    serve = interpreter.get_signature_runner("serving_default")
    x = np.random.default_rng(4).normal(size=(1, 64, 64, 3)).astype("float32")
    outputs = serve(image=x)
    assert set(outputs) == set(OUTPUT_NAMES)
    np.testing.assert_allclose(outputs["fused"], model.predict_on_batch(x)["fused"], atol=1e-4)
