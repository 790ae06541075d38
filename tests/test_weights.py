"""Official weights: import parity with the official outputs and onnxruntime, cache, download."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import keras
import numpy as np
import pytest

from model.imaging import decode_mask, read_image
from model.losses import deep_supervision_loss, repeat_label
from model.matting import Matter
from model.preprocess import alpha_to_size, min_max, preprocess
from model.weights import (
    OFFICIAL_WEIGHTS,
    WeightsError,
    import_onnx,
    md5sum,
    read_onnx_convs,
    resolve_weights,
    variant_of,
)


def _official_pairs(testdata: Path) -> list[tuple[Path, Path]]:
    results = {path.stem: path for path in (testdata / "u2netp_results").iterdir()}
    images = sorted((testdata / "test_images").iterdir())
    return [(image, results[image.stem]) for image in images]


def test_import_reproduces_official_u2netp_results(lite_matter, official_testdata):
    """Official pre/post-processing (320², img/max, ImageNet, min-max, bilinear back)."""
    pairs = _official_pairs(official_testdata)
    assert len(pairs) == 18
    errors = []
    for image_path, result_path in pairs:
        image = read_image(image_path)
        probability = lite_matter.predict_probabilities([image])
        ours = np.asarray(alpha_to_size(min_max(probability[0]), image.shape[:2]))[:, :, 0]
        official = decode_mask(result_path.read_bytes()).astype(np.float32) / 255
        assert ours.shape == official.shape
        errors.append(float(np.abs(ours - official).mean()))
    # onnxruntime on the same file gets about 0.006 with PIL-bilinear preprocessing.
    assert np.mean(errors) < 0.01, errors
    assert max(errors) < 0.05, errors


def test_raw_output_matches_onnxruntime(lite_matter, u2netp_onnx, official_testdata):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(u2netp_onnx), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    differences = []
    for image_path, _ in _official_pairs(official_testdata)[:6]:
        batch = np.asarray(preprocess(read_image(image_path)[None]))
        ours = lite_matter.model.predict_on_batch(batch)
        theirs = session.run(None, {input_name: batch.transpose(0, 3, 1, 2)})
        for index, name in enumerate(("fused", "side1", "side2", "side3", "side4", "side5",
                                      "side6")):
            differences.append(np.abs(ours[name] - theirs[index].transpose(0, 2, 3, 1)).ravel())
    difference = np.concatenate(differences)
    # Both are float32 through 119 convs: onnxruntime itself is up to ~8e-5 away from a float64
    # evaluation of the same graph, so a handful of the 4.3 M values sit just above 1e-4.
    assert np.mean(difference) < 1e-6
    assert np.quantile(difference, 0.9999) < 1e-4
    assert difference.max() < 3e-4


def test_variant_is_detected_and_foreign_graphs_refused(u2netp_onnx):
    convs = read_onnx_convs(u2netp_onnx)
    assert variant_of(convs) == "lite"
    assert sum(w.size + b.size for w, b in convs) == 1_125_485
    with pytest.raises(WeightsError, match="not an official U²-Net export"):
        variant_of(convs[:-1])


def test_imported_model_still_trains_with_batchnorm_frozen(u2netp_onnx):
    model = import_onnx(u2netp_onnx, input_size=32)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # inference-mode BN stays the identity the import set
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    y = np.zeros((2, 32, 32, 1), "float32")
    y[:, 8:24, 8:24] = 1.0
    before = model.predict_on_batch(x)["fused"]
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=deep_supervision_loss(),
                  run_eagerly=True)  # tracing the train step costs more than 3 tiny steps
    history = model.fit(x, repeat_label(y), epochs=3, verbose=0).history["loss"]
    assert history[-1] < history[0]
    assert not np.allclose(model.predict_on_batch(x)["fused"], before)


@pytest.fixture()
def weights_server(tmp_path, u2netp_onnx):
    """A real HTTP server on 127.0.0.1 serving a release folder, as users download from."""
    release = tmp_path / "release"
    release.mkdir()
    shutil.copy(u2netp_onnx, release / "u2netp.onnx")
    (release / "u2net.onnx").write_bytes(b"not the weights")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(release))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_into_cache_with_checksum(weights_server, tmp_path, monkeypatch):
    home = tmp_path / "cache"
    monkeypatch.setenv("U2NET_HOME", str(home))
    monkeypatch.setenv("U2NET_BASE_URL", weights_server)
    path = resolve_weights("lite")
    assert path == home / "u2netp.onnx"
    assert md5sum(path) == OFFICIAL_WEIGHTS["lite"].md5
    assert [p.name for p in home.iterdir()] == ["u2netp.onnx"]  # no temp file left
    # Cached now: a second call must not need the server.
    monkeypatch.setenv("U2NET_BASE_URL", "http://127.0.0.1:9/")
    assert resolve_weights("lite") == path


def test_corrupt_download_is_refused_and_not_cached(weights_server, tmp_path, monkeypatch):
    home = tmp_path / "cache"
    monkeypatch.setenv("U2NET_HOME", str(home))
    monkeypatch.setenv("U2NET_BASE_URL", weights_server)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        resolve_weights("full")
    assert list(home.iterdir()) == []


def test_offline_and_absent_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("U2NET_BASE_URL", "http://127.0.0.1:9/")  # discard port: refused
    with pytest.raises(WeightsError, match="could not download .*--weights PATH"):
        Matter.load("lite")


def test_explicit_weights_path_must_exist(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        resolve_weights("lite", tmp_path / "missing.onnx")
