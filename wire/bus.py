"""The acceptor-router bus: a versioned frame layout with one ``encode`` and one ``decode``.

Layout (documented in docs/ARCHITECTURE.md): one ZeroMQ multipart message is a *batch*:

    frame 0      HEADER = b"pychat-bus/2"           (the version; anything else is dropped)
    frame 1..n   one bus message each: UTF-8 fields joined by NUL, the first field its kind

A field never contains NUL: text reaching the bus is sanitized (controls removed) and encode
refuses a NUL rather than corrupt the frame. Integers travel as decimal ASCII. No pickle, ever.
Acceptor to router, the ROUTER socket prepends the acceptor's routing id (its name).

Invariants: ``decode(encode(m)) == m`` for every message class here; ``decode`` raises
``BusError`` for anything else, never another exception.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from .commands import Command, command_fields, command_from_fields
from .errors import BusError

VERSION = 2  # 2: relay gone (local replies wait for acks), heartbeat intervals announced
HEADER = b"pychat-bus/%d" % VERSION
SEP = "\x00"


@dataclass(frozen=True, slots=True)
class BusMessage:
    kind: ClassVar[str]


# ---- acceptor to router -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Hello(BusMessage):
    """An acceptor announces itself (at start, and again when it sees a new router epoch).
    ``peers`` is a JSON list of the acceptors the last router told it about (``Peers``): a
    restarted router waits for all of them to resync before it serves chat. ``heartbeat_ms``
    is the acceptor's heartbeat interval: the router judges its silence by it."""
    acceptor: str
    epoch: str
    peers: str = "[]"
    heartbeat_ms: int = 1000
    kind: ClassVar[str] = "hello"


@dataclass(frozen=True, slots=True)
class Seq(BusMessage):
    """First in every batch an acceptor sends (but the Hello batch): its number, counting up
    from 1 for this acceptor's epoch. The acceptor keeps a batch until the router acknowledges
    it (``Ack``) and sends the unacknowledged ones again after a resync; the router handles a
    number at most once."""
    n: int
    kind: ClassVar[str] = "seq"


@dataclass(frozen=True, slots=True)
class Heartbeat(BusMessage):
    """Both ways, every ``interval_ms``; ``epoch`` is the sender's start id. Each end judges the
    other dead after three of the other's intervals without a word, and logs a warning when the
    two intervals differ (the option must agree where the processes meet)."""
    epoch: str
    interval_ms: int = 1000
    kind: ClassVar[str] = "hb"


@dataclass(frozen=True, slots=True)
class Open(BusMessage):
    conn: int
    peer: str
    kind: ClassVar[str] = "open"


@dataclass(frozen=True, slots=True)
class Close(BusMessage):
    conn: int
    reason: str
    kind: ClassVar[str] = "close"


@dataclass(frozen=True, slots=True)
class Sync(BusMessage):
    """A session the acceptor holds, replayed into a router that does not know it."""
    conn: int
    uid: str
    name: str
    room: str
    kind: ClassVar[str] = "sync"


@dataclass(frozen=True, slots=True)
class Cmd(BusMessage):
    """A parsed client command the router serves (wire.commands.ROUTED)."""
    conn: int
    command: Command
    kind: ClassVar[str] = "cmd"


# ---- router to acceptor -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Ack(BusMessage):
    """Every batch up to number ``n`` from this acceptor has been handled."""
    n: int
    kind: ClassVar[str] = "ack"


@dataclass(frozen=True, slots=True)
class From(BusMessage):
    """What follows (until the next From) was caused by batch ``n`` of the acceptor whose epoch
    is ``origin``; ``origin`` empty: by nothing an acceptor numbered (heartbeats, pushes). A
    batch sent again after a router restart is handled again; an acceptor that has already
    seen the results of (origin, n) drops them, so no client sees a line twice."""
    origin: str
    n: int
    kind: ClassVar[str] = "from"


@dataclass(frozen=True, slots=True)
class Peers(BusMessage):
    """The acceptors the router knows, as a JSON list of names (sent when it changes)."""
    names: str
    kind: ClassVar[str] = "peers"


@dataclass(frozen=True, slots=True)
class SessionSet(BusMessage):
    """The router's view of a session; the acceptor keeps it (room membership, resync)."""
    conn: int
    uid: str
    name: str
    room: str
    kind: ClassVar[str] = "sess"


@dataclass(frozen=True, slots=True)
class ToConn(BusMessage):
    """Plain lines (joined by newlines) for one session."""
    conn: int
    text: str
    kind: ClassVar[str] = "to"


@dataclass(frozen=True, slots=True)
class Err(BusMessage):
    """An ``ERROR:`` line for one session, with its stable code (wire.errors): the acceptor
    tags it with ``@code=`` for a client that asked (``/cap codes``)."""
    conn: int
    code: str
    text: str
    kind: ClassVar[str] = "err"


@dataclass(frozen=True, slots=True)
class ToRoom(BusMessage):
    """Plain lines for every local member of a room (USERS, NAMES pushes)."""
    room: str
    text: str
    kind: ClassVar[str] = "room"


@dataclass(frozen=True, slots=True)
class ChatRoom(BusMessage):
    """A chat line for every local member of a room; ``@time=stamp`` for those with the cap."""
    room: str
    stamp: str
    text: str
    kind: ClassVar[str] = "chat"


@dataclass(frozen=True, slots=True)
class ChatConn(BusMessage):
    """A chat line (private) for one session; tagged when that session has the cap."""
    conn: int
    stamp: str
    text: str
    kind: ClassVar[str] = "pchat"


@dataclass(frozen=True, slots=True)
class Kick(BusMessage):
    """Send ``text`` (if any) to the session, then close it."""
    conn: int
    text: str
    kind: ClassVar[str] = "kick"


@dataclass(frozen=True, slots=True)
class StatusAsk(BusMessage):
    """`pychat status` (not an acceptor) asks the router for its view."""
    kind: ClassVar[str] = "status?"


@dataclass(frozen=True, slots=True)
class Status(BusMessage):
    """The router's view, as one JSON object (JSON text holds no NUL)."""
    json: str
    kind: ClassVar[str] = "status"


@dataclass(frozen=True, slots=True)
class Resync(BusMessage):
    """The router does not know this acceptor: send Hello and a Sync per session."""
    kind: ClassVar[str] = "resync"


Delivery = tuple[str, BusMessage]  # (acceptor, message): what the router's state returns

_CLASSES = (Hello, Seq, Heartbeat, Open, Close, Sync, SessionSet, ToConn, Err, ToRoom, ChatRoom,
            ChatConn, Kick, Resync, StatusAsk, Status, Ack, From, Peers)
_LAYOUT: dict[str, tuple[type[BusMessage], tuple[tuple[str, bool], ...]]] = {
    cls.kind: (cls, tuple((f.name, f.type in ("int", int)) for f in fields(cls)))
    for cls in _CLASSES
}


def encode_message(msg: BusMessage) -> bytes:
    if isinstance(msg, Cmd):
        parts = [Cmd.kind, str(msg.conn), msg.command.kind, *command_fields(msg.command)]
    else:
        _, layout = _LAYOUT[msg.kind]
        parts = [msg.kind, *(str(getattr(msg, name)) for name, _ in layout)]
    joined = SEP.join(parts)
    if joined.count(SEP) != len(parts) - 1:
        raise BusError(f"NUL inside a {msg.kind} field")
    try:
        return joined.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: no valid UTF-8 line carries one
        raise BusError(f"unencodable {msg.kind} field: {e}") from None


def decode_message(frame: bytes) -> BusMessage:
    try:
        parts = frame.decode("utf-8").split(SEP)
        kind = parts[0]
        if kind == Cmd.kind:
            return Cmd(int(parts[1]), command_from_fields(parts[2], parts[3:]))
        cls, layout = _LAYOUT[kind]
        if len(parts) - 1 != len(layout):
            raise BusError(f"{kind}: {len(parts) - 1} fields, expected {len(layout)}")
        values = zip(parts[1:], layout, strict=True)
        return cls(*(int(v) if is_int else v for v, (_, is_int) in values))
    except BusError:
        raise
    except (UnicodeDecodeError, KeyError, IndexError, ValueError, TypeError) as e:
        raise BusError(f"undecodable bus message: {e!r}") from None


def encode(messages: list[BusMessage]) -> list[bytes]:
    """A batch: the frames of one multipart message."""
    return [HEADER, *map(encode_message, messages)]


def decode(frames: list[bytes]) -> list[BusMessage]:
    if not frames or frames[0] != HEADER:
        raise BusError(f"not a {HEADER.decode()} batch: {frames[:1]!r}")
    return [decode_message(f) for f in frames[1:]]
