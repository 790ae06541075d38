"""Inference throughput: our Keras model (TensorFlow backend) vs onnxruntime on the same ONNX file.

Run: ``.venv/bin/python benchmarks/inference.py [--repeats N]``. Both sides get the same
preprocessed 320² batch; the ratio is ours / onnxruntime, measured in the same process.
Not a test: machines are noisy, so read the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from model.u2net import build_u2net
from model.weights import OFFICIAL_WEIGHTS, import_onnx, weights_home

GFLOP_PER_IMAGE = {"lite": 40.0, "full": 118.0}  # at 320², DESIGN.md §2 (multiply-add = 2)
SHARED = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data"))


def find_onnx(variant: str) -> Path | None:
    name = OFFICIAL_WEIGHTS[variant].filename
    for folder in (weights_home(), SHARED / "u2netp-onnx"):
        if (folder / name).is_file():
            return folder / name
    return None


def time_call(call, repeats: int) -> float:
    """Median seconds of ``call()`` after two warm-up calls."""
    call()
    call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def bench(variant: str, batch: int, repeats: int) -> dict:
    onnx_path = find_onnx(variant)
    # The inference form (BN folded), as the matting CLI and pipelines run it.
    if onnx_path:
        model = import_onnx(onnx_path, 320, batch_norm=False)
    else:
        model = build_u2net(variant, (320, 320, 3), batch_norm=False)
    x = np.random.default_rng(0).normal(size=(batch, 320, 320, 3)).astype("float32")
    ours = time_call(lambda: model.predict_on_batch(x), repeats)
    row = {"variant": variant, "batch": batch, "ours_ips": batch / ours, "ort_ips": None}
    if onnx_path:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(onnx_path),
                                               providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        nchw = x.transpose(0, 3, 1, 2)
        # The official export has a fixed batch of 1: onnxruntime runs the batch image by image.
        theirs = time_call(lambda: [session.run(None, {name: nchw[i:i + 1]})
                                    for i in range(batch)], repeats)
        row["ort_ips"] = batch / theirs
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["lite", "full"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'model':6} {'batch':>5} {'ours img/s':>11} {'ort img/s':>10} {'ratio':>6} "
          f"{'ours GFLOP/s':>13}")
    for variant in args.variants:
        for batch in args.batches:
            row = bench(variant, batch, args.repeats)
            ort = f"{row['ort_ips']:10.2f}" if row["ort_ips"] else f"{'n/a':>10}"
            ratio = f"{row['ours_ips'] / row['ort_ips']:6.2f}" if row["ort_ips"] else f"{'n/a':>6}"
            gflops = row["ours_ips"] * GFLOP_PER_IMAGE[variant]
            print(f"{variant:6} {batch:5d} {row['ours_ips']:11.2f} {ort} {ratio} {gflops:13.1f}")


if __name__ == "__main__":
    main()
