"""Server lines: formatting them (acceptor, router) and parsing them (clients), in one place.

The lines that carry fields (IDs, user and name lists, rooms, chat lines, errors, END) are made
by the ``format_*`` functions below; fixed lines (the Welcome, ``BYE``) are constants here or
written where they are sent (``OK nick``, ``OK cap``, ``HELP:`` lines). ``parse_server_line``
understands every one of them (tests/test_replies.py checks each format against it).
Formatting returns ``str`` without the trailing newline. Tags (``@key=value``, IRCv3 style) are
only ever ``time`` on chat lines (public, private, history) and ``code`` on ``ERROR:`` lines, and
only for a client that asked for them (``/cap time``, ``/cap codes``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

WELCOME = "Welcome to PyChat Server!"
TIME_TAG = "@time="


_SECOND: tuple[int, str] = (-1, "")  # the last second formatted: (seconds, its prefix)


def format_time(ts: float) -> str:
    """UTC, ISO 8601 with milliseconds and Z: ``2026-11-26T11:34:42.123Z``. The prefix of the
    last second is kept (one tuple, replaced whole: safe across threads): the router stamps
    every message, most of them in the same second as the one before."""
    global _SECOND
    ms = int(round(ts * 1000, 3))  # truncate to the ms, but 1.001 s is 1001 ms, not 1000
    secs, ms = divmod(ms, 1000)
    last = _SECOND
    if last[0] != secs:
        last = _SECOND = (secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)))
    return f"{last[1]}.{ms:03d}Z"


def tagged(stamp: str, line: str) -> str:
    return f"{TIME_TAG}{stamp} {line}"


def format_id(uid: str) -> str:
    return f"ID:{uid}"


def format_users(uids: Iterable[str]) -> str:
    return "USERS:" + ",".join(uids)


def format_names(pairs: Iterable[tuple[str, str]]) -> str:
    return "NAMES:" + ",".join(f"{uid}={name}" for uid, name in pairs)


def format_joined(uids: Iterable[str]) -> str:
    """``/cap deltas``: these members arrived (or came back), in this order."""
    return "JOINED:" + ",".join(uids)


def format_left(uids: Iterable[str]) -> str:
    """``/cap deltas``: these members left."""
    return "LEFT:" + ",".join(uids)


def format_named(pairs: Iterable[tuple[str, str]]) -> str:
    """``/cap deltas``: these members' names are now these (an empty name: none)."""
    return "NAMED:" + ",".join(f"{uid}={name}" for uid, name in pairs)


def format_public(uid: str, text: str) -> str:
    return f"{uid}: {text}"


def format_private_from(uid: str, text: str) -> str:
    return f"[Private] {uid}: {text}"


def format_private_to(target_uid: str, text: str) -> str:
    return f"[Private] To {target_uid}: {text}"


def format_room(room: str) -> str:
    return f"ROOM:{room}"


def format_rooms(counts: Iterable[tuple[str, int]]) -> str:
    return "ROOMS:" + ",".join(f"{room}={n}" for room, n in counts)


def format_history_header(k: int) -> str:
    return f"HISTORY:{k}"


def format_pong(token: str) -> str:
    return f"PONG {token}" if token else "PONG"


def format_error(message: str, code: str | None = None) -> str:
    """``ERROR: message``; with ``code`` (for a client with ``/cap codes``), tagged
    ``@code=<code> ERROR: message``."""
    return f"@code={code} ERROR: {message}" if code else f"ERROR: {message}"


def format_end(word: str) -> str:
    """The end of the reply to a command (for a client with ``/cap end``)."""
    return f"END {word}"


def format_topic(room: str, text: str) -> str:
    """A room's topic (empty: it has none)."""
    return f"TOPIC:{room} {text}" if text else f"TOPIC:{room}"


def format_kicked(room: str, reason: str) -> str:
    """This session was kicked (or banned) from ``room`` and moved to the lobby."""
    return f"KICKED:{room} {reason}" if reason else f"KICKED:{room}"


def format_token(name: str, token: str, expires: str) -> str:
    """A resume token for ``/resume <name> <token>``, valid until ``expires`` (a stamp)."""
    return f"TOKEN: {name} {token} {expires}"


def format_delayed_header(k: int) -> str:
    """``k`` private messages kept while the account was offline follow, each with its
    ``@time=`` (whatever the capabilities) and its sender's account name in place of a uid."""
    return f"DELAYED:{k}"


def format_private_from_name(name: str, text: str) -> str:
    """A private message kept for an offline account: from ``name`` (an account)."""
    return f"[Private] {name}: {text}"


def format_upload(url: str) -> str:
    """The one-time URL an ``/upload``'s bytes go to, by one HTTP ``PUT``."""
    return f"UPLOAD:{url}"


def format_file(uid: str, size: int, url: str, name: str) -> str:
    """A file ``uid`` sent (to the room, or to a target and the sender): a chat line."""
    return f"FILE:{uid} {size} {url} {name}"


# ---- client side -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Event:
    raw: str


@dataclass(frozen=True, slots=True)
class Welcome(Event):
    pass


@dataclass(frozen=True, slots=True)
class IdAssigned(Event):
    uid: str


@dataclass(frozen=True, slots=True)
class UserList(Event):
    uids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NameList(Event):
    names: tuple[tuple[str, str], ...]  # (uid, name)


@dataclass(frozen=True, slots=True)
class Joined(Event):
    uids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Left(Event):
    uids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Named(Event):
    names: tuple[tuple[str, str], ...]  # (uid, name); an empty name: the member has none


@dataclass(frozen=True, slots=True)
class Chat(Event):
    """A chat line: public (``private`` False) or private (``to`` set for our own echo). ``uid``
    (and ``to``) of a private line may be an account's name instead of a uid: a message to an
    offline account, and those kept for us while we were offline (after ``DELAYED:``)."""
    time: str | None
    uid: str
    text: str
    private: bool = False
    to: str | None = None


@dataclass(frozen=True, slots=True)
class RoomChanged(Event):
    room: str


@dataclass(frozen=True, slots=True)
class RoomList(Event):
    rooms: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class HistoryStart(Event):
    count: int


@dataclass(frozen=True, slots=True)
class Ok(Event):
    what: str


@dataclass(frozen=True, slots=True)
class Error(Event):
    message: str
    code: str | None = None  # with /cap codes: the stable code (wire.errors)


@dataclass(frozen=True, slots=True)
class End(Event):
    """The reply to a command is complete (with /cap end): ``word`` is the command's name."""
    word: str


@dataclass(frozen=True, slots=True)
class Pong(Event):
    token: str


@dataclass(frozen=True, slots=True)
class Bye(Event):
    """The server's goodbye: to our ``/quit`` (no reason), or before it closes the connection
    on its own (``BYE kicked: <reason>``, ``BYE banned: <reason>``)."""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Topic(Event):
    """A room's topic (on joining a room that has one, and when it changes); "" for none."""
    room: str
    text: str


@dataclass(frozen=True, slots=True)
class Kicked(Event):
    """We were kicked from ``room`` (and moved to the lobby: a ``ROOM:`` follows)."""
    room: str
    reason: str


@dataclass(frozen=True, slots=True)
class DelayedStart(Event):
    """``count`` private messages kept while our account was offline follow (each time-tagged,
    its sender an account name, not a uid)."""
    count: int


@dataclass(frozen=True, slots=True)
class TokenIssued(Event):
    """A resume token for ``/resume <name> <token>``, valid until ``expires`` (a stamp). Its
    repr leaves the token out (a secret: never in a log)."""
    name: str
    token: str
    expires: str

    def __repr__(self) -> str:
        return f"TokenIssued(name={self.name!r}, token=..., expires={self.expires!r})"


@dataclass(frozen=True, slots=True)
class UploadUrl(Event):
    """Where to ``PUT`` the bytes of the file just announced by ``/upload``."""
    url: str


@dataclass(frozen=True, slots=True)
class FileShared(Event):
    """A file sent to the room (or privately): its sender, size, URL and name."""
    stamp: str | None
    uid: str
    size: int
    url: str
    name: str


@dataclass(frozen=True, slots=True)
class Info(Event):
    """Any other line (``HELP:`` lines, lines from a newer server)."""


_TAGS = re.compile(r"@(\S+) ")
_PUBLIC = re.compile(r"(\d{6}): (.*)\Z", re.S)
# a private line's other party: a uid, or an account's name (a message to an offline account,
# and the DELAYED ones from accounts); names are 1-24 of these, a uid six digits
_PARTY = r"([A-Za-z0-9_-]{1,24})"
_PRIV_TO = re.compile(rf"\[Private\] To {_PARTY}: (.*)\Z", re.S)
_PRIV_FROM = re.compile(rf"\[Private\] {_PARTY}: (.*)\Z", re.S)
_ROOM = re.compile(r"#[A-Za-z0-9_-]{1,32}\Z")
_UID = re.compile(r"\d{6}\Z")


def _count(text: str) -> bool:
    """A plain ASCII count that int() takes (not '²', not 5,000 digits)."""
    return 0 < len(text) <= 18 and text.isascii() and text.isdigit()


def _pairs(body: str) -> tuple[tuple[str, str], ...]:
    out = []
    for item in body.split(",") if body else ():
        key, _, value = item.rpartition("=")
        out.append((key, value))
    return tuple(out)


def parse_server_line(line: str) -> Event:
    """One server line (without newline) to an event; unknown lines become ``Info``.

    A line may start with tags, ``@key=value`` (several joined by ``;``, as IRCv3 writes them)
    and a space: ``time`` on chat lines (``/cap time``), ``code`` on ``ERROR:`` lines
    (``/cap codes``); tags this parser does not know are ignored."""
    tags: dict[str, str] = {}
    body = line
    if line.startswith("@") and (m := _TAGS.match(line)):
        body = line[m.end():]
        for item in m.group(1).split(";"):
            key, _, value = item.partition("=")
            tags[key] = value
    stamp = tags.get("time")
    if (m := _PRIV_TO.match(body)):
        return Chat(line, stamp, m.group(1), m.group(2), private=True, to=m.group(1))
    if (m := _PRIV_FROM.match(body)):
        return Chat(line, stamp, m.group(1), m.group(2), private=True)
    if (m := _PUBLIC.match(body)):
        return Chat(line, stamp, m.group(1), m.group(2))
    head, sep, rest = body.partition(":")
    if sep:
        if head == "ID":
            return IdAssigned(line, rest)
        if head == "USERS":
            return UserList(line, tuple(rest.split(",")) if rest else ())
        if head == "NAMES":
            return NameList(line, _pairs(rest))
        if head == "JOINED":
            return Joined(line, tuple(rest.split(",")) if rest else ())
        if head == "LEFT":
            return Left(line, tuple(rest.split(",")) if rest else ())
        if head == "NAMED":
            return Named(line, _pairs(rest))
        if head == "ROOM":
            return RoomChanged(line, rest)
        if head == "ROOMS":
            return RoomList(line, tuple((r, int(n)) for r, n in _pairs(rest) if _count(n)))
        if head == "HISTORY" and _count(rest):
            return HistoryStart(line, int(rest))
        if head == "ERROR":
            return Error(line, rest.strip(), tags.get("code"))
        if head in ("TOPIC", "KICKED"):
            room, _, text = rest.partition(" ")
            if _ROOM.match(room):
                return Topic(line, room, text) if head == "TOPIC" else Kicked(line, room, text)
        if head == "DELAYED" and _count(rest):
            return DelayedStart(line, int(rest))
        if head == "TOKEN":
            fields = rest.split()
            if len(fields) == 3 and rest.startswith(" "):
                return TokenIssued(line, *fields)
        if head == "UPLOAD" and rest and " " not in rest:
            return UploadUrl(line, rest)
        if head == "FILE":
            uid, size, url, name = (rest.split(" ", 3) + ["", "", "", ""])[:4]
            if _UID.match(uid) and _count(size) and url and name:
                return FileShared(line, stamp, uid, int(size), url, name)
    if body == WELCOME:
        return Welcome(line)
    if body == "BYE" or body.startswith("BYE "):
        return Bye(line, body[4:])
    if body == "PONG" or body.startswith("PONG "):
        return Pong(line, body[5:])
    if body.startswith("OK "):
        return Ok(line, body[3:])
    if body.startswith("END ") and " " not in body[4:]:
        return End(line, body[4:])
    return Info(line)


class Roster:
    """A room's members as a client keeps them: ``uids`` in the order of ``USERS:``, and their
    ``names``. ``apply`` takes every roster event: a full list (``USERS:``, ``NAMES:``) replaces,
    a change (``/cap deltas``: ``LEFT:``, ``JOINED:``, ``NAMED:``) edits. A change applies to
    any list the client got since the room's last push (a reply to /users or /join included):
    ``LEFT`` removes a member if listed, ``JOINED`` removes each if listed and appends it, so
    the result is the list a full push would have given."""

    def __init__(self) -> None:
        self.uids: list[str] = []
        self.names: dict[str, str] = {}

    def apply(self, event: Event) -> bool:
        """True if ``event`` was a roster event."""
        if isinstance(event, UserList):
            self.uids = list(event.uids)
            self.names = {u: n for u, n in self.names.items() if u in set(event.uids)}
        elif isinstance(event, NameList):
            self.names = {u: n for u, n in event.names if n}
        elif isinstance(event, Left):
            gone = set(event.uids)
            self.uids = [u for u in self.uids if u not in gone]
            for uid in gone:
                self.names.pop(uid, None)
        elif isinstance(event, Joined):
            moved = set(event.uids)
            self.uids = [u for u in self.uids if u not in moved] + list(event.uids)
        elif isinstance(event, Named):
            for uid, name in event.names:
                if name:
                    self.names[uid] = name
                else:
                    self.names.pop(uid, None)
        else:
            return False
        return True
