"""``matte p``'s run of a plan on this machine: decode ahead, infer, encode behind, side by side.

A folder run was one thread doing read, decode, inference, render and PNG encode in turn, and
on a 2-core CPU the encoder alone took longer than the model. Here readers decode the next
photos and writers render and write the previous ones while the model runs: Pillow's decoders
and resizes, zlib (our PNG encoder, ``model.imaging.encode_png``) and onnxruntime all release
the GIL, so the stages share the cores. The model is loaded on its own thread while the
first photos decode.

Memory is bounded by pixels, not photo counts: a batch holds photos up to ``BATCH_PIXELS``
(at least one, at most ``batch_size``), decoding stops while decoded photos waiting for the
model pass ``READ_AHEAD_PIXELS``, and the model waits while photos waiting to be written pass
``WRITE_BEHIND_PIXELS``. The rules for what is done, written and reported are the planner's
(``pipelines.planner``), as for ``matte bucket``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from model.imaging import ImageError, decode_image
from model.matting import Matter
from model.outputs import render
from pipelines import planner
from pipelines.planner import DeadLetter, Job, RunSettings
from storage import IO_ERRORS, Store

READERS = 2
WRITERS = 2
BATCH_PIXELS = 8_000_000
READ_AHEAD_PIXELS = 8_000_000
WRITE_BEHIND_PIXELS = 16_000_000


@dataclass(frozen=True)
class Decoded:
    job: Job
    image: np.ndarray | None
    failure: DeadLetter | None = None

    @property
    def pixels(self) -> int:
        return 0 if self.image is None else self.image.shape[0] * self.image.shape[1]


def _read(source: Store, job: Job, max_pixels: int) -> Decoded:
    key = job.source.key
    try:
        # Pinned to the version planned for: a photo replaced since is left for the next run.
        return Decoded(job, decode_image(source.read(key, expect=job.source), key, max_pixels))
    except ImageError as error:
        return Decoded(job, None, DeadLetter(key, "decode", error.reason))
    except IO_ERRORS as error:
        return Decoded(job, None, planner.read_failure(key, error))


def _write(out: Store, photo: Decoded, alpha: np.ndarray,
           settings: RunSettings) -> DeadLetter | None:
    try:
        planner.commit(out, photo.job, render(photo.image, alpha, settings.output), settings)
    except IO_ERRORS as error:  # disk full, permissions: this photo, not the run
        return DeadLetter(photo.job.source.key, "write",
                          f"cannot write {photo.job.output}: {error}")
    return None


def run_plan(jobs: Sequence[Job], source: Store, out: Store, load: Callable[[], Matter],
             settings: RunSettings, *, max_pixels: int, batch_size: int,
             progress: Callable[[], object]) -> tuple[int, list[DeadLetter]]:
    """Matte every job: (photos written, dead letters). ``progress()`` is called once per job."""
    with ThreadPoolExecutor(1, thread_name_prefix="load") as loading, \
            ThreadPoolExecutor(READERS, thread_name_prefix="read") as reading, \
            ThreadPoolExecutor(WRITERS, thread_name_prefix="write") as writing:
        matter = loading.submit(load)  # while the first photos decode
        run = _Run(jobs, source, out, settings, max_pixels, batch_size, progress,
                   reading, writing)
        try:
            while batch := run.next_batch():
                run.write(batch, matter.result().predict_alpha([p.image for p in batch]))
            run.finish_writes()
        except BaseException:
            # Ctrl-C or a model error: queued photos are dropped, not finished (each write is
            # atomic and its state record comes after it, so the next run redoes them).
            for pool in (reading, writing):
                pool.shutdown(wait=True, cancel_futures=True)
            raise
    return run.done, run.failures


class _Run:
    """The queues of one run: photos decoding ahead, and photos being written behind."""

    def __init__(self, jobs, source, out, settings, max_pixels, batch_size, progress,
                 reading: ThreadPoolExecutor, writing: ThreadPoolExecutor):
        self.todo, self.source, self.out, self.settings = deque(jobs), source, out, settings
        self.max_pixels, self.batch_size, self.progress = max_pixels, batch_size, progress
        self.reading, self.writing = reading, writing
        self.reads: deque[Future[Decoded]] = deque()
        self.writes: deque[tuple[Future[DeadLetter | None], int]] = deque()
        self.done, self.failures = 0, []

    def read_ahead(self) -> None:
        waiting = sum(read.result().pixels for read in self.reads if read.done())
        while (self.todo and len(self.reads) < 2 * self.batch_size
               and waiting < READ_AHEAD_PIXELS):
            self.reads.append(self.reading.submit(_read, self.source, self.todo.popleft(),
                                                  self.max_pixels))

    def next_batch(self) -> list[Decoded]:
        """The next decoded photos for the model ([] when none are left). Two are waited for
        (the model runs a batch one photo per core); more join only if decoded already, so the
        model never idles to fill a batch."""
        batch: list[Decoded] = []
        self.read_ahead()
        while self.reads and len(batch) < self.batch_size and (
                len(batch) < 2 or self.reads[0].done()):
            photo = self.reads.popleft().result()
            self.read_ahead()
            if photo.failure is not None:
                self.failures.append(photo.failure)
                self.progress()
                continue
            batch.append(photo)
            if sum(member.pixels for member in batch) >= BATCH_PIXELS:
                break
        return batch

    def write(self, batch: list[Decoded], alphas: list[np.ndarray]) -> None:
        for photo, alpha in zip(batch, alphas, strict=True):
            while self.writes and sum(pixels for _, pixels in self.writes) >= WRITE_BEHIND_PIXELS:
                self._finish_one()
            self.writes.append((self.writing.submit(_write, self.out, photo, alpha,
                                                    self.settings), photo.pixels))
        while self.writes and self.writes[0][0].done():
            self._finish_one()

    def finish_writes(self) -> None:
        while self.writes:
            self._finish_one()

    def _finish_one(self) -> None:
        future, _ = self.writes.popleft()
        failure = future.result()
        if failure is None:
            self.done += 1
        else:
            self.failures.append(failure)
        self.progress()
