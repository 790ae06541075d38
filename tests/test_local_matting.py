"""``matte p``'s overlapped run: batches bounded by pixels and count, every job accounted for,
the same bytes as rendering each photo on its own."""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image

from model.imaging import decode_image
from model.outputs import render
from pipelines import local_matting, planner
from pipelines.planner import RunSettings
from storage import open_store


class RecordingMatter:
    """Stands in for Matter: a fixed alpha per photo, and the batches it was given."""

    def __init__(self):
        self.batches: list[list[tuple[int, int]]] = []
        self.lock = threading.Lock()

    def predict_alpha(self, images):
        with self.lock:
            self.batches.append([image.shape[:2] for image in images])
        return [np.linspace(0, 1, image.shape[0] * image.shape[1], dtype=np.float32)
                .reshape(image.shape[:2]) for image in images]


def test_batches_are_bounded_by_pixels_and_count_and_outputs_are_exact(tmp_path, monkeypatch):
    photos = tmp_path / "in"
    photos.mkdir()
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (90, 60), (20, 20), (120, 80), (40, 30), (40, 30), (10, 70), (60, 60),
             (40, 30), (40, 30), (40, 30), (40, 30)]
    for index, (height, width) in enumerate(sizes):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"p{index:02d}.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    # 5000 pixels a batch: a 120x80 photo fills one alone, small ones share.
    monkeypatch.setattr(local_matting, "BATCH_PIXELS", 5000)
    settings = RunSettings(model_version="test")
    source, out = open_store(str(photos)), open_store(str(tmp_path / "out"))
    plan = planner.plan(source, out, None, settings)
    matter, ticks = RecordingMatter(), []

    done, failures = local_matting.run_plan(
        plan.todo, source, out, lambda: matter, settings, max_pixels=10**8, batch_size=3,
        progress=lambda: ticks.append(1))

    assert done == len(sizes) and len(ticks) == len(sizes) + 1
    assert [(letter.key, letter.stage) for letter in failures] == [("broken.jpg", "decode")]
    seen = sorted(shape for batch in matter.batches for shape in batch)
    assert seen == sorted(sizes)
    for batch in matter.batches:
        assert 1 <= len(batch) <= 3
        # A batch closes once it reaches the budget: all but its last photo fit below it.
        assert sum(h * w for h, w in batch[:-1]) < 5000
    for index, _ in enumerate(sizes):
        image = decode_image((photos / f"p{index:02d}.png").read_bytes())
        alpha = matter.predict_alpha([image])[0]
        assert (tmp_path / "out" / f"p{index:02d}.png").read_bytes() == render(
            image, alpha, settings.output)
