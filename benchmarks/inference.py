"""Inference throughput: our Keras model (TensorFlow backend) vs onnxruntime on the same ONNX file.

Run: ``.venv/bin/python benchmarks/inference.py [--repeats N]``. Both sides get the same
preprocessed 320² batch; the ratio is ours / onnxruntime, measured in the same process.
Not a test: machines are noisy, so read the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from timing import median_seconds

from model.onnx_export import export_onnx
from model.u2net import build_u2net
from model.weights import OFFICIAL_WEIGHTS, import_onnx, weights_home

# At 320², counted from the conv layers (multiply-add = 2); DESIGN.md §2 rounds them to 40 / 118.
GFLOP_PER_IMAGE = {"lite": 39.5, "full": 117.2}
SHARED = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data"))


def find_onnx(variant: str) -> Path | None:
    name = OFFICIAL_WEIGHTS[variant].filename
    for folder in (weights_home(), SHARED / "u2netp-onnx"):
        if (folder / name).is_file():
            return folder / name
    return None


def model_and_onnx(variant: str, scratch: Path) -> tuple[keras.Model, Path, str]:
    """The inference form (BN folded), as the CLI and pipelines run it, and its ONNX file.

    Without the official file (u2net.onnx is 176 MB and not in ../shared/data), both sides
    run our own export of the same random-weight model: speed does not depend on weights.
    """
    official = find_onnx(variant)
    if official:
        return import_onnx(official, 320, batch_norm=False), official, "official"
    model = build_u2net(variant, (320, 320, 3), batch_norm=False)
    return model, export_onnx(model, scratch / f"{variant}.onnx"), "our export"


def bench(variant: str, batch: int, repeats: int, scratch: Path) -> dict:
    import onnxruntime

    model, onnx_path, source = model_and_onnx(variant, scratch)
    x = np.random.default_rng(0).normal(size=(batch, 320, 320, 3)).astype("float32")
    ours = median_seconds(lambda: model.predict_on_batch(x), repeats, warmup=2)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    nchw = x.transpose(0, 3, 1, 2)
    # The official export has a fixed batch of 1: onnxruntime runs the batch image by image.
    theirs = median_seconds(lambda: [session.run(None, {name: nchw[i:i + 1]})
                                     for i in range(batch)], repeats, warmup=2)
    return {"variant": variant, "batch": batch, "ours_ips": batch / ours,
            "ort_ips": batch / theirs, "onnx": source}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["lite", "full"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'model':6} {'batch':>5} {'ours img/s':>11} {'ort img/s':>10} {'ratio':>6} "
          f"{'ours GFLOP/s':>13}  onnx file")
    with tempfile.TemporaryDirectory() as scratch:
        for variant in args.variants:
            for batch in args.batches:
                row = bench(variant, batch, args.repeats, Path(scratch))
                gflops = row["ours_ips"] * GFLOP_PER_IMAGE[variant]
                print(f"{variant:6} {batch:5d} {row['ours_ips']:11.2f} {row['ort_ips']:10.2f} "
                      f"{row['ours_ips'] / row['ort_ips']:6.2f} {gflops:13.1f}  {row['onnx']}")


if __name__ == "__main__":
    main()
