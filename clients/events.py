"""Events the reconnecting session adds to the server's own (``wire.replies``).

The session hands the fronts every server line as a ``wire.replies`` event, plus these, which
no server line carries: the connection's state, a name the server refused, a login that
succeeded or was refused, the end of the reply to a command a front asked to hear about, and
a file's transfer (its progress, then its result).
"""

from __future__ import annotations

from dataclasses import dataclass

# connection states
CONNECTING, CONNECTED, RECONNECTING, CLOSED = "connecting", "connected", "reconnecting", "closed"


@dataclass(frozen=True, slots=True)
class Status:
    state: str          # CONNECTING, CONNECTED, RECONNECTING or CLOSED
    text: str           # for a status bar: "connected to 127.0.0.1:65432", "reconnecting in 0.8 s"
    attempt: int = 0    # reconnect attempts since the connection dropped
    log: bool = True    # worth a line in the log too (not every countdown is)


@dataclass(frozen=True, slots=True)
class NameRefused:
    """A name we asked for was refused (taken or invalid): the front asks for another.
    ``registered``: the name is an account's, so logging in to it is the way to have it."""
    name: str
    reason: str
    registered: bool = False


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """We are logged in to account ``name`` (the server's spelling), and the session holds a
    resume token for it (not the password). ``registered``: the account was just made;
    ``restored``: the session logged in again by itself after a reconnect."""
    name: str
    registered: bool = False
    restored: bool = False


@dataclass(frozen=True, slots=True)
class LoginRefused:
    """A login the session sent (``Session(login=...)``, ``Session.login()``, or its own
    ``/resume`` after a reconnect: ``restored``) was refused; the session is a guest (with no
    name after a refused resume). ``code`` is the server's (``login-failed``,
    ``login-throttled``, ``name-registered``, ``invalid-password``, ``banned``...; None when
    the client itself gave up). ``final``: the server closes the connection and the session
    does not reconnect (banned)."""
    name: str
    reason: str
    code: str | None = None
    restored: bool = False
    final: bool = False


@dataclass(frozen=True, slots=True)
class Answered:
    """The server has answered all of a command sent with ``Session.send(show=True)``
    (its ``END``): e.g. a typed ``/users``, whose USERS and NAMES are now in the state."""
    word: str


# ---- files (PROTOCOL Part 5) -------------------------------------------------------------------

UPLOAD, DOWNLOAD = "upload", "download"


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """A file moving: ``done`` of ``total`` bytes (``total`` 0 when a download's size is not
    known). The first comes at 0, the last at ``total``; in between at most every
    ``transfer.PROGRESS_EVERY`` seconds, ``done`` never going down. Sent from the transfer's
    own thread (``Session.send_file``, ``Session.download``)."""
    id: int
    kind: str           # UPLOAD or DOWNLOAD
    name: str           # the file's name (an upload's as sent, spaces as _)
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class TransferDone:
    """A transfer ended. An upload's ``url`` is the file's (the server's ``FILE:`` line
    announces it too); a download's ``path`` is where it was saved. ``error``: why it failed,
    in one line ("" when it worked); ``code`` the server's error code when it refused the
    ``/upload`` (``too-large``, ``quota``...)."""
    id: int
    kind: str
    name: str
    size: int
    url: str = ""
    path: str = ""
    error: str = ""
    code: str | None = None
