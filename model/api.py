"""The Python API, shaped like rembg's: ``remove(data, session=...)`` and ``new_session(name)``.

    from model.api import new_session, remove

    session = new_session("u2netp")             # load once, reuse for every photo
    png = remove(open("photo.jpg", "rb").read(), session=session)

``remove`` takes the bytes of an image file, a PIL image or a numpy array and returns the same
kind: PNG bytes, a PIL image, or an HxWx4 (cut-out), HxW (``only_mask``) or HxWx3 (opaque
``bgcolor``) uint8 array. Bytes in give exactly the bytes ``matte i`` writes for that file and
those options: both decode with ``model.imaging`` and encode with ``model.outputs.render``.
Without a session, each call loads the model again (as rembg's does): pass one.

Differences from rembg: the default model is ``u2netp`` (U²-Net†, this project's default)
rather than ``u2net``; the alpha is the model's probability, not min-max normalised (pass
``official_normalization=True`` to ``new_session`` for that); a cut-out keeps the photo's
colours where alpha > 0 instead of darkening them by alpha; and ``only_mask`` with
``alpha_matting`` gives the refined alpha, not the model's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from model.imaging import DEFAULT_MAX_PIXELS, ImageError, decode_image, image_to_rgb
from model.matting import Matter
from model.outputs import OutputOptions, render, render_array
from model.refine import AlphaMatting
from model.weights import canonical_model

ImageData = bytes | bytearray | memoryview | Image.Image | np.ndarray


@dataclass(frozen=True)
class Session:
    """A loaded model under the name it was asked for (``u2netp``, ``u2net``, ...)."""

    model_name: str
    matter: Matter

    def predict_alpha(self, image: np.ndarray) -> np.ndarray:
        """HxW float alpha in [0, 1] for one HxWx3 uint8 photo, at its own size."""
        return self.matter.predict_alpha([image])[0]


def new_session(model_name: str = "u2netp", weights: str | os.PathLike | None = None,
                official_normalization: bool = False) -> Session:
    """Load ``model_name`` (``u2netp``/``lite``, ``u2net``/``full``, ``u2net_human_seg``) from
    the weights cache (``~/.u2net``, as rembg), or ``weights`` (.onnx or .keras)."""
    matter = Matter.load(canonical_model(model_name), weights, official_normalization)
    return Session(model_name, matter)


def remove(data: ImageData, session: Session | None = None, *,
           alpha_matting: bool = False,
           alpha_matting_foreground_threshold: int = 240,
           alpha_matting_background_threshold: int = 10,
           alpha_matting_erode_size: int = 10,
           only_mask: bool = False,
           bgcolor: tuple[int, ...] | None = None,
           estimate_foreground: bool = False,
           max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes | Image.Image | np.ndarray:
    """The cut-out (or mask, or composite on ``bgcolor``: (R, G, B) or rembg's (R, G, B, A))
    of ``data``, as the same kind of object. ``max_pixels`` limits encoded input only."""
    matting = (AlphaMatting(alpha_matting_foreground_threshold,
                            alpha_matting_background_threshold, alpha_matting_erode_size)
               if alpha_matting else None)
    options = OutputOptions(only_mask=only_mask, bgcolor=bgcolor,
                            estimate_foreground=estimate_foreground, alpha_matting=matting)
    if isinstance(data, bytes | bytearray | memoryview):
        image = decode_image(bytes(data), "<bytes>", max_pixels)
        return render(image, _session(session).predict_alpha(image), options)
    if isinstance(data, Image.Image):
        image = image_to_rgb(data)
        return Image.fromarray(render_array(image, _session(session).predict_alpha(image),
                                            options))
    if isinstance(data, np.ndarray):
        try:
            picture = Image.fromarray(data)
        except (TypeError, ValueError) as error:
            raise ImageError("<array>", f"not an image array: shape {data.shape} dtype "
                             f"{data.dtype}") from error
        image = image_to_rgb(picture, "<array>")
        return render_array(image, _session(session).predict_alpha(image), options)
    raise TypeError(f"remove() takes bytes, a PIL image or a numpy array, not "
                    f"{type(data).__name__}")


def _session(session: Session | None) -> Session:
    return session if session is not None else new_session()
