"""What a store hands out: listed objects, refused listing entries, and its write conflict."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object; ``version`` changes whenever its content may have changed."""

    key: str
    size: int
    # "file:<mtime_ns>:<ctime_ns>:<inode>" for files: a file replaced with the same size and
    # mtime (``cp -p``, ``rsync -a``) still gets a new ctime or inode, which no user can set;
    # "generation:<n>" for GCS objects.
    version: str
    generation: int = 0  # GCS generation, the precondition for replacing it; 0 for files
    checksum: str = ""  # GCS's base64 CRC32C as listed; "" for files (not hashed on listing)


@dataclass(frozen=True)
class Refused:
    """A listing entry that is not readable data (loop, dangling or escaping link, EACCES,
    a name that is not UTF-8): the caller records it with ``reason`` and goes on."""

    key: str
    reason: str


class WriteConflict(RuntimeError):
    """Another writer replaced the object after this one planned to write it."""


class SourceChanged(RuntimeError):
    """An object is no longer the version that was listed: a read pinned to the listing
    refuses it, so a run never records one version's output under another's state."""
