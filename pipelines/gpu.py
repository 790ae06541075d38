"""Is there a GPU? The container's entry check and the ModelHandler's ``require_gpu``.

    python -m pipelines.gpu        exit 1, saying what to check, when no GPU is visible
"""

from __future__ import annotations

import sys


class NoGpuError(RuntimeError):
    """A GPU was asked for but the framework sees none."""


def visible_gpus() -> list[str]:
    """GPUs the current Keras backend can use."""
    import keras  # here, not above: a CPU run of the bucket job never loads a backend

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [device.name for device in tf.config.list_physical_devices("GPU")]
    if backend == "jax":
        import jax

        return [str(device) for device in jax.devices() if device.platform == "gpu"]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    raise NoGpuError(f"cannot list GPUs for the {backend!r} Keras backend")


def check_gpu() -> list[str]:
    """The visible GPUs, or NoGpuError saying what to check."""
    import keras

    gpus = visible_gpus()
    if not gpus:
        raise NoGpuError(
            f"a GPU was asked for but the {keras.backend.backend()} backend sees none: check "
            "install-nvidia-driver in the accelerator flag, `nvidia-smi` on the worker, and that "
            "the image has the CUDA build of the framework (infra/Dockerfile)")
    return gpus


def main() -> int:
    """Container entry check (infra/entrypoint.sh): exit 1, saying why, without a GPU."""
    try:
        gpus = check_gpu()
    except NoGpuError as error:
        print(f"gpu check: {error}", file=sys.stderr)
        return 1
    print(f"gpu check: {len(gpus)} GPU(s): {', '.join(gpus)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
