"""ONNX export: onnxruntime runs the exported graph like Keras, and the import reads it back."""

from __future__ import annotations

import numpy as np
import onnxruntime

from model.onnx_export import export_onnx
from model.u2net import OUTPUT_NAMES, build_u2net
from model.weights import import_onnx, read_onnx_convs


def test_exported_official_weights_round_trip_and_run_in_onnxruntime(u2netp_onnx, tmp_path):
    model = import_onnx(u2netp_onnx, batch_norm=False)
    path = export_onnx(model, tmp_path / "lite.onnx")
    for (ours_w, ours_b), (official_w, official_b) in zip(
        read_onnx_convs(path), read_onnx_convs(u2netp_onnx), strict=True
    ):
        np.testing.assert_array_equal(ours_w, official_w)
        np.testing.assert_array_equal(ours_b, official_b)

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
    x = np.random.default_rng(0).normal(size=(2, 75, 97, 3)).astype("float32")  # dynamic size
    theirs = session.run(None, {"input.1": x.transpose(0, 3, 1, 2)})
    ours = model.predict_on_batch(x)
    for index, name in enumerate(OUTPUT_NAMES):
        np.testing.assert_allclose(theirs[index].transpose(0, 2, 3, 1), ours[name], atol=1e-4)


def test_batch_norm_model_is_folded_on_export(tmp_path):
    model = build_u2net("lite", (None, None, 3))
    rng = np.random.default_rng(1)
    for layer in model.layers:  # non-trivial BN statistics, so folding is really exercised
        if layer.name.endswith(".bn"):
            channels = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.1, channels),
                               rng.normal(0, 0.1, channels), rng.uniform(0.5, 2.0, channels)])
    path = export_onnx(model, tmp_path / "bn.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = rng.normal(size=(1, 64, 48, 3)).astype("float32")
    fused = session.run(["fused"], {"input.1": x.transpose(0, 3, 1, 2)})[0]
    np.testing.assert_allclose(fused.transpose(0, 2, 3, 1), model.predict_on_batch(x)["fused"],
                               atol=1e-4)


def test_fixed_size_export_upsamples_by_constant_scales(u2netp_onnx):
    """The onnxruntime engine's form: 320² in, no Shape arithmetic, the same numbers."""
    from model.onnx_export import to_onnx

    model = import_onnx(u2netp_onnx, batch_norm=False)
    graph = to_onnx(model, input_size=320)
    ops = [node.op_type for node in graph.graph.node]
    assert "Shape" not in ops and ops.count("Resize") == 38
    session = onnxruntime.InferenceSession(graph.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).normal(size=(2, 320, 320, 3)).astype("float32")
    fused = session.run(["fused"], {"input.1": x.transpose(0, 3, 1, 2)})[0]
    np.testing.assert_allclose(fused.transpose(0, 2, 3, 1), model.predict_on_batch(x)["fused"],
                               atol=1e-4)


def test_sharpness_is_folded_into_the_exported_graph(u2netp_onnx):
    """The export keeps the official graph (Conv ... Sigmoid) with the sharpness in outconv's
    weights: onnxruntime gives the sharpened alpha, and the import reads it back exactly."""
    from model.onnx_export import to_onnx
    from model.train import with_sharpness

    model = with_sharpness(import_onnx(u2netp_onnx, batch_norm=False), 1.5)
    graph = to_onnx(model, input_size=320)
    assert "Mul" not in [node.op_type for node in graph.graph.node]
    session = onnxruntime.InferenceSession(graph.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).normal(size=(1, 320, 320, 3)).astype("float32")
    fused = session.run(["fused"], {"input.1": x.transpose(0, 3, 1, 2)})[0].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(fused, model(x, training=False)["fused"], atol=1e-4)
    plain = import_onnx(u2netp_onnx, batch_norm=False)(x, training=False)["fused"]
    assert np.abs(fused - np.asarray(plain)).max() > 1e-2


def test_the_engine_export_has_the_fused_output_alone(u2netp_onnx):
    """The side maps' sigmoids are not in the engine's graph, each side conv to one channel
    is a conv to its 9 taps and a one-hot 3x3 conv; ``fused`` is the same within float
    rounding."""
    from onnx import numpy_helper

    from model.onnx_export import to_onnx

    model = import_onnx(u2netp_onnx, batch_norm=False)
    full, lean = to_onnx(model, input_size=320), to_onnx(model, input_size=320, fused_only=True)
    assert [output.name for output in lean.graph.output] == ["fused"]
    assert len(full.graph.output) == 7
    assert [n.op_type for n in full.graph.node].count("Sigmoid") == 7
    assert [n.op_type for n in lean.graph.node].count("Sigmoid") == 1
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in lean.graph.initializer}
    shapes = [weights[n.input[1]].shape for n in lean.graph.node if n.op_type == "Conv"]
    assert shapes.count((9, 64, 1, 1)) == 6 and shapes.count((1, 9, 3, 3)) == 6
    assert (1, 64, 3, 3) not in shapes
    x = np.random.default_rng(4).normal(size=(1, 3, 320, 320)).astype("float32")
    runs = [onnxruntime.InferenceSession(graph.SerializeToString(),
                                         providers=["CPUExecutionProvider"]).run(
        ["fused"], {"input.1": x})[0] for graph in (full, lean)]
    np.testing.assert_allclose(runs[1], runs[0], atol=2e-6)
    assert np.ptp(runs[0]) > 0.1  # a map with content, not a constant both could agree on
