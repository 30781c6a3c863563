"""Room history: one small interface, and the in-memory store that serves it for now.

``append`` is called once per public message on the hot path and must not block;
``recent(room, n)`` returns at most n (stamp, line) pairs, oldest first. A persistent store
(SQLite, a later issue) implements the same two methods.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from wire.commands import HISTORY_MAX


class HistoryStore(Protocol):
    def append(self, room: str, stamp: str, line: str) -> None: ...

    def recent(self, room: str, n: int) -> list[tuple[str, str]]: ...


class MemoryHistory:
    """The last ``per_room`` messages of each room, lost when the router stops."""

    def __init__(self, per_room: int = HISTORY_MAX):
        self.per_room = per_room
        self._rooms: dict[str, deque[tuple[str, str]]] = {}

    def append(self, room: str, stamp: str, line: str) -> None:
        q = self._rooms.get(room)
        if q is None:
            q = self._rooms[room] = deque(maxlen=self.per_room)
        q.append((stamp, line))

    def recent(self, room: str, n: int) -> list[tuple[str, str]]:
        q = self._rooms.get(room)
        if not q or n <= 0:
            return []
        return list(q)[-n:]
