"""Persistent room history in one SQLite file, written off the router's thread.

``SqliteHistory`` serves the ``HistoryStore`` interface. A writer thread owns the writing
connection after ``open()``: it takes rows off a queue and commits them in batches (up to
``batch_rows`` rows, or what arrived within ``batch_wait`` seconds of the first; the writer
sleeps through that window rather than waking at each row), trims rooms
past their retention as it writes, and runs retention on its own every ``purge_every`` seconds
(age) and ``sweep_every`` seconds (every room and sender trimmed), the first time at start.

The router's thread (the loop) owns everything else:

- ``append`` numbers the row (its ``id`` in the file, counted on from ``MAX(id)`` at open: one
  router per data folder; so the order of history is the order the router handled messages),
  puts it on the queue and in ``_unsaved`` (rows not yet known to be committed, by room), and
  appends it to the room's tail in the cache if that tail is held. No disk, no lock: list and
  deque appends and a queue put.
- the cache (a ``MemoryHistory``) holds the complete tails (the last 200: all ``/history`` may
  ask for) of at most ``cache_rooms`` rooms and ``cache_bytes`` bytes, least recently used
  evicted whole. At start it is empty: nothing is loaded.
- ``recent`` answers from the cache; for a room not held it reads the room's tail from the
  file (a cold read: one indexed query, ``SELECT ... WHERE room = ? ORDER BY id DESC LIMIT
  200``, on a read connection of its own; WAL lets it read while the writer writes) and merges
  the room's rows in ``_unsaved`` by id, then holds the result. The loop does wait for that
  read, a bounded one (at most 200 rows by index), rather than a thread hop that would need the
  reply deferred past later live lines (RouterState answers /history in the same turn).
  Measured with 10,000 rooms and 1,000,000 rows (190 MB): 0.3 ms median, 1.3 ms p99 with the
  file in the page cache; about 8 ms when all of the room's pages come from the disk. A read
  slower than ``READ_SLOW`` is logged.

Invariants:
- a ``/history`` answer holds exactly the room's messages handled before it: every appended row
  is in the file (committed: ``id <= _saved_id``) or in ``_unsaved`` (pruned only once the
  writer has committed it), and the merge by id counts a row committed during the read once
- the cache holds a room's complete tail or nothing of the room; rows are never trimmed from a
  held tail except from its old end (``per_room``, age)
- memory is bounded: the cache by its two bounds, ``_unsaved`` (and the queue) by
  ``max_pending`` rows (past it a row is counted as lost, not queued), the writer's per-room and
  per-sender counts by ``COUNTS_MAX`` entries
- ``open()`` finds every problem it can before the router serves anyone (folder, file, schema,
  corruption by ``PRAGMA quick_check``, a test write) and raises ``HistoryError`` with one line
  that says what and where; after that, a write error is logged and chat goes on (the rows are
  retried, and counted as lost past ``max_pending``)
- retention: at most ``per_room`` messages per room in the file (trimmed in batches, a little
  slack allowed); private messages (only when ``private`` is on, in their own table, never
  returned by ``recent``) at most ``private_per_sender`` per sender, so that one sender cannot
  push out another's record; none older than ``max_age`` seconds (hidden from ``recent`` at
  once, deleted by the periodic purge)
- a clock that lies deletes nothing: the age purge uses the earlier of ``clock`` (the router's,
  maybe NTP-corrected) and ``host_clock``, so one clock running ahead cannot make rows look old,
  and it holds deletion for ``clock_settle`` seconds after it sees the clock move against the
  monotonic clock by more than ``CLOCK_JUMP`` (plus ``CLOCK_DRIFT`` per second between looks):
  a clock that was stepped must stay steady that long before its word deletes anything.
  Hiding from ``recent`` uses the same earlier-of-two cutoff, but is not held (it deletes
  nothing)
- ``close()`` writes what is queued before it returns (bounded by ``timeout``)
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from pychat.wire.commands import HISTORY_MAX
from pychat.wire.replies import format_time

from .history import MAX_BYTES, MAX_ROOMS, MemoryHistory

log = logging.getLogger("pychat.history")

FILENAME = "history.sqlite3"
SCHEMA_VERSION = 1  # version 1 files gain the private_sender index on open: nothing to migrate
RETRY_DELAY = 1.0  # seconds before a failed batch is tried again
TRIM_SLACK = 0.1  # a room may pass per_room by this fraction before it is trimmed

# Retention, run by the writer on its own (these should become options only if an operator
# needs them; they are constructor parameters for the tests).
PURGE_EVERY = 60.0  # seconds between age purges in the file
SWEEP_EVERY = 3600.0  # seconds between trims of every room and sender (first one at start)
PURGE_CHUNK = 5_000  # rows deleted per transaction by the age purge: batches wait no longer
SWEEP_CHUNK = 500  # rooms (or senders) trimmed per transaction by the sweep
COUNTS_MAX = 10_000  # rooms (and senders) whose row counts the writer remembers

# Private archive: rows kept per sender. Should become an option:
# --history-private-per-sender / PYCHAT_HISTORY_PRIVATE_PER_SENDER, default 1000.
PRIVATE_PER_SENDER = 1_000

# The clock guard of the age purge (see the module docstring).
CLOCK_JUMP = 1.0  # seconds the clock may move against the monotonic clock between looks ...
CLOCK_DRIFT = 0.001  # ... plus this per second (twice the 500 ppm a slewing NTP may apply)
CLOCK_SETTLE = 3600.0  # seconds the clock must stay steady after a jump before a purge deletes

# Cold reads (a /history for a room whose tail is not in memory) on the loop's own connection.
READ_BUSY_MS = 100  # the most a cold read waits for a lock (WAL readers rarely need one)
READ_SLOW = 0.05  # seconds: a cold read slower than this is logged (at most once a minute)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY, room TEXT NOT NULL, stamp TEXT NOT NULL, line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS messages_room ON messages (room, id);
CREATE INDEX IF NOT EXISTS messages_stamp ON messages (stamp);
CREATE TABLE IF NOT EXISTS private_messages (
    id INTEGER PRIMARY KEY, stamp TEXT NOT NULL, sender TEXT NOT NULL, target TEXT NOT NULL,
    line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS private_stamp ON private_messages (stamp);
CREATE INDEX IF NOT EXISTS private_sender ON private_messages (sender, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

COLUMNS = {"messages": ["id", "room", "stamp", "line"],
           "private_messages": ["id", "stamp", "sender", "target", "line"]}

# (table, key column): what the trims and the sweep walk, by its (key, id) index
ROOMS = ("messages", "room")
SENDERS = ("private_messages", "sender")

_STOP = object()


class HistoryError(Exception):
    """The history file cannot be used; the message is one line for the operator."""


class _Counts:
    """The writer's upper bound of rows per key (room or sender) in the file, for at most
    ``COUNTS_MAX`` keys, least recently written forgotten. A key not remembered is trimmed on
    its next insert (its count is unknown), which keeps every remembered count an upper bound."""

    def __init__(self, limit: int):
        self.limit = limit
        self._n: OrderedDict[str, int] = OrderedDict()

    def get(self, key: str) -> int | None:
        return self._n.get(key)

    def set(self, key: str, n: int) -> None:
        self._n[key] = n
        self._n.move_to_end(key)
        while len(self._n) > self.limit:
            self._n.popitem(last=False)

    def clear(self) -> None:
        self._n.clear()

    def __len__(self) -> int:
        return len(self._n)


class SqliteHistory:
    def __init__(self, data_dir: str, *, per_room: int = 10_000, max_age: float = 0.0,
                 private: bool = False, private_per_sender: int = PRIVATE_PER_SENDER,
                 clock: Callable[[], float] = time.time,
                 host_clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 batch_rows: int = 500, batch_wait: float = 0.05, max_pending: int = 100_000,
                 write_delay: float = 0.0, cache_rooms: int = MAX_ROOMS,
                 cache_bytes: int = MAX_BYTES, purge_every: float = PURGE_EVERY,
                 sweep_every: float = SWEEP_EVERY, clock_settle: float = CLOCK_SETTLE,
                 durable: bool = False, on_commit: Callable[[], None] | None = None):
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, FILENAME)
        self.per_room = per_room
        self.max_age = max_age  # seconds; 0 = forever
        self.private = private
        self.private_per_sender = private_per_sender
        self.clock = clock
        self.host_clock = host_clock
        self.monotonic = monotonic  # the clock guard's reference (a fake one in tests)
        self.batch_rows = batch_rows
        # durable: every commit fsynced (synchronous FULL), and a batch is what waited while the
        # last one was committed (group commit): no added wait, since a sender waits for it
        self.durable = durable
        self.batch_wait = 0.0 if durable else batch_wait
        self.on_commit = on_commit  # called by the writer after each batch is done (any thread)
        self.max_pending = max_pending
        self.write_delay = write_delay  # test hook: a slow disk (sleep per batch, writer only)
        self.purge_every = purge_every
        self.sweep_every = sweep_every
        self.clock_settle = clock_settle
        self.cache = MemoryHistory(min(per_room, HISTORY_MAX), max_rooms=cache_rooms,
                                   max_bytes=cache_bytes)
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._db: sqlite3.Connection | None = None  # the writer's (open() uses it first)
        self._reader: sqlite3.Connection | None = None  # the loop's, for cold reads
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        # the loop's side
        self._next_id = 1
        self._tickets = 0  # rows put on the queue (both kinds), in order: see ticket()
        # rows not known to be committed: room -> [(id, stamp, line)] (a list: a deque's first
        # block is 760 bytes, and an abuser's rooms have one row each), and (id, room) by id
        self._unsaved: dict[str, list[tuple[int, str, str]]] = {}
        self._unsaved_order: deque[tuple[int, str]] = deque()
        self.cold_reads = 0
        self.cold_read_max = 0.0  # seconds, the slowest
        self.read_errors = 0
        self._said_slow = -1e9
        self.dropped = 0  # refused by append: max_pending rows not yet saved
        # the writer's side (ints and bools: read by the loop, written by the writer only)
        self._saved_id = 0  # every message row with an id up to this one is committed
        self._holding = 0  # rows the writer took off the queue and has not committed
        self._done = 0  # rows off the queue that are committed (or given up as lost), in order
        self._counts = _Counts(COUNTS_MAX)  # rows per room in the file (upper bounds)
        self._sender_counts = _Counts(COUNTS_MAX)  # private rows per sender (upper bounds)
        self.written = 0
        self.lost = 0
        self.failing = False
        self.purged = 0  # rows deleted by age
        self.retention_runs = 0
        self._ran = threading.Condition()
        # the clock guard (writer; sampled first in open())
        self._skew: float | None = None  # clock() - monotonic() at the last look
        self._skew_at = 0.0
        self._held_until = -1e18  # monotonic(): no deletion by age before this
        self._purge_held = False  # a purge was skipped for the clock (said when it resumes)

    # ---- start ----------------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the file, check it, open the read connection, start the writer
        (which applies retention at once). Loads nothing. Raises HistoryError."""
        try:
            os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise HistoryError(f"cannot create data folder {self.data_dir}: "
                               f"{e.strerror or e}") from None
        if not os.path.isdir(self.data_dir):
            raise HistoryError(f"data folder {self.data_dir} is not a folder")
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._check_and_prepare()
            last = self._conn().execute("SELECT MAX(id) FROM messages").fetchone()[0] or 0
            self._reader = sqlite3.connect(self.path, isolation_level=None,
                                           check_same_thread=False)
            self._reader.execute(f"PRAGMA busy_timeout = {READ_BUSY_MS}")
            self._reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as e:
            self._close_connections()
            raise HistoryError(f"cannot use history file {self.path}: {e}") from None
        except HistoryError:  # raised by the checks, after connect() set self._db
            self._close_connections()
            raise
        self._next_id = last + 1
        self._saved_id = last
        self._look_at_clock()
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()
        log.info("history: %s (last message id %d; nothing loaded: a room's tail is read when "
                 "asked, up to %d rooms in memory; keeping %d per room, %s; private messages "
                 "%s)", self.path, last, self.cache.max_rooms, self.per_room,
                 f"{self.max_age / 86400:g} days" if self.max_age else "no age limit",
                 f"stored, {self.private_per_sender} per sender" if self.private
                 else "not stored")

    def _close_connections(self) -> None:
        for db in (self._db, self._reader):
            if db is not None:
                db.close()
        self._db = self._reader = None

    def _conn(self) -> sqlite3.Connection:
        """The open connection: only called from open() after connect(), and from the writer
        thread, which open() starts only once the file is open (close() does not reset it)."""
        db = self._db
        assert db is not None, "history file not open"
        return db

    def _check_and_prepare(self) -> None:
        db = self._conn()
        db.execute("PRAGMA busy_timeout = 2000")
        version = db.execute("PRAGMA user_version").fetchone()[0]  # reads the header
        if version > SCHEMA_VERSION:
            raise HistoryError(f"history file {self.path} has schema version {version}; this "
                               f"pychat knows {SCHEMA_VERSION} (a newer pychat wrote it)")
        problems = [row[0] for row in db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise HistoryError(f"history file {self.path} is damaged: {problems[0]} "
                               f"(move it away to start with an empty history)")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise HistoryError(f"history file {self.path}: cannot switch to WAL mode ({mode})")
        # NORMAL: a commit survives the process's death (WAL); FULL: the power's too (fsync)
        db.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
        db.execute("BEGIN IMMEDIATE")  # the test write: a read-only file or folder fails here
        try:
            for table, want in COLUMNS.items():  # an empty list: not there yet
                have = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
                if have and have != want:
                    raise HistoryError(f"history file {self.path} is not a pychat history: "
                                       f"table {table} has columns {', '.join(have)}")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened', ?)",
                       (format_time(time.time()),))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # ---- the router's side: memory, and bounded cold reads --------------------------------------

    def append(self, room: str, stamp: str, line: str) -> bool:
        """Once per public message: kept lean (about 0.9 us with the room's tail held). False
        when the row is not kept: ``max_pending`` rows wait for the writer already."""
        self.cache.append_if_held(room, stamp, line)
        order = self._unsaved_order
        if order and order[0][0] <= self._saved_id:
            self._prune()
        if len(order) >= self.max_pending:
            self.dropped += 1
            return False
        row_id = self._next_id
        self._next_id = row_id + 1
        row = (row_id, stamp, line)
        unsaved = self._unsaved.get(room)
        if unsaved is None:
            self._unsaved[room] = [row]
        else:
            unsaved.append(row)
        order.append((row_id, room))
        self._tickets += 1
        self._q.put((room, row))  # a message: (room, (id, stamp, line))
        return True

    def append_private(self, stamp: str, sender: str, target: str, line: str) -> bool:
        if not self.private:
            return True
        if self._q.qsize() >= self.max_pending:
            self.dropped += 1
            return False
        self._tickets += 1
        self._q.put((None, (sender, target, stamp, line)))  # private: no room
        return True

    # ---- durable mode: what the router may release -----------------------------------------------

    def ticket(self) -> int:
        """The number of rows queued so far: once ``done() >= ticket()`` (taken now), every
        row appended before is committed, or was given up on after failing (and logged)."""
        return self._tickets

    def done(self) -> int:
        return self._done

    def recent(self, room: str, n: int) -> list[tuple[str, str]]:
        if n <= 0:
            return []
        cutoff = self._visible_cutoff() if self.max_age else None
        if room in self.cache:
            if cutoff is not None:
                self.cache.expire(room, cutoff)
            return self.cache.recent(room, n)
        tail, complete = self._cold_read(room)
        if cutoff is not None:
            skip = 0
            while skip < len(tail) and tail[skip][0] < cutoff:  # as MemoryHistory.expire
                skip += 1
            tail = tail[skip:]
        if complete:
            self.cache.put(room, tail)
        return tail[-n:]

    def _prune(self) -> None:
        """Forget the unsaved rows the writer has committed (they are in the file now)."""
        saved = self._saved_id
        order = self._unsaved_order
        if not order or order[0][0] > saved:
            return
        done: dict[str, int] = {}  # room -> its rows committed (its oldest: ids grow)
        while order and order[0][0] <= saved:
            room = order.popleft()[1]
            done[room] = done.get(room, 0) + 1
        for room, n in done.items():  # one slice per room: a hot room's list is not
            rows = self._unsaved[room]  # shifted once per row
            if n == len(rows):
                del self._unsaved[room]
            else:
                del rows[:n]

    def _cold_read(self, room: str) -> tuple[list[tuple[str, str]], bool]:
        """The room's tail (the last ``cache.per_room``): the file's rows merged with the rows
        not yet committed. ``complete`` is False when the file could not be read (then only the
        unsaved rows are returned, and nothing is cached)."""
        self._prune()  # before the read: a row pruned now is committed, so the read sees it
        limit = self.cache.per_room
        t = time.perf_counter()
        complete = True
        try:
            reader = self._reader
            assert reader is not None, "history file not open"
            found = reader.execute("SELECT id, stamp, line FROM messages WHERE room = ? "
                                   "ORDER BY id DESC LIMIT ?", (room, limit)).fetchall()
        except sqlite3.Error as e:
            found = []
            complete = False
            self.read_errors += 1
            log.warning("history: cannot read room %s from %s: %s; answering from memory",
                        room, self.path, e)
        elapsed = time.perf_counter() - t
        self.cold_reads += 1
        self.cold_read_max = max(self.cold_read_max, elapsed)
        if elapsed > READ_SLOW and time.monotonic() - self._said_slow > 60:
            self._said_slow = time.monotonic()
            log.warning("history: reading room %s from the file took %.0f ms (the chat waited; "
                        "a slow disk?)", room, elapsed * 1000)
        merged = {row_id: (stamp, line) for row_id, stamp, line in found}
        for row_id, stamp, line in self._unsaved.get(room, ()):
            merged[row_id] = (stamp, line)  # committed during the read: the same row, once
        return [merged[i] for i in sorted(merged)[-limit:]], complete

    def status(self) -> dict:
        """For operators (stats); called from the loop and from the metrics thread."""
        return {"backend": "sqlite", "path": self.path,
                "pending": self._q.qsize() + self._holding, "written": self.written,
                "lost": self.lost + self.dropped, "failing": self.failing,
                "cached_rooms": len(self.cache), "cache_kb": self.cache.bytes // 1024,
                "cold_reads": self.cold_reads,
                "cold_read_max_ms": round(self.cold_read_max * 1000, 2),
                "purge": "held" if self.monotonic() < self._held_until else "ok"}

    def close(self, timeout: float = 3.0) -> None:
        """Write what is queued, then close the file (the router is stopping)."""
        if self._thread is None:
            return
        self._closing.set()
        self._q.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("history: writer still busy after %.1fs; %d messages not saved",
                        timeout, self._q.qsize())
        else:
            log.info("history: closed (%d messages written, %d lost)", self.written,
                     self.lost + self.dropped)
        self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _visible_cutoff(self) -> str:
        """Older stamps are hidden: by the earlier of the two clocks (see the docstring)."""
        return format_time(min(self.clock(), self.host_clock()) - self.max_age)

    # ---- tests wait for the writer's retention --------------------------------------------------

    def wait_retention(self, runs: int, timeout: float) -> bool:
        """Wait until retention has run ``runs`` times in all; False on timeout."""
        with self._ran:
            return self._ran.wait_for(lambda: self.retention_runs >= runs, timeout)

    # ---- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug: say so loudly; the router and its chat go on without a file
            log.exception("history: the writer stopped; messages are no longer saved")
            self.failing = True

    def _loop(self) -> None:
        carry: list[tuple] = []  # rows of a failed batch, tried again
        next_purge = next_sweep = time.monotonic()  # both at once: the start's retention
        reported_dropped = 0
        stop = False
        while not stop:
            due = min(next_sweep, next_purge if self.max_age else next_sweep)
            idle = RETRY_DELAY if carry else max(0.0, due - time.monotonic())
            rows, stop = self._collect(idle)
            rows = carry + rows
            self._holding = len(rows)
            if rows:
                if self._write(rows):
                    carry = []
                    self._finished(len(rows))
                else:
                    carry = rows[-self.max_pending:]
                    self.lost += len(rows) - len(carry)
                    self._finished(len(rows) - len(carry))  # the oldest: done counts in order
                    if not stop:
                        self._closing.wait(RETRY_DELAY)
            self._holding = len(carry)
            if self.dropped > reported_dropped:
                log.error("history: the writer is %d rows behind; %d messages not saved",
                          self.max_pending, self.dropped - reported_dropped)
                reported_dropped = self.dropped
            now = time.monotonic()
            purge = bool(self.max_age) and now >= next_purge
            sweep = now >= next_sweep
            if stop or not (purge or sweep):
                continue
            if purge:
                next_purge = now + self.purge_every
                self._guard(self._purge_old)
            if sweep:
                next_sweep = now + self.sweep_every
                self._guard(self._sweep)
            with self._ran:
                self.retention_runs += 1
                self._ran.notify_all()
        if carry:
            self.lost += len(carry)
            self._finished(len(carry))
            log.error("history: %d messages not saved at exit", len(carry))
        try:
            self._conn().close()
        except sqlite3.Error:
            pass

    def _finished(self, n: int) -> None:
        """``n`` more rows, the oldest waiting, are done with: tell the router (durable mode
        releases what waited for them)."""
        if n:
            self._done += n
            if self.on_commit is not None:
                self.on_commit()

    def _collect(self, idle: float) -> tuple[list[tuple], bool]:
        """Rows for one batch: wait up to ``idle`` for the first, then ``batch_wait`` more."""
        try:
            item = self._q.get(timeout=idle) if idle > 0 else self._q.get_nowait()
        except queue.Empty:
            return [], False
        if item is _STOP:
            return [], True
        rows = [item]
        if self.batch_wait > 0 and self._q.qsize() < self.batch_rows - 1:
            # the batch's window: the rows that come meanwhile wait in the queue (a put with no
            # getter waiting wakes nobody: one wake-up a batch, not one a row); close() ends it
            self._closing.wait(self.batch_wait)
        while len(rows) < self.batch_rows:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return rows, True
            rows.append(item)
        return rows, False

    def _write(self, rows: list[tuple]) -> bool:
        if self.write_delay:
            time.sleep(self.write_delay)
        ok = self._guard(self._insert, rows)
        if ok:
            self.written += len(rows)
            if self.failing:  # (said before the flag falls: whoever sees it down sees it said)
                log.warning("history: writing to %s again", self.path)
                self.failing = False
        return ok

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _insert(self, rows: list[tuple]) -> None:
        messages = [(row[0], room, row[1], row[2]) for room, row in rows
                    if room is not None]  # (id, room, stamp, line)
        private = [row for room, row in rows if room is None]  # (sender, target, stamp, line)
        try:
            with self._transaction() as db:
                if messages:
                    db.executemany("INSERT INTO messages (id, room, stamp, line) "
                                   "VALUES (?, ?, ?, ?)", messages)
                    for room, n in _tally(r[1] for r in messages).items():
                        self._trim(ROOMS, self._counts, self.per_room, room, n)
                if private:
                    db.executemany("INSERT INTO private_messages (sender, target, stamp, line) "
                                   "VALUES (?, ?, ?, ?)", private)
                    for sender, n in _tally(r[0] for r in private).items():
                        self._trim(SENDERS, self._sender_counts, self.private_per_sender,
                                   sender, n)
        except BaseException:
            self._counts.clear()  # unknown after a rollback: trim each one next time
            self._sender_counts.clear()
            raise
        if messages:
            self._saved_id = messages[-1][0]  # now the loop may forget them (ids grow)

    def _trim(self, what: tuple[str, str], counts: _Counts, keep: int, key: str,
              added: int) -> None:
        """Keep the newest ``keep`` rows of ``key`` (a room, or a private sender); run when
        its count may be past the slack (a key not counted yet is trimmed at once)."""
        count = counts.get(key)
        if count is not None and added:
            count += added
            if count <= keep * (1 + TRIM_SLACK):
                counts.set(key, count)
                return
        table, column = what
        self._conn().execute(
            f"DELETE FROM {table} WHERE {column} = ? AND id <= (SELECT id FROM {table} "
            f"WHERE {column} = ? ORDER BY id DESC LIMIT 1 OFFSET ?)", (key, key, keep))
        counts.set(key, keep)

    def _sweep(self) -> None:
        """Trim every room (and private sender) in the file, a chunk per transaction: what
        was there before this start, or kept under a higher limit, gets the limits now."""
        total = 0
        for what, counts, keep in ((ROOMS, self._counts, self.per_room),
                                   (SENDERS, self._sender_counts, self.private_per_sender)):
            after = ""
            while True:
                keys = self._keys_after(what, after, SWEEP_CHUNK)
                if not keys:
                    break
                with self._transaction():
                    for key in keys:
                        self._trim(what, counts, keep, key, 0)
                        total += 1
                after = keys[-1]
        log.debug("history: retention sweep trimmed %d rooms and senders", total)

    def _keys_after(self, what: tuple[str, str], after: str, n: int) -> list[str]:
        """Up to n distinct keys greater than ``after``, walking the (key, id) index: one
        lookup per key, however many rows each has."""
        table, column = what
        rows = self._conn().execute(
            f"WITH RECURSIVE k(key, n) AS (SELECT (SELECT MIN({column}) FROM {table} "
            f"WHERE {column} > ?), 1 UNION ALL SELECT (SELECT MIN({column}) FROM {table} "
            f"WHERE {column} > k.key), k.n + 1 FROM k WHERE k.key IS NOT NULL AND k.n < ?) "
            f"SELECT key FROM k WHERE key IS NOT NULL", (after, n))
        return [row[0] for row in rows]

    def _look_at_clock(self) -> float:
        """The clock guard: compare the clock with the monotonic clock since the last look;
        a move past the tolerance holds deletion by age for ``clock_settle`` seconds.
        Returns the clock's time."""
        now, mono = self.clock(), self.monotonic()
        skew = now - mono
        if self._skew is not None:
            moved = skew - self._skew
            if abs(moved) > CLOCK_JUMP + CLOCK_DRIFT * max(0.0, mono - self._skew_at):
                self._held_until = mono + self.clock_settle
                log.warning("history: the clock moved %+.3f s in %.0f s; old messages will "
                            "not be deleted until it has been steady for %gs", moved,
                            mono - self._skew_at, self.clock_settle)
        self._skew, self._skew_at = skew, mono
        return now

    def _purge_old(self) -> None:
        now = self._look_at_clock()
        if self.monotonic() < self._held_until:
            self._purge_held = True
            log.debug("history: not deleting old messages: the clock moved recently")
            return
        if self._purge_held:
            self._purge_held = False
            log.info("history: the clock has been steady for %gs; deleting old messages again",
                     self.clock_settle)
        cutoff = format_time(min(now, self.host_clock()) - self.max_age)
        n = 0
        for table, _ in (ROOMS, SENDERS):
            while True:
                with self._transaction() as db:
                    k = db.execute(f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} "
                                   f"WHERE stamp < ? LIMIT ?)", (cutoff, PURGE_CHUNK)).rowcount
                n += k
                if k < PURGE_CHUNK:
                    break
        self.purged += n
        if n:
            log.info("history: %d messages older than %s removed", n, cutoff)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run a database step in the writer; a failure is logged (once per streak), not
        raised: the router goes on without this write."""
        try:
            fn(*args)
            return True
        except (sqlite3.Error, OSError) as e:
            if not self.failing:  # (said before the flag rises: whoever sees it up sees it said)
                log.error("history: cannot write to %s: %s; chat goes on, retrying every %gs",
                          self.path, e, RETRY_DELAY)
                self.failing = True
            return False


def _tally(keys: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return counts
