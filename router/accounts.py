"""Who is who, kept on disk: accounts, resume tokens, bans, room owners and topics, offline mail.

``AccountStore`` is one SQLite file, ``accounts.sqlite3``, next to the history file in the
router's data folder (``--data-dir``), or an in-memory database (``path=None``, for tests and
``--accounts memory``). The router's thread is its only user in the router process; ``pychat
admin`` opens the same file from another process (SQLite's locks keep them apart; the router
reads operator flags and bans from the file when it needs them, so an ``admin op`` counts at
once).

Every write is its own transaction, committed before the router answers the command that caused
it, in WAL mode with ``synchronous=NORMAL``: a commit survives the process's death (SIGKILL at
any point leaves the file as of the last commit), the power's only with ``durable`` (FULL).

Schema versions: ``PRAGMA user_version`` says which of ``MIGRATIONS`` the file has had; opening
applies the missing ones in order, in one transaction each, and refuses a file from a newer
pychat. Version 1 is the first (the history file, ``history.sqlite3``, keeps its own version
and is not touched).

Names are kept as registered (``name``) and compared folded (``folded``: lower case; names are
ASCII, ``wire.commands.NAME_RE``). Account bans and ownership refer to the account's row id, so
a deleted account's name, once registered again, starts clean. Stamps are ``time.time()``
seconds (REAL); 0 means "never" for a ban's end.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass

from .transaction import write_transaction

FILENAME = "accounts.sqlite3"
SERVER = ""  # the room of a server-wide ban

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema
    """
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, folded TEXT NOT NULL UNIQUE,
        hash TEXT NOT NULL, operator INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
    CREATE TABLE tokens (
        digest TEXT PRIMARY KEY, account INTEGER NOT NULL, expires REAL NOT NULL);
    CREATE INDEX tokens_account ON tokens (account);
    CREATE TABLE bans (
        id INTEGER PRIMARY KEY, target TEXT NOT NULL, room TEXT NOT NULL, until REAL NOT NULL,
        reason TEXT NOT NULL, by TEXT NOT NULL, created REAL NOT NULL,
        UNIQUE (target, room));
    CREATE TABLE rooms (
        room TEXT PRIMARY KEY, owner INTEGER, topic TEXT NOT NULL DEFAULT '',
        topic_by TEXT NOT NULL DEFAULT '', topic_at REAL NOT NULL DEFAULT 0);
    CREATE TABLE offline (
        id INTEGER PRIMARY KEY, account INTEGER NOT NULL, stamp TEXT NOT NULL,
        sender TEXT NOT NULL, text TEXT NOT NULL);
    CREATE INDEX offline_account ON offline (account, id);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class AccountsError(Exception):
    """The accounts file cannot be used (damaged, newer, not writable)."""


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str  # as registered
    hash: str
    operator: bool
    created: float


@dataclass(frozen=True, slots=True)
class Ban:
    target: str  # "account:<name>" or "address:<ip>" as shown; see ban_target()
    room: str  # "" (SERVER): the whole server
    until: float  # 0: until /unban
    reason: str
    by: str
    created: float


def fold(name: str) -> str:
    return name.lower()


def account_target(account_id: int) -> str:
    return f"a:{account_id}"


def address_target(address: str) -> str:
    return f"ip:{address}"


class AccountStore:
    def __init__(self, path: str | None, *, durable: bool = False, busy_ms: int = 2000):
        self.path = path
        self.durable = durable
        self.busy_ms = busy_ms
        self._db: sqlite3.Connection | None = None

    @classmethod
    def in_folder(cls, data_dir: str, *, durable: bool = False,
                  busy_ms: int = 2000) -> AccountStore:
        return cls(os.path.join(data_dir, FILENAME), durable=durable, busy_ms=busy_ms)

    # ---- opening, versions ----------------------------------------------------------------------

    def open(self) -> AccountStore:
        if self.path is not None:
            folder = os.path.dirname(self.path) or "."
            try:
                os.makedirs(folder, mode=0o700, exist_ok=True)
            except OSError as e:
                raise AccountsError(f"cannot create data folder {folder}: {e.strerror}") from None
        try:
            db = sqlite3.connect(self.path or ":memory:", isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error as e:
            raise AccountsError(f"cannot open accounts file {self.path}: {e}") from None
        self._db = db
        try:
            self._prepare(db)
        except sqlite3.DatabaseError as e:
            db.close()
            self._db = None
            raise AccountsError(f"accounts file {self.path} cannot be used: {e}") from None
        except AccountsError:
            db.close()
            self._db = None
            raise
        return self

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute(f"PRAGMA busy_timeout = {int(self.busy_ms)}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise AccountsError(f"accounts file {self.path} has schema version {version}; this "
                                f"pychat knows {SCHEMA_VERSION} (a newer pychat wrote it)")
        if self.path is not None:
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise AccountsError(f"accounts file {self.path} is damaged: {problems[0]}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise AccountsError(f"accounts file {self.path}: cannot use WAL ({mode})")
        db.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
        for n in range(version, SCHEMA_VERSION):
            with self._write() as w:
                for statement in MIGRATIONS[n].split(";"):
                    if statement.strip():
                        w.execute(statement)
                w.execute("PRAGMA user_version = %d" % (n + 1))
        with self._write() as w:  # the test write (a read-only file fails here), and the key
            if w.execute("SELECT 1 FROM meta WHERE key = 'seal_key'").fetchone() is None:
                w.execute("INSERT INTO meta (key, value) VALUES ('seal_key', ?)",
                          (os.urandom(32).hex(),))  # secrets.token_hex(32), no hmac
            w.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened', ?)",
                      (repr(time.time()),))

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "accounts file not open"
        return self._db

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self.db)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def seal_key(self) -> bytes:
        """The server's own secret (made at the file's creation): it seals sessions (a
        restarted router knows a resync's login is one it made)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'seal_key'").fetchone()
        return bytes.fromhex(row[0])

    # ---- accounts -------------------------------------------------------------------------------

    @staticmethod
    def _account(row: tuple | None) -> Account | None:
        if row is None:
            return None
        return Account(int(row[0]), row[1], row[2], bool(row[3]), float(row[4]))

    def get(self, name: str) -> Account | None:
        return self._account(self.db.execute(
            "SELECT id, name, hash, operator, created FROM accounts WHERE folded = ?",
            (fold(name),)).fetchone())

    def by_id(self, account_id: int) -> Account | None:
        return self._account(self.db.execute(
            "SELECT id, name, hash, operator, created FROM accounts WHERE id = ?",
            (account_id,)).fetchone())

    def exists(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM accounts WHERE folded = ?",
                               (fold(name),)).fetchone() is not None

    def create(self, name: str, password_hash: str) -> Account | None:
        """A new account, or None when the name (ignoring case) is registered."""
        try:
            with self._write() as w:
                cur = w.execute("INSERT INTO accounts (name, folded, hash, created) "
                                "VALUES (?, ?, ?, ?)",
                                (name, fold(name), password_hash, time.time()))
        except sqlite3.IntegrityError:
            return None
        return self.by_id(int(cur.lastrowid or 0))

    def set_hash(self, account_id: int, password_hash: str) -> None:
        """A new password: every resume token of the account stops working."""
        with self._write() as w:
            w.execute("UPDATE accounts SET hash = ? WHERE id = ?", (password_hash, account_id))
            w.execute("DELETE FROM tokens WHERE account = ?", (account_id,))

    def set_operator(self, name: str, on: bool) -> bool:
        with self._write() as w:
            cur = w.execute("UPDATE accounts SET operator = ? WHERE folded = ?",
                            (int(on), fold(name)))
        return cur.rowcount > 0

    def delete(self, name: str) -> bool:
        """The account goes, and with it its tokens, offline mail, ownerships and bans; its
        name is free again. History is not touched (lines carry uids, not accounts)."""
        # found and deleted in one transaction: `pychat admin delete` is another process
        with self._write() as w:
            row = w.execute("SELECT id FROM accounts WHERE folded = ?", (fold(name),)).fetchone()
            if row is None:
                return False
            account_id = int(row[0])
            w.execute("DELETE FROM accounts WHERE id = ?", (account_id,))
            w.execute("DELETE FROM tokens WHERE account = ?", (account_id,))
            w.execute("DELETE FROM offline WHERE account = ?", (account_id,))
            w.execute("UPDATE rooms SET owner = NULL WHERE owner = ?", (account_id,))
            w.execute("DELETE FROM bans WHERE target = ?", (account_target(account_id),))
        return True

    def accounts(self) -> list[Account]:
        rows = self.db.execute(
            "SELECT id, name, hash, operator, created FROM accounts ORDER BY folded")
        return [a for a in map(self._account, rows) if a is not None]

    # ---- resume tokens --------------------------------------------------------------------------

    def add_token(self, account_id: int, digest: str, expires: float) -> None:
        with self._write() as w:
            w.execute("DELETE FROM tokens WHERE expires < ?", (time.time(),))
            w.execute("INSERT OR REPLACE INTO tokens (digest, account, expires) VALUES (?, ?, ?)",
                      (digest, account_id, expires))

    def token_account(self, digest: str, now: float) -> int | None:
        row = self.db.execute("SELECT account, expires FROM tokens WHERE digest = ?",
                              (digest,)).fetchone()
        if row is None or row[1] < now:
            return None
        return int(row[0])

    def drop_token(self, digest: str) -> None:
        with self._write() as w:
            w.execute("DELETE FROM tokens WHERE digest = ?", (digest,))

    # ---- bans -----------------------------------------------------------------------------------

    def ban(self, target: str, room: str, until: float, reason: str, by: str) -> None:
        with self._write() as w:
            w.execute("INSERT OR REPLACE INTO bans (target, room, until, reason, by, created) "
                      "VALUES (?, ?, ?, ?, ?, ?)", (target, room, until, reason, by, time.time()))

    def unban(self, target: str, room: str | None = None) -> int:
        """Lift the bans of ``target`` (in ``room`` only, or everywhere when None): how many."""
        with self._write() as w:
            if room is None:
                cur = w.execute("DELETE FROM bans WHERE target = ?", (target,))
            else:
                cur = w.execute("DELETE FROM bans WHERE target = ? AND room = ?", (target, room))
        return cur.rowcount

    def banned(self, targets: list[str], room: str, now: float) -> Ban | None:
        """The ban (in force at ``now``) on any of ``targets`` in ``room`` ("" the server)."""
        if not targets:
            return None
        marks = ",".join("?" * len(targets))
        row = self.db.execute(
            f"SELECT target, room, until, reason, by, created FROM bans WHERE room = ? AND "
            f"target IN ({marks}) AND (until = 0 OR until > ?) LIMIT 1",
            (room, *targets, now)).fetchone()
        return Ban(*row) if row is not None else None

    def bans(self, now: float) -> list[Ban]:
        """Every ban in force, targets shown as ``account:<name>`` or ``address:<ip>``."""
        with self._write() as w:  # the ones over are forgotten
            w.execute("DELETE FROM bans WHERE until != 0 AND until <= ?", (now,))
        out = []
        for target, room, until, reason, by, created in self.db.execute(
                "SELECT target, room, until, reason, by, created FROM bans "
                "ORDER BY created"):
            out.append(Ban(self.show_target(target), room, until, reason, by, created))
        return out

    def show_target(self, target: str) -> str:
        kind, _, value = target.partition(":")
        if kind == "a":
            account = self.by_id(int(value)) if value.isdigit() else None
            return f"account:{account.name if account else '?' + value}"
        return f"address:{value}"

    # ---- rooms ----------------------------------------------------------------------------------

    def room(self, room: str) -> tuple[int | None, str]:
        """(owner's account id or None, topic) of a room."""
        row = self.db.execute("SELECT owner, topic FROM rooms WHERE room = ?",
                              (room,)).fetchone()
        return (row[0], row[1]) if row is not None else (None, "")

    def set_owner(self, room: str, account_id: int) -> None:
        with self._write() as w:
            w.execute("INSERT INTO rooms (room, owner) VALUES (?, ?) "
                      "ON CONFLICT (room) DO UPDATE SET owner = excluded.owner",
                      (room, account_id))

    def set_topic(self, room: str, topic: str, by: str) -> None:
        with self._write() as w:
            w.execute("INSERT INTO rooms (room, topic, topic_by, topic_at) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT (room) DO UPDATE SET topic = excluded.topic, "
                      "topic_by = excluded.topic_by, topic_at = excluded.topic_at",
                      (room, topic, by, time.time()))

    # ---- offline private messages ---------------------------------------------------------------

    def keep_offline(self, account_id: int, stamp: str, sender: str, text: str,
                     limit: int) -> bool:
        """Keep a private message for an account that is not online: False when it already
        has ``limit`` waiting (the sender is told; nothing is dropped silently)."""
        with self._write() as w:
            n = w.execute("SELECT COUNT(*) FROM offline WHERE account = ?",
                          (account_id,)).fetchone()[0]
            if n >= limit:
                return False
            w.execute("INSERT INTO offline (account, stamp, sender, text) VALUES (?, ?, ?, ?)",
                      (account_id, stamp, sender, text))
        return True

    def offline(self, account_id: int) -> list[tuple[int, str, str, str]]:
        """(id, stamp, sender, text) waiting for the account, oldest first."""
        return [(int(r[0]), r[1], r[2], r[3]) for r in self.db.execute(
            "SELECT id, stamp, sender, text FROM offline WHERE account = ? ORDER BY id",
            (account_id,))]

    def delivered(self, account_id: int, up_to: int) -> None:
        with self._write() as w:
            w.execute("DELETE FROM offline WHERE account = ? AND id <= ?", (account_id, up_to))
