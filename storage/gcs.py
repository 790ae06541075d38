"""``gs://bucket/prefix`` as a store, through google-cloud-storage.

Not Beam's GCS filesystem: Beam 2.77 spends ~25 s in credential retries before it falls back to
the anonymous client an emulator needs, and its writes cannot carry ``if_generation_match``,
which makes concurrent writers and create-only writes safe here.
"""

from __future__ import annotations

import base64
import mimetypes
import threading
from collections.abc import Iterator

from storage.base import ObjectInfo, Refused, SourceChanged, WriteConflict
from storage.keys import check_key, is_hidden, name_problem, split_gcs


def crc32c(data: bytes) -> str:
    """The base64 CRC32C that GCS reports for an object with these bytes."""
    import google_crc32c

    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode("ascii")


class GcsStore:
    """``gs://bucket/prefix``; clients are made on first use, one per thread."""

    def __init__(self, uri: str):
        self.uri = uri
        self.bucket_name, self.prefix = split_gcs(uri)
        # A writer's thread pool shares a store; a client's HTTP session is not guaranteed
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
        return ObjectInfo(key, int(blob.size), f"generation:{blob.generation}", blob.generation,
                          blob.crc32c or "")

    def scan(self, exclude: str | None = None,
             hidden: bool = False) -> Iterator[ObjectInfo | Refused]:
        """Every object below the prefix in name order (the same rules as a folder's)."""
        prefix = self.prefix + "/" if self.prefix else None
        for blob in self.bucket.client.list_blobs(self.bucket_name, prefix=prefix):
            if blob.name.endswith("/"):  # a console "folder" placeholder, not a file
                continue
            info = self._info(blob)
            if exclude is not None and info.key.startswith(exclude + "/"):
                continue
            if not hidden and is_hidden(info.key):
                continue
            problem = name_problem(info.key)
            yield info if problem is None else Refused(info.key, problem)

    def list(self, exclude: str | None = None, hidden: bool = False) -> Iterator[ObjectInfo]:
        return (info for info in self.scan(exclude, hidden) if isinstance(info, ObjectInfo))

    def stat(self, key: str) -> ObjectInfo | None:
        blob = self.bucket.get_blob(self.name(key))
        return None if blob is None else self._info(blob)

    def read(self, key: str, expect: ObjectInfo | None = None) -> bytes:
        """The object's bytes; with ``expect`` (a listed version), that generation's bytes or
        :class:`SourceChanged`. The generation is asked for, and the bytes are checked against
        the listed CRC32C as well (an emulator may serve the newest generation regardless)."""
        from google.api_core.exceptions import NotFound

        if expect is None:
            return self.bucket.blob(self.name(key)).download_as_bytes()
        blob = self.bucket.blob(self.name(key), generation=expect.generation or None)
        try:
            data = blob.download_as_bytes()
        except NotFound:
            raise SourceChanged(f"{key} was replaced or deleted after it was listed") from None
        if expect.checksum and crc32c(data) != expect.checksum:
            raise SourceChanged(f"{key} was replaced after it was listed")
        return data

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

    def delete(self, key: str) -> None:
        from google.api_core.exceptions import NotFound

        try:
            self.bucket.delete_blob(self.name(key))
        except NotFound:
            pass  # already gone: deleting is idempotent, as it is for files

    def rename(self, key: str, new_key: str) -> None:
        """Copy then delete (GCS has no rename); a retry after a crash in between redoes it."""
        blob = self.bucket.blob(self.name(key))
        self.bucket.copy_blob(blob, self.bucket, self.name(check_key(new_key, True)))
        self.delete(key)

    def sweep_temps(self, older_than: float) -> int:
        return 0  # uploads are atomic: a killed writer leaves nothing behind
