"""The router's file store (router/files.py): blobs, rows, limits, names and types.

FileStore is driven as the router will drive it (begin, write, finish; get, open, delete,
expire), on real SQLite files and real blobs in tmp_path; the memory store (no fsync) only
where hypothesis runs many examples or a test makes a thousand files. What is on disk is
looked at directly: the blobs under ``files/blobs``, the temporary files under ``files/tmp``,
the table with its own sqlite3 connection, and the folder after a writer was SIGKILLed. Time
is passed in (``now``): no test sleeps or waits for a clock.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import tracemalloc
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pychat.router.files import (
    ABORTED,
    BAD_SIZE,
    BINARY,
    BLOBS,
    CODES,
    DAY,
    FILENAME,
    FOLDER,
    GIF,
    JPEG,
    M4A,
    MOV,
    MP3,
    MP4,
    NAME_MAX,
    OGG,
    PDF,
    PNG,
    QUOTA,
    RATE,
    SCHEMA_VERSION,
    SIZE_MISMATCH,
    SNIFF_BYTES,
    STORE_FULL,
    TEXT,
    TMP,
    TOO_LARGE,
    TYPES,
    WAV,
    WEBP,
    ZIP,
    FileError,
    FileLimits,
    FileStore,
    FileStoreError,
    MiB,
    StoredFile,
    disposition,
    fit_name,
    response_headers,
    safe_name,
    sniff,
    url_name,
)
from pychat.router.files import GZIP as GZ
from pychat.wire.errors import ClientError
from support.procs import ROOT

T0 = 1_800_000_000.0  # a time.time() stamp in 2027
USER = "a:1"
ROOM = "#lobby"
NO_RATE = FileLimits(uploads_per_hour=0)

# real heads of real formats (the first bytes are what sniff() reads)
PNG_BYTES = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06"
             b"\x00\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01"
             b"\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")
JPEG_BYTES = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\0" * 64
EXE_BYTES = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 48
HTML_BYTES = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>"
SVG_BYTES = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" '
             b'onload="alert(1)"><script>alert(2)</script></svg>')
SCRIPT_BYTES = b"<script>fetch('/steal?c=' + document.cookie)</script>"


# ---- fixtures and helpers ------------------------------------------------------------------------

@pytest.fixture
def data(tmp_path) -> str:
    return str(tmp_path / "data")


@pytest.fixture
def stores(data):
    """``stores(limits)`` opens the store in ``data`` (by default with no upload rate: most
    tests upload many files at one ``now``); every one is closed at the end."""
    made: list[FileStore] = []

    def make(limits: FileLimits = NO_RATE) -> FileStore:
        s = FileStore.in_folder(data, limits).open_store()
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def store(stores) -> FileStore:
    return stores()


def upload(store: FileStore, body: bytes, name: str = "notes.txt", *, uploader: str = USER,
           where: str = ROOM, now: float = T0, chunk: int = 7919) -> StoredFile:
    with store.begin(len(body), uploader, now) as w:
        for i in range(0, len(body), chunk):
            w.write(body[i:i + chunk])
        return w.finish(name, where, now)


def read(store: FileStore, file_id: str) -> bytes:
    f = store.open(file_id)
    assert f is not None
    with f:
        return f.read()


def blobs_on_disk(folder: str) -> set[str]:
    root = os.path.join(folder, BLOBS)
    return {fan + rest for fan in os.listdir(root) for rest in os.listdir(os.path.join(root, fan))}


def temporary(folder: str) -> list[str]:
    return os.listdir(os.path.join(folder, TMP))


def table(folder: str, sql: str) -> list[tuple]:
    db = sqlite3.connect(os.path.join(folder, FILENAME))
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def files_folder(data: str) -> str:
    return os.path.join(data, FOLDER)


def consistent(store: FileStore, folder: str) -> None:
    """The invariants: no temporary file left, and the blobs on disk are exactly those the
    rows name, each holding bytes with its own hash."""
    assert temporary(folder) == []
    assert store.usage() == store.db.execute(
        "SELECT COUNT(*), CAST(TOTAL(size) AS INTEGER) FROM files").fetchone()
    named = {r[0] for r in store.db.execute("SELECT blob FROM files")}
    assert blobs_on_disk(folder) == named
    for digest in named:
        with open(os.path.join(folder, BLOBS, digest[:2], digest[2:]), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest


def refused(code: str, fn, *args) -> FileError:
    with pytest.raises(FileError) as e:
        fn(*args)
    assert e.value.code == code, e.value.text
    assert "\n" not in e.value.text and e.value.text
    return e.value


# ---- storing and reading -------------------------------------------------------------------------

def test_an_upload_is_stored_whole_and_read_back_byte_identical(store, data):
    body = random.Random(1).randbytes(300_001)
    f = upload(store, body, "dump.bin", now=T0 + 5)
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", f.id)
    assert f.blob == hashlib.sha256(body).hexdigest()
    assert (f.name, f.type, f.size, f.uploader, f.where, f.created) == (
        "dump.bin", BINARY, len(body), USER, ROOM, T0 + 5)
    assert f.path == f"/files/{f.id}/dump.bin"
    assert store.get(f.id) == f
    assert read(store, f.id) == body
    with open(os.path.join(files_folder(data), BLOBS, f.blob[:2], f.blob[2:]), "rb") as blob:
        assert blob.read() == body
    assert store.usage() == (1, len(body))
    assert store.user_usage(USER) == len(body) and store.user_usage("a:2") == 0
    assert store.status()["uploads"] == 0
    consistent(store, files_folder(data))


def test_unknown_ids_are_none(store):
    upload(store, b"hello")
    assert store.get("A" * 22) is None
    assert store.open("A" * 22) is None
    assert store.get("") is None
    assert not store.delete("A" * 22)


def test_ids_are_random_and_the_same_bytes_are_stored_once(store, data):
    first = upload(store, b"the same screenshot", "shot.txt")
    blob = os.path.join(files_folder(data), BLOBS, first.blob[:2], first.blob[2:])
    before = os.stat(blob)
    made = [first] + [upload(store, b"the same screenshot", f"shot{i}.txt") for i in range(49)]
    after = os.stat(blob)  # reused, not written again
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert temporary(files_folder(data)) == []
    assert len({f.id for f in made}) == 50
    assert len({f.blob for f in made}) == 1
    assert blobs_on_disk(files_folder(data)) == {made[0].blob}
    assert store.usage() == (50, 50 * len(b"the same screenshot"))  # duplicates counted
    assert [read(store, f.id) for f in made[:3]] == [b"the same screenshot"] * 3


def test_a_blob_stays_while_a_file_names_it_and_goes_with_the_last(store, data):
    folder = files_folder(data)
    a = upload(store, b"shared bytes", "a.txt")
    b = upload(store, b"shared bytes", "b.txt")
    c = upload(store, b"other bytes", "c.txt")
    assert store.delete(a.id)
    assert not store.delete(a.id)
    assert store.get(a.id) is None and store.open(a.id) is None
    assert read(store, b.id) == b"shared bytes"
    assert blobs_on_disk(folder) == {b.blob, c.blob}
    assert store.delete(b.id)
    assert blobs_on_disk(folder) == {c.blob}
    consistent(store, folder)


def test_a_download_in_progress_reads_to_the_end_after_the_file_is_deleted(store):
    body = random.Random(2).randbytes(100_000)
    f = upload(store, body)
    reader = store.open(f.id)
    assert reader is not None
    with reader:
        first = reader.read(1000)
        assert store.delete(f.id)
        assert first + reader.read() == body


def test_a_store_reopened_has_its_files_and_its_schema(stores, data):
    folder = files_folder(data)
    s = stores()
    f = upload(s, b"kept across restarts", "keep.txt")
    s.close()
    again = stores()
    assert again.get(f.id) == f
    assert read(again, f.id) == b"kept across restarts"
    assert again.version() == SCHEMA_VERSION
    assert again.usage() == (1, 20)  # counted again at open
    assert table(folder, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert table(folder, "PRAGMA journal_mode") == [("wal",)]
    assert table(folder, "SELECT id, name, size FROM files") == [(f.id, "keep.txt", 20)]


def test_an_empty_file_is_a_file(store):
    f = upload(store, b"", "empty.txt")
    assert (f.size, f.blob) == (0, hashlib.sha256(b"").hexdigest())
    assert read(store, f.id) == b""


def test_the_memory_store_works_and_leaves_nothing_behind():
    s = FileStore(None).open_store()
    try:
        root = s._root
        assert os.path.isdir(root)
        f = upload(s, b"in memory")
        assert read(s, f.id) == b"in memory"
        assert s.status()["backend"] == "memory"
    finally:
        s.close()
    assert not os.path.exists(root)


# ---- declared size -------------------------------------------------------------------------------

def test_fewer_bytes_than_declared_store_nothing(store, data):
    folder = files_folder(data)
    w = store.begin(1000, USER, T0)
    w.write(b"x" * 999)
    assert w.received == 999
    assert len(temporary(folder)) == 1
    e = refused(SIZE_MISMATCH, w.finish, "short.txt", ROOM, T0)
    assert "999 of the 1000 bytes" in e.text
    assert store.usage() == (0, 0) and store.status()["uploads"] == 0
    consistent(store, folder)
    assert blobs_on_disk(folder) == set()
    refused(ABORTED, w.write, b"x")  # over: a late chunk is refused, not stored
    refused(ABORTED, w.finish, "short.txt", ROOM, T0)


def test_more_bytes_than_declared_are_refused_at_the_first_extra_byte(store, data):
    folder = files_folder(data)
    w = store.begin(10, USER, T0)
    w.write(b"0123456")
    e = refused(SIZE_MISMATCH, w.write, b"789A")  # 11 bytes in all
    assert "10 bytes" in e.text
    assert w.received == 7  # the chunk that passed the size was not taken
    assert store.usage() == (0, 0) and store.status()["uploads"] == 0
    consistent(store, folder)
    refused(ABORTED, w.finish, "long.txt", ROOM, T0)
    nothing = store.begin(0, USER, T0)
    refused(SIZE_MISMATCH, nothing.write, b"!")
    exact = store.begin(10, USER, T0)
    for piece in (b"0123", b"", b"456789"):
        exact.write(piece)
    assert exact.finish("ok.txt", ROOM, T0).size == 10


@pytest.mark.parametrize("size", [-1, 1.5, True, "10"])
def test_a_size_that_is_not_a_count_of_bytes_is_refused(store, size):
    refused(BAD_SIZE, store.begin, size, USER, T0)


def test_writes_take_any_bytes_like_chunk(store):
    body = b"abcdefgh" * 100
    w = store.begin(len(body), USER, T0)
    w.write(bytearray(body[:100]))
    w.write(memoryview(body)[100:500])
    w.write(body[500:])
    assert read(store, w.finish("x.txt", ROOM, T0).id) == body


# ---- limits --------------------------------------------------------------------------------------

def test_a_file_over_max_size_is_refused_before_any_byte(stores, data):
    s = stores(FileLimits(max_file=1000))
    e = refused(TOO_LARGE, s.begin, 1001, USER, T0)
    assert "1000 bytes" in e.text
    assert temporary(files_folder(data)) == []
    assert upload(s, b"x" * 1000).size == 1000


def test_a_file_larger_than_the_whole_store_is_too_large(stores):
    s = stores(FileLimits(max_file=10 * MiB, max_total=2 * MiB, user_quota=0))
    e = refused(TOO_LARGE, s.begin, 2 * MiB + 1, USER, T0)
    assert "2 MiB" in e.text
    s.begin(2 * MiB, USER, T0).abort()


def test_the_default_limits_are_a_chat_servers():
    lim = FileLimits()
    assert (lim.max_file, lim.user_quota, lim.max_total) == (100 * MiB, 1024 * MiB, 10240 * MiB)
    assert (lim.uploads_per_hour, lim.max_age) == (60, 30 * DAY)
    big = FileLimits(max_file=1024 * MiB)  # the 1 GB benchmark
    assert big.largest == 1024 * MiB
    for bad in ({"max_file": 0}, {"user_quota": -1}, {"upload_burst": 0}, {"max_age": -1}):
        with pytest.raises(ValueError):
            FileLimits(**bad)


def test_the_quota_counts_stored_files_and_uploads_in_progress(stores):
    s = stores(FileLimits(user_quota=1000, max_total=0))
    upload(s, b"a" * 400)
    pending = s.begin(400, USER, T0)
    e = refused(QUOTA, s.begin, 201, USER, T0)
    assert "800 bytes of 1000 bytes" in e.text
    upload(s, b"b" * 200)  # exactly the quota
    refused(QUOTA, s.begin, 1, USER, T0)
    assert upload(s, b"c" * 1000, uploader="a:2").size == 1000  # another uploader's own
    pending.abort()
    assert upload(s, b"d" * 400).size == 400
    refused(QUOTA, s.begin, 1, USER, T0)
    first = s.db.execute("SELECT id FROM files WHERE uploader = ? ORDER BY created, rowid",
                         (USER,)).fetchone()[0]
    s.delete(first)
    s.begin(400, USER, T0).abort()
    assert s.user_usage(USER) == 600
    unlimited = FileStore(None, FileLimits(user_quota=0, max_total=0)).open_store()
    try:
        for _ in range(3):
            upload(unlimited, b"z" * 600)
    finally:
        unlimited.close()


def test_the_upload_rate_is_a_token_bucket_per_uploader(stores):
    s = stores(FileLimits(uploads_per_hour=60, upload_burst=3))
    for _ in range(3):
        s.begin(1, USER, T0).abort()  # an upload begun counts, finished or not
    e = refused(RATE, s.begin, 1, USER, T0)
    assert "60 an hour" in e.text and "try again in 60 s" in e.text
    refused(RATE, s.begin, 1, USER, T0 + 59)  # refusals take no token, nor give one
    s.begin(1, "a:2", T0).abort()  # another uploader has its own bucket
    s.begin(1, USER, T0 + 60).abort()  # a minute: one token
    refused(RATE, s.begin, 1, USER, T0 + 61)
    refused(RATE, s.begin, 1, USER, T0 - 3600)  # a clock going back gives nothing
    for _ in range(3):
        s.begin(1, USER, T0 + 10_000).abort()  # a long pause: the burst again, no more
    refused(RATE, s.begin, 1, USER, T0 + 10_000)
    free = FileStore(None, FileLimits(uploads_per_hour=0)).open_store()
    try:
        for _ in range(100):
            free.begin(1, USER, T0).abort()
    finally:
        free.close()


def test_a_full_store_deletes_its_oldest_files_first(stores, data):
    folder = files_folder(data)
    s = stores(FileLimits(max_total=1000, user_quota=0))
    made = [upload(s, bytes([i]) * 300, f"f{i}.bin", now=T0 + i, uploader=f"a:{i}")
            for i in range(3)]
    assert s.usage() == (3, 900)
    late = upload(s, b"\xff" * 300, "late.bin", now=T0 + 10)  # 1200 > 1000: the oldest goes
    assert s.get(made[0].id) is None
    assert [s.get(f.id) is not None for f in made[1:]] == [True, True]
    assert s.usage() == (3, 900)
    consistent(s, folder)
    whole = upload(s, b"w" * 1000, "whole.bin", now=T0 + 11)  # everything else goes
    assert s.usage() == (1, 1000)
    assert s.get(late.id) is None and read(s, whole.id) == b"w" * 1000
    consistent(s, folder)


def test_room_is_made_by_age_even_when_the_oldest_are_someone_elses_duplicates(stores, data):
    s = stores(FileLimits(max_total=1000, user_quota=0))
    old = [upload(s, b"s" * 300, now=T0 + i) for i in range(3)]  # one blob, 900 counted
    upload(s, b"n" * 200, now=T0 + 5)  # 1100: the oldest row goes, the blob stays
    assert s.get(old[0].id) is None
    assert read(s, old[1].id) == b"s" * 300
    consistent(s, files_folder(data))


def test_uploads_in_progress_cannot_together_pass_the_total(stores):
    s = stores(FileLimits(max_total=1000, user_quota=0))
    a = s.begin(600, "a:1", T0)
    e = refused(STORE_FULL, s.begin, 600, "a:2", T0)
    assert "try again" in e.text
    b = s.begin(400, "a:2", T0)
    a.write(b"a" * 600)
    a.finish("a.bin", ROOM, T0)
    refused(STORE_FULL, s.begin, 601, "a:3", T0)
    s.begin(600, "a:3", T0).abort()
    b.abort()


def test_expire_deletes_the_files_past_max_age(stores, data):
    folder = files_folder(data)
    s = stores(FileLimits(max_age=30 * DAY))
    old = upload(s, b"old", now=T0)
    shared_old = upload(s, b"shared", now=T0 + 1)
    shared_new = upload(s, b"shared", now=T0 + 20 * DAY)
    new = upload(s, b"new", now=T0 + 29 * DAY)
    assert s.expire(T0 + 30 * DAY) == 0  # exactly 30 days old: kept
    assert s.expire(T0 + 30 * DAY + 2) == 2
    assert s.get(old.id) is None and s.get(shared_old.id) is None
    assert read(s, shared_new.id) == b"shared" and read(s, new.id) == b"new"
    consistent(s, folder)
    assert s.expire(T0 + 1000 * DAY) == 2
    assert s.usage() == (0, 0) and blobs_on_disk(folder) == set()


def test_expire_works_in_chunks_and_max_age_zero_keeps_everything():
    s = FileStore(None, FileLimits(max_age=DAY, uploads_per_hour=0)).open_store()
    try:
        for i in range(1203):
            upload(s, str(i % 1100).encode(), now=T0 + i / 1000)
        assert s.expire(T0 + DAY + 1.0995) == 1100
        assert s.usage()[0] == 103
        consistent(s, s._root)
    finally:
        s.close()
    forever = FileStore(None, FileLimits(max_age=0)).open_store()
    try:
        upload(forever, b"x", now=T0)
        assert forever.expire(T0 + 10_000 * DAY) == 0
        assert forever.usage() == (1, 1)
    finally:
        forever.close()


def test_file_errors_are_client_errors_with_stable_codes():
    e = FileError(QUOTA, "upload quota exceeded")
    assert isinstance(e, ClientError)
    assert e.line() == "ERROR: upload quota exceeded"
    assert e.line(codes=True) == "@code=quota ERROR: upload quota exceeded"
    assert len(set(CODES)) == len(CODES)
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", c) for c in CODES)


# ---- abort, threads, close -----------------------------------------------------------------------

def test_an_upload_left_by_an_exception_is_aborted(store, data):
    with pytest.raises(ZeroDivisionError), store.begin(100, USER, T0) as w:
        w.write(b"x" * 50)
        assert len(temporary(files_folder(data))) == 1
        raise ZeroDivisionError
    assert temporary(files_folder(data)) == []
    assert store.status()["uploads"] == 0
    w.abort()  # twice: harmless


def test_close_aborts_the_uploads_in_progress(stores, data):
    s = stores()
    w = s.begin(100, USER, T0)
    w.write(b"x")
    s.close()
    assert temporary(files_folder(data)) == []
    refused(ABORTED, w.write, b"y")


def test_a_writer_may_write_in_one_thread_and_finish_in_another(store):
    body = random.Random(3).randbytes(1_000_000)
    w = store.begin(len(body), USER, T0)

    def pump() -> None:
        for i in range(0, len(body), 65536):
            w.write(body[i:i + 65536])

    t = threading.Thread(target=pump)
    t.start()
    t.join()
    assert read(store, w.finish("x.bin", ROOM, T0).id) == body


def test_abort_from_another_thread_stops_a_writer_thread(stores, data):
    s = stores(FileLimits(max_file=1 << 40, user_quota=0, max_total=0))
    w = s.begin(1 << 40, USER, T0)
    started = threading.Event()
    seen: list[FileError] = []

    def pump() -> None:
        chunk = b"x" * 65536
        try:
            while True:
                w.write(chunk)
                started.set()
        except FileError as e:
            seen.append(e)

    t = threading.Thread(target=pump)
    t.start()
    assert started.wait(30)
    w.abort()
    t.join(30)
    assert not t.is_alive()
    assert [e.code for e in seen] == [ABORTED]
    assert temporary(files_folder(data)) == []
    assert s.status()["uploads"] == 0


def test_uploads_of_the_same_bytes_from_many_threads_share_one_blob(store, data):
    body = random.Random(4).randbytes(200_000)
    made: list[StoredFile] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            f = upload(store, body, f"{i}.bin", uploader=f"a:{i}", chunk=10_000)
            made.append(f)
            if i % 2:
                assert store.delete(f.id)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.usage() == (4, 4 * len(body))
    consistent(store, files_folder(data))
    assert all(read(store, f.id) == body for f in made if store.get(f.id))


# ---- memory: streamed, never whole ---------------------------------------------------------------

def test_a_50_mb_upload_is_streamed_in_little_memory(store):
    size = 50 * MiB
    chunk = random.Random(5).randbytes(64 * 1024)
    expected = hashlib.sha256()
    tracemalloc.start()
    try:
        w = store.begin(size, USER, T0)
        for _ in range(size // len(chunk)):
            w.write(chunk)
            expected.update(chunk)
        f = w.finish("big.bin", ROOM, T0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 * MiB, f"peak {peak} bytes"
    assert (f.size, f.blob) == (size, expected.hexdigest())
    got = hashlib.sha256()
    reader = store.open(f.id)
    assert reader is not None
    with reader:
        while block := reader.read(1 << 20):
            got.update(block)
    assert got.hexdigest() == expected.hexdigest()


# ---- crashes -------------------------------------------------------------------------------------

KILLED_MID_WRITE = r"""
import sys
from pychat.router.files import FileStore
store = FileStore.in_folder(sys.argv[1]).open_store()
w = store.begin(10 * 65536, "a:1", 1.8e9)
for i in range(10):
    w.write(bytes([i]) * 65536)
    print(w.received, flush=True)
    sys.stdin.readline()  # the parent says go on, or kills
w.finish("never.bin", "#lobby", 1.8e9)
print("finished", flush=True)
"""


def test_a_writer_killed_mid_write_leaves_no_partial_file_and_no_row(stores, data):
    folder = files_folder(data)
    child = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, data], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    try:
        for n in range(1, 4):
            line = child.stdout.readline()
            if not line:
                child.wait(timeout=30)
                pytest.fail(f"the writer ended early: {child.stderr.read()}")
            assert int(line) == n * 65536
            if n < 3:
                child.stdin.write("\n")
                child.stdin.flush()
        parts = temporary(folder)  # the upload is on disk, unfinished
        assert len(parts) == 1
        assert os.path.getsize(os.path.join(folder, TMP, parts[0])) == 3 * 65536
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        for stream in (child.stdin, child.stdout, child.stderr):
            stream.close()
    assert child.returncode == -signal.SIGKILL
    assert len(temporary(folder)) == 1  # as the kill left it
    s = stores()
    assert temporary(folder) == []
    assert s.usage() == (0, 0)
    assert blobs_on_disk(folder) == set()
    assert table(folder, "SELECT COUNT(*) FROM files") == [(0,)]


KILLED_ANYWHERE = r"""
import random, sys
from pychat.router.files import FileLimits, FileStore
store = FileStore.in_folder(sys.argv[1], FileLimits(uploads_per_hour=0)).open_store()
i = int(sys.argv[2])
while True:
    # every fourth file repeats an earlier one's bytes: the dedupe path is killed too
    seed = i - i % 4 if i % 4 == 3 else i
    body = random.Random(seed).randbytes(20_000 + seed % 7 * 9_000)
    with store.begin(len(body), "a:1", 1.8e9 + i) as w:
        for k in range(0, len(body), 4096):
            w.write(body[k:k + 4096])
        f = w.finish(f"f{i}.bin", "#lobby", 1.8e9 + i)
    # whole lines in one write each (print writes its pieces apart when stdout is unbuffered,
    # PYTHONUNBUFFERED=1: a kill between them left a line cut short)
    sys.stdout.write(f"{f.id} {f.blob} {i}\n")  # after its commit
    sys.stdout.flush()
    if i % 5 == 4:
        store.delete(f.id)  # deletes are killed too
        sys.stdout.write(f"deleted {f.id}\n")
        sys.stdout.flush()
    i += 1
"""


def test_a_writer_killed_anywhere_keeps_every_file_it_reported_and_nothing_partial(stores, data):
    """Three rounds on one folder: a child uploads (and deletes) files until it is SIGKILLed
    after it reported N of them, at any step (mid-write, fsync, rename, commit, unlink). The
    store then opens clean: every file reported is there with its bytes, at most the one it
    had not reported yet is more, no temporary file and no blob without a row remain."""
    folder = files_folder(data)
    kept: dict[str, str] = {}
    started = 0
    for after in (1, 17, 40):
        child = subprocess.Popen([sys.executable, "-c", KILLED_ANYWHERE, data, str(started)],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        assert child.stdout is not None and child.stderr is not None
        lines: list[str] = []
        try:
            while sum(1 for x in lines if not x.startswith("deleted")) < after:
                line = child.stdout.readline()
                if not line:
                    child.wait(timeout=30)
                    pytest.fail(f"the writer ended early: {child.stderr.read()}")
                lines.append(line.strip())
        finally:
            child.send_signal(signal.SIGKILL)
            lines += child.stdout.read().splitlines()  # printed before it died: committed too
            child.wait(timeout=30)
            child.stdout.close()
            child.stderr.close()
        assert child.returncode == -signal.SIGKILL
        uploaded = 0
        maybe_deleted = ""  # the last file reported, if the child was to delete it next
        for line in lines:
            words = line.split()
            if words[0] == "deleted":
                kept.pop(words[1], None)
                maybe_deleted = ""
            else:
                kept[words[0]] = words[1]
                uploaded += 1
                maybe_deleted = words[0] if int(words[2]) % 5 == 4 else ""
        s = stores()
        consistent(s, folder)
        rows = {r[0]: r[1] for r in s.db.execute("SELECT id, blob FROM files")}
        extra, missing = set(rows) - set(kept), set(kept) - set(rows)
        # at most one step not reported: an upload committed, or a delete
        assert len(extra) + len(missing) <= 1
        assert missing <= {maybe_deleted}
        for file_id in missing:
            del kept[file_id]
        for file_id, digest in kept.items():
            assert rows[file_id] == digest
            assert hashlib.sha256(read(s, file_id)).hexdigest() == digest
        kept = rows
        s.close()
        started += uploaded + 1
    assert table(folder, "PRAGMA integrity_check") == [("ok",)]


def test_open_removes_leftovers_and_forgets_files_whose_bytes_are_gone(stores, data):
    folder = files_folder(data)
    s = stores()
    keep = upload(s, b"keep me", "keep.txt")
    lost = upload(s, b"lost bytes", "lost.txt")
    s.close()
    orphan = hashlib.sha256(b"renamed, then killed before the commit").hexdigest()
    os.makedirs(os.path.join(folder, BLOBS, orphan[:2]), exist_ok=True)
    with open(os.path.join(folder, BLOBS, orphan[:2], orphan[2:]), "wb") as f:
        f.write(b"renamed, then killed before the commit")
    with open(os.path.join(folder, TMP, "0123456789abcdef.part"), "wb") as f:
        f.write(b"half an upload")
    os.unlink(os.path.join(folder, BLOBS, lost.blob[:2], lost.blob[2:]))
    s = stores()
    consistent(s, folder)
    assert s.get(keep.id) == keep and s.get(lost.id) is None
    assert blobs_on_disk(folder) == {keep.blob}


# ---- a damaged or newer table --------------------------------------------------------------------

@pytest.mark.parametrize("garbage", [b"not a database at all\n" * 200,
                                     random.Random(13).randbytes(8192),
                                     b"SQLite format 3\x00" + b"\xff" * 4000],
                         ids=["text", "random bytes", "a header over garbage"])
def test_a_damaged_table_is_refused_with_one_line(data, garbage):
    os.makedirs(files_folder(data))
    with open(os.path.join(files_folder(data), FILENAME), "wb") as f:
        f.write(garbage)
    with pytest.raises(FileStoreError, match=FILENAME) as e:
        FileStore.in_folder(data).open_store()
    assert "\n" not in str(e.value)


def test_a_table_from_a_newer_pychat_is_refused(stores, data):
    stores().close()
    db = sqlite3.connect(os.path.join(files_folder(data), FILENAME))
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(FileStoreError, match="newer pychat"):
        FileStore.in_folder(data).open_store()


def test_a_folder_that_cannot_be_made_is_refused(tmp_path):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(FileStoreError, match="cannot create files folder"):
        FileStore.in_folder(str(tmp_path / "file" / "data")).open_store()


# ---- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, name", [
    ("cat.png", "cat.png"),
    ("holiday photo 2026.jpeg", "holiday photo 2026.jpeg"),
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\system32\\evil.dll", "evil.dll"),
    ("C:\\Users\\me\\Desktop\\report.pdf", "report.pdf"),
    ("C:report.pdf", "report.pdf"),
    ("/", "file"), ("..", "file"), (".", "file"), ("", "file"), ("   ", "file"),
    (".bashrc", "bashrc"), ("...hidden", "hidden"), ("name.", "name"), ("a..b...c", "a.b.c"),
    ("invoice\u202efdp.exe", "invoicefdp.exe"),  # right-to-left override: shows "exe.pdf"
    ("a\u2066b\u2069c\u200fd\ufeff.txt", "abcd.txt"),
    ("bell\x07 and\x1b[31m red\x7f\x9b.txt", "bell and[31m red.txt"),
    ("tabs\tand\nnew\r\nlines.txt", "tabs and new lines.txt"),
    ("   lots    of   space   .txt", "lots of space .txt"),
    ('what? "this" <b>|*:.txt', "what_ _this_ _b____.txt"),
    ("CON", "_CON"), ("nul.txt", "_nul.txt"), ("com1.tar.gz", "_com1.tar.gz"),
    ("console.txt", "console.txt"),
    ("cafe\u0301.txt", "café.txt"),  # NFC
    ("\ud800lone.txt", "lone.txt"),
    ("x" * 150 + ".png", "x" * 96 + ".png"),
    ("y" * 150, "y" * 100),
    ("z" * 150 + ".extensiontoolongtobeone", ("z" * 150 + ".extensiontoolongtobeone")[:100]),
    ("日本語のファイル名.txt", "日本語のファイル名.txt"),
])
def test_safe_name(raw, name):
    assert safe_name(raw) == name


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=300) | st.text(st.sampled_from("./\\.: ab\u202e\x00\t.."), max_size=40))
def test_safe_name_is_always_a_safe_base_name(raw):
    name = safe_name(raw)
    assert 0 < len(name) <= NAME_MAX
    assert "/" not in name and "\\" not in name and ".." not in name
    assert not name.startswith((".", " ")) and not name.endswith((".", " "))
    assert "  " not in name
    assert not any(ord(c) < 32 or 0x7f <= ord(c) < 0xa0 for c in name)
    assert not any(0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069 for c in name)
    assert not set(name) & set('<>:"|?*')
    assert safe_name(name) == name  # idempotent
    encoded = url_name(name)
    assert "/" not in encoded and unquote(encoded) == name
    assert re.fullmatch(r"[A-Za-z0-9%._~-]+", encoded)


@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zs", "Zl", "Zp"),
                             blacklist_characters="./\\<>:\"|?*"), min_size=120, max_size=300),
       st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True))
def test_a_long_name_keeps_its_extension(stem, ext):
    name = safe_name(f"{stem}.{ext}")
    assert name.endswith("." + ext) and len(name) <= NAME_MAX


# ---- types ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("head, name, kind", [
    (PNG_BYTES, "a.png", PNG), (PNG_BYTES, "a.html", PNG), (JPEG_BYTES, "a", JPEG),
    (b"GIF89a\x01\x00\x01\x00", "", GIF), (b"GIF87a", "", GIF),
    (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "", WEBP), (b"RIFF\x24\x00\x00\x00WAVEfmt ", "", WAV),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "", PDF), (b"PK\x03\x04\x14\x00", "a.docx", ZIP),
    (b"PK\x05\x06" + b"\0" * 18, "", ZIP), (b"\x1f\x8b\x08\x00", "", GZ),
    (b"\x00\x00\x00\x18ftypmp42", "", MP4), (b"\x00\x00\x00\x14ftypqt  ", "", MOV),
    (b"\x00\x00\x00\x20ftypM4A ", "", M4A), (b"\x00\x00\x00\x08wide", "old.mov", MOV),
    (b"\x00\x00\x00\x08wide", "old.bin", BINARY), (b"ID3\x04\x00\x00", "", MP3),
    (b"\xff\xfb\x90\x64", "song.mp3", MP3), (b"\xff\xfb\x90\x64", "song.bin", BINARY),
    (b"OggS\x00\x02", "", OGG),
    (b"hello, world\n", "a.txt", TEXT), ("naïve ünïcode ✓\n".encode(), "", TEXT), (b"", "", TEXT),
    ("é".encode()[:1], "", TEXT),  # the head may end inside a character
    (b"\xef\xbb\xbfwith a BOM", "", TEXT),
    (HTML_BYTES, "index.html", TEXT), (SVG_BYTES, "pic.svg", TEXT), (SCRIPT_BYTES, "x.png", TEXT),
    (b"var x = 1; alert(x);", "app.js", TEXT), (b"<?xml version='1.0'?><a/>", "a.xml", TEXT),
    (EXE_BYTES, "cute.png", BINARY), (b"\x7fELF\x02\x01\x01\x00", "cat.gif", BINARY),
    (b"text with a NUL\x00", "a.txt", BINARY), (b"\xc3\x28 invalid UTF-8", "a.txt", BINARY),
    ("<html>".encode("utf-16"), "a.html", BINARY),
])
def test_sniff_reads_the_bytes_not_the_name(head, name, kind):
    assert sniff(head, name) == kind


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=SNIFF_BYTES + 100), st.text(max_size=30))
def test_sniff_never_gives_a_type_that_runs_script(head, name):
    kind = sniff(head, name)
    assert kind in TYPES
    assert not re.search(r"html|svg|xml|javascript|ecmascript", kind)
    assert kind == sniff(head[:SNIFF_BYTES], "x") or kind in (MP3, MOV)  # only weak ones ask
    if b"\x00" in head[:SNIFF_BYTES] and kind == TEXT:
        pytest.fail("text with a NUL")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_text_is_text_whatever_it_says(text):
    body = text.encode("utf-8", "surrogatepass")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return
    if "\x00" not in text and not body.startswith((b"GIF8", b"%PDF-", b"OggS", b"ID3",
                                                   b"RIFF", b"PK")) and body[4:8] != b"ftyp":
        assert sniff(body, "page.html") == TEXT


@pytest.mark.parametrize("name, kind, fitted", [
    ("cat.png", PNG, "cat.png"), ("cat.PNG", PNG, "cat.PNG"), ("cat.html", PNG, "cat.html.png"),
    ("cat", PNG, "cat.png"), ("photo.jpeg", JPEG, "photo.jpeg"), ("photo.png", JPEG,
                                                                   "photo.png.jpg"),
    ("report.docx", ZIP, "report.docx"), ("archive.tar.gz", GZ, "archive.tar.gz"),
    ("pic.svgz", GZ, "pic.svgz.gz"),
    ("cat.png", TEXT, "cat.png.txt"), ("index.html", TEXT, "index.html.txt"),
    ("pic.svg", TEXT, "pic.svg.txt"), ("app.js", TEXT, "app.js.txt"),
    ("notes.md", TEXT, "notes.md"), ("main.py", TEXT, "main.py"), ("README", TEXT, "README"),
    ("cute.png", BINARY, "cute.png.bin"), ("setup.exe", BINARY, "setup.exe"),
    ("backup.tar.xz", BINARY, "backup.tar.xz"), ("page.htm", BINARY, "page.htm.bin"),
    ("x" * 90 + ".png", TEXT, "x" * 90 + ".png.txt"),
    ("x" * 98 + ".png", TEXT, "x" * 96 + ".txt"),  # the end of the stem goes, not the truth
])
def test_a_misleading_extension_gets_the_truth_appended(name, kind, fitted):
    assert fit_name(name, kind) == fitted
    assert fit_name(fitted, kind) == fitted


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=150), st.sampled_from(TYPES))
def test_fit_name_keeps_names_safe_and_is_idempotent(raw, kind):
    name = fit_name(safe_name(raw), kind)
    assert safe_name(name) == name
    assert fit_name(name, kind) == name
    ext = name.rpartition(".")[2].lower() if "." in name else ""
    assert ext not in ("html", "htm", "svg", "xml", "js")


@pytest.mark.parametrize("kind, shown", [
    (PNG, "inline"), (JPEG, "inline"), (GIF, "inline"), (WEBP, "inline"), (TEXT, "inline"),
    (PDF, "attachment"), (ZIP, "attachment"), (MP4, "attachment"), (BINARY, "attachment"),
    ("image/svg+xml", "attachment"), ("text/html", "attachment"),
    ("text/plain", "attachment"),  # only our own text type (with its charset) is shown
])
def test_only_images_and_plain_text_are_inline(kind, shown):
    assert disposition(kind, "a.bin").split(";")[0] == shown


def test_disposition_carries_the_name_by_rfc_6266():
    got = disposition(PNG, 'café "x" 100%.png')
    assert got == ("inline; filename=\"caf_ _x_ 100_.png\"; "
                   "filename*=UTF-8''caf%C3%A9%20%22x%22%20100%25.png")
    assert disposition(BINARY, "日本.zip").startswith('attachment; filename="__.zip"; ')


def test_uploaded_html_svg_and_script_are_served_as_text_that_cannot_run(store):
    """The three classic attacks, through the store: an HTML page, an SVG with script, and
    `<script>` in a file named .png. Each is plain text (shown, not run: nosniff and a
    sandboxing policy), and its name says so."""
    for body, raw, name in ((HTML_BYTES, "index.html", "index.html.txt"),
                            (SVG_BYTES, "logo.svg", "logo.svg.txt"),
                            (SCRIPT_BYTES, "cute.png", "cute.png.txt")):
        f = upload(store, body, raw)
        assert (f.type, f.name) == (TEXT, name)
        headers = dict(response_headers(f))
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in headers["Content-Security-Policy"]
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["Content-Disposition"].startswith("inline; ")
        assert headers["Content-Length"] == str(len(body))
        assert headers["Referrer-Policy"] == "no-referrer"


def test_an_executable_named_png_is_an_attachment_and_a_real_png_is_inline(store):
    exe = upload(store, EXE_BYTES, "cute.png")
    assert (exe.type, exe.name) == (BINARY, "cute.png.bin")
    assert exe.disposition.startswith("attachment; filename=\"cute.png.bin\"")
    png = upload(store, PNG_BYTES, "../screenshot.html")
    assert (png.type, png.name) == (PNG, "screenshot.html.png")
    assert png.disposition.startswith("inline; ")
    assert png.path == f"/files/{png.id}/screenshot.html.png"
    spaced = upload(store, PNG_BYTES, "my cat/ü.png")
    assert spaced.path == f"/files/{spaced.id}/%C3%BC.png"


# ---- the invariants under any sequence of operations ---------------------------------------------

operations = st.lists(st.one_of(
    st.tuples(st.just("upload"), st.integers(0, 5), st.integers(0, 400), st.integers(0, 2)),
    st.tuples(st.just("short"), st.integers(1, 300)),
    st.tuples(st.just("delete"), st.integers(0, 30)),
    st.tuples(st.just("expire"), st.integers(0, 50)),
), max_size=40)


@settings(max_examples=60, deadline=None)
@given(operations)
def test_any_sequence_of_operations_keeps_the_store_consistent(ops):
    """A model (id -> bytes) next to the store: after every step the store holds exactly the
    model's files, within its total, and its blobs are exactly those its rows name."""
    limits = FileLimits(max_total=1000, user_quota=700, uploads_per_hour=0, max_age=40)
    s = FileStore(None, limits).open_store()
    model: dict[str, tuple[bytes, float, str]] = {}  # id -> (bytes, created, uploader)
    now = T0
    try:
        for op in ops:
            now += 1
            if op[0] == "upload":
                _, seed, size, who = op
                body = bytes([seed]) * size
                uploader = f"a:{who}"
                used = sum(len(b) for b, _, u in model.values() if u == uploader)
                if used + size > limits.user_quota:
                    refused(QUOTA, s.begin, size, uploader, now)
                    continue
                f = upload(s, body, uploader=uploader, now=now, chunk=97)
                while sum(len(b) for b, _, _ in model.values()) + size > limits.max_total:
                    oldest = min(model, key=lambda k: model[k][1])
                    del model[oldest]
                model[f.id] = (body, now, uploader)
            elif op[0] == "short":
                w = s.begin(op[1], "short", now)
                w.write(b"s" * (op[1] - 1))
                refused(SIZE_MISMATCH, w.finish, "x", ROOM, now)
            elif op[0] == "delete":
                if model:
                    victim = sorted(model)[op[1] % len(model)]
                    assert s.delete(victim)
                    del model[victim]
            else:
                now += op[1]
                s.expire(now)
                model = {k: v for k, v in model.items() if v[1] >= now - limits.max_age}
            assert s.usage() == (len(model), sum(len(b) for b, _, _ in model.values()))
            assert s.usage()[1] <= limits.max_total
        consistent(s, s._root)
        for file_id, (body, _, uploader) in model.items():
            assert read(s, file_id) == body
            assert s.user_usage(uploader) == sum(len(b) for b, _, u in model.values()
                                                 if u == uploader)
    finally:
        s.close()
