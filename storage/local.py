"""A local folder as a store: symlink-safe listing, atomic writes (temp file + rename) and
create-only writes (temp file + hard link)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from storage.base import ObjectInfo, Refused, SourceChanged, WriteConflict
from storage.keys import UnsafeKeyError, check_key, name_problem

# write_atomic's temp names: ".<name>.<8 random chars>.tmp" beside the target.
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
_LINK_ERRORS = {errno.ELOOP: "symlink loop", errno.ENOENT: "dangling symlink"}


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def file_version(status: os.stat_result) -> str:
    """What changes whenever a file's bytes may have changed (see ``ObjectInfo.version``)."""
    return f"file:{status.st_mtime_ns}:{status.st_ctime_ns}:{status.st_ino}"


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


class LocalStore:
    """A folder; writes are temp file + rename, last writer wins."""

    def __init__(self, uri: str):
        self.uri = str(uri)
        self.root = Path(uri)

    def scan(self, exclude: str | None = None,
             hidden: bool = False) -> Iterator[ObjectInfo | Refused]:
        """Every regular file below the root in key order, and a :class:`Refused` for each
        entry that cannot be data. Links are followed once and only inside the root; hidden
        names are skipped unless ``hidden``; nothing below ``exclude`` is visited."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"not a folder: {self.uri}")
        real_root = os.path.realpath(self.root)
        yield from self._scan_folder(self.root, "", real_root, {real_root}, exclude, hidden)

    def _scan_folder(self, folder: Path, prefix: str, real_root: str, seen: set[str],
                     exclude: str | None, hidden: bool) -> Iterator[ObjectInfo | Refused]:
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            yield Refused(prefix.rstrip("/") or ".", f"cannot read folder: {error.strerror}")
            return
        for entry in entries:
            key = prefix + entry.name
            if (not hidden and entry.name.startswith(".")) or key == exclude:
                continue
            problem = name_problem(key)
            if problem is not None:
                yield Refused(key, problem)
                continue
            link = entry.is_symlink()
            try:
                status = os.stat(entry.path)  # follows links
            except OSError as error:
                reason = _LINK_ERRORS.get(error.errno, error.strerror) if link else None
                yield Refused(key, reason or f"cannot stat: {error.strerror}")
                continue
            real = os.path.realpath(entry.path)
            if link and not _inside(real, real_root):
                yield Refused(key, "symlink leads outside the folder")
            elif stat.S_ISDIR(status.st_mode):
                if real in seen:  # a link to a folder listed already (or to an ancestor)
                    yield Refused(key, "symlink to a folder that is listed already")
                    continue
                yield from self._scan_folder(Path(entry.path), key + "/", real_root,
                                             seen | {real}, exclude, hidden)
            elif stat.S_ISREG(status.st_mode):
                yield ObjectInfo(key, status.st_size, file_version(status))
            else:
                yield Refused(key, "not a regular file")

    def list(self, exclude: str | None = None, hidden: bool = False) -> Iterator[ObjectInfo]:
        """The readable files of :meth:`scan`; nothing for a folder that does not exist yet
        (as for a gs:// prefix with no objects)."""
        if not os.path.lexists(self.root):
            return iter(())
        return (info for info in self.scan(exclude, hidden) if isinstance(info, ObjectInfo))

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            status = (self.root / key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(status.st_mode):
            return None
        return ObjectInfo(key, status.st_size, file_version(status))

    def read(self, key: str, expect: ObjectInfo | None = None) -> bytes:
        """The file's bytes; with ``expect`` (a listed version), :class:`SourceChanged` when
        the open file is no longer that version (checked on the open descriptor, so a file
        replaced after the check is not the one read)."""
        with open(self.root / key, "rb") as handle:
            if expect is not None and file_version(os.fstat(handle.fileno())) != expect.version:
                raise SourceChanged(f"{key} was replaced or modified after it was listed")
            return handle.read()

    def write(self, key: str, data: bytes, if_generation_match: int | None = None) -> ObjectInfo:
        """Atomic replace; ``if_generation_match`` is a GCS notion and ignored for files."""
        path = self.path(key)
        write_atomic(path, data)
        info = self.stat(key)
        if info is None:
            raise WriteConflict(f"{path} vanished right after it was written")
        return info

    def create(self, key: str, data: bytes) -> ObjectInfo:
        """Create-only write, the file store's ``if_generation_match=0``: ``WriteConflict`` if
        the file exists with other bytes; the same bytes (a retried writer) are success, as on
        GCS. A method of its own, not a mode of :meth:`write`, because files carry no
        generation: the planner passes 0 for every existing file, so ``write`` ignores it."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            try:
                # A hard link appears whole, like a rename, but fails if the name is taken, so
                # two racing creators cannot both win (os.replace would let the last one win).
                os.link(tmp_name, path)
            except FileExistsError:
                if not path.is_file() or path.read_bytes() != data:
                    raise WriteConflict(f"{path} exists already with other content") from None
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        info = self.stat(key)
        if info is None:
            raise WriteConflict(f"{path} vanished right after it was created")
        return info

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def rename(self, key: str, new_key: str) -> None:
        target = self.path(new_key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path(key), target)

    def path(self, key: str) -> Path:
        path = self.root / check_key(key, allow_reserved=True)
        # A symlinked folder inside the root could still lead outside it.
        real_root = os.path.realpath(self.root)
        if not _inside(os.path.realpath(path), real_root):
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


class OutputLocked(RuntimeError):
    """Another run holds the output folder."""


@contextlib.contextmanager
def run_lock(root: str | os.PathLike) -> Iterator[None]:
    """Hold an output folder for one run: a second run on the same folder fails at once with
    the holder's pid instead of interleaving its outputs and state records with the first's.
    ``flock`` dies with its process, so a killed run never leaves a stale lock behind. The
    lock file lives in the temp folder, named by the output's real path, so the output holds
    only outputs (runs on one output from several machines need gs://, whose state records
    carry generation preconditions)."""
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(os.path.realpath(folder).encode()).hexdigest()[:24]
    locks = Path(tempfile.gettempdir()) / "matte-locks"
    locks.mkdir(exist_ok=True)
    handle = open(locks / f"{name}.lock", "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputLocked(f"{root} is being written by another run ({holder}); wait for "
                               "it to finish or choose another output folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()
