"""Matplotlib figures of a training run, as PNG bytes: loss curves, metric bars, a prediction grid.

PNG bytes rather than figures, because every consumer stores or embeds them (the registry's
``plots/``, Prefect markdown artifacts). ``matplotlib.figure.Figure`` is used without pyplot:
no display backend to choose, no global registry of open figures to leak into.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from model.metrics import METRIC_NAMES

DPI = 100


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def loss_curves(history: Sequence[Mapping[str, float]]) -> bytes:
    """Total and fused-output loss per epoch, training and (when present) validation."""
    if not history:
        raise ValueError("no epochs in the history")
    epochs = [entry["epoch"] for entry in history]
    figure = Figure(figsize=(9, 3.2))
    axes = figure.subplots(1, 2)
    for axis, name in zip(axes, ("loss", "fused_loss"), strict=True):
        for prefix, style in (("", "o-"), ("val_", "s--")):
            values = [entry.get(prefix + name) for entry in history]
            if all(value is not None for value in values):
                axis.plot(epochs, values, style, label=f"{'validation' if prefix else 'train'}")
        axis.set_title("deep-supervision loss (7 outputs)" if name == "loss" else "fused output")
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


def markdown_image(png: bytes, alt: str) -> str:
    """An inline ``data:`` image, so a Prefect markdown artifact needs no file server."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
