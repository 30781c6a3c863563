"""Room history: one small interface, and the in-memory store that serves it.

``append`` is called once per public message on the hot path and must not block;
``recent(room, n)`` returns at most n (stamp, line) pairs, oldest first. ``append_private`` is
called once per private message; stores that do not keep private messages ignore it. The
persistent store (``router.sqlite_history.SqliteHistory``) implements the same methods and keeps
a ``MemoryHistory`` as its cache, so ``/history`` never touches the disk.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from pychat.wire.commands import HISTORY_MAX


class HistoryStore(Protocol):
    def append(self, room: str, stamp: str, line: str) -> None: ...

    def append_private(self, stamp: str, sender: str, target: str, line: str) -> None: ...

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

    def append_private(self, stamp: str, sender: str, target: str, line: str) -> None:
        """Private messages are not history: nothing to keep."""

    def recent(self, room: str, n: int) -> list[tuple[str, str]]:
        q = self._rooms.get(room)
        if not q or n <= 0:
            return []
        return list(q)[-n:]

    def expire(self, room: str, cutoff: str) -> None:
        """Forget the room's messages stamped before ``cutoff`` (a stamp: they compare as text).

        Messages are in order of arrival, and stamps nearly so: expiry stops at the first
        message young enough (a message behind it stamped earlier, after a clock step, goes at
        the next expiry)."""
        q = self._rooms.get(room)
        while q and q[0][0] < cutoff:
            q.popleft()
        if q is not None and not q:
            del self._rooms[room]

    def status(self) -> dict:
        return {"backend": "memory", "rooms": len(self._rooms)}

    def close(self) -> None:
        pass
