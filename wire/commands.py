"""Client lines to commands: every command is declared once, in ``TABLE``.

A row (``Spec``) is the whole command: its words, usage, frozen ``Command`` class, argument
parser, who serves it and the name of its handler there. Adding a command is one row and one
handler method. A sanitized, non-blank line becomes exactly one ``Command`` or raises
``ClientError`` (usage errors, unknown commands, invalid names and rooms are all decided here,
in one place). The server of each command (``Spec.served_by``) builds its dispatch from the table
(``handlers``): ``LOCAL`` commands are answered by the client's connection in the acceptor,
``ROUTER`` ones cross the bus to ``RouterState``. Handlers are named after the command.

Invariants:
- a name matches ``NAME_RE`` (1-24 ASCII letters, digits, ``_``, ``-``) and is not six digits
  (it would read as a uid), nor ``u`` and six digits (the IRC door's stand-in nick for a user
  without a name); uniqueness, ignoring case, is the router's
- a room matches ``ROOM_RE`` (``#`` and 1-32 of the same) and is lower case: ``/join #Dev`` is
  ``#dev``, so rooms, like names, ignore case
- ``History.count`` is within 0..HISTORY_MAX
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from . import errors
from .errors import ClientError
from .framing import sanitize

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,24}\Z")
ROOM_RE = re.compile(r"#[A-Za-z0-9_-]{1,32}\Z")
LOBBY = "#lobby"
HISTORY_DEFAULT = 20
HISTORY_MAX = 200
PASSWORD_MIN, PASSWORD_MAX = 8, 256  # characters
TOPIC_MAX = 390  # characters (IRC's TOPICLEN is often 390)
BAN_MINUTES_MAX = 10 * 365 * 24 * 60  # a ban for longer is a ban until /unban


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


@dataclass(frozen=True, slots=True)
class Register(Command):
    password: str = field(repr=False)
    kind: ClassVar[str] = "register"


@dataclass(frozen=True, slots=True)
class Login(Command):
    name: str
    password: str = field(repr=False)
    kind: ClassVar[str] = "login"


@dataclass(frozen=True, slots=True)
class Logout(Command):
    kind: ClassVar[str] = "logout"


@dataclass(frozen=True, slots=True)
class Password(Command):
    old: str = field(repr=False)
    new: str = field(repr=False)
    kind: ClassVar[str] = "password"


@dataclass(frozen=True, slots=True)
class Token(Command):
    kind: ClassVar[str] = "token"


@dataclass(frozen=True, slots=True)
class Resume(Command):
    name: str
    token: str = field(repr=False)
    kind: ClassVar[str] = "resume"


@dataclass(frozen=True, slots=True)
class Topic(Command):
    text: str  # "": ask; "-": clear
    kind: ClassVar[str] = "topic"


@dataclass(frozen=True, slots=True)
class Kick(Command):
    target: str
    reason: str
    kind: ClassVar[str] = "kick"


@dataclass(frozen=True, slots=True)
class Ban(Command):
    target: str
    minutes: int  # 0: until /unban
    reason: str
    kind: ClassVar[str] = "ban"


@dataclass(frozen=True, slots=True)
class Upload(Command):
    size: int  # bytes
    name: str  # the file's name, one word (a client sends its spaces as _)
    target: str  # "": to the room; else a uid or a name, as /msg takes it
    kind: ClassVar[str] = "upload"


@dataclass(frozen=True, slots=True)
class Unban(Command):
    target: str
    kind: ClassVar[str] = "unban"


# ---- argument shapes: ``rest`` is what follows the command word, stripped ----------------------

def _no_args(cls: Callable[[], Command]) -> Callable[[str], Command]:
    def build(rest: str) -> Command:
        if rest:
            raise ValueError
        return cls()
    return build


def _whole_rest(cls: Callable[[str], Command], required: bool) -> Callable[[str], Command]:
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
        raise ClientError(f"invalid name {rest}: 1-24 letters, digits, _ or -",
                          errors.INVALID_NAME, "nick")
    if len(rest) == 6 and rest.isdigit():
        raise ClientError(f"invalid name {rest}: six digits would read as a user ID",
                          errors.INVALID_NAME, "nick")
    if stand_in_name(rest):
        raise ClientError(f"invalid name {rest}: u and six digits would read as a user ID",
                          errors.INVALID_NAME, "nick")
    return Nick(rest)


def _join(rest: str) -> Command:
    if not rest or len(rest.split()) != 1:
        raise ValueError
    if not ROOM_RE.match(rest):
        raise ClientError(f"invalid room {rest}: # and 1-32 letters, digits, _ or -",
                          errors.INVALID_ROOM, "join")
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
    if not rest:
        raise ValueError
    return Cap(" ".join(rest.lower().split()))


def password_problem(password: str) -> str:
    """Why ``password`` cannot be a new password ("" if it can): 8-256 characters, none of
    them white space or a control character."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX or any(
            c.isspace() or ord(c) < 32 or 0x7f <= ord(c) < 0xa0 for c in password):
        return (f"invalid password: {PASSWORD_MIN}-{PASSWORD_MAX} characters, no spaces or "
                f"control characters")
    return ""


def _new_password(password: str, word: str) -> str:
    problem = password_problem(password)
    if problem:
        raise ClientError(problem, errors.INVALID_PASSWORD, word)
    return password


def _words(rest: str, n: int) -> list[str]:
    parts = rest.split()
    if len(parts) != n:
        raise ValueError
    return parts


def _account_name(name: str, word: str) -> str:
    if not valid_name(name):
        raise ClientError(f"invalid name {name}: 1-24 letters, digits, _ or -",
                          errors.INVALID_NAME, word)
    return name


def _register(rest: str) -> Command:
    (password,) = _words(rest, 1)
    return Register(_new_password(password, "register"))


def _login(rest: str) -> Command:
    name, password = _words(rest, 2)
    return Login(_account_name(name, "login"), password)


def _password(rest: str) -> Command:
    old, new = _words(rest, 2)
    return Password(old, _new_password(new, "password"))


def _resume(rest: str) -> Command:
    name, token = _words(rest, 2)
    return Resume(_account_name(name, "resume"), token)


def _topic(rest: str) -> Command:
    if len(rest) > TOPIC_MAX:
        raise ClientError(f"topic too long (max {TOPIC_MAX} characters)", errors.USAGE, "topic")
    return Topic(rest)


def _target_reason(rest: str) -> tuple[str, str]:
    parts = rest.split(None, 1)
    if not parts:
        raise ValueError
    return parts[0], parts[1].strip() if len(parts) > 1 else ""


def _kick(rest: str) -> Command:
    return Kick(*_target_reason(rest))


def _ban(rest: str) -> Command:
    target, more = _target_reason(rest)
    first, _, reason = more.partition(" ")
    minutes = 0
    if first.isascii() and first.isdigit():
        minutes = int(first) if len(first) <= 9 else BAN_MINUTES_MAX
        minutes = 0 if minutes > BAN_MINUTES_MAX else minutes
        more = reason.strip()
    return Ban(target, minutes, more)


def _upload(rest: str) -> Command:
    parts = rest.split()
    if len(parts) not in (2, 3) or not (parts[0].isascii() and parts[0].isdigit()):
        raise ValueError
    if len(parts[0]) > 15 or len(parts[1]) > 255:
        raise ClientError("file too large, or its name too long (255 characters at most)",
                          errors.TOO_LARGE if len(parts[0]) > 15 else errors.USAGE, "upload")
    return Upload(int(parts[0]), parts[1], parts[2] if len(parts) == 3 else "")


def _unban(rest: str) -> Command:
    (target,) = _words(rest, 1)
    return Unban(target)


LOCAL, ROUTER = "local", "router"


@dataclass(frozen=True)
class Spec:
    words: tuple[str, ...]  # typed after "/"; the first is its name; () for a plain text line
    usage: str
    command: type[Command]
    build: Callable[[str], Command]
    served_by: str  # LOCAL (the client's connection, in the acceptor) or ROUTER
    handler: str  # the method that serves it, in the class that serves it
    summary: str
    # its reply or its pushes grow with the data (a room's size, its history): a client has one
    # such command at the router at a time, so its cost is charged before the next is sent
    heavy: bool = False
    # its answer comes later than its batch's (the router hashes a password off its loop): the
    # client's connection handles nothing more until the router says it is done (bus Done)
    awaited: bool = False


TABLE: tuple[Spec, ...] = (
    Spec((), "", Say, Say, ROUTER, "on_say", "sends to your room"),
    Spec(("msg", "w"), "<target> <text>", Private, _target_text, ROUTER, "on_msg",
         "private message to a uid or a name"),
    Spec(("nick",), "<name>", Nick, _nick, ROUTER, "on_nick", "set your display name",
         heavy=True),
    Spec(("users",), "", Users, _no_args(Users), ROUTER, "on_users", "members of your room",
         heavy=True),
    Spec(("join",), "<#room>", Join, _join, ROUTER, "on_join",
         "move to a room (everyone starts in #lobby)", heavy=True),
    Spec(("rooms",), "", Rooms, _no_args(Rooms), ROUTER, "on_rooms", "rooms with members",
         heavy=True),
    Spec(("history",), "[n]", History, _history, ROUTER, "on_history",
         f"last n messages of your room (max {HISTORY_MAX})", heavy=True),
    Spec(("register",), "<password>", Register, _register, ROUTER, "on_register",
         "make your name (set with /nick) an account with this password, and log in",
         awaited=True),
    Spec(("login",), "<name> <password>", Login, _login, ROUTER, "on_login",
         "log in to your account", awaited=True),
    Spec(("logout",), "", Logout, _no_args(Logout), ROUTER, "on_logout",
         "log out: a guest again, with no name", heavy=True),
    Spec(("password",), "<old> <new>", Password, _password, ROUTER, "on_password",
         "change your password", awaited=True),
    Spec(("token",), "", Token, _no_args(Token), ROUTER, "on_token",
         "a resume token for /resume (clients reconnect with it, not with the password)"),
    Spec(("resume",), "<name> <token>", Resume, _resume, ROUTER, "on_resume",
         "log in again with a token from /token", heavy=True),
    Spec(("topic",), "[text | -]", Topic, _topic, ROUTER, "on_topic",
         "your room's topic; set it (room owner or operator), - clears it"),
    Spec(("kick",), "<target> [reason]", Kick, _kick, ROUTER, "on_kick",
         "operator or room owner: move a user out of the room (an operator in #lobby: "
         "disconnect)", heavy=True),
    Spec(("ban",), "<target> [minutes] [reason]", Ban, _ban, ROUTER, "on_ban",
         "operator: keep an account (a guest: its address) off the server; room owner: out "
         "of your room", heavy=True),
    Spec(("unban",), "<account or address>", Unban, _unban, ROUTER, "on_unban",
         "lift a ban"),
    Spec(("upload",), "<bytes> <filename> [target]", Upload, _upload, ROUTER, "on_upload",
         "send a file: you get a one-time URL to PUT its bytes to; then the room (or the "
         "target) gets its FILE: line"),
    Spec(("cap",), "<capability>...", Cap, _cap, LOCAL, "on_cap",
         "ask for capabilities: time (tag chat lines with @time=), codes (tag ERROR: lines "
         "with @code=), end (END <command> after each command's reply)"),
    Spec(("ping",), "[token]", Ping, _whole_rest(Ping, required=False), LOCAL, "on_ping",
         "PONG [token]"),
    Spec(("help",), "", Help, _no_args(Help), LOCAL, "on_help", "this list"),
    Spec(("quit", "exit"), "[reason]", Quit, _whole_rest(Quit, required=False), LOCAL,
         "on_quit", "leave"),
)
BY_WORD: dict[str, Spec] = {w: spec for spec in TABLE for w in spec.words}
BY_CLASS: dict[type[Command], Spec] = {spec.command: spec for spec in TABLE}
BY_KIND: dict[str, type[Command]] = {spec.command.kind: spec.command for spec in TABLE}
ROUTED: frozenset[type[Command]] = frozenset(
    spec.command for spec in TABLE if spec.served_by == ROUTER)
HEAVY: frozenset[type[Command]] = frozenset(spec.command for spec in TABLE if spec.heavy)
AWAITED: frozenset[type[Command]] = frozenset(spec.command for spec in TABLE if spec.awaited)


def handler_names(served_by: str) -> dict[type[Command], str]:
    """The handler's name for each command ``served_by`` serves, by command class."""
    return {spec.command: spec.handler for spec in TABLE if spec.served_by == served_by}


def handlers(server: object, served_by: str) -> dict[type[Command], Callable[..., Any]]:
    """``server``'s handler for each command it serves, by command class (raises
    AttributeError at once if a row names a handler the class does not have)."""
    return {cls: getattr(server, name) for cls, name in handler_names(served_by).items()}


def word_of(cmd: Command) -> str:
    """The name of a command as typed (``msg`` for ``/w`` too); "" for a text line."""
    words = BY_CLASS[type(cmd)].words
    return words[0] if words else ""


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
        raise ClientError(f"unknown command /{word}", errors.UNKNOWN_COMMAND, word.lower())
    try:
        return spec.build(rest.strip())
    except ValueError:
        usage = f"/{word.lower()} {spec.usage}".rstrip()
        raise ClientError(f"usage: {usage}", errors.USAGE, spec.words[0]) from None


def end_word(line: str) -> str:
    """The word a server with ``/cap end`` ends the reply to this sanitized line with
    (``END <word>``): the command's name (``msg`` for ``/w``), the word as typed (lower case)
    for an unknown command, "" for a line that gets no END (text, blank, a lone ``/``)."""
    if not line or line[0] != "/" or line.startswith("//"):
        return ""
    word = line[1:].partition(" ")[0].partition("\t")[0].lower()
    spec = BY_WORD.get(word)
    return spec.words[0] if spec is not None else word


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
        if not spec.words:
            continue
        names = ", ".join(f"/{w}" for w in spec.words)
        lines.append(f"HELP: {names} {spec.usage}".rstrip() + f" - {spec.summary}")
    return lines


def command_fields(cmd: Command) -> list[str]:
    """The command's arguments as strings, in declaration order (for the bus)."""
    return [str(getattr(cmd, f.name)) for f in fields(cmd)]


def valid_name(name: str) -> bool:
    """A display name as ``/nick`` takes it (the router keeps uniqueness)."""
    return (bool(NAME_RE.match(name)) and not (len(name) == 6 and name.isdigit())
            and not stand_in_name(name))


def stand_in_name(name: str) -> bool:
    """``u`` and six digits (either case): the IRC door's nick for a user without a name."""
    return len(name) == 7 and name[0] in "uU" and name[1:].isascii() and name[1:].isdigit()


def valid_room(room: str) -> bool:
    """A room as ``/join`` makes it: ``#`` and 1-32 of the name characters, lower case."""
    return bool(ROOM_RE.match(room)) and room == room.lower()


def command_from_fields(kind: str, args: list[str]) -> Command:
    """A routed command from the bus: exactly what this parser would have made of a client's
    line, or ``ValueError``. An acceptor is a peer, not an authority: a command from the bus is
    checked as if a client had typed it (its text sanitized, its name and room valid, its
    count in range), so a forged or corrupted frame cannot put what no client can send into
    the router (a newline in a name, a control sequence in a line)."""
    cls = BY_KIND[kind]
    spec = BY_CLASS[cls]
    if spec.served_by != ROUTER:
        raise ValueError(f"/{kind} is not a command for the router")
    names = [f.name for f in fields(cls)]
    if len(args) != len(names):
        raise ValueError(f"{kind} takes {len(names)} fields, got {len(args)}")
    line = " ".join(args)  # sanitized as a whole line is (bidi controls balance per line)
    if sanitize(line) != line:
        raise ValueError(f"{kind}: a control character in a field")
    if cls is Say:
        if not args[0] or args[0].isspace():
            raise ValueError("say: blank text")
        return Say(args[0])
    try:
        made = spec.build(" ".join(args).strip())
    except ClientError as e:
        raise ValueError(f"{kind}: {e.message}") from None
    values = [int(a) if a.isascii() and a.isdigit() and f.type in ("int", int) else a
              for f, a in zip(fields(cls), args, strict=True)]
    if made != cls(*values):
        raise ValueError(f"{kind}: not as a client's line would make it: {args!r}")
    return made
