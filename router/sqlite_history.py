"""Persistent room history in one SQLite file, written off the router's thread.

``SqliteHistory`` serves the ``HistoryStore`` interface. The router's thread only touches memory:
``append`` adds the message to an in-memory cache (a ``MemoryHistory``, the last 200 per room,
which is all ``/history`` may ask for) and puts it on a queue; ``recent`` reads the cache. A writer
thread owns the database connection after ``open()``: it takes rows off the queue and commits
them in batches (up to ``batch_rows`` rows, or what arrived within ``batch_wait`` seconds of the
first), then trims rooms past their retention.

Invariants:
- the router's thread never waits for the disk: ``append`` is a deque append and a queue put
- ``open()`` finds every problem it can before the router serves anyone (folder, file, schema,
  corruption by ``PRAGMA quick_check``, a test write) and raises ``HistoryError`` with one line
  that says what and where; after that, a write error is logged and chat goes on (the rows are
  retried, and counted as lost past ``max_pending``)
- rows are read back in the order they were written (``id``), so a room's history after a
  restart is what it was before, stamps included
- retention: at most ``per_room`` messages per room in the file (trimmed in batches, a little
  slack allowed) and none older than ``max_age`` seconds (purged at start and every minute, and
  hidden from ``recent`` at once); private messages go to their own table, only when
  ``private`` is on, and are never returned by ``recent``
- ``close()`` writes what is queued before it returns (bounded by ``timeout``)
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable

from pychat.wire.commands import HISTORY_MAX
from pychat.wire.replies import format_time

from .history import MemoryHistory

log = logging.getLogger("pychat.history")

FILENAME = "history.sqlite3"
SCHEMA_VERSION = 1
PURGE_EVERY = 60.0  # seconds between age purges in the file
RETRY_DELAY = 1.0  # seconds before a failed batch is tried again
TRIM_SLACK = 0.1  # a room may pass per_room by this fraction before it is trimmed

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY, room TEXT NOT NULL, stamp TEXT NOT NULL, line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS messages_room ON messages (room, id);
CREATE INDEX IF NOT EXISTS messages_stamp ON messages (stamp);
CREATE TABLE IF NOT EXISTS private_messages (
    id INTEGER PRIMARY KEY, stamp TEXT NOT NULL, sender TEXT NOT NULL, target TEXT NOT NULL,
    line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS private_stamp ON private_messages (stamp);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

COLUMNS = {"messages": ["id", "room", "stamp", "line"],
           "private_messages": ["id", "stamp", "sender", "target", "line"]}

_STOP = object()


class HistoryError(Exception):
    """The history file cannot be used; the message is one line for the operator."""


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"),
                                                           ".local", "share")
    return os.path.join(base, "pychat")


class SqliteHistory:
    def __init__(self, data_dir: str, *, per_room: int = 10_000, max_age: float = 0.0,
                 private: bool = False, clock: Callable[[], float] = time.time,
                 batch_rows: int = 500, batch_wait: float = 0.05, max_pending: int = 100_000,
                 write_delay: float = 0.0):
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, FILENAME)
        self.per_room = per_room
        self.max_age = max_age  # seconds; 0 = forever
        self.private = private
        self.clock = clock
        self.batch_rows = batch_rows
        self.batch_wait = batch_wait
        self.max_pending = max_pending
        self.write_delay = write_delay  # test hook: a slow disk (sleep per batch, writer only)
        self.cache = MemoryHistory(min(per_room, HISTORY_MAX))
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._db: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._counts: dict[str, int] = {}  # writer's upper bound of rows per room in the file
        self._closing = threading.Event()
        self.written = 0
        self.lost = 0
        self.dropped = 0  # refused by append: the writer was max_pending rows behind
        self.failing = False

    # ---- start ----------------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the file, check it, apply retention, load the cache, start the
        writer. Raises HistoryError."""
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
            self._purge_old()
            rooms = self._rooms()
            for room in rooms:
                self._trim(room, 0)
            self._load(rooms)
        except sqlite3.Error as e:
            if self._db is not None:
                self._db.close()
                self._db = None
            raise HistoryError(f"cannot use history file {self.path}: {e}") from None
        except HistoryError:  # raised by the checks, after connect() set self._db
            if self._db is not None:
                self._db.close()
                self._db = None
            raise
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()
        log.info("history: %s (rooms: %d; keeping %d per room, %s; private messages %s)",
                 self.path, len(rooms), self.per_room,
                 f"{self.max_age / 86400:g} days" if self.max_age else "no age limit",
                 "stored" if self.private else "not stored")

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
        db.execute("PRAGMA synchronous = NORMAL")
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

    def _rooms(self) -> list[str]:
        """Every room in the file, by walking the (room, id) index: one lookup per room."""
        rows = self._conn().execute(
            "WITH RECURSIVE r(room) AS (SELECT MIN(room) FROM messages UNION ALL "
            "SELECT (SELECT MIN(room) FROM messages WHERE room > r.room) FROM r "
            "WHERE r.room IS NOT NULL) SELECT room FROM r WHERE room IS NOT NULL")
        return [row[0] for row in rows]

    def _load(self, rooms: list[str]) -> None:
        db = self._conn()
        for room in rooms:
            rows = db.execute(
                "SELECT stamp, line FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?",
                (room, self.cache.per_room)).fetchall()
            for stamp, line in reversed(rows):
                self.cache.append(room, stamp, line)

    # ---- the router's side: memory only ---------------------------------------------------------

    def append(self, room: str, stamp: str, line: str) -> None:
        self.cache.append(room, stamp, line)
        if self._q.qsize() >= self.max_pending:
            self.dropped += 1
            return
        self._q.put(("m", room, stamp, line))

    def append_private(self, stamp: str, sender: str, target: str, line: str) -> None:
        if not self.private:
            return
        if self._q.qsize() >= self.max_pending:
            self.dropped += 1
            return
        self._q.put(("p", sender, target, stamp, line))

    def recent(self, room: str, n: int) -> list[tuple[str, str]]:
        if self.max_age:
            self.cache.expire(room, self._cutoff())
        return self.cache.recent(room, n)

    def status(self) -> dict:
        return {"backend": "sqlite", "path": self.path, "pending": self._q.qsize(),
                "written": self.written, "lost": self.lost + self.dropped,
                "failing": self.failing}

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

    def _cutoff(self) -> str:
        return format_time(self.clock() - self.max_age)

    # ---- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug: say so loudly; the router and its chat go on without a file
            self.failing = True
            log.exception("history: the writer stopped; messages are no longer saved")

    def _loop(self) -> None:
        carry: list[tuple] = []  # rows of a failed batch, tried again
        next_purge = time.monotonic() + PURGE_EVERY
        reported_dropped = 0
        stop = False
        while not stop:
            rows, stop = self._collect(PURGE_EVERY if not carry else RETRY_DELAY)
            rows = carry + rows
            if rows:
                if self._write(rows):
                    carry = []
                else:
                    carry = rows[-self.max_pending:]
                    self.lost += len(rows) - len(carry)
                    if not stop:
                        self._closing.wait(RETRY_DELAY)
            if self.dropped > reported_dropped:
                log.error("history: the writer is %d rows behind; %d messages not saved",
                          self.max_pending, self.dropped - reported_dropped)
                reported_dropped = self.dropped
            if self.max_age and time.monotonic() >= next_purge:
                next_purge = time.monotonic() + PURGE_EVERY
                self._guard(self._purge_old)
        if carry:
            self.lost += len(carry)
            log.error("history: %d messages not saved at exit", len(carry))
        try:
            self._conn().close()
        except sqlite3.Error:
            pass

    def _collect(self, idle: float) -> tuple[list[tuple], bool]:
        """Rows for one batch: wait up to ``idle`` for the first, then ``batch_wait`` more."""
        try:
            item = self._q.get(timeout=idle)
        except queue.Empty:
            return [], False
        if item is _STOP:
            return [], True
        rows = [item]
        deadline = time.monotonic() + self.batch_wait
        while len(rows) < self.batch_rows:
            left = deadline - time.monotonic()
            try:
                item = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
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
            if self.failing:
                self.failing = False
                log.warning("history: writing to %s again", self.path)
        return ok

    def _insert(self, rows: list[tuple]) -> None:
        db = self._conn()
        messages = [r[1:] for r in rows if r[0] == "m"]
        private = [r[1:] for r in rows if r[0] == "p"]
        db.execute("BEGIN IMMEDIATE")
        try:
            if messages:
                db.executemany("INSERT INTO messages (room, stamp, line) VALUES (?, ?, ?)",
                               messages)
                added: dict[str, int] = {}
                for room, _, _ in messages:
                    added[room] = added.get(room, 0) + 1
                for room, n in added.items():
                    self._trim(room, n)
            if private:
                db.executemany("INSERT INTO private_messages (sender, target, stamp, line) "
                               "VALUES (?, ?, ?, ?)", private)
                db.execute("DELETE FROM private_messages WHERE id <= (SELECT id FROM "
                           "private_messages ORDER BY id DESC LIMIT 1 OFFSET ?)",
                           (self.per_room,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._counts.clear()  # unknown after a rollback: trim each room next time
            raise

    def _trim(self, room: str, added: int) -> None:
        """Keep the newest per_room rows of the room; run when the count may be past the slack
        (the count is an upper bound: it starts at per_room for rooms already in the file)."""
        count = self._counts.get(room, self.per_room) + added
        if added and count <= self.per_room * (1 + TRIM_SLACK):
            self._counts[room] = count
            return
        self._conn().execute("DELETE FROM messages WHERE room = ? AND id <= (SELECT id FROM "
                             "messages WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                             (room, room, self.per_room))
        self._counts[room] = min(count, self.per_room)

    def _purge_old(self) -> None:
        if not self.max_age:
            return
        cutoff = self._cutoff()
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            n = db.execute("DELETE FROM messages WHERE stamp < ?", (cutoff,)).rowcount
            n += db.execute("DELETE FROM private_messages WHERE stamp < ?", (cutoff,)).rowcount
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if n:
            log.info("history: %d messages older than %s removed", n, cutoff)

    def _guard(self, fn, *args) -> bool:
        """Run a database step in the writer; a failure is logged (once per streak), not
        raised: the router goes on without this write."""
        try:
            fn(*args)
            return True
        except (sqlite3.Error, OSError) as e:
            if not self.failing:
                self.failing = True
                log.error("history: cannot write to %s: %s; chat goes on, retrying every %gs",
                          self.path, e, RETRY_DELAY)
            return False
