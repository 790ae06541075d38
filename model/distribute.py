"""Which devices train, and the data-parallel scope over them (DESIGN.md §6).

``TrainConfig.devices`` names the devices; ``None`` means every local GPU, or else every
(logical) CPU, normally one. Names are read the same on both backends: ``"gpu:0"``,
``"/gpu:0"``, ``"/device:GPU:0"`` and ``"cpu:1"`` all work, so one config serves both.

On TensorFlow the scope is ``tf.distribute.MirroredStrategy`` over those devices; on JAX it is
Keras' ``DataParallel``. Either way ``fit`` gets *global* batches and splits each one across the
replicas, and Keras divides each replica's mean loss by the replica count, so gradients (summed
across replicas) are those of the mean loss over the global batch.

Several replicas without several accelerators: split the host CPU into logical devices with
``configure_logical_cpus(n)`` before TensorFlow or JAX has started its runtime, or set
``U2NET_LOGICAL_CPUS=n`` in the environment, which this module applies when it is imported
(``model.train`` imports it), e.g.::

    U2NET_LOGICAL_CPUS=2 matte train smoke --run-dir runs/two --set devices='[cpu:0, cpu:1]'

On JAX, ``XLA_FLAGS=--xla_force_host_platform_device_count=n`` does the same. It proves the
multi-replica path on a laptop; it does not make training faster.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence

import keras
import tensorflow as tf  # tf.data feeds training on both backends (model.train)

LOGICAL_CPUS_ENV = "U2NET_LOGICAL_CPUS"
_NAME = re.compile(r"^/?(?:device:)?(cpu|gpu|tpu):(\d+)$", re.IGNORECASE)


def parse_device(name: str) -> tuple[str, int]:
    """``("gpu", 0)`` from ``"gpu:0"``, ``"/GPU:0"`` or ``"/device:GPU:0"``."""
    name = name.strip()
    if name.startswith("/job:"):  # a fully qualified TF name: only its device part matters
        name = "/" + name.rsplit("/", 1)[-1]
    match = _NAME.match(name)
    if not match:
        raise ValueError(f"device {name!r}: expected a name like 'gpu:0', '/cpu:1', "
                         "'/device:GPU:0'")
    return match.group(1).lower(), int(match.group(2))


def configure_logical_cpus(count: int) -> None:
    """Split the host CPU into ``count`` logical devices, for multi-replica runs without GPUs.

    Must run before the backend starts its runtime (TensorFlow: the first op; JAX: the first
    device query): both fix their device set then, and say so with an error if called later.
    """
    if count < 1:
        raise ValueError(f"logical CPU count must be >= 1, got {count}")
    if keras.backend.backend() == "tensorflow":
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:  # a no-op when this configuration is already in force, even after initialisation
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
        except RuntimeError as error:
            raise RuntimeError(
                f"cannot split the CPU into {count} logical devices: TensorFlow has started "
                f"with {len(tf.config.list_logical_devices('CPU'))}; configure them before "
                f"the first TensorFlow op (or set {LOGICAL_CPUS_ENV} before importing "
                "model.train)") from error
    elif keras.backend.backend() == "jax":
        import jax

        # Same effect as XLA_FLAGS=--xla_force_host_platform_device_count=count; JAX raises
        # if its backends are already initialised with another count.
        jax.config.update("jax_num_cpu_devices", count)
    else:
        raise ValueError(f"logical CPUs are not supported on the {keras.backend.backend()} "
                         "backend")


def local_devices() -> list[tuple[str, int]]:
    """Every device the backend can train on: its GPUs (or TPUs), else its (logical) CPUs."""
    if keras.backend.backend() == "tensorflow":
        for kind in ("GPU", "CPU"):
            devices = [parse_device(device.name) for device in tf.config.list_logical_devices(kind)]
            if devices:
                return devices
        raise RuntimeError("TensorFlow lists no CPU")
    # keras.distribution picks the accelerator type if there is one, else the CPUs.
    return [parse_device(name) for name in keras.distribution.list_devices()]


def select_devices(devices: Sequence[str] | None) -> list[tuple[str, int]]:
    """The configured devices, checked against what the backend has; ``None``: all local."""
    if devices is None:
        return local_devices()
    wanted = [parse_device(name) for name in devices]
    if not wanted:
        raise ValueError("devices is empty: give None (all local devices) or device names")
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"devices {list(devices)} names a device twice")
    if keras.backend.backend() == "tensorflow":
        present = {parse_device(device.name) for device in tf.config.list_logical_devices()}
    else:
        import jax

        present = {(device.platform.lower(), device.id) for device in jax.devices()}
        present |= {(device.platform.lower(), device.id) for device in jax.devices("cpu")}
    missing = [f"{kind}:{index}" for kind, index in wanted if (kind, index) not in present]
    if missing:
        hint = (f" (several CPUs: set {LOGICAL_CPUS_ENV}=n or call "
                "model.distribute.configure_logical_cpus(n) first)"
                if any(name.startswith("cpu") for name in missing) else "")
        raise ValueError(f"devices {missing} are not on this machine; it has "
                         f"{sorted(f'{kind}:{index}' for kind, index in present)}{hint}")
    return wanted


def global_batch_size(batch_per_replica: int, replicas: int,
                      checkpoint_global_batch: int | None = None) -> int:
    """Examples per step: ``replicas × batch_per_replica``, or the checkpoint's on a resume.

    A resume keeps the global batch it was written with, so that its step still names the
    same data position and the same mean-loss gradient; the replicas then share that batch
    (e.g. 2 × 2 written, 1 × 4 resumed), which needs it to divide evenly.
    """
    if checkpoint_global_batch is None:
        return batch_per_replica * replicas
    if checkpoint_global_batch % replicas:
        raise ValueError(f"the checkpoint trains on global batches of {checkpoint_global_batch},"
                         f" which {replicas} replicas cannot share evenly: resume on a device "
                         f"count that divides {checkpoint_global_batch}")
    return checkpoint_global_batch


def check_batch_size(dataset: tf.data.Dataset, global_batch: int) -> tf.data.Dataset:
    """``dataset``, if its batches are ``global_batch`` examples (where tf.data knows it).

    ``fit`` splits each batch across the replicas, so a dataset batched per replica would
    silently train on a global batch ``replicas`` times too small.
    """
    first = tf.nest.flatten(dataset.element_spec)[0]
    size = first.shape[0] if first.shape.rank else None
    if size is not None and size != global_batch:
        raise ValueError(f"the training data comes in batches of {size}, the global batch is "
                         f"{global_batch} (replicas × batch_per_replica, or the checkpoint's)")
    return dataset


@contextlib.contextmanager
def distribution_scope(devices: Sequence[str] | None = None) -> Iterator[int]:
    """Data parallel over ``devices`` (``None``: all local ones); yields the replica count.

    Build and compile the model inside the scope: its variables are mirrored on creation.
    """
    selected = select_devices(devices)
    if keras.backend.backend() == "tensorflow":
        strategy = tf.distribute.MirroredStrategy(
            devices=[f"/{kind.upper()}:{index}" for kind, index in selected])
        with strategy.scope():
            yield strategy.num_replicas_in_sync
    else:
        distribution = keras.distribution.DataParallel(
            devices=[f"{kind}:{index}" for kind, index in selected])
        with distribution.scope():
            yield len(selected)


def _configure_from_env() -> None:
    value = os.environ.get(LOGICAL_CPUS_ENV)
    if value:
        configure_logical_cpus(int(value))


# On import, not in distribution_scope: by then something (the precision policy's device
# query on JAX, the data on TensorFlow) has usually started the backend's runtime.
_configure_from_env()
