"""The U²-Net topology: parameter counts, outputs, names, serialisation, backends, training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec

import keras
import numpy as np
import pytest

from model.losses import deep_supervision_loss, repeat_label
from model.u2net import OUTPUT_NAMES, build_u2net, conv_names, official_parameter_count


@pytest.mark.parametrize(
    ("variant", "expected"),
    # As torch counts the official U2NET / U2NETP: sum(p.numel() for p in net.parameters()).
    [("full", 44_009_869), ("lite", 1_131_181)],
)
def test_parameter_count_matches_official(variant, expected):
    model = build_u2net(variant, (320, 320, 3))
    assert official_parameter_count(model) == expected


def test_outputs_are_probability_maps_at_input_size_for_odd_sizes():
    model = build_u2net("lite")
    x = np.random.default_rng(0).normal(size=(2, 75, 97, 3)).astype("float32")
    outputs = model(x)
    assert set(outputs) == set(OUTPUT_NAMES)
    for name in OUTPUT_NAMES:
        value = np.asarray(outputs[name])
        assert value.shape == (2, 75, 97, 1), name
        assert value.min() >= 0.0 and value.max() <= 1.0


def test_layers_are_named_after_the_official_modules():
    model = build_u2net("lite", (64, 64, 3))
    names = {layer.name for layer in model.layers}
    assert set(conv_names("lite")) <= names
    assert "stage1.rebnconvin.conv" in names and "stage5d.rebnconv4.conv" in names
    assert len(conv_names("lite")) == len(conv_names("full")) == 119


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown U²-Net variant"):
        build_u2net("medium")


def test_keras_file_round_trip_gives_identical_outputs(tmp_path):
    model = build_u2net("lite", (None, None, 3))
    x = np.random.default_rng(1).normal(size=(1, 64, 80, 3)).astype("float32")
    before = model.predict_on_batch(x)
    path = tmp_path / "lite.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    after = loaded.predict_on_batch(x)
    for name in OUTPUT_NAMES:
        np.testing.assert_array_equal(before[name], after[name])


def test_deep_supervision_loss_trains_the_model():
    keras.utils.set_random_seed(0)
    model = build_u2net("lite", (32, 32, 3))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    y = np.zeros((2, 32, 32, 1), "float32")
    y[:, 8:24, 8:24] = 1.0
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=deep_supervision_loss(),
                  run_eagerly=True)  # tracing the train step costs more than 3 tiny steps
    history = model.fit(x, repeat_label(y), epochs=3, batch_size=2, verbose=0).history["loss"]
    assert np.isfinite(history).all()
    assert history[-1] < history[0]


def test_deep_supervision_loss_is_the_sum_of_seven_bce_terms():
    # Every output at p = 0.5 gives BCE ln 2 whatever the label: the total is 7 ln 2.
    half = np.full((1, 4, 4, 1), 0.5, "float32")
    label = np.ones((1, 4, 4, 1), "float32")
    losses = deep_supervision_loss()
    total = sum(float(losses[name](label, half)) for name in OUTPUT_NAMES)
    assert total == pytest.approx(7 * np.log(2), rel=1e-5)


@pytest.mark.skipif(find_spec("jax") is None, reason="jax is not installed")
def test_same_model_runs_on_the_jax_backend(tmp_path):
    model = build_u2net("lite", (48, 64, 3))
    x = np.random.default_rng(2).normal(size=(1, 48, 64, 3)).astype("float32")
    expected = model.predict_on_batch(x)["fused"]
    model.save_weights(tmp_path / "lite.weights.h5")
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import json, keras, numpy as np
        from model.u2net import build_u2net
        assert keras.backend.backend() == "jax"
        model = build_u2net("lite", (48, 64, 3))
        model.load_weights({str(tmp_path / "lite.weights.h5")!r})
        out = np.asarray(model(np.load({str(tmp_path / "x.npy")!r}))["fused"])
        np.save({str(tmp_path / "jax.npy")!r}, out)
        print(json.dumps({{"backend": keras.backend.backend()}}))
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"backend": "jax"}
    np.testing.assert_allclose(np.load(tmp_path / "jax.npy"), expected, atol=1e-4)


def test_sharpness_scales_the_fused_logit_in_inference_only(tmp_path):
    """sigmoid(s · logit) when predicting, sigmoid(logit) in training (the loss never sees s),
    the other outputs untouched; saved and loaded with the model; set, never compounded."""
    from model.blocks import sharpness_of
    from model.export import load_keras
    from model.train import with_sharpness

    plain = build_u2net("lite", (32, 32, 3))
    sharp = build_u2net("lite", (32, 32, 3), sharpness=2.0)
    sharp.set_weights(plain.get_weights())
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    logit = np.asarray(keras.Model(plain.input, plain.get_layer("outconv").output)(x))
    predicted, unsharpened = sharp(x, training=False), plain(x, training=False)
    np.testing.assert_allclose(predicted["fused"], 1 / (1 + np.exp(-2.0 * logit)), atol=1e-6)
    np.testing.assert_allclose(predicted["side1"], unsharpened["side1"], atol=1e-6)
    assert not np.allclose(predicted["fused"], unsharpened["fused"], atol=1e-3)
    # (training mode last: it moves the BN statistics of both models alike)
    np.testing.assert_allclose(sharp(x, training=True)["fused"],
                               plain(x, training=True)["fused"], atol=1e-6)

    sharp.save(tmp_path / "sharp.keras")
    loaded = load_keras(tmp_path / "sharp.keras")
    assert sharpness_of(loaded) == 2.0
    np.testing.assert_allclose(loaded(x, training=False)["fused"],
                               sharp(x, training=False)["fused"], atol=1e-6)
    again = with_sharpness(with_sharpness(loaded, 1.5), 1.5)
    assert sharpness_of(again) == 1.5
    with pytest.raises(ValueError, match="sharpness must be positive"):
        build_u2net("lite", (32, 32, 3), sharpness=0.0)


def test_a_model_saved_before_sharpness_existed_is_rebuilt_around_its_weights():
    """Older .keras files (champions in a registry) end in a plain sigmoid Activation."""
    from model.blocks import sharpness_of
    from model.train import with_sharpness

    plain = build_u2net("lite", (32, 32, 3))
    inputs = plain.input
    logit = plain.get_layer("outconv").output
    old = keras.Model(inputs, {**{k: v for k, v in plain.output.items() if k != "fused"},
                               "fused": keras.layers.Activation("sigmoid", name="fused")(logit)})
    assert sharpness_of(old) == 1.0
    plain.layers[5].trainable = False
    rebuilt = with_sharpness(old, 3.0)
    assert sharpness_of(rebuilt) == 3.0 and rebuilt is not old
    x = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(rebuilt(x, training=True)["fused"],
                               old(x, training=True)["fused"], atol=1e-6)
    assert [layer.trainable for layer in rebuilt.layers] == \
        [layer.trainable for layer in old.layers]
