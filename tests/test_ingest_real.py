"""Real photos: human-seg arranged into the P3M layout, ingested, and read back pixel for pixel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from model import data
from model.imaging import decode_image, decode_mask
from pipelines.arrange import FOLDERS, arrange_p3m, natural_key, split_of
from pipelines.ingest_p3m import IngestOptions, launch
from pipelines.p3m_layout import fit_mask, is_rescaled
from tests.conftest import shared_path

LIMIT = 12


@pytest.fixture(scope="module")
def human_seg() -> Path:
    return shared_path("human-seg-vikramshenoy")


def test_arrange_is_deterministic_and_splits_by_stem(human_seg, tmp_path):
    first = arrange_p3m(human_seg, tmp_path / "a", limit=LIMIT, validation=0.25)
    second = arrange_p3m(human_seg, tmp_path / "b", limit=LIMIT, validation=0.25)
    assert first == second and sum(first.values()) == 2 * LIMIT and first["unreadable"] == 0

    def listing(root: Path) -> list[str]:
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    assert listing(tmp_path / "a") == listing(tmp_path / "b")
    stems = sorted((p.stem for p in (human_seg / "Training_Images").iterdir()), key=natural_key)
    for stem in stems[:LIMIT]:
        folder = FOLDERS[split_of(stem, 0.25, 0.1)][0]  # --test defaults to 0.1
        assert (tmp_path / "a" / folder / f"{stem}.jpg").read_bytes() == (
            human_seg / "Training_Images" / f"{stem}.jpg").read_bytes()
    with pytest.raises(ValueError, match="would leak it between splits"):
        arrange_p3m(human_seg, tmp_path / "a", limit=LIMIT, validation=0.75)
    # New labels arrive: arranging more stems into the same layout adds them.
    more = arrange_p3m(human_seg, tmp_path / "a", limit=LIMIT + 4, validation=0.25)
    assert sum(more.values()) == sum(first.values()) + 8
    assert len(listing(tmp_path / "a")) == sum(more.values())


@pytest.mark.slow
def test_real_photos_round_trip_through_ingestion_and_the_reader(human_seg, tmp_path):
    """All 194 pairs (~10 s): two thirds have masks smaller than the photo, the rest not."""
    arrange_p3m(human_seg, tmp_path / "P3M-10k", validation=0.25)
    manifest = launch(IngestOptions(str(tmp_path / "P3M-10k"), str(tmp_path / "shards")),
                      PipelineOptions([]))
    assert manifest["rejected"] == 0, manifest["rejects"]
    assert manifest["pairs"] == len(list((human_seg / "Training_Images").iterdir()))
    resized = 0
    for split in ("train", "P3M-500-NP", "test"):
        assert manifest["splits"][split]["pairs"] > 0  # every split gets real photos
        for record in data.records(str(tmp_path / "shards"), split):
            stem = record["key"].numpy().decode()
            image = decode_image((human_seg / "Training_Images" / f"{stem}.jpg").read_bytes())
            mask = decode_mask((human_seg / "Ground_Truth" / f"{stem}.png").read_bytes())
            if mask.shape != image.shape[:2]:
                assert is_rescaled(mask.shape, image.shape[:2])
                mask, resized = fit_mask(mask, image.shape[:2]), resized + 1
            np.testing.assert_array_equal(record["image"].numpy(), image, err_msg=stem)
            np.testing.assert_array_equal(record["alpha"].numpy()[..., 0], mask, err_msg=stem)
    assert resized == sum(info["masks_resized"] for info in manifest["splits"].values())
    assert 0 < resized < manifest["pairs"]  # both sides of the resize rule
    batch, labels = next(iter(data.train_dataset(str(tmp_path / "shards"), 2, size=64, seed=0)))
    assert batch.shape == (2, 64, 64, 3) and labels["fused"].shape == (2, 64, 64, 1)
