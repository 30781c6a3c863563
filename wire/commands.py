"""Client lines to commands: every command is declared once, in ``TABLE``.

A sanitized, non-blank line becomes exactly one frozen ``Command`` or raises ``ClientError``
(usage errors, unknown commands, invalid names and rooms are all decided here, in one place).
Handlers live with the process that serves the command (``Spec.served_by``): the acceptor answers
``local`` commands itself; ``router`` commands cross the bus. Handlers are named after the command.

Invariants:
- a name matches ``NAME_RE`` (1-24 ASCII letters, digits, ``_``, ``-``) and is not six digits
  (it would read as a uid); uniqueness, ignoring case, is the router's
- a room matches ``ROOM_RE`` (``#`` and 1-32 of the same) and is lower case: ``/join #Dev`` is
  ``#dev``, so rooms, like names, ignore case
- ``History.count`` is within 0..HISTORY_MAX
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar

from .errors import ClientError

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,24}\Z")
ROOM_RE = re.compile(r"#[A-Za-z0-9_-]{1,32}\Z")
LOBBY = "#lobby"
HISTORY_DEFAULT = 20
HISTORY_MAX = 200


@dataclass(frozen=True, slots=True)
class Command:
    kind: ClassVar[str]  # the name on the bus


@dataclass(frozen=True, slots=True)
class Say(Command):
    text: str
    kind: ClassVar[str] = "say"


@dataclass(frozen=True, slots=True)
class Private(Command):
    target: str
    text: str
    kind: ClassVar[str] = "msg"


@dataclass(frozen=True, slots=True)
class Nick(Command):
    name: str
    kind: ClassVar[str] = "nick"


@dataclass(frozen=True, slots=True)
class Users(Command):
    kind: ClassVar[str] = "users"


@dataclass(frozen=True, slots=True)
class Join(Command):
    room: str
    kind: ClassVar[str] = "join"


@dataclass(frozen=True, slots=True)
class Rooms(Command):
    kind: ClassVar[str] = "rooms"


@dataclass(frozen=True, slots=True)
class History(Command):
    count: int
    kind: ClassVar[str] = "history"


@dataclass(frozen=True, slots=True)
class Cap(Command):
    name: str
    kind: ClassVar[str] = "cap"


@dataclass(frozen=True, slots=True)
class Ping(Command):
    token: str
    kind: ClassVar[str] = "ping"


@dataclass(frozen=True, slots=True)
class Help(Command):
    kind: ClassVar[str] = "help"


@dataclass(frozen=True, slots=True)
class Quit(Command):
    reason: str
    kind: ClassVar[str] = "quit"


# ---- argument shapes: ``rest`` is what follows the command word, stripped ----------------------

def _no_args(cls: type) -> Callable[[str], Command]:
    def build(rest: str) -> Command:
        if rest:
            raise ValueError
        return cls()
    return build


def _whole_rest(cls: type, required: bool) -> Callable[[str], Command]:
    def build(rest: str) -> Command:
        if required and not rest:
            raise ValueError
        return cls(rest)
    return build


def _target_text(rest: str) -> Command:
    parts = rest.split(None, 1)
    if len(parts) < 2:
        raise ValueError
    return Private(parts[0], parts[1])


def _nick(rest: str) -> Command:
    if not rest or len(rest.split()) != 1:
        raise ValueError
    if not NAME_RE.match(rest):
        raise ClientError(f"invalid name {rest}: 1-24 letters, digits, _ or -")
    if len(rest) == 6 and rest.isdigit():
        raise ClientError(f"invalid name {rest}: six digits would read as a user ID")
    return Nick(rest)


def _join(rest: str) -> Command:
    if not rest or len(rest.split()) != 1:
        raise ValueError
    if not ROOM_RE.match(rest):
        raise ClientError(f"invalid room {rest}: # and 1-32 letters, digits, _ or -")
    return Join(rest.lower())


def _history(rest: str) -> Command:
    if not rest:
        return History(HISTORY_DEFAULT)
    if not rest.isascii() or not rest.isdigit():
        raise ValueError
    if len(rest) > 6:  # larger than any cap, and int() refuses thousands of digits
        return History(HISTORY_MAX)
    return History(min(int(rest), HISTORY_MAX))


def _cap(rest: str) -> Command:
    if not rest or len(rest.split()) != 1:
        raise ValueError
    return Cap(rest.lower())


@dataclass(frozen=True)
class Spec:
    words: tuple[str, ...]
    usage: str
    build: Callable[[str], Command]
    served_by: str  # "local" (the acceptor) or "router"
    summary: str


TABLE: tuple[Spec, ...] = (
    Spec(("msg", "w"), "<target> <text>", _target_text, "router",
         "private message to a uid or a name"),
    Spec(("nick",), "<name>", _nick, "router", "set your display name"),
    Spec(("users",), "", _no_args(Users), "router", "members of your room"),
    Spec(("join",), "<#room>", _join, "router", "move to a room (everyone starts in #lobby)"),
    Spec(("rooms",), "", _no_args(Rooms), "router", "rooms with members"),
    Spec(("history",), "[n]", _history, "router",
         f"last n messages of your room (max {HISTORY_MAX})"),
    Spec(("cap",), "time", _cap, "local", "tag chat lines with @time="),
    Spec(("ping",), "[token]", _whole_rest(Ping, required=False), "local", "PONG [token]"),
    Spec(("help",), "", _no_args(Help), "local", "this list"),
    Spec(("quit", "exit"), "[reason]", _whole_rest(Quit, required=False), "local", "leave"),
)
BY_WORD: dict[str, Spec] = {w: spec for spec in TABLE for w in spec.words}
BY_KIND: dict[str, type[Command]] = {
    cls.kind: cls
    for cls in (Say, Private, Nick, Users, Join, Rooms, History, Cap, Ping, Help, Quit)
}
ROUTED: frozenset[type[Command]] = frozenset(
    {Say, Private, Nick, Users, Join, Rooms, History}
)


def parse_line(line: str) -> Command | None:
    """A sanitized line to a command; ``None`` for a line to ignore (empty or white space).

    Raises ``ClientError`` with the message of the one ``ERROR:`` line to send back.
    """
    if not line or line.isspace():
        return None
    if line[0] != "/":
        return Say(line)
    if line.startswith("//"):
        return Say(line[1:])
    word, _, rest = line[1:].partition(" ")
    if "\t" in word:  # a tab also ends the command word
        word, _, more = word.partition("\t")
        rest = more + " " + rest
    spec = BY_WORD.get(word.lower())
    if spec is None:
        raise ClientError(f"unknown command /{word}")
    try:
        return spec.build(rest.strip())
    except ValueError:
        usage = f"/{word.lower()} {spec.usage}".rstrip()
        raise ClientError(f"usage: {usage}") from None


def describe(cmd: Command, width: int = 60) -> str:
    """A command as its sender would recognise it, for "not sent" errors."""
    if isinstance(cmd, Say):
        text = cmd.text
    elif isinstance(cmd, Private):
        text = f"/msg {cmd.target} {cmd.text}"
    else:
        text = f"/{cmd.kind}"
    return text if len(text) <= width else text[:width - 3] + "..."


def help_lines() -> list[str]:
    lines = ["HELP: <text> sends to your room; //text sends a line starting with /"]
    for spec in TABLE:
        names = ", ".join(f"/{w}" for w in spec.words)
        lines.append(f"HELP: {names} {spec.usage}".rstrip() + f" - {spec.summary}")
    return lines


def command_fields(cmd: Command) -> list[str]:
    """The command's arguments as strings, in declaration order (for the bus)."""
    return [str(getattr(cmd, f.name)) for f in fields(cmd)]


def command_from_fields(kind: str, args: list[str]) -> Command:
    cls = BY_KIND[kind]
    names = [f.name for f in fields(cls)]
    if len(args) != len(names):
        raise ValueError(f"{kind} takes {len(names)} fields, got {len(args)}")
    values = [int(a) if f.type in ("int", int) else a
              for f, a in zip(fields(cls), args, strict=True)]
    return cls(*values)
