"""The pictures operators look at, as PNG bytes: training plots and before/after thumbnails.

Training plots (loss curves, metric bars, a prediction grid) go to the registry's ``plots/``
and the training report; before/after thumbnails go to the matting run's dashboard. Both end
up inline in Prefect markdown artifacts, through ``markdown_image``, the one place that builds
a ``data:`` URI. PNG bytes rather than figures, because every consumer stores or embeds them.
``matplotlib.figure.Figure`` is used without pyplot: no display backend to choose, no global
registry of open figures to leak into.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from model.imaging import decode_image, encode_png
from model.metrics import METRIC_NAMES

DPI = 100
THUMBNAIL_HEIGHT = 160


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


CURVES = {"loss": "deep-supervision loss (7 outputs)", "fused_loss": "fused output loss",
          "fused_iou": "fused IoU@0.5", "fused_mae": "fused MAE"}


def loss_curves(history: Sequence[Mapping[str, float]]) -> bytes:
    """Losses per epoch and, when training logged them, the fused map's IoU and MAE; training
    and (when present) validation."""
    if not history:
        raise ValueError("no epochs in the history")
    epochs = [entry["epoch"] for entry in history]
    names = [name for name in CURVES if name in history[0] or f"val_{name}" in history[0]]
    figure = Figure(figsize=(4.5 * len(names), 3.2))
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for axis, name in zip(axes, names, strict=True):
        for prefix, style in (("", "o-"), ("val_", "s--")):
            values = [entry.get(prefix + name) for entry in history]
            if all(value is not None for value in values):
                axis.plot(epochs, values, style, label=f"{'validation' if prefix else 'train'}")
        axis.set_title(CURVES[name])
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend()
    return _png(figure)


def metric_bars(summaries: Mapping[str, Mapping[str, float]],
                metrics: Sequence[str] = METRIC_NAMES) -> bytes:
    """One panel per metric, one bar per model (e.g. ``{"imported": {...}, "fine-tuned": {...}}``);
    panels because the metrics' scales differ by orders of magnitude."""
    if not summaries:
        raise ValueError("no summaries to plot")
    names = list(summaries)
    colours = matplotlib.colormaps["tab10"].colors
    figure = Figure(figsize=(2.1 * len(metrics), 2.8), layout="constrained")
    axes = figure.subplots(1, len(metrics))
    for axis, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        values = [summaries[name][metric] for name in names]
        bars = axis.bar(range(len(names)), values, color=colours[:len(names)])
        axis.bar_label(bars, fmt="%.3g", fontsize=7)
        axis.set_title(metric)
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        axis.margins(y=0.2)
    return _png(figure)


def prediction_grid(samples: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> bytes:
    """Rows of (photo, predicted alpha, ground truth); photo in [0, 1] HxWx3, alphas HxW."""
    if not samples:
        raise ValueError("no samples to plot")
    figure = Figure(figsize=(6.6, 2.2 * len(samples)), layout="constrained")
    axes = figure.subplots(len(samples), 3, squeeze=False)
    for row, (key, image, alpha, truth) in zip(axes, samples, strict=True):
        for axis, panel, title in zip(row, (image, alpha, truth),
                                      (key, "prediction", "ground truth"), strict=True):
            axis.imshow(np.clip(panel, 0, 1), cmap=None if panel.ndim == 3 else "gray",
                        vmin=0, vmax=1)
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    return _png(figure)



def _checkerboard(height: int, width: int, square: int = 8) -> np.ndarray:
    rows, cols = np.indices((height, width)) // square
    light = ((rows + cols) % 2 == 0)[:, :, None]
    return np.where(light, 230, 190).astype(np.float32) * np.ones(3, np.float32)


def _fit(image: Image.Image) -> Image.Image:
    width = max(1, round(image.width * THUMBNAIL_HEIGHT / image.height))
    return image.resize((width, THUMBNAIL_HEIGHT), Image.Resampling.BILINEAR)


def before_after(source: bytes, cutout: bytes) -> bytes:
    """The source photo (left) beside its RGBA cut-out over a checkerboard (right), so the
    transparency is visible on a dashboard that renders transparent pixels as white."""
    before = _fit(Image.fromarray(decode_image(source)))
    after = np.asarray(_fit(Image.open(io.BytesIO(cutout)).convert("RGBA")), np.float32)
    alpha = after[:, :, 3:] / 255.0
    board = _checkerboard(*after.shape[:2])
    flattened = (after[:, :, :3] * alpha + board * (1.0 - alpha)).round().astype(np.uint8)
    canvas = np.zeros((THUMBNAIL_HEIGHT, before.width + flattened.shape[1] + 4, 3), np.uint8)
    canvas[:, :before.width] = np.asarray(before)
    canvas[:, before.width + 4:] = flattened
    return encode_png(canvas)


def markdown_image(alt: str, png: bytes) -> str:
    """An inline ``data:`` image, so a Prefect markdown artifact needs no file server."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
