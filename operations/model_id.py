"""What identifies a registered model: ``weights_id`` (its weights and architecture, read from
the ``.keras`` zip without building the model) and ``sha256_file`` (its bytes as stored).

The registry names a version by the first, so the same weights saved twice (the zip records a
save date) are one version, and checks the second whenever it hands the model out.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np

# The weight file's top-level groups that make the model: its layers' variables and its own.
# Not "optimizer" (or anything else a compiled model saves): training state, not the model.
WEIGHT_GROUPS = ("layers", "vars")


class NotAKerasFile(ValueError):
    """The bytes are not a ``.keras`` zip with ``config.json`` and ``model.weights.h5``."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def architecture(config: dict) -> object:
    """``config.json`` without what varies between saves of one model: the compile settings,
    the memory addresses Keras writes as ``shared_object_id``, and layer and model names
    (auto-names such as ``dense_3`` depend on what the process built before), which become
    their position in the layer list."""
    inner = config.get("config", {})
    names = {(layer.get("name") or layer.get("config", {}).get("name")): f"#{index}"
             for index, layer in enumerate(inner.get("layers", []))}
    names[inner.get("name")] = "#model"

    def canonical(value: object) -> object:
        if isinstance(value, dict):
            return {key: canonical(item) for key, item in value.items()
                    if key != "shared_object_id"}
        if isinstance(value, list):
            return [canonical(item) for item in value]
        return names.get(value, value) if isinstance(value, str) else value

    return canonical({key: value for key, value in config.items() if key != "compile_config"})


def weights_id(model: bytes) -> str:
    """SHA-256 of what a ``.keras`` file holds, not of the zip: the architecture and every
    weight array (path, dtype, shape, bytes) in path order. The weight paths
    (``layers/conv2d_3/vars/0``) are numbered per save, so they do not depend on names."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            config = json.loads(archive.read("config.json"))
            weights = archive.read("model.weights.h5")
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise NotAKerasFile(f"not a .keras model file ({error})") from error
    digest = hashlib.sha256(_canonical_json(architecture(config)))
    with h5py.File(io.BytesIO(weights), "r") as h5:
        arrays: list[str] = []
        h5.visititems(lambda name, item: arrays.append(name)
                      if isinstance(item, h5py.Dataset) else None)
        for name in sorted(arrays):
            if name.split("/")[0] not in WEIGHT_GROUPS:
                continue
            array = np.ascontiguousarray(h5[name][()])
            digest.update(f"{name} {array.dtype.str} {array.shape}\n".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()
