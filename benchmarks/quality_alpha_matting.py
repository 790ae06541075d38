"""Alpha matting (``-a``, rembg's refinement): is the refined alpha closer to the truth than
U²-Net†'s own, and what does it cost per photo?

Run: ``.venv/bin/python benchmarks/quality_alpha_matting.py`` (about 9 minutes on 2 cores).
Data: the 15 P3M demo photos (``../shared/data/p3m-demo-samples``) at their own size (1080 px
high, 1080-1920 wide). Their alphas are the authors' P3M-Net predictions, hair-level but not
ground truth: the figures say how close each alpha comes to P3M-Net's, which is a proxy.

Both alphas are what a run writes (8 bit): the plain one is U²-Net† with the official weights
(``../shared/data/u2netp-onnx/u2netp.onnx``), the refined one is the same alpha through
``model.refine.matte_alpha`` with rembg's defaults (foreground threshold 240, background 10,
erode size 10). SAD, MSE and Grad come from ``model.metrics``, over the whole image and over
the soft edge: the true alpha's band 0 < alpha < 1 grown by 10 px, the unknown region a trimap
of the true alpha would have.

Cost: seconds per photo, median over the photos resized to a long side of 600 and 2000 px, of
the whole ``matte i`` work (decode, model, render, encode) without and with ``-a``.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import numpy as np
from quality_foreground import load_samples, resized
from scipy import ndimage
from timing import median_seconds

from model import metrics
from model.imaging import alpha_to_uint8, decode_image, encode_jpeg
from model.matting import Matter
from model.outputs import OutputOptions, render
from model.refine import AlphaMatting, matte_alpha

SHARED = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data"))
EDGE_GROWTH_PX = 10
METRICS = ("sad", "mse", "grad")


def soft_edge(truth8: np.ndarray) -> np.ndarray:
    band = (truth8 > 0) & (truth8 < 255)
    square = np.ones((2 * EDGE_GROWTH_PX + 1,) * 2, dtype=bool)
    return ndimage.binary_dilation(band, square)


def quality(samples, matter: Matter) -> dict[str, dict[str, list[float]]]:
    """{"plain"|"matted": {"<metric>/<region>": per-photo values}}."""
    results = {"plain": {}, "matted": {}}
    for _, photo, truth8 in samples:
        alpha = matter.predict_alpha([photo])[0]
        alphas = {"plain": alpha_to_uint8(alpha),
                  "matted": alpha_to_uint8(matte_alpha(photo, alpha, AlphaMatting()))}
        regions = {"image": None, "edge": soft_edge(truth8)}
        for name, predicted in alphas.items():
            for region_name, region in regions.items():
                for metric in METRICS:
                    value = getattr(metrics, metric)(predicted, truth8, region=region)
                    results[name].setdefault(f"{metric}/{region_name}", []).append(value)
    return results


def cost(samples, matter: Matter, sides: list[int], repeats: int) -> dict[int, dict[str, float]]:
    table = {}
    for side in sides:
        times = {"plain": [], "matted": []}
        for _, photo, alpha8 in samples:
            data = encode_jpeg(resized(photo, alpha8, side)[0])
            for name, options in (("plain", OutputOptions()),
                                  ("matted", OutputOptions(alpha_matting=AlphaMatting()))):
                def run(data=data, options=options) -> None:
                    image = decode_image(data)
                    render(image, matter.predict_alpha([image])[0], options)

                times[name].append(median_seconds(run, repeats))
        table[side] = {name: statistics.median(values) for name, values in times.items()}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "p3m-demo-samples")
    parser.add_argument("--weights", type=Path, default=SHARED / "u2netp-onnx/u2netp.onnx")
    parser.add_argument("--sides", type=int, nargs="+", default=[600, 2000])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    samples = load_samples(args.data)
    matter = Matter.load("lite", args.weights)

    results = quality(samples, matter)
    print(f"{len(samples)} photos, mean per photo (SAD and Grad / 1000, as model.metrics)")
    print(f"{'metric/region':>14} {'plain':>9} {'-a':>9} {'ratio':>6} {'-a better':>9}")
    for key, plain in results["plain"].items():
        matted = results["matted"][key]
        better = sum(m < p for m, p in zip(matted, plain, strict=True))
        print(f"{key:>14} {statistics.fmean(plain):9.4f} {statistics.fmean(matted):9.4f} "
              f"{statistics.fmean(matted) / statistics.fmean(plain):6.2f} "
              f"{better:>5}/{len(plain)}")

    print("\nseconds per photo (median over photos)")
    for side, row in cost(samples, matter, args.sides, args.repeats).items():
        print(f"long side {side:5d}: matte i {row['plain']:.3f}  matte i -a {row['matted']:.3f}"
              f"  ({row['matted'] / row['plain']:.1f}x)")


if __name__ == "__main__":
    main()
