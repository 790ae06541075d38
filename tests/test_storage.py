"""The storage home: safe keys, hostile folders, local folders and gs:// (gcp-storage-emulator)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from google.api_core.exceptions import PreconditionFailed

import storage
from model.outputs import OutputOptions
from pipelines.planner import output_for
from storage import (
    GcsStore,
    LocalStore,
    UnsafeKeyError,
    WriteConflict,
    check_key,
    crc32c,
    localize,
    relative_location,
    write_atomic,
)


@pytest.mark.parametrize("key", ["a.jpg", "sub dir/photo é.JPG", "a..b.jpg", "x/y/z.png",
                                 "日本/写真.png", "_runsy/a.jpg", "a/_runs/b.jpg"])
def test_ordinary_keys_are_accepted(key):
    assert check_key(key) == key


@pytest.mark.parametrize(("key", "reason"), [
    ("", "empty key"),
    ("/etc/passwd", "absolute"),
    ("../escape.jpg", "'..'"),
    ("a/../../escape.jpg", "'..'"),
    ("a/..", "'..'"),
    ("a//b.jpg", "empty"),
    ("./a.jpg", "'.'"),
    ("a/\nb.jpg", "control characters"),
    ("tab\tname.jpg", "control characters"),
    ("_runs/x/manifest.jsonl", "reserved"),
    ("_state/a.png.json", "reserved"),
    ("x" * 233 + ".jpg", "longer than 236 bytes"),
])
def test_unsafe_keys_are_refused_with_a_reason(key, reason):
    with pytest.raises(UnsafeKeyError) as raised:
        check_key(key)
    assert reason in raised.value.reason


def test_output_key_keeps_the_path_and_changes_the_extension():
    assert output_for("sub dir/a é.jpg", OutputOptions()) == "sub dir/a é.png"
    assert output_for("a.png", OutputOptions(bgcolor=(0, 0, 0), jpeg=True)) == "a.jpg"
    with pytest.raises(UnsafeKeyError):
        output_for("../a.jpg", OutputOptions())


def test_relative_location(tmp_path):
    assert relative_location(str(tmp_path / "in" / "out"), str(tmp_path / "in")) == "out"
    assert relative_location(str(tmp_path / "in"), str(tmp_path / "in")) == ""
    assert relative_location(str(tmp_path / "out"), str(tmp_path / "in")) is None
    assert relative_location("gs://b/in/out", "gs://b/in/") == "out"
    assert relative_location("gs://b/input", "gs://b/in") is None
    assert relative_location("gs://c/in", "gs://b/in") is None
    assert relative_location("gs://b/in", str(tmp_path)) is None


def test_local_store_lists_writes_and_stats(tmp_path):
    root = tmp_path / "root"
    (root / "b dir").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "out" / "x").mkdir(parents=True)
    for name in ("b dir/2.jpg", "a.jpg", ".hidden.jpg", ".git/config", "out/x/1.png"):
        (root / name).write_bytes(b"data")
    store = LocalStore(str(root))
    keys = [info.key for info in store.list(exclude="out")]
    assert keys == ["a.jpg", "b dir/2.jpg"]  # hidden names skipped, out excluded
    with_hidden = [info.key for info in store.list(exclude="out", hidden=True)]
    assert with_hidden == [".git/config", ".hidden.jpg", "a.jpg", "b dir/2.jpg"]

    written = store.write("new/deep é/file.png", b"12345")
    assert written.size == 5 and (root / "new/deep é/file.png").read_bytes() == b"12345"
    assert not [p for p in (root / "new/deep é").iterdir() if p.name.startswith(".")]
    before = store.stat("a.jpg")
    os.utime(root / "a.jpg", ns=(0, 1_000_000_000))
    assert store.stat("a.jpg").version != before.version
    # Replaced by other bytes of the same size with the same mtime, as `cp -p` or `rsync -a`
    # leave it: still a new version (a new inode, a new ctime).
    before = store.stat("a.jpg")
    (root / "a.tmp").write_bytes(b"DATA")
    os.utime(root / "a.tmp", ns=(0, 1_000_000_000))
    os.replace(root / "a.tmp", root / "a.jpg")
    after = store.stat("a.jpg")
    assert after.size == before.size and after.version != before.version
    assert store.stat("missing.jpg") is None and store.stat("b dir") is None


def test_local_store_never_writes_outside_its_root(tmp_path):
    root, outside = tmp_path / "out", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    store = LocalStore(str(root))
    for key in ("../escape.png", "/tmp/abs.png", "link/escape.png", "a/../../escape.png"):
        with pytest.raises(UnsafeKeyError):
            store.write(key, b"x")
    assert not list(outside.iterdir())
    assert not (tmp_path / "escape.png").exists()


def test_local_create_is_create_only_and_a_retry_of_the_same_bytes_succeeds(tmp_path):
    store = LocalStore(str(tmp_path))
    made = store.create("v/model.keras", b"first")
    assert made.size == 5 and (tmp_path / "v" / "model.keras").read_bytes() == b"first"
    assert store.create("v/model.keras", b"first").size == 5  # a retried writer
    with pytest.raises(WriteConflict, match="exists already"):
        store.create("v/model.keras", b"second")
    assert (tmp_path / "v" / "model.keras").read_bytes() == b"first"
    assert sorted(path.name for path in (tmp_path / "v").iterdir()) == ["model.keras"]
    # write keeps ignoring generation 0: the planner redoes existing files with it.
    store.write("v/model.keras", b"replaced", if_generation_match=0)
    assert (tmp_path / "v" / "model.keras").read_bytes() == b"replaced"


def test_racing_local_creates_have_one_winner(tmp_path):
    store = LocalStore(str(tmp_path))
    start = threading.Barrier(8)
    outcomes: list[bytes | None] = []

    def create(data: bytes) -> None:
        start.wait()
        try:
            store.create("pointer.json", data)
            outcomes.append(data)
        except WriteConflict:
            outcomes.append(None)

    threads = [threading.Thread(target=create, args=(b"writer %d" % i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (winner,) = [data for data in outcomes if data is not None]
    assert (tmp_path / "pointer.json").read_bytes() == winner


def test_sweep_removes_only_stale_temp_files(tmp_path):
    store = LocalStore(str(tmp_path))
    stale = tmp_path / "a" / ".photo.png.ab12cd_9.tmp"
    fresh = tmp_path / ".other.png.zz99yy00.tmp"
    keep = tmp_path / ".notes.tmp"  # not a name write_atomic makes
    stale.parent.mkdir()
    for path in (stale, fresh, keep):
        path.write_bytes(b"partial")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    os.utime(keep, (time.time() - 3600, time.time() - 3600))
    assert store.sweep_temps(older_than=time.time() - 60) == 1
    assert not stale.exists() and fresh.exists() and keep.exists()


def test_gcs_store_round_trip_with_generations(gcs_emulator):
    gcs_emulator.create_bucket("store-test")
    bucket = gcs_emulator.bucket("store-test")
    bucket.blob("pre/fix/a b é.jpg").upload_from_string(b"one")
    bucket.blob("pre/fix/folder/").upload_from_string(b"")  # console folder placeholder
    bucket.blob("pre/fix/out/done.png").upload_from_string(b"x")
    bucket.blob("pre/fixed.jpg").upload_from_string(b"not below the prefix")
    store = GcsStore("gs://store-test/pre/fix/")
    assert [info.key for info in store.list(exclude="out")] == ["a b é.jpg"]
    first = store.write("new/c.png", b"abc", if_generation_match=0)
    assert first.generation > 0 and first.version == f"generation:{first.generation}"
    assert store.stat("new/c.png") == first and store.read("new/c.png") == b"abc"
    assert store.stat("missing.png") is None
    assert bucket.get_blob("pre/fix/new/c.png").crc32c == crc32c(b"abc")
    with pytest.raises(UnsafeKeyError):
        store.write("../escape.png", b"x")


def test_gcs_writes_carry_the_generation_precondition(gcs_emulator, monkeypatch):
    # gcp-storage-emulator ignores ifGenerationMatch, so the request itself is checked here.
    gcs_emulator.create_bucket("precondition-test")
    store = GcsStore("gs://precondition-test")
    calls = []
    blob_class = type(store.bucket.blob("x"))
    original = blob_class.upload_from_string

    def spy(blob, data, **kwargs):
        calls.append((blob.name, kwargs.get("if_generation_match")))
        return original(blob, data, **kwargs)

    monkeypatch.setattr(blob_class, "upload_from_string", spy)
    made = store.write("a.png", b"1", if_generation_match=0)
    store.write("a.png", b"2", if_generation_match=made.generation)
    assert calls == [("a.png", 0), ("a.png", made.generation)]


class _RacedBlob:
    """A blob whose upload loses a race: GCS answers 412 Precondition Failed."""

    name = "k.png"

    def upload_from_string(self, data, **kwargs):
        raise PreconditionFailed("precondition failed")


class _RacedBucket:
    def __init__(self, current):
        self.current = current

    def blob(self, name):
        return _RacedBlob()

    def get_blob(self, name):
        return self.current


def test_lost_race_is_fine_for_identical_bytes_and_a_conflict_otherwise():
    class Current:
        name, size, generation, crc32c = "k.png", 3, 7, crc32c(b"abc")

    store = GcsStore("gs://raced")
    store._local.bucket = _RacedBucket(Current())
    assert store.write("k.png", b"abc", if_generation_match=0).generation == 7
    with pytest.raises(WriteConflict):
        store.write("k.png", b"different", if_generation_match=0)


def test_localize_downloads_gcs_weights_once_per_generation(gcs_emulator, tmp_path):
    gcs_emulator.create_bucket("weights-test")
    gcs_emulator.bucket("weights-test").blob("m/model.keras").upload_from_string(b"v1")
    path = localize("gs://weights-test/m/model.keras", cache=tmp_path)
    assert path.read_bytes() == b"v1" and path.name == "model.keras"
    assert localize("gs://weights-test/m/model.keras", cache=tmp_path) == path
    gcs_emulator.bucket("weights-test").blob("m/model.keras").upload_from_string(b"v2")
    assert localize("gs://weights-test/m/model.keras", cache=tmp_path).read_bytes() == b"v2"
    assert localize(str(tmp_path / "local.onnx")) == Path(tmp_path / "local.onnx")
    assert storage.is_gcs("gs://b") and not storage.is_gcs("/gs:/b")


def test_the_longest_accepted_name_can_be_written_with_its_temp_and_state_files(tmp_path):
    from storage import MAX_SEGMENT_BYTES

    name = "x" * (MAX_SEGMENT_BYTES - len(".png")) + ".png"
    assert check_key(name) == name
    write_atomic(tmp_path / name, b"cut-out")  # its temp name is 14 bytes longer
    write_atomic(tmp_path / (name + ".json"), b"{}")  # the state record beside it
    assert (tmp_path / name).read_bytes() == b"cut-out"


def test_hostile_folders_list_the_good_files_and_refuse_each_bad_entry(tmp_path):
    root, outside = tmp_path / "in", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"secret")
    (root / "a.jpg").write_bytes(b"a")
    (root / "sub" / "b.jpg").write_bytes(b"b")
    os.symlink("loop", root / "loop")  # ln -s loop loop
    os.symlink("missing.jpg", root / "dangling.jpg")
    os.symlink(outside / "secret.jpg", root / "escape.jpg")
    os.symlink(outside, root / "escape_dir")
    os.symlink("a.jpg", root / "inside.jpg")  # followed: it stays inside the root
    os.symlink(".", root / "sub" / "again")  # a folder already listed: refused, no loop
    os.mkfifo(root / "pipe")
    (root / os.fsdecode(b"bad\xffname.jpg")).write_bytes(b"x")
    entries = list(LocalStore(str(root)).scan())
    good = [e.key for e in entries if isinstance(e, storage.ObjectInfo)]
    refused = {e.key: e.reason for e in entries if isinstance(e, storage.Refused)}
    assert good == ["a.jpg", "inside.jpg", "sub/b.jpg"]
    assert refused == {
        "loop": "symlink loop", "dangling.jpg": "dangling symlink",
        "escape.jpg": "symlink leads outside the folder",
        "escape_dir": "symlink leads outside the folder",
        "sub/again": "symlink to a folder that is listed already",
        "pipe": "not a regular file",
        os.fsdecode(b"bad\xffname.jpg"): "the name is not valid UTF-8",
    }
    assert [info.key for info in LocalStore(str(root)).list()] == good


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder: EACCES cannot happen")
def test_an_unreadable_folder_is_refused_and_the_rest_listed(tmp_path):
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "x.jpg").write_bytes(b"x")
    (tmp_path / "ok.jpg").write_bytes(b"ok")
    (tmp_path / "locked").chmod(0)
    try:
        entries = list(LocalStore(str(tmp_path)).scan())
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert [e.key for e in entries] == ["locked", "ok.jpg"]
    assert entries[0].reason.startswith("cannot read folder")


def test_uri_helpers_read_write_and_test_files(tmp_path):
    target = tmp_path / "deep" / "f.json"
    storage.write_bytes(str(target), b"{}")
    assert storage.exists(str(target)) and storage.read_bytes(str(target)) == b"{}"
    assert not storage.exists(str(tmp_path / "nope.json"))
    assert storage.join("gs://b/p/", "k") == "gs://b/p/k"
    assert storage.split_uri("gs://b/p/k.json") == ("gs://b/p", "k.json")
