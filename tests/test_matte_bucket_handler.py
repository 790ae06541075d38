"""The RunInference ModelHandler: same alphas as Matter, keyed batches, GPU and version checks."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that
from PIL import Image

from model.weights import model_version
from pipelines.gpu import NoGpuError, visible_gpus
from pipelines.model_handler import Inference, MattingModelHandler, failed_keys
from pipelines.runners import pinned_runner


def photos(official_testdata) -> list[np.ndarray]:
    """Two real photos of different sizes and aspect ratios, one batch."""
    result = []
    for name, side in (("girl.png", 96), ("im_21.png", 64)):
        with Image.open(official_testdata / "test_images" / name) as image:
            photo = image.convert("RGB")
        photo.thumbnail((side, side))
        result.append(np.asarray(photo))
    return result


def test_batches_of_mixed_sizes_give_matters_alphas(official_testdata, u2netp_onnx,
                                                    lite_matter):
    images = photos(official_testdata)
    handler = MattingModelHandler("lite", str(u2netp_onnx), max_batch_size=2)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 2}
    assert handler.get_num_bytes(images) == sum(image.nbytes for image in images)
    results = handler.run_inference(images, lite_matter)
    # The oracle is one photo per call: batching photos of other sizes must not change one.
    singles = [lite_matter.predict_alpha([image])[0] for image in images]
    for image, result, expected in zip(images, results, singles, strict=True):
        assert result.example is image and result.model_id == lite_matter.version
        assert isinstance(result.inference, Inference) and result.inference.batch_size == 2
        np.testing.assert_allclose(result.inference.alpha, expected, atol=1e-5)
        assert result.inference.alpha.shape == image.shape[:2]


def test_keyed_run_inference_in_a_pipeline(official_testdata, u2netp_onnx, lite_matter):
    images = photos(official_testdata)
    # One photo per call is the oracle: the runner may batch the two photos or not.
    expected = {key: lite_matter.predict_alpha([image])[0]
                for key, image in zip("ab", images, strict=True)}
    handler = KeyedModelHandler(MattingModelHandler(
        "lite", str(u2netp_onnx), expected_version=lite_matter.version, max_batch_size=2))

    def check(results):
        assert sorted(key for key, _ in results) == ["a", "b"]
        for key, result in results:
            np.testing.assert_allclose(result.inference.alpha, expected[key], atol=1e-5)

    with beam.Pipeline(runner=pinned_runner(PipelineOptions())) as p:
        keyed = p | beam.Create(list(zip("ab", images, strict=True)))
        assert_that(keyed | RunInference(handler), check)


def test_load_refuses_a_different_model_version(u2netp_onnx):
    handler = MattingModelHandler("lite", str(u2netp_onnx), expected_version="u2netp-md5:0")
    with pytest.raises(RuntimeError, match="planned for u2netp-md5:0"):
        handler.load_model()
    assert model_version("lite", str(u2netp_onnx)).startswith("u2netp-md5:")


@pytest.mark.skipif(bool(visible_gpus()), reason="this machine has a GPU")
def test_require_gpu_fails_fast_without_one(u2netp_onnx):
    handler = MattingModelHandler("lite", str(u2netp_onnx), require_gpu=True)
    with pytest.raises(NoGpuError, match="install-nvidia-driver"):
        handler.load_model()


def test_failed_batches_become_one_dead_letter_per_key():
    failure = ([("k1", None), ("k2", None)], (RuntimeError, "RuntimeError('OOM')", []))
    assert list(failed_keys(failure)) == [("k1", "RuntimeError('OOM')"),
                                          ("k2", "RuntimeError('OOM')")]
    with pytest.raises(ValueError):
        MattingModelHandler().validate_inference_args({"x": 1})


def test_a_trained_keras_model_on_gcs_is_loaded_like_the_champion_will_be(
        gcs_emulator, lite_matter, official_testdata, tmp_path, monkeypatch):
    import tempfile

    from model.export import save_keras

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where localize() caches it

    save_keras(lite_matter.model, tmp_path / "champion.keras")
    gcs_emulator.create_bucket("models").blob("lite/champion.keras").upload_from_filename(
        tmp_path / "champion.keras")
    uri = "gs://models/lite/champion.keras"
    version = model_version("lite", uri)
    assert version.startswith("champion-md5:")
    handler = MattingModelHandler("lite", uri, expected_version=version)
    matter = handler.load_model()
    assert list(tmp_path.glob("matte-bucket/models/*/lite/champion.keras"))
    images = photos(official_testdata)
    results = handler.run_inference(images, matter)
    for image, result in zip(images, results, strict=True):
        expected = lite_matter.predict_alpha([image])[0]
        assert result.model_id == version
        np.testing.assert_allclose(result.inference.alpha, expected, atol=1e-5)
