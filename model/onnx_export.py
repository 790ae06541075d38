"""Export a U²-Net Keras model to ONNX (NCHW, like the official exports), without tf2onnx.

The graph is written layer by layer from the functional model, BN folded first, so the file
has the official export's shape: 119 Conv nodes in forward order, opset 13, dynamic batch
and size. ``model.weights.import_onnx`` reads it back, which the tests use as a round trip.

With ``input_size`` (the onnxruntime engine's export, ``model.onnx_engine``) the height and
width are fixed and every upsampling is a Resize by constant integer scales: onnxruntime then
keeps the decoder in its blocked NCHWc layout (its NCHWc Upsample takes only constant
scales) instead of converting around each Resize, ~6-10 % less CPU per image on the 2-core
development CPU for the same numbers (within 2e-6).
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model.blocks import ResizeLike, SharpenedSigmoid, sharpness_of
from model.export import fold_batch_norm, variant_of_model
from model.u2net import build_u2net

OPSET = 13


def _tensor(layer_name: str) -> str:
    # Layer names double as output names ("fused", "side1"), so tensors get a suffix.
    return f"{layer_name}.y"


def _inputs_of(layer: keras.layers.Layer, input_name: str) -> list[str]:
    node = layer._inbound_nodes[0]  # every layer of U²-Net is called exactly once
    names = [tensor._keras_history.operation.name for tensor in node.input_tensors]
    return ["input.1" if name == input_name else _tensor(name) for name in names]


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output


def _geometry(layer: keras.layers.Conv2D) -> dict:
    """The ONNX Conv attributes of a Keras conv: its kernel and dilation, "same" padding."""
    dilation = layer.dilation_rate[0]
    pad = dilation * (layer.kernel_size[0] - 1) // 2  # "same" for odd kernels
    return {"kernel_shape": list(layer.kernel_size), "dilations": [dilation] * 2,
            "pads": [pad] * 4, "strides": [1, 1]}


def _conv(graph: _Graph, layer: keras.layers.Conv2D, source: str, scale: float = 1.0) -> str:
    kernel, bias = (weight * np.float32(scale) for weight in layer.get_weights())
    weight = graph.constant(f"{layer.name}.weight", np.transpose(kernel, (3, 2, 0, 1)))
    bias_name = graph.constant(f"{layer.name}.bias", bias)
    relu = layer.activation is keras.activations.relu
    out = graph.node("Conv", [source, weight, bias_name], f"{layer.name}.conv" if relu
                     else _tensor(layer.name), **_geometry(layer))
    return graph.node("Relu", [out], _tensor(layer.name)) if relu else out


def _single_channel_conv(graph: _Graph, layer: keras.layers.Conv2D, source: str) -> str:
    """A k×k conv to one channel (the side outputs' 64 -> 1) as a 1×1 conv to its k² taps,
    then a k×k conv that sums each tap from its place (one-hot weights): the same sum in
    another order (within 2e-7 on the fused map).

    onnxruntime's blocked (NCHWc) conv computes output channels in blocks of 8 (16 with
    AVX-512), so a conv to one channel costs as much as one to eight: side1's was ~4 % of a
    lite image's CPU on the 2-core AMD EPYC (44 GFLOP/s of padded work, the other convs run
    at 75-95). The 1×1 conv to 9 taps fills its blocks, and the one-hot conv reads 9 channels
    instead of 64: ~5 % less CPU per lite image there.
    """
    kernel, bias = layer.get_weights()  # k×k×C×1
    size, channels = kernel.shape[0], kernel.shape[2]
    taps = size * size
    to_taps = kernel[..., 0].reshape(taps, channels)[:, :, None, None]  # tap = row·k + column
    one_hot = np.eye(taps, dtype=np.float32).reshape(1, taps, size, size)
    tapped = graph.node("Conv", [source, graph.constant(f"{layer.name}.taps.weight", to_taps),
                                 graph.constant(f"{layer.name}.taps.bias",
                                                np.zeros(taps, np.float32))],
                        f"{layer.name}.taps", kernel_shape=[1, 1])
    return graph.node("Conv", [tapped, graph.constant(f"{layer.name}.weight", one_hot),
                               graph.constant(f"{layer.name}.bias", bias)],
                      _tensor(layer.name), **_geometry(layer))


def _resize_by_scales(graph: _Graph, layer: ResizeLike, source: str) -> str:
    """Resize to the reference's static size by constant integer scales (NCHWc-friendly)."""
    (_, height, width, _), (_, to_height, to_width, _) = (
        tuple(tensor.shape) for tensor in layer._inbound_nodes[0].input_tensors)
    if to_height % height or to_width % width:
        raise ValueError(f"{layer.name}: {height}x{width} -> {to_height}x{to_width} is not an "
                         "integer upsampling (the input size must be a multiple of 32)")
    scales = graph.constant(f"{layer.name}.scales",
                            np.array([1, 1, to_height // height, to_width // width], np.float32))
    return graph.node("Resize", [source, "", scales], _tensor(layer.name), mode="linear",
                      coordinate_transformation_mode="half_pixel")


def _resize_like(graph: _Graph, name: str, source: str, reference: str) -> str:
    starts, mid, ends = (graph.constant(f"{name}.{n}", np.array(v, np.int64))
                         for n, v in (("s", [0]), ("m", [2]), ("e", [4])))
    batch_channels = graph.node("Slice", [graph.node("Shape", [source], f"{name}.xs"),
                                          starts, mid], f"{name}.nc")
    spatial = graph.node("Slice", [graph.node("Shape", [reference], f"{name}.rs"), mid, ends],
                         f"{name}.hw")
    sizes = graph.node("Concat", [batch_channels, spatial], f"{name}.sizes", axis=0)
    return graph.node("Resize", [source, "", "", sizes], _tensor(name), mode="linear",
                      coordinate_transformation_mode="half_pixel")


def to_onnx(model: keras.Model, input_size: int | None = None,
            fused_only: bool = False) -> onnx.ModelProto:
    """The ONNX graph of ``model`` (inference form); input ``input.1`` NCHW float32, of any
    size, or ``input_size``² (a multiple of 32) with static upsampling scales.

    ``fused_only``: the ``fused`` output alone, without the nodes only the side outputs need
    (their six sigmoids): onnxruntime runs every node of a graph whatever outputs are asked
    for, so this is ~3 % less CPU per image for the engine, which reads ``fused`` alone. Its
    side convs are written as two (``_single_channel_conv``), ~5 % less again: the engine's
    file is for running, not for ``import_onnx`` to read back."""
    model = fold_batch_norm(model)
    if input_size is not None:
        static = build_u2net(variant_of_model(model), (input_size, input_size, 3),
                             name=model.name, batch_norm=False, sharpness=sharpness_of(model))
        static.set_weights(model.get_weights())
        model = static
    graph = _Graph()
    sharpness = sharpness_of(model)
    input_name = model.layers[0].name
    for layer in model.layers[1:]:
        name, output = layer.name, _tensor(layer.name)
        sources = _inputs_of(layer, input_name)
        if (isinstance(layer, keras.layers.Conv2D) and fused_only and layer.filters == 1
                and layer.kernel_size[0] > 1 and layer.activation is keras.activations.linear):
            _single_channel_conv(graph, layer, sources[0])  # the side convs
        elif isinstance(layer, keras.layers.Conv2D):
            # The fused sigmoid's sharpness, folded into the 1x1 conv before it: the graph
            # keeps the official form, and model.weights.import_onnx reads it back exactly.
            _conv(graph, layer, sources[0], sharpness if name == "outconv" else 1.0)
        elif isinstance(layer, keras.layers.ReLU):
            graph.node("Relu", sources, output)
        elif isinstance(layer, keras.layers.MaxPooling2D):
            graph.node("MaxPool", sources, output, kernel_shape=[2, 2], strides=[2, 2],
                       ceil_mode=1)
        elif isinstance(layer, ResizeLike) and input_size is not None:
            _resize_by_scales(graph, layer, sources[0])
        elif isinstance(layer, ResizeLike):
            _resize_like(graph, name, *sources)
        elif isinstance(layer, keras.layers.Concatenate):
            graph.node("Concat", sources, output, axis=1)
        elif isinstance(layer, keras.layers.Add):
            graph.node("Add", sources, output)
        elif isinstance(layer, (keras.layers.Activation, SharpenedSigmoid)):
            graph.node("Sigmoid", sources, output)
        else:
            raise ValueError(f"no ONNX mapping for layer {name} ({type(layer).__name__})")
    size = [input_size] * 2 if input_size is not None else ["H", "W"]
    output_layers = {key: tensor._keras_history.operation.name
                     for key, tensor in model.output.items()}
    if fused_only:
        output_layers = {"fused": output_layers["fused"]}
    outputs = []
    for key, layer_name in output_layers.items():
        graph.node("Identity", [_tensor(layer_name)], key)
        outputs.append(helper.make_tensor_value_info(key, TensorProto.FLOAT, ["N", 1, *size]))
    if fused_only:
        graph.nodes = _needed_for(graph.nodes, set(output_layers))
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, *size])
    onnx_graph = helper.make_graph(graph.nodes, model.name, [image], outputs,
                                   initializer=graph.initializers)
    exported = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                 producer_name="u2net-matting")
    onnx.checker.check_model(exported)
    return exported


def _needed_for(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """The nodes that ``outputs`` depend on, in their order."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    return kept[::-1]


def export_onnx(model: keras.Model, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(to_onnx(model), str(path))
    return path
