"""The acceptor-router bus: a versioned frame layout with one ``encode`` and one ``decode``.

Layout (documented in docs/ARCHITECTURE.md): one ZeroMQ multipart message is a *batch*:

    frame 0      HEADER = b"pychat-bus/4"           (the version; anything else is dropped)
    frame 1..n   one bus message each: UTF-8 fields joined by NUL, the first field its kind

A field never contains NUL: text reaching the bus is sanitized (controls removed) and encode
refuses a NUL rather than corrupt the frame. Integers travel as decimal ASCII. No pickle, ever.
Acceptor to router, the ROUTER socket prepends the acceptor's routing id (its name).

A peer is not trusted blindly: ``decode`` checks every field as strictly as the client-facing
code would (``check``): integers are plain decimal ASCII within range; a command is exactly
what the client parser makes of a line (``commands.command_from_fields``); names and rooms
follow the name rules; text carries no control character (a newline only where a message holds
several lines); codes, stamps, epochs and JSON lists have their shapes. A frame is at most
``MAX_FRAME`` bytes (the sockets refuse longer ones too: ZeroMQ's MAXMSGSIZE).

Invariants: ``decode(encode(m)) == m`` for every valid message of every class here; ``decode``
raises ``BusError`` for anything else, never another exception.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import ClassVar

from .commands import Command, command_fields, command_from_fields, valid_name, valid_room
from .errors import CODES, BusError

VERSION = 4  # 2: relay gone (local replies wait for acks), heartbeat intervals announced;
# 3: sessions carry their account and its seal, Sync its peer; Done, Notice; 4: Hello carries
# the acceptor's web door URL
MAX_FRAME = 16 << 20  # bytes per bus message (a /history reply of 200 long lines is < 1 MiB)
MAX_BATCH = 200_000  # messages per batch (an acceptor's turn of reads is far fewer)
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
    is the acceptor's heartbeat interval: the router judges its silence by it. ``web``: the
    base URL of its web door ("" for none), for the URLs of uploads and files."""
    acceptor: str
    epoch: str
    peers: str = "[]"
    heartbeat_ms: int = 1000
    web: str = ""
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
    """A session the acceptor holds, replayed into a router that does not know it: what the
    router last said it was (``SessionSet``), and its peer address. A login is restored only
    with the ``seal`` the router gave it."""
    conn: int
    uid: str
    name: str
    room: str
    peer: str = ""
    account: str = ""
    seal: str = ""
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
    """The router's view of a session; the acceptor keeps it (room membership, resync).
    ``account``: the account it is logged in to ("" a guest); ``seal``: the router's HMAC of
    that login (acceptor, conn, account), which a restarted router checks in the ``Sync``."""
    conn: int
    uid: str
    name: str
    room: str
    account: str = ""
    seal: str = ""
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
class Cost(BusMessage):
    """What a session's command (or its arrival) made the server send, in bytes, when it was
    much: replies, pushes times the members they reached, chat times the room. The acceptor
    charges the client's flood bucket for it, so the work a client causes is paced."""
    conn: int
    bytes: int
    kind: ClassVar[str] = "cost"


@dataclass(frozen=True, slots=True)
class ToRoom(BusMessage):
    """Plain lines for every local member of a room (USERS, NAMES pushes). ``delta``: the same
    change as ``LEFT:``/``JOINED:``/``NAMED:`` lines, for members with ``/cap deltas`` that
    have a list to apply it to (empty: they get ``text`` too)."""
    room: str
    text: str
    delta: str = ""
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
class Done(BusMessage):
    """The answer to the session's awaited command (``/login``, ``/register``, ``/password``:
    the router answers them later than their batch) is complete: the connection goes on."""
    conn: int
    kind: ClassVar[str] = "done"


@dataclass(frozen=True, slots=True)
class Notice(BusMessage):
    """Plain lines for every local member of a room (a topic change)."""
    room: str
    text: str
    kind: ClassVar[str] = "notice"


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

_CLASSES = (Hello, Seq, Heartbeat, Open, Close, Sync, SessionSet, ToConn, Err, Cost, ToRoom,
            ChatRoom,
            ChatConn, Kick, Resync, StatusAsk, Status, Ack, From, Peers, Done, Notice)
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
        if len(frame) > MAX_FRAME:
            raise BusError(f"a bus message of {len(frame)} bytes (max {MAX_FRAME})")
        parts = frame.decode("utf-8").split(SEP)
        kind = parts[0]
        if kind == Cmd.kind:
            return Cmd(_int(parts[1]), command_from_fields(parts[2], parts[3:]))
        cls, layout = _LAYOUT[kind]
        if len(parts) - 1 != len(layout):
            raise BusError(f"{kind}: {len(parts) - 1} fields, expected {len(layout)}")
        values = zip(parts[1:], layout, strict=True)
        msg = cls(*(_int(v) if is_int else v for v, (_, is_int) in values))
        problem = check(msg)
        if problem:
            raise BusError(f"{kind}: {problem}")
        return msg
    except BusError:
        raise
    except (UnicodeDecodeError, KeyError, IndexError, ValueError, TypeError) as e:
        raise BusError(f"undecodable bus message: {e!r}") from None


def _int(text: str) -> int:
    """Plain decimal ASCII, as encode writes it (not "+1", " 1", "1_0", "١", 5,000 digits)."""
    if not (0 < len(text) <= 18 and text.isascii() and text.isdigit()):
        raise BusError(f"not a number: {text[:40]!r}")
    return int(text)


# ---- field checks ---------------------------------------------------------------------------

# as wire.framing.sanitize leaves text: no control but tab (and newlines between lines)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_TOKEN = re.compile(r"[0-9A-Za-z._:@+-]{1,255}\Z")  # names on the bus: routing ids, epochs
_UID = re.compile(r"\d{6}\Z")
_SEAL = re.compile(r"([0-9a-f]{64})?\Z")
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
MAX_INTERVAL_MS = 3_600_000
_WEB = re.compile(r"https?://[^\s/?#]{1,255}\Z")


def _line(text: str) -> bool:
    return not _CONTROL.search(text)


# the same controls among ASCII characters (C1 controls are not ASCII), as bytes to delete
_ASCII_CONTROL_BUT_NEWLINE = bytes([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F])


def _lines(text: str) -> bool:
    if text.isascii():  # (a flag of the string: O(1)) a deletion in C, ~3x the regex's speed:
        data = text.encode("ascii")  # a joiner's USERS line of 10,000 is 70 KB (issue 18)
        return len(data.translate(None, _ASCII_CONTROL_BUT_NEWLINE)) == len(data)
    return not _CONTROL_BUT_NEWLINE.search(text)


def valid_token(text: str) -> bool:
    """A name on the bus (an acceptor's routing id, an epoch): 1-255 of ``[0-9A-Za-z._:@+-]``."""
    return bool(_TOKEN.match(text))


def _names(text: str) -> bool:
    """A JSON list of routing ids (``peers``)."""
    try:
        names = json.loads(text)
    except ValueError:
        return False
    return isinstance(names, list) and all(
        isinstance(n, str) and _TOKEN.match(n) for n in names)


def _session(uid: str, name: str, room: str, uid_may_be_empty: bool) -> str:
    if not (_UID.match(uid) or (uid_may_be_empty and uid == "")):
        return f"not a uid: {uid[:20]!r}"
    if name and not valid_name(name):
        return f"not a name: {name[:40]!r}"
    if not valid_room(room):
        return f"not a room: {room[:40]!r}"
    return ""


def check(msg: BusMessage) -> str:
    """What is wrong with a decoded message's fields ("" for nothing)."""
    if isinstance(msg, (Hello, Heartbeat)):
        if not _TOKEN.match(msg.epoch):
            return "not an epoch"
        interval = msg.heartbeat_ms if isinstance(msg, Hello) else msg.interval_ms
        if not 0 < interval <= MAX_INTERVAL_MS:
            return f"a heartbeat of {interval} ms"
        if isinstance(msg, Hello) and not (_TOKEN.match(msg.acceptor) and _names(msg.peers)):
            return "not an acceptor's name, or not a list of them"
        if isinstance(msg, Hello) and msg.web and not _WEB.match(msg.web):
            return "not a web door's URL"
    elif isinstance(msg, (Open, Close)):
        text = msg.peer if isinstance(msg, Open) else msg.reason
        if len(text) > 1024 or not _line(text):
            return "a long field, or one with controls"
    elif isinstance(msg, (Sync, SessionSet)):
        if (msg.account and not valid_name(msg.account)) or not _SEAL.match(msg.seal):
            return "not an account, or not a seal"
        if isinstance(msg, Sync) and (len(msg.peer) > 1024 or not _line(msg.peer)):
            return "a long peer, or one with controls"
        return _session(msg.uid, msg.name, msg.room, uid_may_be_empty=isinstance(msg, Sync))
    elif isinstance(msg, (ToConn, Kick)):
        if not _lines(msg.text):
            return "control characters in text"
    elif isinstance(msg, Notice):
        if not (valid_room(msg.room) and _lines(msg.text)):
            return "not a room, or control characters in text"
    elif isinstance(msg, ToRoom):
        if not (valid_room(msg.room) and _lines(msg.text) and _lines(msg.delta)):
            return "not a room, or control characters in text"
    elif isinstance(msg, Err):
        if msg.code not in CODES or not _line(msg.text):
            return f"unknown code {msg.code[:30]!r}, or control characters in text"
    elif isinstance(msg, (ChatRoom, ChatConn)):
        if not (_STAMP.match(msg.stamp) and _line(msg.text)):
            return "not a stamp, or control characters in text"
        if isinstance(msg, ChatRoom) and not valid_room(msg.room):
            return "not a room"
    elif isinstance(msg, From):
        if msg.origin and not _TOKEN.match(msg.origin):
            return "not an epoch"
    elif isinstance(msg, Peers) and not _names(msg.names):
        return "not a list of acceptors"
    return ""


def encode(messages: list[BusMessage]) -> list[bytes]:
    """A batch: the frames of one multipart message."""
    return [HEADER, *map(encode_message, messages)]


def decode(frames: list[bytes], bad: list[BusError] | None = None) -> list[BusMessage]:
    """A batch's messages. Any bad message fails the whole batch, unless ``bad`` is given:
    then bad messages are left out and their errors put there (a batch whose first message is
    bad still fails: that one says what the batch is, its number or its Hello)."""
    if not frames or frames[0] != HEADER:
        raise BusError(f"not a {HEADER.decode()} batch: {frames[:1]!r}")
    if len(frames) > MAX_BATCH + 1:
        raise BusError(f"a batch of {len(frames) - 1} messages (max {MAX_BATCH})")
    if bad is None:
        return [decode_message(f) for f in frames[1:]]
    out = []
    for i, frame in enumerate(frames[1:]):
        try:
            out.append(decode_message(frame))
        except BusError as e:
            if i == 0:
                raise
            bad.append(e)
    return out
