"""One write transaction on a SQLite connection in autocommit mode (``isolation_level=None``):
``BEGIN IMMEDIATE`` (the write lock at once, not at the first write), ``COMMIT`` at the end,
``ROLLBACK`` if anything escapes. The accounts store and the file store make each change so."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
