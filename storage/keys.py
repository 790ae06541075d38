"""Names in the storage home: what a key may be, what is hidden, where a URI lies.

Keys are '/'-separated paths relative to a store's root (a folder or ``gs://bucket/prefix``).
One rule for every layer: a name part starting with "." is hidden (not data; temp files are
hidden), a name that is not valid UTF-8 or holds control characters is refused with a reason.
"""

from __future__ import annotations

import os
from pathlib import Path

RESERVED_PREFIXES = ("_runs", "_state")  # run records live here, beside the outputs
# The usual file-system limit on one path component (255) less what is added to an output's
# name on disk: write_atomic's temp affixes ("." + ".xxxxxxxx.tmp") and the state's ".json".
MAX_SEGMENT_BYTES = 255 - len("..xxxxxxxx.tmp") - len(".json")


class UnsafeKeyError(ValueError):
    """A key that cannot name an object inside a store (absolute, '..', control characters...)."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key!r}: {reason}")
        self.key = key
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.key, self.reason)


def name_problem(key: str) -> str | None:
    """Why ``key`` cannot be read or named safely (None when it can): the listing's rule."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode gives lone surrogates for undecodable bytes
        return "the name is not valid UTF-8"
    if any(ord(char) < 32 or ord(char) == 127 for char in key):
        return "control characters in the name"
    return None


def check_key(key: str, allow_reserved: bool = False) -> str:
    """``key`` if it can name a file below a store's root, else :class:`UnsafeKeyError`.

    Keys from a listing may not start with a reserved folder; a run's own records may.
    """
    if not key:
        raise UnsafeKeyError(key, "empty key")
    problem = name_problem(key)
    if problem:
        raise UnsafeKeyError(key, problem)
    if key.startswith("/"):
        raise UnsafeKeyError(key, "absolute key")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise UnsafeKeyError(key, "empty, '.' or '..' path segment")
        if len(part.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise UnsafeKeyError(key, f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
    if not allow_reserved and key.split("/", 1)[0] in RESERVED_PREFIXES:
        raise UnsafeKeyError(key, f"the top folders {RESERVED_PREFIXES} are reserved for runs")
    return key


def is_hidden(key: str) -> bool:
    """Hidden files and folders are not data; temp files are hidden. ``.`` and ``..``
    segments are not hidden but unsafe: :func:`check_key` refuses them with a reason."""
    return any(part.startswith(".") and part not in (".", "..") for part in key.split("/"))


def is_gcs(uri: str) -> bool:
    """The one "is this remote?" test: gs:// is the only remote scheme."""
    return str(uri).startswith("gs://")


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b/`` -> ("bucket", "a/b")."""
    bucket, _, prefix = uri[len("gs://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, prefix.strip("/")


def join(root: str, key: str) -> str:
    """``root`` + ``key`` as a URI (gs://) or a local path."""
    return f"{root.rstrip('/')}/{key}" if is_gcs(root) else os.path.join(root, key)


def split_uri(uri: str) -> tuple[str, str]:
    """A file's URI as (its folder's URI, its name): the store and key that hold it."""
    if is_gcs(uri):
        folder, _, name = uri.rstrip("/").rpartition("/")
        return folder, name
    path = Path(uri)
    return str(path.parent), path.name


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
