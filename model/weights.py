"""Official U²-Net weights: a local cache like rembg's, a checked download, and ONNX import.

The official ONNX exports (opset 11) fold each BatchNorm into its conv and leave the
initialisers unnamed, so convs are matched to our layers by graph order, which is the order
the official forward pass runs (``model.u2net.conv_names``). Shapes are checked one by one;
correctness is checked by the parity test against the official outputs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from storage import localize

if TYPE_CHECKING:
    import keras

# Keras (and so TensorFlow) is imported only by the functions that build a model: resolving,
# versioning and downloading weights stay light for the CLI and the onnxruntime engine.


@dataclass(frozen=True)
class WeightsFile:
    filename: str
    md5: str


# The md5 sums rembg pins for the official exports of u2net.pth / u2netp.pth, and of
# u2net_human_seg.pth: the full architecture trained on people (imported the same way).
OFFICIAL_WEIGHTS = {
    "lite": WeightsFile("u2netp.onnx", "8e83ca70e441ab06c318d82300c84806"),
    "full": WeightsFile("u2net.onnx", "60024c5c889badc19c04ad937298a77b"),
    "u2net_human_seg": WeightsFile("u2net_human_seg.onnx", "c09ddc2e0104f800e3e1bb4652583d1f"),
}
# rembg's model names onto ours (the keys of OFFICIAL_WEIGHTS).
MODEL_ALIASES = {"u2netp": "lite", "u2net": "full"}
MODEL_NAMES = (*OFFICIAL_WEIGHTS, *MODEL_ALIASES)
DEFAULT_BASE_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/"
DOWNLOAD_TIMEOUT_S = 60


class WeightsError(RuntimeError):
    """Weights are missing, unreachable, corrupt or do not fit the model."""


def canonical_model(name: str) -> str:
    """``lite``, ``full`` or ``u2net_human_seg`` for any of ``MODEL_NAMES`` (rembg's too)."""
    if name not in MODEL_NAMES:
        raise WeightsError(f"unknown model {name!r}: expected one of {', '.join(MODEL_NAMES)}")
    return MODEL_ALIASES.get(name, name)


def weights_home() -> Path:
    """``$U2NET_HOME`` if set, else ``~/.u2net`` (the folder rembg uses)."""
    return Path(os.environ.get("U2NET_HOME") or Path.home() / ".u2net")


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_version(path: str | os.PathLike) -> str:
    """The version recorded beside every output: the file's name and a hash of its bytes, so
    a launcher knows it without building the model."""
    path = Path(path)
    return f"{path.stem}-md5:{md5sum(path)[:12]}"


def model_version(variant: str, weights: str | os.PathLike | None = None) -> str:
    """The version a model would have once loaded (``Matter.version``), without building it."""
    return weights_version(resolve_weights(variant, weights))


def download(url: str, destination: Path, md5: str) -> Path:
    """Stream ``url`` to a temp file beside ``destination``, check md5, then rename into place."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    handle.write(chunk)
        actual = md5sum(tmp)
        if actual != md5:
            raise WeightsError(f"checksum mismatch for {url}: md5 {actual}, expected {md5}")
        os.replace(tmp, destination)
        return destination
    except (urllib.error.URLError, OSError) as error:
        raise WeightsError(
            f"could not download {url} ({error}); without network, copy the file to "
            f"{destination}, set U2NET_HOME, or pass --weights PATH"
        ) from error
    finally:
        tmp.unlink(missing_ok=True)


def resolve_weights(variant: str, weights: str | os.PathLike | None = None) -> Path:
    """The file to load: ``weights`` if given (a gs:// one is fetched, cached by generation),
    else the official ONNX from the cache, downloaded if absent."""
    if weights is not None:
        path = localize(weights)
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        return path
    spec = OFFICIAL_WEIGHTS.get(MODEL_ALIASES.get(variant, variant))
    if spec is None:
        raise WeightsError(f"no official weights for variant {variant!r}")
    path = weights_home() / spec.filename
    if path.is_file():
        return path
    base = os.environ.get("U2NET_BASE_URL", DEFAULT_BASE_URL)
    return download(base.rstrip("/") + "/" + spec.filename, path, spec.md5)


def read_onnx_convs(path: str | os.PathLike) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight OIHW, bias) of every Conv node, in graph order."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    convs = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        weight = tensors[node.input[1]]
        bias = tensors[node.input[2]] if len(node.input) > 2 else np.zeros(weight.shape[0])
        convs.append((weight, bias))
    return convs


def variant_of(convs: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """Tell the official full and lite exports apart by their first RSU's middle width."""
    from model.u2net import conv_names

    mid = convs[1][0].shape[0]
    for variant, width in (("full", 32), ("lite", 16)):
        if mid == width and len(convs) == len(conv_names(variant)):
            return variant
    raise WeightsError(f"not an official U²-Net export: {len(convs)} convs, stage1 width {mid}")


def load_onnx_weights(model: keras.Model, convs: list[tuple[np.ndarray, np.ndarray]],
                      variant: str) -> None:
    """Copy the ONNX convs into ``model``; BN layers become identity (the export folded them)."""
    import keras

    from model.u2net import conv_names

    names = conv_names(variant)
    if len(convs) != len(names):
        raise WeightsError(f"{len(convs)} ONNX convs, the {variant} model has {len(names)}")
    for name, (weight, bias) in zip(names, convs, strict=True):
        layer = model.get_layer(name)
        kernel = np.transpose(weight, (2, 3, 1, 0))  # OIHW -> HWIO
        if tuple(layer.kernel.shape) != kernel.shape:
            raise WeightsError(f"{name}: ONNX kernel {kernel.shape} != layer {layer.kernel.shape}")
        layer.set_weights([kernel, bias])
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            # variance + epsilon == 1 makes the inference-mode BN an exact identity.
            layer.set_weights([
                np.ones(channels), np.zeros(channels), np.zeros(channels),
                np.full(channels, 1.0 - layer.epsilon),
            ])


def import_onnx(
    path: str | os.PathLike, input_size: int | None = None, batch_norm: bool = True
) -> keras.Model:
    """Build the matching U²-Net variant and load an official ONNX export into it.

    ``batch_norm=True`` (for fine-tuning) keeps identity BN layers; ``False`` builds the
    inference form, which is exactly the exported graph.
    """
    from model.u2net import build_u2net

    convs = read_onnx_convs(path)  # parsed once: the full export is 176 MB
    variant = variant_of(convs)
    shape = (input_size, input_size, 3)
    model = build_u2net(variant, shape, name=f"u2net_{variant}_official", batch_norm=batch_norm)
    load_onnx_weights(model, convs, variant)
    return model
