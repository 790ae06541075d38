"""The matting core: a loaded model that turns photos of any size into full-resolution alphas.

Used by the CLI and by the Beam ModelHandler, so both produce the same pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import keras
import numpy as np

from model.export import fold_batch_norm, load_keras
from model.preprocess import MODEL_SIZE, alpha_to_size, min_max, preprocess
from model.weights import import_onnx, resolve_weights, weights_version


@dataclass
class Matter:
    """A model plus the version string recorded next to every output it makes."""

    model: keras.Model
    version: str
    size: int = MODEL_SIZE
    official_normalization: bool = False

    @classmethod
    def load(
        cls,
        variant: str = "lite",
        weights: str | os.PathLike | None = None,
        official_normalization: bool = False,
    ) -> Matter:
        """Official ONNX weights (cache or ``weights``) or a trained ``.keras`` model."""
        path = resolve_weights(variant, weights)
        if path.suffix == ".keras":
            model = fold_batch_norm(load_keras(path))
        else:
            model = import_onnx(path, batch_norm=False)
        return cls(model, weights_version(path), official_normalization=official_normalization)

    def predict_probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """The fused map at model resolution, N×S×S×1 float32, for HxWx3 uint8 photos."""
        batch = np.stack([np.asarray(preprocess(image, self.size)) for image in images])
        fused = self.model.predict_on_batch(batch)["fused"]
        if self.official_normalization:
            fused = min_max(fused)
        return np.asarray(fused, dtype=np.float32)

    def predict_alpha(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """One HxW float32 alpha in [0, 1] per photo, at the photo's own resolution."""
        if not images:
            return []
        probabilities = self.predict_probabilities(images)
        return [
            np.asarray(alpha_to_size(prob, image.shape[:2]))[:, :, 0]
            for prob, image in zip(probabilities, images, strict=True)
        ]

