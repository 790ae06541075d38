"""Training: checkpoints, TensorBoard logs, and a killed run resuming at the same step and batch.

One uninterrupted reference run (module fixture) on in-memory data; the kill test trains the
same config in a subprocess, SIGKILLs it mid-epoch, resumes in another, and must end with the
weights of an uninterrupted run in a third: a restart from step 0, or resuming at the wrong
batch, would not. All three are fresh processes so that every float sum is made the same
way: this process has run other tests first (the full suite once gave the reference here
weights up to 9e-3 from the same training in a fresh process, where alone both agree).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.configs import from_dict
from model.losses import repeat_label
from model.preprocess import normalize
from model.train import train

SIZE = 32
# Eager: tracing the train step costs more than these 6 steps (the flow test runs it traced).
CONFIG = from_dict({"base": "smoke", "name": "tiny", "image_size": SIZE, "epochs": 2,
                    "steps_per_epoch": 3, "checkpoint_every": 2, "batch_per_replica": 2,
                    "run_eagerly": True})
KILL_AFTER_STEP = 5  # mid second epoch; the last checkpoint before it is step 4
REPO = Path(__file__).resolve().parents[1]


def synthetic_pairs(count: int, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normalised photos of one ellipse (the "person") on a plain background, and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, alphas = [], []
    for _ in range(count):
        (cy, cx), (ry, rx) = rng.uniform(0.35, 0.65, 2), rng.uniform(0.15, 0.3, 2)
        alpha = ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1).astype(np.float32)
        colours = rng.uniform(0.1, 1.0, (2, 3))
        image = alpha[..., None] * colours[0] + (1 - alpha[..., None]) * colours[1]
        images.append(image + rng.normal(0, 0.03, image.shape))
        alphas.append(alpha[..., None])
    return (np.asarray(normalize(np.clip(np.stack(images), 0, 1))),
            np.stack(alphas).astype(np.float32))


def synthetic_epochs(batch: int = 2, count: int = 8):
    """``EpochData``: the same pairs in an epoch-seeded order, so epoch e is always the same."""
    images, alphas = synthetic_pairs(count)

    def epoch_data(epoch: int) -> tf.data.Dataset:
        dataset = tf.data.Dataset.from_tensor_slices((images, repeat_label(alphas)))
        return dataset.shuffle(count, seed=1000 + epoch).batch(batch, drop_remainder=True)

    return epoch_data


def weights_of(model: keras.Model) -> list[np.ndarray]:
    return [np.asarray(weight) for weight in model.weights]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    return train(CONFIG, run_dir, epoch_data=synthetic_epochs())


def test_checkpoints_every_n_steps_and_at_epoch_end(reference):
    folder = reference.run_dir / "checkpoints"
    # every=2 with 3 steps per epoch: steps 2, 4 (periodic) and 3, 6 (epoch ends); keep 3.
    assert sorted(path.name for path in folder.glob("ckpt-*")) == [
        "ckpt-00000003", "ckpt-00000004", "ckpt-00000006"]
    assert json.loads((folder / "latest.json").read_text())["step"] == 6
    state = json.loads((folder / "ckpt-00000004" / "state.json").read_text())
    assert (state["step"], state["steps_per_epoch"], state["global_batch"]) == (4, 3, 2)
    assert state["data_position"] == {"epoch": 1, "batch": 1}  # 0-based: batch 2 of epoch 2
    assert [entry["epoch"] for entry in state["history"]] == [1]  # epoch 2 was not over
    assert not list(folder.glob(".tmp-*"))


def test_history_and_model_file(reference):
    assert reference.state.step == 6 and reference.resumed_from is None
    history = json.loads((reference.run_dir / "history.json").read_text())
    assert [entry["step"] for entry in history] == [3, 6]
    assert all(np.isfinite(entry["loss"]) for entry in history)
    loaded = keras.saving.load_model(reference.model_path, safe_mode=True, compile=False)
    x = synthetic_pairs(1, 64, seed=3)[0]  # the trained model takes other sizes too
    np.testing.assert_allclose(loaded(x, training=False)["fused"],
                               reference.model(x, training=False)["fused"], atol=1e-6)


def test_tensorboard_has_the_epoch_losses(reference):
    steps = []
    for path in (reference.run_dir / "tensorboard" / "train").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            steps += [event.step for value in event.summary.value if value.tag == "epoch_loss"]
    assert sorted(steps) == [0, 1]


def test_resuming_with_another_config_is_refused(reference):
    other = from_dict({**CONFIG.to_dict(), "learning_rate": 0.5})
    with pytest.raises(ValueError, match="learning_rate"):
        train(other, reference.run_dir, epoch_data=synthetic_epochs())


def test_a_run_folder_written_before_a_config_field_existed_still_resumes(reference, tmp_path):
    """A field added later (composite_probability) is absent from older config.json files:
    absent means its default, not "another config"."""
    run_dir = tmp_path / "old"
    shutil.copytree(reference.run_dir, run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    del saved["composite_probability"]
    (run_dir / "config.json").write_text(json.dumps(saved))
    resumed = train(CONFIG, run_dir, epoch_data=synthetic_epochs())
    assert resumed.resumed_from == reference.state.step
    with pytest.raises(ValueError, match="composite_probability"):
        train(from_dict({**CONFIG.to_dict(), "composite_probability": 0.5}), run_dir,
              epoch_data=synthetic_epochs())


def test_output_sharpness_is_saved_with_the_model_and_never_trained(reference, tmp_path):
    """The preset's sharpness reaches model.keras, and the loss and its gradients are the same
    with or without it (training sees the plain sigmoid). Same weights, same batch, compared
    step by step: whole trainings are not compared here, because Adam turns 1e-7 float noise
    on near-zero gradients into lr-sized steps (the full suite once showed 9e-3 after 6 steps)."""
    from model.blocks import sharpness_of
    from model.export import load_keras
    from model.losses import deep_supervision_loss
    from model.train import with_sharpness

    sharp = train(from_dict({**CONFIG.to_dict(), "output_sharpness": 2.0}), tmp_path / "sharp",
                  epoch_data=synthetic_epochs())
    assert sharpness_of(load_keras(sharp.model_path)) == 2.0
    assert sharpness_of(load_keras(reference.model_path)) == 1.0

    images, labels = next(iter(synthetic_epochs()(0)))
    losses = deep_supervision_loss(CONFIG.l1_weight, CONFIG.gradient_weight)

    def loss_and_gradients(model):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            loss = sum(losses[name](labels[name], outputs[name]) for name in losses)
        return [float(loss)] + [np.asarray(g) for g in
                                tape.gradient(loss, model.trainable_weights)]

    plain = load_keras(reference.model_path)
    expected = loss_and_gradients(plain)
    sharpened = with_sharpness(load_keras(reference.model_path), 2.0)
    assert sharpness_of(sharpened) == 2.0
    assert not np.allclose(sharpened(images, training=False)["fused"],
                           plain(images, training=False)["fused"], atol=1e-3)
    for want, got in zip(expected, loss_and_gradients(sharpened), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_resuming_on_other_data_is_refused(reference):
    """A run folder belongs to one dataset: new labels are a new run, never a resume."""
    record = json.loads((reference.run_dir / "data.json").read_text())
    with pytest.raises(ValueError, match="a retrain on new data needs a new run folder"):
        train(CONFIG, reference.run_dir, epoch_data=synthetic_epochs(),
              data_hash="0" * 64)
    assert json.loads((reference.run_dir / "data.json").read_text()) == record
    assert record == {"manifest_sha256": None}  # synthetic epochs name no manifest


RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import keras
    import numpy as np
    from model.train import train
    from tests.test_train import CONFIG, KILL_AFTER_STEP, synthetic_epochs, weights_of

    class Pause(keras.callbacks.Callback):
        # Holds the run after step KILL_AFTER_STEP so the test kills it mid-epoch, not by luck.
        steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.steps == KILL_AFTER_STEP:
                Path(sys.argv[2]).write_text(str(self.steps))
                time.sleep(600)

    run_dir, out = sys.argv[1], sys.argv[2]
    if sys.argv[3] == "pause":
        train(CONFIG, run_dir, epoch_data=synthetic_epochs(), callbacks=[Pause()])
    else:  # train to the end (or resume there), then write the steps and the weights
        result = train(CONFIG, run_dir, epoch_data=synthetic_epochs())
        np.savez(out, resumed_from=-1 if result.resumed_from is None else result.resumed_from,
                 step=result.state.step, epochs=[e["epoch"] for e in result.state.history],
                 *weights_of(result.model))
""")


def run_to_end(run_dir: Path, out: Path, env: dict) -> dict:
    subprocess.run([sys.executable, "-c", RUN, str(run_dir), str(out), "end"], env=env,
                   cwd=REPO, check=True, capture_output=True, timeout=600)
    with np.load(out) as saved:
        return {key: saved[key] for key in saved.files}


def test_killed_run_resumes_at_the_same_step_and_batch(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = tmp_path / "stderr.txt"  # a file, not a pipe: a full pipe would block the child
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", RUN, str(run_dir), str(marker),
                                    "pause"], env=env, cwd=REPO, stderr=stderr)
    try:
        deadline = time.monotonic() + 300  # generous: only bounds a hang, never measures speed
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), log.read_text()[-3000:]
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 4
    assert not (run_dir / "model.keras").exists()

    resumed = run_to_end(run_dir, tmp_path / "resumed.npz", env)
    reference = run_to_end(tmp_path / "reference", tmp_path / "reference.npz", env)
    assert (int(resumed["resumed_from"]), int(resumed["step"])) == (4, 6)
    assert list(resumed["epochs"]) == [1, 2]
    assert int(reference["resumed_from"]) == -1 and int(reference["step"]) == 6
    weights = sorted(key for key in reference if key.startswith("arr_"))
    assert weights and weights == sorted(key for key in resumed if key.startswith("arr_"))
    for key in weights:
        np.testing.assert_allclose(resumed[key], reference[key], rtol=1e-5, atol=1e-6)
