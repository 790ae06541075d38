"""Training: U²-Net under ``tf.distribute.MirroredStrategy``, resumable at any checkpointed step.

Every epoch's batches are a pure function of the epoch index (``EpochData``), and a checkpoint
records the step, so a killed run restarts at the same step *and* data position: epoch
``step // steps_per_epoch``, skipping the ``step % steps_per_epoch`` batches already seen. That
is also why there is one ``fit`` call per epoch: the partial epoch after a resume is its own
``fit``. Skipping reads and decodes the skipped batches (at most one epoch's worth): slower
than restoring an iterator, but exact. Keras' ``BackupAndRestore`` is not used: in Keras 3.15
it restores the epoch only, so a mid-epoch kill repeats the epoch's first batches.

A checkpoint is a folder written under a temp name and renamed, then ``latest.json`` is
replaced: a kill at any moment leaves the last complete checkpoint in force.

Layout of a run folder: ``config.json``, ``checkpoints/{latest.json, ckpt-<step>/}``,
``tensorboard/``, and at the end ``model.keras`` and ``history.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from model.configs import TrainConfig
from model.distribute import check_batch_size, distribution_scope, global_batch_size
from model.export import save_keras
from model.keras_metrics import fused_metrics
from model.losses import deep_supervision_loss
from model.u2net import build_u2net
from model.weights import import_onnx, resolve_weights
from storage import write_atomic

EpochData = Callable[[int], tf.data.Dataset]  # epoch index -> that epoch's (image, labels)
# Fields that may change between a run and its resume: none of them changes what is trained
# ("weights" only seeds step 0, and a resumed run loads its checkpoint; the train flow names
# the starting weights in the run folder's key instead of a local cache path).
RESUMABLE_CHANGES = {"weights", "promotion_margin", "min_eval_photos", "name", "epochs",
                     "checkpoint_every", "keep_checkpoints", "run_eagerly",
                     "validation_metric", "eval_max_side", "eval_size",
                     # only the inference output (the loss never sees it)
                     "output_sharpness",
                     # a resume keeps the checkpoint's global batch on any device count
                     "devices"}


@dataclass(frozen=True)
class TrainState:
    """What a checkpoint records besides the weights."""

    step: int  # batches trained on so far (not optimizer.iterations: loss scaling skips some)
    steps_per_epoch: int
    global_batch: int
    history: tuple[dict, ...] = ()  # one entry of epoch-end logs per completed epoch


@dataclass(frozen=True)
class TrainResult:
    model: keras.Model
    model_path: Path
    run_dir: Path
    state: TrainState
    resumed_from: int | None  # the checkpoint step this process started from


def precision_policy(precision: str) -> str:
    """``auto``: mixed precision on a GPU (bf16 on JAX, fp16 with loss scaling on TF)."""
    if precision != "auto":
        return precision
    if keras.backend.backend() == "jax":
        import jax

        return "mixed_bfloat16" if jax.devices()[0].platform == "gpu" else "float32"
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"


def build_model(config: TrainConfig) -> keras.Model:
    """The training form (with BN layers) at any input size: evaluation runs at any size; its
    fused output has the config's sharpness whatever the starting weights had."""
    return with_sharpness(_starting_model(config), config.output_sharpness)


def with_sharpness(model: keras.Model, sharpness: float) -> keras.Model:
    """``model`` with its fused output at ``sharpness`` (a setting, not a weight: set, never
    multiplied, so a retrain from a sharpened champion does not compound it). A model saved
    before the setting existed is rebuilt around its weights."""
    from model.blocks import SharpenedSigmoid
    from model.export import variant_of_model

    fused = model.get_layer("fused")
    if isinstance(fused, SharpenedSigmoid):
        fused.sharpness = float(sharpness)
        return model
    batch_norm = any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    rebuilt = build_u2net(variant_of_model(model), tuple(model.input.shape[1:]), name=model.name,
                          batch_norm=batch_norm, sharpness=sharpness)
    rebuilt.set_weights(model.get_weights())
    for old, new in zip(model.layers, rebuilt.layers, strict=True):
        new.trainable = old.trainable
    return rebuilt


def _starting_model(config: TrainConfig) -> keras.Model:
    if config.init == "champion":
        # A registered model is the training form already (identity BN from the import, or
        # BN that fine-tuning kept frozen); the train flow passes its verified local copy.
        if config.weights is None:
            raise ValueError(f"config {config.name!r}: init 'champion' needs weights (the "
                             "champion's model.keras; the train flow fills it in)")
        from model.export import load_keras, variant_of_model

        model = load_keras(config.weights)
        if variant_of_model(model) != config.variant:
            raise ValueError(f"{config.weights}: not a {config.variant} model")
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        return model
    if config.init == "official":
        model = import_onnx(resolve_weights(config.variant, config.weights), None)
        if not model.name.startswith(f"u2net_{config.variant}"):
            raise ValueError(f"{config.weights}: not the {config.variant} weights ({model.name})")
        for layer in model.layers:
            if config.freeze_batch_norm and isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        return model
    keras.utils.set_random_seed(config.seed)  # the initial weights are part of the config
    return build_u2net(config.variant, (None, None, 3))


def compile_model(model: keras.Model, config: TrainConfig) -> None:
    optimizer = keras.optimizers.Adam(
        config.learning_rate, beta_1=config.beta_1, beta_2=config.beta_2,
        epsilon=config.epsilon, weight_decay=config.weight_decay or None)
    model.compile(optimizer=optimizer,
                  loss=deep_supervision_loss(config.l1_weight, config.gradient_weight),
                  metrics=fused_metrics(), run_eagerly=config.run_eagerly)


def tfrecord_epochs(config: TrainConfig, global_batch: int) -> tuple[EpochData, int]:
    """Epoch data from the ingested TFRecords, and the steps per epoch."""
    from model import data

    if config.data_root is None:
        raise ValueError(f"config {config.name!r} has no data_root (set it or pass --data)")
    root = config.data_root
    splits = data.read_manifest(root)["splits"]
    if config.train_split not in splits:
        raise ValueError(f"{root}: no split {config.train_split!r} (has {sorted(splits)})")
    steps = config.steps_per_epoch or splits[config.train_split]["pairs"] // global_batch
    if steps < 1:
        raise ValueError(f"{root}: split {config.train_split!r} has fewer than {global_batch} "
                         "examples, one global batch")

    def epoch_data(epoch: int) -> tf.data.Dataset:
        # A distinct, reproducible shuffle and augmentation per epoch; repeated so that a
        # configured steps_per_epoch longer than one pass over the data still has batches.
        return data.train_dataset(root, global_batch, split=config.train_split,
                                  size=config.image_size, seed=config.seed * 100_003 + epoch,
                                  augment=data.Augment(composite=config.composite_probability),
                                  shuffle_buffer=config.shuffle_buffer).repeat()

    return epoch_data, steps


def _write_json(path: Path, value: object) -> None:
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True).encode())


def save_checkpoint(model: keras.Model, run_dir: Path, state: TrainState, keep: int) -> Path:
    """Weights (model + optimizer) and state under a temp name, renamed, then the pointer."""
    folder = run_dir / "checkpoints"
    final = folder / f"ckpt-{state.step:08d}"
    tmp = folder / f".tmp-ckpt-{state.step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while writing
    tmp.mkdir(parents=True)
    model.save_weights(tmp / "model.weights.h5")
    # The data position is derived from the step; written out for whoever reads the folder.
    position = {"epoch": state.step // state.steps_per_epoch,
                "batch": state.step % state.steps_per_epoch}
    _write_json(tmp / "state.json", {**dataclasses.asdict(state), "data_position": position})
    shutil.rmtree(final, ignore_errors=True)  # a resumed run re-reaching a step it had saved
    os.replace(tmp, final)
    _write_json(folder / "latest.json", {"checkpoint": final.name, "step": state.step})
    for old in sorted(folder.glob("ckpt-*"))[:-keep]:
        shutil.rmtree(old)
    return final


def restore_checkpoint(model: keras.Model, run_dir: Path) -> TrainState | None:
    """Load the latest checkpoint into ``model`` (compiled, inside the strategy scope)."""
    pointer = run_dir / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    folder = pointer.parent / json.loads(pointer.read_text())["checkpoint"]
    values = json.loads((folder / "state.json").read_text())
    values.pop("data_position")
    model.optimizer.build(model.trainable_variables)  # its variables must exist to be loaded
    model.load_weights(folder / "model.weights.h5")
    return TrainState(**{**values, "history": tuple(values["history"])})


class Checkpointer(keras.callbacks.Callback):
    """Checkpoints every ``every`` steps and at each epoch end; counts steps itself."""

    def __init__(self, run_dir: Path, state: TrainState, every: int, keep: int):
        super().__init__()
        self.run_dir, self.state, self.every, self.keep = run_dir, state, every, keep

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.state = dataclasses.replace(self.state, step=self.state.step + 1)
        epoch_end = self.state.step % self.state.steps_per_epoch == 0
        if self.state.step % self.every == 0 and not epoch_end:  # epoch end saves anyway
            save_checkpoint(self.model, self.run_dir, self.state, self.keep)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        entry = {"epoch": epoch + 1, "step": self.state.step,
                 **{key: float(value) for key, value in (logs or {}).items()}}
        self.state = dataclasses.replace(self.state, history=(*self.state.history, entry))
        save_checkpoint(self.model, self.run_dir, self.state, self.keep)


def _check_same_data(run_dir: Path, data_hash: str | None) -> None:
    """A run folder trains on one dataset: resuming it on other data would mix two runs."""
    path = run_dir / "data.json"
    if path.is_file():
        saved = json.loads(path.read_text())["manifest_sha256"]
        if saved != data_hash:
            raise ValueError(
                f"{run_dir} was trained on data manifest {str(saved)[:12]}, the data now has "
                f"{str(data_hash)[:12]}: a retrain on new data needs a new run folder")
    else:
        _write_json(path, {"manifest_sha256": data_hash})


def _check_validation_split(config: TrainConfig) -> None:
    from model import data

    splits = data.read_manifest(config.data_root)["splits"]
    if not splits.get(config.validation_split, {}).get("pairs"):
        raise ValueError(
            f"config {config.name!r} validates on {config.validation_split!r}, which "
            f"{config.data_root} does not hold (it has photos in "
            f"{sorted(name for name, split in splits.items() if split.get('pairs'))}); pass "
            "--set validation_split=NAME (arrange-p3m writes P3M-500-NP)")


def _field_defaults() -> dict:
    return {field.name: field.default for field in dataclasses.fields(TrainConfig)
            if field.default is not dataclasses.MISSING}


def _check_same_run(run_dir: Path, config: TrainConfig) -> None:
    saved_path = run_dir / "config.json"
    if saved_path.is_file():
        # A field added since the folder was written has its default there (the config
        # that ran had no such option), so older run folders still resume.
        saved = {**_field_defaults(), **json.loads(saved_path.read_text())}
        changed = sorted(key for key, value in config.to_dict().items()
                         if key not in RESUMABLE_CHANGES and saved.get(key) != value)
        if changed:
            raise ValueError(f"{run_dir} holds a run with other {changed}; use a new run folder")
    _write_json(saved_path, config.to_dict())


def train(config: TrainConfig, run_dir: str | os.PathLike, *, epoch_data: EpochData | None = None,
          steps_per_epoch: int | None = None, validation_data: tf.data.Dataset | None = None,
          callbacks: Sequence[keras.callbacks.Callback] = (), verbose: int = 0,
          data_hash: str | None = None) -> TrainResult:
    """Train ``config`` in ``run_dir``, resuming from its latest checkpoint if there is one.

    ``epoch_data`` (with ``steps_per_epoch``) replaces the TFRecord reader, e.g. in tests;
    ``epoch_data(e)`` must give the same batches whenever it is called with the same ``e``.
    ``data_hash`` names the training data (default: the manifest hash of ``data_root``); a
    run folder refuses to resume on other data.
    """
    if epoch_data is None and config.data_root is not None:
        from model import data

        data_hash = data_hash or data.manifest_sha256(config.data_root)
        if config.validation_split and config.validate_each_epoch:
            _check_validation_split(config)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_same_run(run_dir, config)
    _check_same_data(run_dir, data_hash)
    # Every random choice of a run (initial weights, the data order of seeded shuffles, which
    # also read TF's global seed) follows the config alone, never what ran before in the
    # process: a resumed run must see the batches an uninterrupted one saw.
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision_policy(config.precision))
    try:
        with distribution_scope(config.devices) as replicas:
            model = build_model(config)
            compile_model(model, config)
            restored = restore_checkpoint(model, run_dir)
            # A resume keeps the checkpoint's global batch (so its data position) whatever
            # the replica count is now; a new run has batch_per_replica on each replica.
            global_batch = global_batch_size(config.batch_per_replica, replicas,
                                             restored.global_batch if restored else None)
            if epoch_data is None:
                epoch_data, steps_per_epoch = tfrecord_epochs(config, global_batch)
                if validation_data is None and config.validation_split and \
                        config.validate_each_epoch:
                    from model import data

                    validation_data = data.eval_dataset(config.data_root, config.validation_split,
                                                        global_batch, size=config.image_size)
            steps_per_epoch = config.steps_per_epoch or steps_per_epoch
            if not steps_per_epoch:
                raise ValueError("steps_per_epoch is needed with epoch_data")
            state = restored or TrainState(0, steps_per_epoch, global_batch)
            if state.steps_per_epoch != steps_per_epoch:
                raise ValueError(f"{run_dir}: checkpoint has {state.steps_per_epoch} steps of "
                                 f"{global_batch} per epoch, this run {steps_per_epoch}: the "
                                 "data position would not match")
            checkpointer = Checkpointer(run_dir, state, config.checkpoint_every,
                                        config.keep_checkpoints)
            board = keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False)
            for epoch in range(state.step // steps_per_epoch, config.epochs):
                done = checkpointer.state.step - epoch * steps_per_epoch
                batches = check_batch_size(epoch_data(epoch), global_batch)
                batches = batches.skip(done).take(steps_per_epoch - done)
                model.fit(batches, initial_epoch=epoch, epochs=epoch + 1,
                          steps_per_epoch=steps_per_epoch - done, validation_data=validation_data,
                          callbacks=[checkpointer, board, *callbacks], verbose=verbose)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    model_path = save_keras(model, run_dir / "model.keras")
    _write_json(run_dir / "history.json", list(checkpointer.state.history))
    return TrainResult(model, model_path, run_dir, checkpointer.state,
                       restored.step if restored else None)

