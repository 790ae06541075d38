"""Inference throughput: our engines vs onnxruntime's defaults on the same network, one process.

Run: ``.venv/bin/python benchmarks/inference.py [--repeats N] [--keras]``. Every side gets the
same preprocessed 320² batch and returns the fused map; the timings alternate (ours, theirs,
ours, ...) and the ratio is ours / onnxruntime of the medians. Not a test: machines are noisy,
so read the ratio, not the absolute numbers.

Each timed call starts after a 0.1 s pause (``SETTLE_S``): onnxruntime's default session
keeps its worker threads spinning for ~10-30 ms after a run returns, and a call timed right
after it shares the cores with them (measured on a 2-core AMD EPYC: lite at batch 1 read
0.87-0.94x back to back, 1.04-1.06x with the pause, onnxruntime's own speed unchanged). The
pause lets each side start on idle cores, as a photo would in a separate process.

* ours: ``Matter``'s network as ``matte`` runs it, the onnxruntime engine
  (``model/onnx_engine.py``): the engine's export of the BN-folded Keras model (fixed 320²,
  ``fused`` only), one image per run, a single image on a session with every core, a batch on
  single-threaded sessions side by side;
* keras (``--keras``): the same Keras model on TensorFlow (the ``keras`` engine), for reference;
* onnxruntime: ``InferenceSession`` with default options on the official ONNX file, image by
  image (the official export has a fixed batch of 1). The official u2net.onnx (176 MB) is not
  in ../shared/data, so the full model's baseline runs our export of a random-weight model
  (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from model.onnx_engine import OnnxNetwork, cpu_count, engine_export
from model.weights import OFFICIAL_WEIGHTS, weights_home

# At 320², counted from the conv layers (multiply-add = 2); DESIGN.md §2 rounds them to 40 / 118.
GFLOP_PER_IMAGE = {"lite": 39.5, "full": 117.2}
# Pause before each timed call, longer than onnxruntime's spinning after a run (module doc).
SETTLE_S = 0.1
SHARED = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data"))


def find_onnx(variant: str) -> Path | None:
    name = OFFICIAL_WEIGHTS[variant].filename
    for folder in (weights_home(), SHARED / "u2netp-onnx"):
        if (folder / name).is_file():
            return folder / name
    return None


def keras_model(variant: str):
    """The inference form (BN folded) with the official weights where we have them."""
    from model.u2net import build_u2net
    from model.weights import import_onnx

    official = find_onnx(variant)
    if official:
        return import_onnx(official, 320, batch_norm=False), official
    return build_u2net(variant, (320, 320, 3), batch_norm=False), None


def sides(variant: str, scratch: Path, with_keras: bool) -> tuple[dict, str]:
    """name -> callable(NHWC batch); and which ONNX file onnxruntime's default side runs."""
    import onnxruntime

    from model.onnx_export import export_onnx

    model, official = keras_model(variant)
    # The baseline without the official file: our export in the official file's shape
    # (any size, every output).
    baseline_file = official or export_onnx(model, scratch / f"{variant}.onnx")
    network = OnnxNetwork(engine_export(model), cpu_count())
    session = onnxruntime.InferenceSession(str(baseline_file),
                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def baseline(batch: np.ndarray) -> None:
        nchw = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        for index in range(len(nchw)):
            session.run(None, {name: nchw[index:index + 1]})

    runs = {"ours": network.fused, "onnxruntime": baseline}
    if with_keras:
        runs["keras"] = lambda batch: model.predict_on_batch(batch)["fused"]
    return runs, "official" if official else "our export, random weights"


def alternate(runs: dict, batch: np.ndarray, repeats: int) -> dict[str, float]:
    """Median seconds per call of each side, measured in turns after two warm-up calls each."""
    for run in runs.values():
        run(batch)
        run(batch)
    samples = {side: [] for side in runs}
    for _ in range(repeats):
        for side, run in runs.items():
            time.sleep(SETTLE_S)  # the previous side's spinning threads go idle
            start = time.perf_counter()
            run(batch)
            samples[side].append(time.perf_counter() - start)
    return {side: statistics.median(values) for side, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["lite", "full"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--keras", action="store_true", help="also the keras engine (TF)")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}, load {os.getloadavg()[0]:.1f}")
    keras_header = f" {'keras img/s':>11} {'ratio':>6}" if args.keras else ""
    print(f"{'model':6} {'batch':>5} {'ours img/s':>11} {'ort img/s':>10} {'ratio':>6}"
          f"{keras_header} {'ours GFLOP/s':>13}  onnx file")
    with tempfile.TemporaryDirectory() as scratch:
        for variant in args.variants:
            runs, source = sides(variant, Path(scratch), args.keras)
            for batch_size in args.batches:
                batch = np.random.default_rng(0).normal(
                    size=(batch_size, 320, 320, 3)).astype("float32")
                seconds = alternate(runs, batch, args.repeats)
                speed = {side: batch_size / value for side, value in seconds.items()}
                baseline = speed["onnxruntime"]
                keras_cells = (f" {speed['keras']:11.2f} {speed['keras'] / baseline:6.2f}"
                               if args.keras else "")
                print(f"{variant:6} {batch_size:5d} {speed['ours']:11.2f} "
                      f"{baseline:10.2f} {speed['ours'] / baseline:6.2f}"
                      f"{keras_cells} {speed['ours'] * GFLOP_PER_IMAGE[variant]:13.1f}  {source}")


if __name__ == "__main__":
    main()
