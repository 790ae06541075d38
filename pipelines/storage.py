"""Where a bucket run reads and writes: local folders and ``gs://`` behind one small interface.

Keys are '/'-separated paths relative to a store's root (an IN_URI or OUT_URI). A key names an
output only after :func:`check_key` accepted it, and :class:`LocalStore` checks the resolved path
again, so no output lands outside OUT_URI whatever the object names are.

``gs://`` goes through google-cloud-storage directly rather than Beam's GCS filesystem: Beam 2.77
spends ~25 s in credential retries before it falls back to the anonymous client an emulator needs,
and its writes cannot carry ``if_generation_match``, which makes concurrent writers safe here.
"""

from __future__ import annotations

import base64
import mimetypes
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.api_core.exceptions import GoogleAPIError

from model.outputs import OutputOptions, output_key, write_atomic

RESERVED_PREFIXES = ("_runs", "_state")  # run records live here, beside the outputs
# The usual file-system limit on one path component (255) less what is added to an output's
# name on disk: write_atomic's temp affixes ("." + ".xxxxxxxx.tmp") and the state's ".json".
MAX_SEGMENT_BYTES = 255 - len("..xxxxxxxx.tmp") - len(".json")
# model.outputs.write_atomic's temp names: ".<name>.<8 random chars>.tmp" beside the target.
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


class UnsafeKeyError(ValueError):
    """A key that cannot name an output inside OUT_URI (absolute, '..', control characters...)."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key!r}: {reason}")
        self.key = key
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.key, self.reason)


class WriteConflict(RuntimeError):
    """Another writer replaced the object after the run planned to write it."""


# What reading or writing one object may raise: the key fails, the run goes on.
IO_ERRORS = (OSError, GoogleAPIError, WriteConflict, UnsafeKeyError)


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object; ``version`` changes whenever its content may have changed."""

    key: str
    size: int
    version: str  # "mtime_ns:<n>" for files, "generation:<n>" for GCS objects
    generation: int = 0  # GCS generation, the precondition for replacing it; 0 for files


def check_key(key: str, allow_reserved: bool = False) -> str:
    """``key`` if it can name a file below OUT_URI, else :class:`UnsafeKeyError`.

    Keys from a listing may not start with a reserved folder; the run's own records may.
    """
    if not key:
        raise UnsafeKeyError(key, "empty key")
    if any(ord(char) < 32 or ord(char) == 127 for char in key):
        raise UnsafeKeyError(key, "control characters in the name")
    if key.startswith("/"):
        raise UnsafeKeyError(key, "absolute key")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise UnsafeKeyError(key, "empty, '.' or '..' path segment")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_SEGMENT_BYTES:
            raise UnsafeKeyError(key, f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
    if not allow_reserved and key.split("/", 1)[0] in RESERVED_PREFIXES:
        raise UnsafeKeyError(key, f"the top folders {RESERVED_PREFIXES} are reserved for runs")
    return key


def output_for(key: str, options: OutputOptions) -> str:
    """The output key of an input key (same path, new extension), or UnsafeKeyError."""
    return check_key(output_key(check_key(key), options))


def is_hidden(key: str) -> bool:
    """Hidden files are not inputs (the CLI skips them too); temp files are hidden."""
    return any(part.startswith(".") for part in key.split("/"))


def is_gcs(uri: str) -> bool:
    return uri.startswith("gs://")


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b/`` -> ("bucket", "a/b")."""
    bucket, _, prefix = uri[len("gs://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, prefix.strip("/")


def relative_location(uri: str, root_uri: str) -> str | None:
    """The key prefix of ``uri`` inside ``root_uri`` ('' if the same place), else None."""
    if is_gcs(uri) != is_gcs(root_uri):
        return None
    if is_gcs(uri):
        (bucket, prefix), (root_bucket, root_prefix) = split_gcs(uri), split_gcs(root_uri)
        if bucket != root_bucket:
            return None
        path, root = Path("/", prefix), Path("/", root_prefix)
    else:
        path, root = Path(uri).resolve(), Path(root_uri).resolve()
    if not path.is_relative_to(root):
        return None
    relative = path.relative_to(root).as_posix()
    return "" if relative == "." else relative


class LocalStore:
    """A folder; writes are temp file + rename (model.outputs.write_atomic), last writer wins."""

    def __init__(self, uri: str):
        self.uri = uri
        self.root = Path(uri)

    def list(self, exclude: str | None = None) -> Iterator[ObjectInfo]:
        """Every regular file below the root in sorted order, except below ``exclude``."""
        for folder, dirs, files in os.walk(self.root):
            relative = Path(folder).relative_to(self.root).as_posix()
            prefix = "" if relative == "." else relative + "/"
            # Pruned, not listed: a local name cannot be '..', so nothing here is dead-lettered.
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and prefix + d != exclude)
            for name in sorted(files):
                info = self.stat(prefix + name)
                if info is not None:
                    yield info

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            status = (self.root / key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(status.st_mode):
            return None
        return ObjectInfo(key, status.st_size, f"mtime_ns:{status.st_mtime_ns}")

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def write(self, key: str, data: bytes, if_generation_match: int | None = None) -> ObjectInfo:
        """Atomic replace; ``if_generation_match`` is a GCS notion and ignored for files."""
        path = self.path(key)
        write_atomic(path, data)
        info = self.stat(key)
        if info is None:
            raise WriteConflict(f"{path} vanished right after it was written")
        return info

    def path(self, key: str) -> Path:
        path = self.root / check_key(key, allow_reserved=True)
        # A symlinked folder inside OUT could still lead outside it.
        real_root = os.path.realpath(self.root)
        if os.path.commonpath([os.path.realpath(path), real_root]) != real_root:
            raise UnsafeKeyError(key, "resolves outside the output folder (symlink)")
        return path

    def sweep_temps(self, older_than: float) -> int:
        """Delete temp files a killed writer left behind (mtime before ``older_than``)."""
        removed = 0
        for folder, _, files in os.walk(self.root):
            for name in filter(_TEMP_NAME.match, files):
                path = Path(folder, name)
                try:
                    stale = path.stat().st_mtime < older_than
                except FileNotFoundError:
                    continue  # its writer has just renamed it into place
                if stale:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed


class GcsStore:
    """``gs://bucket/prefix``; clients are made on first use, one per thread."""

    def __init__(self, uri: str):
        self.uri = uri
        self.bucket_name, self.prefix = split_gcs(uri)
        # The writer's thread pool shares a store; a client's HTTP session is not guaranteed
        # to be thread-safe.
        self._local = threading.local()

    @property
    def bucket(self):
        if getattr(self._local, "bucket", None) is None:
            from google.cloud import storage

            # With STORAGE_EMULATOR_HOST set, Client() is anonymous and talks to the emulator.
            self._local.bucket = storage.Client().bucket(self.bucket_name)
        return self._local.bucket

    def name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _info(self, blob) -> ObjectInfo:
        key = blob.name[len(self.prefix) + 1:] if self.prefix else blob.name
        return ObjectInfo(key, int(blob.size), f"generation:{blob.generation}", blob.generation)

    def list(self, exclude: str | None = None) -> Iterator[ObjectInfo]:
        """Every object below the prefix in name order, except below ``exclude``."""
        prefix = self.prefix + "/" if self.prefix else None
        for blob in self.bucket.client.list_blobs(self.bucket_name, prefix=prefix):
            info = self._info(blob)
            if blob.name.endswith("/"):  # a console "folder" placeholder, not a file
                continue
            if exclude is not None and info.key.startswith(exclude + "/"):
                continue
            yield info

    def stat(self, key: str) -> ObjectInfo | None:
        blob = self.bucket.get_blob(self.name(key))
        return None if blob is None else self._info(blob)

    def read(self, key: str) -> bytes:
        return self.bucket.blob(self.name(key)).download_as_bytes()

    def write(self, key: str, data: bytes, if_generation_match: int | None = None) -> ObjectInfo:
        """Upload (atomic on GCS); ``if_generation_match=0`` creates only, ``g`` replaces g."""
        from google.api_core.exceptions import PreconditionFailed

        blob = self.bucket.blob(self.name(check_key(key, allow_reserved=True)))
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        try:
            # The client retries uploads only when a generation precondition makes them safe.
            blob.upload_from_string(data, content_type=content_type,
                                    if_generation_match=if_generation_match)
        except PreconditionFailed as error:
            current = self.bucket.get_blob(blob.name)
            # A retried bundle finds the bytes it wrote the first time: that is not a conflict.
            if current is not None and current.crc32c == crc32c(data):
                return self._info(current)
            raise WriteConflict(f"gs://{self.bucket_name}/{blob.name} changed meanwhile") from error
        return self._info(blob)

    def sweep_temps(self, older_than: float) -> int:
        return 0  # uploads are atomic: a killed writer leaves nothing behind


Store = LocalStore | GcsStore


def open_store(uri: str) -> Store:
    return GcsStore(uri) if is_gcs(uri) else LocalStore(uri)


def crc32c(data: bytes) -> str:
    """The base64 CRC32C that GCS reports for an object with these bytes."""
    import google_crc32c

    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode("ascii")


def localize(uri: str, cache: str | os.PathLike | None = None) -> Path:
    """A local path for ``uri``: itself if local, else a downloaded copy (weights on GCS)."""
    if not is_gcs(uri):
        return Path(uri)
    bucket, name = split_gcs(uri)
    store = GcsStore(f"gs://{bucket}")
    info = store.stat(name)
    if info is None:
        raise FileNotFoundError(f"{uri} not found")
    # Keyed by generation: a champion replaced under the same name is fetched again.
    folder = Path(cache or tempfile.gettempdir(), "matte-bucket", bucket, str(info.generation))
    target = folder / name
    if not target.is_file():
        write_atomic(target, store.read(name))
    return target
