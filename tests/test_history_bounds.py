"""History under abuse: memory that stays bounded, retention that runs on its own, a private
archive bounded per sender, and a clock that moved deleting nothing.

The stores are driven as the router drives them (append, append_private, recent, close) with
their writer thread running, on files in tmp_path. Waiting for the writer is for a condition:
``wait_retention`` (a condition variable the writer notifies after each retention run) or
``eventually`` (a condition polled with a deadline). Memory is measured twice: by counting what
the stores hold, and by the RSS of a child process (``/proc/self/statm``) that fills a store
with 20,000 rooms, then opens it again.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import tracemalloc

import pytest

from pychat.router.history import MemoryHistory
from pychat.router.sqlite_history import FILENAME
from pychat.wire.replies import format_time
from support.procs import ROOT

from .test_history import DAY, T0, FakeClock, eventually, rows, stamp

ROOMS = 20_000


def lines(items):
    return [line for _, line in items]


# ---- MemoryHistory: bounded as a whole ------------------------------------------------------

def test_memory_store_holds_at_most_max_rooms_least_recently_used_evicted():
    h = MemoryHistory(max_rooms=100)
    for i in range(ROOMS):
        h.append(f"#r{i}", stamp(i), f"m{i}")
        if i % 50 == 0:
            h.recent("#r0", 1)  # read now and then: #r0 stays
    assert len(h) == 100 and h.messages == 100
    assert h.evicted == ROOMS - 100
    assert lines(h.recent("#r0", 5)) == ["m0"]
    assert lines(h.recent(f"#r{ROOMS - 1}", 5)) == [f"m{ROOMS - 1}"]
    assert h.recent("#r5", 5) == []  # evicted: lost (memory only)


def test_memory_store_holds_at_most_max_bytes():
    h = MemoryHistory(max_rooms=10_000, max_bytes=200_000)
    for i in range(ROOMS):
        h.append(f"#r{i % 500}", stamp(i), f"{i:06d}: " + "x" * 300)
        assert h.bytes <= 200_000
    assert 0 < len(h) < 500


@pytest.mark.parametrize("rooms, per_room, size, char", [
    (2000, 1, 40, "x"), (50, 200, 100, "x"), (300, 20, 400, "x"),  # ASCII: close
    (50, 200, 100, "\u00e9"), (50, 200, 100, "\u4e2d"), (50, 200, 100, "\U0001f600")])
def test_the_byte_estimate_is_close_to_what_tracemalloc_sees(rooms, per_room, size, char):
    h = MemoryHistory(max_rooms=10**6, max_bytes=10**12)
    made = [(f"#room{r}", stamp(i), f"{i:06d}: " + char * size)  # made before measuring, as
            for r in range(rooms) for i in range(per_room)]  # the router makes them anyway
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for room, s, line in made:
            h.append(room, s, line)
        grew = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    real = grew + sum(sys.getsizeof(s) + sys.getsizeof(ln) for _, s, ln in made)
    if char.isascii():
        assert 0.7 <= real / h.bytes <= 1.3, (real, h.bytes)
    else:  # counted as 4 bytes a character: never much under what it takes
        assert real <= h.bytes * 1.1, (real, h.bytes)


def test_memory_store_keeps_each_held_tail_complete():
    h = MemoryHistory(per_room=3, max_rooms=2)
    for i in range(5):
        h.append("#a", stamp(i), f"a{i}")
    h.append("#b", stamp(5), "b0")
    h.append("#c", stamp(6), "c0")  # #a is the least recently used: evicted whole
    assert "#a" not in h and h.recent("#a", 5) == []
    assert not h.append_if_held("#a", stamp(7), "a5")  # not held: not started with one line
    assert "#a" not in h
    h.put("#a", [(stamp(i), f"a{i}") for i in range(2, 6)])
    assert lines(h.recent("#a", 9)) == ["a3", "a4", "a5"]
    assert h.append_if_held("#a", stamp(8), "a6")
    assert lines(h.recent("#a", 9)) == ["a4", "a5", "a6"]
    assert h.messages == sum(len(h.recent(r, 9)) for r in ("#a", "#b", "#c"))


# ---- SqliteHistory: 20,000 rooms ------------------------------------------------------------

def test_twenty_thousand_rooms_hold_nothing_in_memory_and_history_reads_them_back(opened):
    h = opened(max_age=0, cache_rooms=100)
    for i in range(ROOMS):
        h.append(f"#r{i}", stamp(i), f"{i:06d}: hello")
    assert len(h.cache) == 0  # nobody asked: no room's tail is held
    eventually(lambda: h.written == ROOMS, 60)
    h.recent("#r0", 1)  # the loop forgets what the writer committed
    assert not h._unsaved and not h._unsaved_order
    for i in range(0, ROOMS, 7):  # /history in a third of them
        assert lines(h.recent(f"#r{i}", 20)) == [f"{i:06d}: hello"]
    assert len(h.cache) == 100 and h.cache.bytes <= 100 * 2000
    assert len(h._counts) <= 10_000
    # an evicted room answers again, from the file
    assert lines(h.recent("#r7", 20)) == ["000007: hello"]


def test_after_a_restart_nothing_is_loaded_and_evicted_rooms_answer_in_order(opened):
    h = opened(max_age=0, cache_rooms=10)
    for k in range(3):
        for i in range(300):
            h.append(f"#r{i}", stamp(k * 1000 + i), f"r{i} n{k}")
    h.close()
    again = opened(max_age=0, cache_rooms=10)
    assert len(again.cache) == 0 and again.cold_reads == 0
    for i in range(300):
        assert lines(again.recent(f"#r{i}", 20)) == [f"r{i} n{k}" for k in range(3)]
    assert len(again.cache) == 10
    again.append("#r0", stamp(5000), "r0 n3")  # #r0 was evicted: the line goes to the file
    assert "#r0" not in again.cache
    assert lines(again.recent("#r0", 2)) == ["r0 n2", "r0 n3"]


def test_a_cold_read_includes_the_rows_still_waiting_for_the_writer(opened, tmp_path):
    h = opened(max_age=0, cache_rooms=10)
    for i in range(3):
        h.append("#a", stamp(i), f"saved {i}")
    eventually(lambda: h.written == 3)
    blocker = sqlite3.connect(tmp_path / "data" / FILENAME, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer cannot commit: rows wait in memory
    try:
        for i in range(4):
            h.append("#a", stamp(10 + i), f"waiting {i}")
            h.append("#b", stamp(10 + i), f"other {i}")
        eventually(lambda: h.failing)
        assert "#a" not in h.cache
        want = [f"saved {i}" for i in range(3)] + [f"waiting {i}" for i in range(4)]
        assert lines(h.recent("#a", 200)) == want
        assert lines(h.recent("#a", 2)) == want[-2:]
        assert lines(h.recent("#b", 200)) == [f"other {i}" for i in range(4)]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    eventually(lambda: h.written == 11 and not h.failing)
    h.cache.forget("#a")
    assert lines(h.recent("#a", 200)) == want  # from the file alone now


def test_a_row_committed_during_a_cold_read_is_counted_once(opened, monkeypatch):
    """The race the merge by id is for: a row both in the file and still in ``_unsaved``
    (committed after the loop last pruned)."""
    h = opened(max_age=0)
    for i in range(5):
        h.append("#a", stamp(i), f"m{i}")
    eventually(lambda: h.written == 5)
    monkeypatch.setattr(h, "_prune", lambda: None)  # the loop has not seen the commit yet
    assert len(h._unsaved["#a"]) == 5
    assert lines(h.recent("#a", 200)) == [f"m{i}" for i in range(5)]


def test_history_live_consistency_with_a_slow_writer(opened):
    """Appends, /history in rooms held and not held, and evictions interleaved while the
    writer lags: every answer is exactly the room's lines so far, in order."""
    h = opened(max_age=0, cache_rooms=3, write_delay=0.01, batch_rows=50)
    said: dict[str, list[str]] = {}
    for i in range(2000):
        room = f"#r{(i * 7) % 11}"
        said.setdefault(room, []).append(f"n{i}")
        h.append(room, stamp(i), f"n{i}")
        if i % 13 == 0:
            asked = f"#r{i % 11}"
            assert lines(h.recent(asked, 200)) == said.get(asked, [])[-200:], i
    h.close(timeout=60)
    again = opened(max_age=0, cache_rooms=3)
    for room, want in said.items():
        assert lines(again.recent(room, 200)) == want[-200:]


RSS_SCRIPT = r"""
import json, os, sys, time
from pychat.router.sqlite_history import SqliteHistory
from pychat.wire.replies import format_time

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

data, rooms, phase = sys.argv[1], int(sys.argv[2]), sys.argv[3]
before = rss()
h = SqliteHistory(data, max_age=0)
h.open()
opened = rss()
if phase == "fill":
    for i in range(rooms):
        h.append(f"#r{i}", format_time(1795692882.0 + i), f"{i:06d}: hello, anyone here?")
        if i % 3 == 0:
            h.recent(f"#r{i}", 20)
        if i % 1000 == 999:  # at the pace of a network, not of a loop: the writer keeps up
            deadline = time.monotonic() + 60
            while h.written < i + 1 and time.monotonic() < deadline:
                time.sleep(0.005)
    h.close(timeout=120)
    assert h.written == rooms, h.written
else:
    h.recent("#r0", 20)
after = rss()
print(json.dumps({"open": opened - before, "after": after - before,
                  "cached": len(h.cache._rooms), "written": h.written}))
"""


def run_rss(data: str, phase: str) -> dict:
    r = subprocess.run([sys.executable, "-c", RSS_SCRIPT, data, str(ROOMS), phase],
                       capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_rss_of_twenty_thousand_rooms_stays_bounded_and_a_restart_loads_nothing(tmp_path):
    """The figures of the issue: 20,000 rooms with a message each added 46.5 MB to the router,
    and a restart brought them all back. Here a child process fills a store (asking /history in
    a third of the rooms) and then opens it again; its RSS growth is measured each time."""
    data = str(tmp_path / "data")
    fill = run_rss(data, "fill")
    assert fill["written"] == ROOMS and fill["cached"] <= 1000
    # the default cache holds at most 1,000 tails (about 1 MB here); the rest is the SQLite
    # page caches (2 MB per connection) and the writer's counts. Holding all 20,000 tails, as
    # before, took 26 MB
    assert fill["after"] < 12 * 2**20, fill
    restart = run_rss(data, "reopen")
    assert restart["open"] < 8 * 2**20, restart  # nothing loaded (all of them: 25 MB)
    assert restart["after"] < 8 * 2**20, restart
    assert restart["cached"] == 1


# ---- retention on its own -------------------------------------------------------------------

class Steady:
    """A wall clock that runs with the monotonic clock from ``base`` (no jumps)."""

    def __init__(self, base: float):
        self.base = base
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return self.base + time.monotonic() - self.t0


def test_age_retention_runs_with_nobody_asking(opened, tmp_path):
    h = opened(max_age=2 * DAY, purge_every=0.05)  # the real clock
    assert h.wait_retention(1, 10)  # the start's run is over: what follows is periodic
    now = time.time()
    for i in range(3):
        h.append("#a", format_time(now - 3 * DAY + i), f"old {i}")
        h.append(f"#x{i}", format_time(now - 3 * DAY + i), f"other {i}")
        h.append("#a", format_time(now + i), f"young {i}")
    eventually(lambda: h.written == 9)
    eventually(lambda: len(rows(tmp_path / "data")) == 3, 10)  # nobody calls recent()
    assert [r[2] for r in rows(tmp_path / "data")] == [f"young {i}" for i in range(3)]
    assert h.purged == 6 and h.cold_reads == 0


def test_per_room_trim_runs_with_nobody_asking(opened, tmp_path):
    h = opened(per_room=100, max_age=0)
    for i in range(50):
        h.append("#a", stamp(i), f"m{i}")
    h.close()
    again = opened(per_room=5, max_age=0, sweep_every=0.05)
    assert again.wait_retention(1, 10)
    assert [r[0] for r in rows(tmp_path / "data", "SELECT line FROM messages ORDER BY id")] \
        == [f"m{i}" for i in range(45, 50)]
    assert again.cold_reads == 0 and len(again.cache) == 0  # nobody asked


# ---- the private archive, bounded per sender ------------------------------------------------

def test_one_sender_cannot_push_out_anothers_private_record(opened, tmp_path):
    h = opened(private=True, private_per_sender=10, max_age=0)
    h.append_private(stamp(0), "222222", "111111", "[Private] 222222: report this")
    h.append_private(stamp(1), "333333", "111111", "[Private] 333333: hi")
    for i in range(5000):  # an abuser messaging themselves
        h.append_private(stamp(2 + i), "111111", "111111", f"[Private] 111111: spam {i}")
    h.close(timeout=60)
    kept = rows(tmp_path / "data", "SELECT sender, line FROM private_messages ORDER BY id")
    assert [ln for s, ln in kept if s == "222222"] == ["[Private] 222222: report this"]
    assert [ln for s, ln in kept if s == "333333"] == ["[Private] 333333: hi"]
    spam = [ln for s, ln in kept if s == "111111"]
    assert spam == [f"[Private] 111111: spam {i}" for i in range(4990, 5000)]


def test_the_sweep_trims_each_sender_of_an_older_file(opened, tmp_path):
    h = opened(private=True, private_per_sender=1000, max_age=0)
    for i in range(30):
        h.append_private(stamp(i), f"s{i % 3}", "t", f"p{i}")
    h.close()
    again = opened(private=True, private_per_sender=4, max_age=0)
    assert again.wait_retention(1, 10)
    counts = dict(rows(tmp_path / "data", "SELECT sender, COUNT(*) FROM private_messages "
                                          "GROUP BY sender"))
    assert counts == {"s0": 4, "s1": 4, "s2": 4}


# ---- a clock that lies or moved deletes nothing ---------------------------------------------

class FakeMono:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_clock_31_days_ahead_of_the_host_clock_deletes_nothing(opened, tmp_path):
    clock = Steady(T0 + 31 * DAY)  # what one NTP answer said
    host = Steady(T0)
    h = opened(max_age=30 * DAY, clock=clock, host_clock=host, purge_every=0.02)
    for i in range(5):
        h.append("#a", format_time(T0 - DAY + i), f"m{i}")
    eventually(lambda: h.written == 5)
    assert h.wait_retention(h.retention_runs + 3, 10)
    assert len(rows(tmp_path / "data")) == 5
    assert lines(h.recent("#a", 20)) == [f"m{i}" for i in range(5)]  # not hidden either
    host.base = T0 + 31 * DAY  # both clocks agree (and stay steady): now they are old
    eventually(lambda: rows(tmp_path / "data") == [], 10)


def test_after_the_clock_jumps_deletion_waits_until_it_has_been_steady(opened, tmp_path):
    """The writer's own retention runs at start and then never (purge_every is long); each
    purge here is called in the test's thread while the writer idles, so that the fake wall
    and monotonic clocks move together between two looks."""
    wall, mono = FakeClock(T0), FakeMono()
    h = opened(max_age=30 * DAY, clock=wall, host_clock=wall, monotonic=mono,
               purge_every=3600, clock_settle=600)
    for i in range(5):
        h.append("#a", format_time(T0 - DAY + i), f"m{i}")
    eventually(lambda: h.written == 5)
    assert h.wait_retention(1, 10)

    def purge_after(seconds: float, jump: float = 0.0) -> int:
        mono.t += seconds
        wall.t += seconds + jump
        h._purge_old()
        return len(rows(tmp_path / "data"))

    assert purge_after(60) == 5
    assert purge_after(60, jump=31 * DAY) == 5  # both clocks jumped: held
    assert h.status()["purge"] == "held"
    assert purge_after(300) == 5  # steady for 300 s of 600: still held
    assert purge_after(60, jump=0.5) == 5  # a small correction does not restart the hold
    assert purge_after(239) == 5
    assert purge_after(2) == 0  # steady for 600 s: the clocks' word is taken
    assert h.status()["purge"] == "ok"


def test_slewing_is_not_a_jump(opened, tmp_path):
    wall, mono = FakeClock(T0), FakeMono()
    h = opened(max_age=30 * DAY, clock=wall, host_clock=wall, monotonic=mono,
               purge_every=3600, clock_settle=600)
    assert h.wait_retention(1, 10)
    for _ in range(10):  # 0.5 ms/s, as NtpClock slews, for 10 minutes
        mono.t += 60
        wall.t += 60 * 1.0005
        h._purge_old()
        assert h.status()["purge"] == "ok"
