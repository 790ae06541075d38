"""The one storage home: local folders and ``gs://`` behind one small interface.

Every layer that touches files or buckets comes here: listing (one rule for hidden and
unreadable names, symlinks followed once and only inside the root), reads, atomic and
conditional writes, and ``localize`` (a local copy of a gs:// file, cached by generation).
Two places keep their own IO, because the library must stream it: tf.data reads TFRecord
shards (``model.data``) and Keras saves checkpoints into a local run folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from google.api_core.exceptions import GoogleAPIError

from storage.base import ObjectInfo, Refused, SourceChanged, WriteConflict
from storage.gcs import GcsStore, crc32c
from storage.keys import (
    MAX_SEGMENT_BYTES,
    RESERVED_PREFIXES,
    UnsafeKeyError,
    check_key,
    is_gcs,
    is_hidden,
    join,
    relative_location,
    split_gcs,
    split_uri,
)
from storage.local import LocalStore, OutputLocked, write_atomic
from storage.local import run_lock as _local_run_lock

__all__ = [
    "IO_ERRORS", "MAX_SEGMENT_BYTES", "RESERVED_PREFIXES", "GcsStore", "LocalStore",
    "ObjectInfo", "OutputLocked", "Refused", "SourceChanged", "Store", "UnsafeKeyError",
    "WriteConflict",
    "check_key", "crc32c",
    "exists", "is_gcs", "is_hidden", "join", "localize", "open_store", "read_bytes",
    "relative_location", "run_lock", "split_gcs", "split_uri", "write_atomic", "write_bytes",
]

# What reading or writing one object may raise: that object fails, the run goes on.
IO_ERRORS = (OSError, GoogleAPIError, WriteConflict, SourceChanged, UnsafeKeyError)

Store = LocalStore | GcsStore


def open_store(uri: str | os.PathLike) -> Store:
    uri = str(uri)
    return GcsStore(uri) if is_gcs(uri) else LocalStore(uri)


def read_bytes(uri: str | os.PathLike) -> bytes:
    """One file's bytes, by its path or gs:// URI."""
    folder, name = split_uri(str(uri))
    return open_store(folder).read(name)


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write one file atomically, by its path or gs:// URI."""
    folder, name = split_uri(str(uri))
    open_store(folder).write(name, data)


def exists(uri: str | os.PathLike) -> bool:
    folder, name = split_uri(str(uri))
    return open_store(folder).stat(name) is not None


def localize(uri: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """A local path for ``uri``: itself if local, else a downloaded copy (weights on GCS)."""
    uri = str(uri)
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


def run_lock(uri: str | os.PathLike):
    """A context holding an output root for one run: a lock file for a folder (see
    ``storage.local.run_lock``); nothing for gs://, where every state record is written with
    a generation precondition instead."""
    import contextlib

    return contextlib.nullcontext() if is_gcs(str(uri)) else _local_run_lock(uri)
