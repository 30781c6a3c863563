"""Room history: one small interface, and the bounded in-memory store that serves it.

``append`` is called once per public message on the hot path and must not block;
``recent(room, n)`` returns at most n (stamp, line) pairs, oldest first. ``append_private`` is
called once per private message; stores that do not keep private messages ignore it. The
persistent store (``router.sqlite_history.SqliteHistory``) implements the same methods and keeps
a ``MemoryHistory`` as its cache of rooms' tails.

``MemoryHistory`` owns the tails (the last ``per_room`` messages) of at most ``max_rooms`` rooms,
and at most ``max_bytes`` of them (an estimate: the strings, the tuples and each room's entry,
see ``entry_cost``). Invariants:

- bounded as a whole: past either bound the least recently used room (appended to, read or
  put) is forgotten whole, never a part of a room: a tail held is always the room's complete
  tail (the ``SqliteHistory`` cache relies on it: a room held answers ``/history`` alone, a room
  not held is read from the file). The room just used is never the one evicted, so one room
  larger than ``max_bytes`` on its own is still held (``per_room`` lines of at most the line
  limit: well under the default bound)
- the room and byte counts (``len(self)``, ``bytes``) are exact for what is held
- as the ``--history memory`` store, a room evicted has lost its history: it is memory only
"""

from __future__ import annotations

import sys
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Protocol

from pychat.wire.commands import HISTORY_MAX

# Bounds of the tails held in memory (the --history memory store, and SqliteHistory's cache).
# They should become options (see the report of the issue "Bounded under abuse"):
# --history-cache-rooms / PYCHAT_HISTORY_CACHE_ROOMS and --history-cache-mb /
# PYCHAT_HISTORY_CACHE_MB.
MAX_ROOMS = 1_000  # rooms whose tails are held
MAX_BYTES = 16 * 1024 * 1024  # estimated bytes of those tails (about 60,000 lines of 100 chars)

# Estimated cost of a room's entry beyond its name and messages: the deque's first block (760
# bytes on CPython 3.11) and the ordered dict's slot and links. Measured with tracemalloc:
# 10,000 empty tails took 880 bytes each, names included.
ROOM_OVERHEAD = sys.getsizeof(deque()) + 64
STR_OVERHEAD = sys.getsizeof("")  # a str's header (49 bytes on CPython 3.11)
# a message: the (stamp, line) tuple, its slot in the deque and the two str headers
MESSAGE_OVERHEAD = sys.getsizeof(("", "")) + 8 + 2 * STR_OVERHEAD


def entry_cost(stamp: str, line: str) -> int:
    """Estimated bytes one held message costs. A str takes a byte per character when it is
    ASCII (``isascii()`` reads a flag: O(1)), and at most four otherwise: counted as four.
    Not ``sys.getsizeof``, which costs 0.1 us a call on the hot path. Stamps are ASCII."""
    return MESSAGE_OVERHEAD + len(stamp) + (len(line) if line.isascii() else 4 * len(line))


class HistoryStore(Protocol):
    def append(self, room: str, stamp: str, line: str) -> bool:
        """Keep a public message; False when it could not be kept (the store is full)."""
        ...

    def append_private(self, stamp: str, sender: str, target: str, line: str) -> bool: ...

    def recent(self, room: str, n: int) -> list[tuple[str, str]]: ...


class MemoryHistory:
    """The last ``per_room`` messages of the ``max_rooms`` rooms used last (and no more than
    ``max_bytes`` of them), lost when the router stops."""

    def __init__(self, per_room: int = HISTORY_MAX, *, max_rooms: int = MAX_ROOMS,
                 max_bytes: int = MAX_BYTES):
        if per_room < 1 or max_rooms < 1 or max_bytes < 1:
            raise ValueError("MemoryHistory bounds must be positive")
        self.per_room = per_room
        self.max_rooms = max_rooms
        self.max_bytes = max_bytes
        # room -> its tail, least recently used first
        self._rooms: OrderedDict[str, deque[tuple[str, str]]] = OrderedDict()
        self.bytes = 0  # estimated bytes of all held tails (see room_cost)
        self.messages = 0  # messages held in all tails
        self.evicted = 0  # rooms forgotten to stay within the bounds

    def __len__(self) -> int:
        return len(self._rooms)

    def __contains__(self, room: str) -> bool:
        return room in self._rooms

    # ---- the store's interface ------------------------------------------------------------------

    def append(self, room: str, stamp: str, line: str) -> bool:
        if not self.append_if_held(room, stamp, line):
            self.put(room, ((stamp, line),))
        return True

    def append_private(self, stamp: str, sender: str, target: str, line: str) -> bool:
        """Private messages are not history: nothing to keep."""
        return True

    def recent(self, room: str, n: int) -> list[tuple[str, str]]:
        q = self._rooms.get(room)
        if q is None:
            return []
        self._rooms.move_to_end(room)
        if not q or n <= 0:
            return []
        return list(q)[-n:]

    # ---- for SqliteHistory's cache --------------------------------------------------------------

    def append_if_held(self, room: str, stamp: str, line: str) -> bool:
        """Append to the room's tail if it is held (it stays complete); a room not held is
        left alone (its tail is in the file): False. Once per message: kept lean."""
        q = self._rooms.get(room)
        if q is None:
            return False
        self._rooms.move_to_end(room)
        size = len(line) if line.isascii() else 4 * len(line)  # entry_cost, inlined
        if len(q) == self.per_room:  # the oldest falls off: the overheads cancel out
            old_stamp, old_line = q[0]
            cost = len(stamp) - len(old_stamp) + size - (
                len(old_line) if old_line.isascii() else 4 * len(old_line))
        else:
            cost = MESSAGE_OVERHEAD + len(stamp) + size
            self.messages += 1
        q.append((stamp, line))
        self.bytes += cost
        if self.bytes > self.max_bytes or len(self._rooms) > self.max_rooms:
            self._bound(room)
        return True

    def put(self, room: str, items: Iterable[tuple[str, str]]) -> None:
        """Hold ``items`` (oldest first, the room's complete tail) as the room's tail."""
        self.forget(room)
        q: deque[tuple[str, str]] = deque(items, maxlen=self.per_room)
        self._rooms[room] = q
        self.bytes += room_cost(room, q)
        self.messages += len(q)
        self._bound(room)

    def forget(self, room: str) -> None:
        q = self._rooms.pop(room, None)
        if q is not None:
            self.messages -= len(q)
            self.bytes -= room_cost(room, q)

    def expire(self, room: str, cutoff: str) -> None:
        """Forget the room's messages stamped before ``cutoff`` (a stamp: they compare as text).

        Messages are in order of arrival, and stamps nearly so: expiry stops at the first
        message young enough (a message behind it stamped earlier, after a clock step, goes at
        the next expiry). The room stays held, maybe empty: its tail is still complete."""
        q = self._rooms.get(room)
        while q and q[0][0] < cutoff:
            stamp, line = q.popleft()
            self.bytes -= entry_cost(stamp, line)
            self.messages -= 1

    def status(self) -> dict:
        return {"backend": "memory", "rooms": len(self._rooms), "messages": self.messages,
                "cache_kb": self.bytes // 1024, "evicted": self.evicted}

    def close(self) -> None:
        pass

    def _bound(self, keep: str) -> None:
        """Evict the least recently used rooms until within bounds; never ``keep``."""
        while len(self._rooms) > self.max_rooms or self.bytes > self.max_bytes:
            oldest = next(iter(self._rooms))
            if oldest == keep:  # keep is the most recent: it is the only room left
                return
            self.forget(oldest)
            self.evicted += 1


def room_cost(room: str, q: deque[tuple[str, str]]) -> int:
    """Estimated bytes of a held tail: the entry, and each message (``entry_cost``). Computed
    when a tail is put or forgotten, and kept up to date by appends and expiry, so that
    ``MemoryHistory.bytes`` is the sum over held tails without a per-room count to update."""
    return ROOM_OVERHEAD + STR_OVERHEAD + len(room) + sum(entry_cost(s, ln) for s, ln in q)
