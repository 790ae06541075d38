"""Training throughput: images/s of one U²-Net training step, lite and full, at 320².

Run: ``.venv/bin/python benchmarks/train.py [--steps N] [--batch B]`` (TensorFlow, the
MirroredStrategy path of ``model.train``), or on a GPU box with JAX and bf16::

    KERAS_BACKEND=jax python benchmarks/train.py --variants full --batch max

``--batch max`` doubles the batch until the accelerator runs out of memory and keeps the largest
that trained. The projection is the wall time of the seed's setup: 10 epochs of P3M-10k's
9,421 training images (94,210 images), which took the seed 18 h on its GPU.
Not a test: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import keras
import numpy as np

from model.configs import from_dict
from model.losses import repeat_label
from model.train import build_model, compile_model, distribution_scope, precision_policy

SIZE = 320
SEED_IMAGES = 94_210  # 10 epochs x 9,421 P3M-10k training images
SEED_HOURS = 18.0
GFLOP_PER_IMAGE = {"lite": 40.0, "full": 118.0}  # forward at 320² (DESIGN.md §2)


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.times.append(time.perf_counter())


def images_per_second(variant: str, batch: int, steps: int) -> float:
    """Global batch / median seconds per training step, after a warm-up step (which traces)."""
    config = from_dict({"name": "bench", "variant": variant, "image_size": SIZE,
                        "batch_per_replica": batch})
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision_policy(config.precision))
    try:
        with distribution_scope() as replicas:
            model = build_model(config)
            compile_model(model, config)
            global_batch = batch * replicas
            rng = np.random.default_rng(0)
            images = rng.normal(size=(global_batch, SIZE, SIZE, 3)).astype("float32")
            alpha = (rng.random((global_batch, SIZE, SIZE, 1)) > 0.5).astype("float32")
            x = np.concatenate([images] * (steps + 1))
            y = repeat_label(np.concatenate([alpha] * (steps + 1)))
            timer = StepTimer()
            model.fit(x, y, batch_size=global_batch, epochs=1, callbacks=[timer], verbose=0,
                      shuffle=False)
    finally:
        keras.config.set_dtype_policy(previous)
    return global_batch / statistics.median(np.diff(timer.times))


def largest_batch(variant: str, steps: int, start: int = 8) -> tuple[int, float]:
    """Double the batch until it no longer fits; the largest that trained and its speed."""
    best, batch = None, start
    while True:
        try:
            best = (batch, images_per_second(variant, batch, steps))
        except Exception as error:  # each backend names its out-of-memory error differently
            if "RESOURCE_EXHAUSTED" not in str(error) and "out of memory" not in str(error):
                raise
            if best is None:
                raise RuntimeError(f"{variant}: batch {batch} does not fit") from error
            return best
        batch *= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["lite", "full"])
    parser.add_argument("--batch", default="4", help="per replica, or 'max'")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up")
    args = parser.parse_args()
    backend = keras.backend.backend()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"backend {backend}, precision {precision_policy('auto')}, {time.strftime('%Y-%m-%d')}")
    print(f"{'model':6} {'batch':>5} {'img/s':>7} {'train GFLOP/s':>14} "
          f"{'10 P3M epochs':>14} {'vs seed 18 h':>12}")
    for variant in args.variants:
        if args.batch == "max":
            batch, images_per_s = largest_batch(variant, args.steps)
        else:
            batch = int(args.batch)
            images_per_s = images_per_second(variant, batch, args.steps)
        hours = SEED_IMAGES / images_per_s / 3600
        # A training step costs about 3 forward passes (forward, and twice that backward).
        gflops = images_per_s * 3 * GFLOP_PER_IMAGE[variant]
        print(f"{variant:6} {batch:5d} {images_per_s:7.2f} {gflops:14.1f} "
              f"{hours:12.1f} h {SEED_HOURS / hours:11.2f}x")


if __name__ == "__main__":
    main()
