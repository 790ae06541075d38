"""Fringe-free cut-outs: does foreground estimation (``--fg``) recover the subject's colour in
the soft band, and what does it cost per photo?

Run: ``.venv/bin/python benchmarks/quality_foreground.py [--repeats N]`` (about 3 minutes on
2 cores). Data: the 15 P3M demo photos and their P3M-Net alphas (``../shared/data/
p3m-demo-samples``; the alphas are the authors' predictions, not ground truth, but here they
are exact by construction: every test image is composited with them).

Quality. For each photo, a foreground F and its alpha are composited onto new backgrounds (3
solid colours and another of the photos, resized), rounded to 8 bit like any photo; then F is
estimated from the composite and the alpha alone (``model.refine.estimate_foreground``, what
``--fg`` runs) and compared with F over the band 0 < alpha < 1, against keeping the
composite's RGB (what a cut-out without ``--fg`` stores). Two choices of F:

* ``photo``: F is the photo itself. In the band the photo already mixes the subject with its
  old background, so no estimate can recover it: this reference is pessimistic.
* ``clean``: F is the photo, with each band pixel replaced by the nearest fully opaque pixel's
  colour (a foreground that holds no background, chosen independently of the estimator).

Errors are mean absolute RGB differences in 8-bit levels, over the band, plain and weighted
by alpha (the weighted one is what shows once the cut-out lies on a new background).

Cost. Seconds per photo, median over the photos resized to a long side of 600 and 2000 px,
of the whole ``matte i`` work without ``--fg`` (decode, U²-Net† with the official weights,
encode) and of the foreground estimation alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage
from timing import median_seconds

from model.imaging import decode_image, decode_mask, encode_jpeg
from model.matting import Matter
from model.outputs import OutputOptions, render
from model.refine import estimate_foreground

SHARED = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data"))
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "green": (0, 177, 64)}


def load_samples(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(stem, HxWx3 uint8 photo, HxW uint8 alpha) for every demo photo."""
    samples = []
    for photo in sorted((root / "original").glob("*.jpg")):
        alpha = decode_mask((root / "p3mnet_pred_alpha" / f"{photo.stem}.png").read_bytes())
        samples.append((photo.stem, decode_image(photo.read_bytes()), alpha))
    return samples


def clean_foreground(photo: np.ndarray, alpha8: np.ndarray) -> np.ndarray:
    """The photo with each band pixel replaced by its nearest fully opaque pixel's colour."""
    _, (rows, cols) = ndimage.distance_transform_edt(alpha8 < 255, return_indices=True)
    band = (alpha8 > 0) & (alpha8 < 255)
    return np.where(band[..., None], photo[rows, cols], photo)


def compose(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return np.clip(np.rint(foreground * a + background * (1.0 - a)), 0, 255).astype(np.uint8)


def band_errors(estimate: np.ndarray, truth: np.ndarray, alpha: np.ndarray,
                band: np.ndarray) -> tuple[float, float]:
    """(mean |estimate - truth| over the band, the same weighted by alpha), 8-bit levels."""
    diff = np.abs(estimate[band].astype(np.float64) - truth[band]).mean(axis=1)
    weights = alpha[band]
    return float(diff.mean()), float((diff * weights).sum() / weights.sum())


def quality(samples) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {}
    for index, (_, photo, alpha8) in enumerate(samples):
        alpha = alpha8.astype(np.float32) / 255.0
        band = (alpha8 > 0) & (alpha8 < 255)
        other = samples[(index + 1) % len(samples)][1]
        backgrounds = {name: np.broadcast_to(np.asarray(colour, np.uint8), photo.shape)
                       for name, colour in BACKGROUNDS.items()}
        backgrounds["photo"] = cv2.resize(other, photo.shape[1::-1],
                                          interpolation=cv2.INTER_AREA)
        for truth_name, truth in (("photo", photo), ("clean", clean_foreground(photo, alpha8))):
            for name, background in backgrounds.items():
                composite = compose(truth.astype(np.float32), alpha, background)
                row = results.setdefault(f"{truth_name}/{name}",
                                         {"keep": [], "keep_w": [], "fg": [], "fg_w": []})
                keep = band_errors(composite, truth, alpha, band)
                fg = band_errors(estimate_foreground(composite, alpha), truth, alpha, band)
                for key, value in zip(("keep", "keep_w", "fg", "fg_w"), (*keep, *fg),
                                      strict=True):
                    row[key].append(value)
    return results


def resized(photo: np.ndarray, alpha8: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    scale = side / max(photo.shape[:2])
    size = (round(photo.shape[1] * scale), round(photo.shape[0] * scale))
    shrink = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return (cv2.resize(photo, size, interpolation=shrink),
            cv2.resize(alpha8, size, interpolation=shrink))


def cost(samples, matter: Matter, sides: list[int], repeats: int) -> dict[int, dict[str, float]]:
    table = {}
    for side in sides:
        whole, extra = [], []
        for _, photo, alpha8 in samples:
            photo, alpha8 = resized(photo, alpha8, side)
            data = encode_jpeg(photo)

            def plain(data=data) -> None:
                image = decode_image(data)
                render(image, matter.predict_alpha([image])[0], OutputOptions())

            alpha = alpha8.astype(np.float32) / 255.0
            whole.append(median_seconds(plain, repeats))
            extra.append(median_seconds(lambda p=photo, a=alpha: estimate_foreground(p, a),
                                        repeats))
        table[side] = {"whole": statistics.median(whole), "fg": statistics.median(extra)}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "p3m-demo-samples")
    parser.add_argument("--weights", type=Path, default=SHARED / "u2netp-onnx/u2netp.onnx")
    parser.add_argument("--sides", type=int, nargs="+", default=[600, 2000])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    samples = load_samples(args.data)
    estimate_foreground(samples[0][1][:64, :64], samples[0][2][:64, :64] / 255.0)  # JIT warm-up

    print(f"{len(samples)} photos; band errors in 8-bit levels (w: weighted by alpha)")
    print(f"{'truth/background':>18} {'keep':>7} {'--fg':>7} {'ratio':>6} "
          f"{'keep w':>7} {'--fg w':>7} {'ratio w':>7}")
    results = quality(samples)
    for truth_name in ("photo", "clean"):
        rows = {key: value for key, value in results.items() if key.startswith(truth_name)}
        rows[f"{truth_name}/all"] = {name: sum((row[name] for row in rows.values()), [])
                                     for name in ("keep", "keep_w", "fg", "fg_w")}
        for key, row in rows.items():
            mean = {name: statistics.fmean(values) for name, values in row.items()}
            print(f"{key:>18} {mean['keep']:7.2f} {mean['fg']:7.2f} "
                  f"{mean['fg'] / mean['keep']:6.2f} {mean['keep_w']:7.2f} "
                  f"{mean['fg_w']:7.2f} {mean['fg_w'] / mean['keep_w']:7.2f}")

    matter = Matter.load("lite", args.weights)
    print("\nseconds per photo (median over photos)")
    for side, row in cost(samples, matter, args.sides, args.repeats).items():
        print(f"long side {side:5d}: matte i without --fg {row['whole']:.3f}  "
              f"foreground estimation {row['fg']:.3f}  (+{100 * row['fg'] / row['whole']:.0f} %)")


if __name__ == "__main__":
    main()
