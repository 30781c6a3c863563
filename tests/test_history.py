"""History stores: the in-memory one (pure) and SqliteHistory on a file in tmp_path.

SqliteHistory is driven directly, as the router drives it (append, append_private, recent,
close), with its writer thread running; the file is checked with a separate sqlite3
connection. Waiting for the writer is for a condition with a deadline (``eventually``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time

import pytest

from pychat.router.history import MemoryHistory
from pychat.router.sqlite_history import FILENAME, HistoryError, SqliteHistory
from pychat.wire.replies import format_time

T0 = 1795692882.123  # 2026-11-26T11:34:42.123Z
DAY = 86400.0


def eventually(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def rows(path, sql="SELECT room, stamp, line FROM messages ORDER BY id"):
    with sqlite3.connect(os.path.join(path, FILENAME)) as db:
        return db.execute(sql).fetchall()


class FakeClock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def stamp(i: int, base: float = T0) -> str:
    return format_time(base + i)


# ---- MemoryHistory --------------------------------------------------------------------------

def test_memory_keeps_the_last_per_room_oldest_first():
    h = MemoryHistory(per_room=3)
    for i in range(5):
        h.append("#a", stamp(i), f"m{i}")
    h.append("#b", stamp(9), "other")
    assert h.recent("#a", 10) == [(stamp(i), f"m{i}") for i in (2, 3, 4)]
    assert h.recent("#a", 1) == [(stamp(4), "m4")]
    assert h.recent("#a", 0) == [] and h.recent("#none", 5) == []
    h.append_private(stamp(10), "111111", "222222", "[Private] 111111: x")  # ignored
    assert h.recent("#b", 5) == [(stamp(9), "other")]


def test_memory_expire_drops_what_is_older_than_the_cutoff():
    h = MemoryHistory()
    for i in range(5):
        h.append("#a", stamp(i), f"m{i}")
    h.expire("#a", stamp(3))
    assert [line for _, line in h.recent("#a", 10)] == ["m3", "m4"]
    h.expire("#a", stamp(99))
    assert h.recent("#a", 10) == []
    h.expire("#none", stamp(0))


# ---- SqliteHistory: persistence -------------------------------------------------------------

def test_messages_survive_close_and_open_with_their_stamps_in_order(opened, tmp_path):
    h = opened(max_age=0)
    sent = [(stamp(i), f"111111: m{i}") for i in range(5)]
    for s, line in sent:
        h.append("#a", s, line)
    h.append("#b", stamp(7), "222222: elsewhere")
    assert h.recent("#a", 20) == sent  # served from memory at once
    h.close()
    assert rows(tmp_path / "data") == [("#a", s, ln) for s, ln in sent] + [
        ("#b", stamp(7), "222222: elsewhere")]
    again = opened(max_age=0)
    assert again.recent("#a", 20) == sent
    assert again.recent("#a", 2) == sent[-2:]
    assert again.recent("#b", 20) == [(stamp(7), "222222: elsewhere")]


def test_the_file_is_in_wal_mode(opened, tmp_path):
    opened()
    with sqlite3.connect(tmp_path / "data" / FILENAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_writes_are_batched_off_the_callers_thread(opened, tmp_path):
    h = opened(max_age=0)
    for i in range(1200):
        h.append("#a", stamp(i), f"m{i}")
    eventually(lambda: h.written == 1200)
    n = rows(tmp_path / "data", "SELECT COUNT(*) FROM messages")[0][0]
    assert n == 1200


def test_append_does_not_wait_for_a_slow_disk(opened, tmp_path):
    h = opened(max_age=0, write_delay=0.5)  # the writer sleeps 0.5 s per batch
    t = time.perf_counter()
    for i in range(2000):
        h.append("#a", stamp(i), f"m{i}")
    elapsed = time.perf_counter() - t
    assert elapsed < 0.25, elapsed  # 2000 appends; one slow batch alone would take 0.5 s
    assert len(h.recent("#a", 200)) == 200
    h.close(timeout=30)  # close writes everything still queued
    assert rows(tmp_path / "data", "SELECT COUNT(*) FROM messages")[0][0] == 2000


def test_nothing_is_loaded_at_start_and_a_room_asked_for_reads_its_last_200(opened, tmp_path):
    h = opened(max_age=0)
    for i in range(250):
        h.append("#a", stamp(i), f"m{i}")
    for i in range(3):
        h.append("#b", stamp(i), f"b{i}")
    h.close()
    again = opened(max_age=0)
    assert len(again.cache) == 0  # lazy: nothing read at start
    got = again.recent("#a", 200)
    assert len(got) == 200 and got[0][1] == "m50" and got[-1][1] == "m249"
    assert "#a" in again.cache and "#b" not in again.cache
    assert again.recent("#a", 3) == got[-3:]  # now from memory
    assert [line for _, line in again.recent("#b", 200)] == ["b0", "b1", "b2"]
    assert again.cold_reads == 2


# ---- retention ------------------------------------------------------------------------------

def test_per_room_retention_in_the_file_and_in_memory(opened, tmp_path):
    h = opened(per_room=10, max_age=0)
    for i in range(25):
        h.append("#a", stamp(i), f"m{i}")
        h.append("#b", stamp(i), f"b{i}")
    assert [line for _, line in h.recent("#a", 200)] == [f"m{i}" for i in range(15, 25)]
    h.close()
    # in the file, a room may pass the limit by a little between trims, never by much
    counts = dict(rows(tmp_path / "data", "SELECT room, COUNT(*) FROM messages GROUP BY room"))
    assert all(10 <= n <= 11 for n in counts.values()), counts
    again = opened(per_room=10, max_age=0)  # the writer's first sweep trims every room exactly
    assert again.wait_retention(1, 10)
    counts = dict(rows(tmp_path / "data", "SELECT room, COUNT(*) FROM messages GROUP BY room"))
    assert counts == {"#a": 10, "#b": 10}
    assert [line for _, line in again.recent("#a", 200)] == [f"m{i}" for i in range(15, 25)]


def test_a_lower_per_room_limit_applies_at_start(opened, tmp_path):
    h = opened(per_room=100, max_age=0)
    for i in range(50):
        h.append("#a", stamp(i), f"m{i}")
    h.close()
    again = opened(per_room=5, max_age=0)
    assert again.wait_retention(1, 10)
    assert rows(tmp_path / "data", "SELECT line FROM messages") == [
        (f"m{i}",) for i in range(45, 50)]
    assert len(again.recent("#a", 200)) == 5


def test_age_retention_hides_expired_messages_and_removes_them_at_start(opened, tmp_path):
    clock = FakeClock(T0)
    h = opened(max_age=2 * DAY, clock=clock, host_clock=clock)
    h.append("#a", format_time(T0 - 3 * DAY), "old")
    h.append("#a", format_time(T0 - 1 * DAY), "recent")
    h.append("#a", format_time(T0), "new")
    assert [line for _, line in h.recent("#a", 20)] == ["recent", "new"]
    clock.t = T0 + 1.5 * DAY  # "recent" is 2.5 days old now
    assert [line for _, line in h.recent("#a", 20)] == ["new"]
    h.close()
    assert len(rows(tmp_path / "data")) == 3  # the file is purged at start and every minute
    again = opened(max_age=2 * DAY, clock=clock, host_clock=clock)
    assert [line for _, line in again.recent("#a", 20)] == ["new"]
    assert again.wait_retention(1, 10)
    assert [r[2] for r in rows(tmp_path / "data")] == ["new"]


def test_max_age_zero_keeps_everything(opened, tmp_path):
    h = opened(max_age=0, clock=FakeClock(T0 + 3650 * DAY))
    h.append("#a", format_time(T0), "ten years ago")
    assert h.recent("#a", 5) == [(format_time(T0), "ten years ago")]


# ---- private messages -----------------------------------------------------------------------

def test_private_messages_are_not_stored_unless_enabled(opened, tmp_path):
    h = opened()
    h.append_private(stamp(0), "111111", "222222", "[Private] 111111: secret")
    h.append("#a", stamp(1), "111111: public")
    h.close()
    assert rows(tmp_path / "data", "SELECT * FROM private_messages") == []
    assert [r[2] for r in rows(tmp_path / "data")] == ["111111: public"]


def test_private_messages_when_enabled_go_to_their_own_table_never_to_recent(opened, tmp_path):
    h = opened(private=True, max_age=0)
    h.append_private(stamp(0), "111111", "222222", "[Private] 111111: secret")
    h.append("#a", stamp(1), "111111: public")
    assert h.recent("#a", 20) == [(stamp(1), "111111: public")]
    h.close()
    assert rows(tmp_path / "data", "SELECT stamp, sender, target, line FROM private_messages") \
        == [(stamp(0), "111111", "222222", "[Private] 111111: secret")]
    again = opened(private=True, max_age=0)
    assert again.recent("#a", 20) == [(stamp(1), "111111: public")]


# ---- a file that cannot be used: found at start ---------------------------------------------

def test_a_file_that_is_not_a_database_is_refused_at_start(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / FILENAME).write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(HistoryError, match=r"cannot use history file .*: file is not a "
                                           r"database"):
        SqliteHistory(str(tmp_path / "data")).open()


def test_a_damaged_database_is_refused_at_start(opened, tmp_path):
    h = opened(max_age=0)
    for i in range(3000):
        h.append(f"#r{i % 7}", stamp(i), f"{i:06d}: " + "x" * 200)
    h.close()
    path = tmp_path / "data" / FILENAME
    with sqlite3.connect(path) as db:  # fold the WAL into the file, so the damage sticks
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    data[10 * page:12 * page] = b"\xff" * (2 * page)  # two pages in the middle: garbage
    path.write_bytes(bytes(data))
    with pytest.raises(HistoryError, match=r"(damaged|malformed)"):
        SqliteHistory(str(tmp_path / "data")).open()


def test_a_data_folder_that_is_a_file_is_refused_at_start(tmp_path):
    (tmp_path / "data").write_text("a file, not a folder")
    with pytest.raises(HistoryError, match=r"data folder .*data"):
        SqliteHistory(str(tmp_path / "data")).open()


def test_a_history_file_that_is_a_folder_is_refused_at_start(tmp_path):
    (tmp_path / "data" / FILENAME).mkdir(parents=True)
    with pytest.raises(HistoryError, match=r"cannot use history file .*: unable to open"):
        SqliteHistory(str(tmp_path / "data")).open()


def test_a_database_of_something_else_is_refused_at_start(tmp_path):
    (tmp_path / "data").mkdir()
    with sqlite3.connect(tmp_path / "data" / FILENAME) as db:
        db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body BLOB)")
    with pytest.raises(HistoryError, match=r"not a pychat history: table messages"):
        SqliteHistory(str(tmp_path / "data")).open()


def test_a_file_from_a_newer_pychat_is_refused_at_start(tmp_path):
    (tmp_path / "data").mkdir()
    with sqlite3.connect(tmp_path / "data" / FILENAME) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(HistoryError, match=r"schema version 99"):
        SqliteHistory(str(tmp_path / "data")).open()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only files anyway")
def test_a_read_only_file_is_refused_at_start(opened, tmp_path):
    opened().close()
    os.chmod(tmp_path / "data" / FILENAME, 0o444)
    with pytest.raises(HistoryError, match="readonly"):
        SqliteHistory(str(tmp_path / "data")).open()


# ---- a write error later: logged, chat goes on ------------------------------------------------

def test_a_write_error_is_logged_and_retried_and_nothing_blocks(opened, tmp_path, caplog):
    caplog.set_level(logging.INFO, "pychat.history")
    h = opened(max_age=0)
    h.append("#a", stamp(0), "m0")
    eventually(lambda: h.written == 1)
    blocker = sqlite3.connect(tmp_path / "data" / FILENAME, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the file: writes fail
    try:
        t = time.perf_counter()
        for i in range(1, 4):
            h.append("#a", stamp(i), f"m{i}")
        assert time.perf_counter() - t < 0.05  # the caller never waits for the lock
        eventually(lambda: h.failing)
        assert any("cannot write to" in m and "chat goes on" in m for m in caplog.messages)
        assert [line for _, line in h.recent("#a", 5)] == ["m0", "m1", "m2", "m3"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    eventually(lambda: h.written == 4 and not h.failing)  # retried, nothing lost
    assert any("writing to" in m and "again" in m for m in caplog.messages)
    h.close()
    assert [r[2] for r in rows(tmp_path / "data")] == ["m0", "m1", "m2", "m3"]
    assert h.lost == 0


def test_past_max_pending_appends_are_counted_not_queued(opened, tmp_path):
    h = opened(max_age=0, max_pending=10, write_delay=0.3)
    assert h.recent("#a", 200) == []  # the room's tail is held from now on
    for i in range(100):
        h.append("#a", stamp(i), f"m{i}")
    assert h.dropped > 0
    assert len(h.recent("#a", 200)) == 100  # /history still has them all while running
    assert h.status()["lost"] >= h.dropped
