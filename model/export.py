"""Inference form and export: fold BatchNorm into the convs; .keras and TF SavedModel files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import keras
import numpy as np

from model.blocks import sharpness_of
from model.u2net import build_u2net, conv_names


def variant_of_model(model: keras.Model) -> str:
    """``full`` or ``lite`` from the width of the first RSU's middle layers."""
    return "full" if model.get_layer("stage1.rebnconv1.conv").filters == 32 else "lite"


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """The same function without BN layers: w' = w·γ/√(σ²+ε), b' = (b−μ)·γ/√(σ²+ε) + β.

    Equal to ``model`` in inference mode; about 10 % faster on CPU because conv + bias + ReLU
    run as one fused kernel instead of four passes over each activation.
    """
    if not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers):
        return model  # already the inference form
    variant = variant_of_model(model)
    folded = build_u2net(variant, tuple(model.input.shape[1:]), name=f"{model.name}_folded",
                         batch_norm=False, sharpness=sharpness_of(model))
    for name in conv_names(variant):
        kernel, bias = model.get_layer(name).get_weights()
        if name.endswith(".conv"):
            gamma, beta, mean, variance = model.get_layer(name[:-len("conv")] + "bn").get_weights()
            scale = gamma / np.sqrt(variance + model.get_layer(name[:-len("conv")] + "bn").epsilon)
            kernel, bias = kernel * scale, (bias - mean) * scale + beta
        folded.get_layer(name).set_weights([kernel, bias])
    return folded


def save_keras(model: keras.Model, path: str | os.PathLike) -> Path:
    """Save as ``.keras`` (loads back with ``safe_mode=True``: no pickled code)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def load_keras(path: str | os.PathLike) -> keras.Model:
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def export_saved_model(model: keras.Model, directory: str | os.PathLike) -> Path:
    """TF SavedModel for TF Serving / Vertex AI: input normalised NHWC float32 of any size,
    output the dict of probability maps (signature ``serve``)."""
    directory = Path(directory)
    model.export(str(directory), format="tf_saved_model", verbose=False)
    return directory


def export_litert(model: keras.Model, path: str | os.PathLike) -> Path:
    """LiteRT (TFLite) flatbuffer, converted from the SavedModel (TensorFlow backend only)."""
    import tensorflow as tf

    path = Path(path)
    with tempfile.TemporaryDirectory() as scratch:
        saved = export_saved_model(model, Path(scratch) / "saved_model")
        flatbuffer = tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flatbuffer)
    return path
