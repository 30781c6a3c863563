"""The exception tree, split by who is at fault (h11 style), and the stable error codes.

- ``ClientError``: the client sent something we will not act on. It becomes exactly one
  ``ERROR: <message>`` line to that client and the connection goes on. It carries a ``code``
  from the table below, which a client that asked for them (``/cap codes``) gets with the line,
  so that it can act without reading English.
- ``BusError``: a malformed or foreign acceptor-router frame. The frame is dropped and logged;
  a peer process sent it, never a chat client.

Anything else raised while serving a connection is a bug in PyChat and is logged with the
connection's id.
"""

from __future__ import annotations

# Error codes: stable, lower case, one per kind of failure (docs/PROTOCOL.md lists them). A code
# never changes meaning; new failures get new codes.
UNKNOWN_COMMAND = "unknown-command"
USAGE = "usage"
INVALID_NAME = "invalid-name"
INVALID_ROOM = "invalid-room"
UNKNOWN_CAPABILITY = "unknown-capability"
LINE_TOO_LONG = "line-too-long"
INVALID_UTF8 = "invalid-utf8"
NAME_TAKEN = "name-taken"
NO_SUCH_USER = "no-such-user"
NOT_SENT = "not-sent"
IDLE_TIMEOUT = "idle-timeout"
UNFINISHED_LINE = "unfinished-line"
SHUTTING_DOWN = "shutting-down"
SERVER_FULL = "server-full"
TOO_MANY_CONNECTIONS = "too-many-connections"
INTERNAL = "internal"
# accounts and moderation (PROTOCOL Part 3)
LOGIN_FAILED = "login-failed"
LOGIN_THROTTLED = "login-throttled"
NAME_REGISTERED = "name-registered"
INVALID_PASSWORD = "invalid-password"
NOT_LOGGED_IN = "not-logged-in"
LOGGED_IN = "logged-in"
BANNED = "banned"
NOT_ALLOWED = "not-allowed"
NO_SUCH_BAN = "no-such-ban"
MAILBOX_FULL = "mailbox-full"
BUSY = "busy"
# files (PROTOCOL Part 5; router/files.py raises them)
TOO_LARGE = "too-large"
QUOTA = "quota"
RATE = "rate"
STORE_FULL = "store-full"
SIZE_MISMATCH = "size-mismatch"
BAD_SIZE = "bad-size"
ABORTED = "aborted"
STORAGE = "storage"
UPLOADS_OFF = "uploads-off"

CODES = (UNKNOWN_COMMAND, USAGE, INVALID_NAME, INVALID_ROOM, UNKNOWN_CAPABILITY, LINE_TOO_LONG,
         INVALID_UTF8, NAME_TAKEN, NO_SUCH_USER, NOT_SENT, IDLE_TIMEOUT, UNFINISHED_LINE,
         SHUTTING_DOWN, SERVER_FULL, TOO_MANY_CONNECTIONS, INTERNAL, LOGIN_FAILED,
         LOGIN_THROTTLED, NAME_REGISTERED, INVALID_PASSWORD, NOT_LOGGED_IN, LOGGED_IN, BANNED,
         NOT_ALLOWED, NO_SUCH_BAN, MAILBOX_FULL, BUSY, TOO_LARGE, QUOTA, RATE, STORE_FULL,
         SIZE_MISMATCH, BAD_SIZE, ABORTED, STORAGE, UPLOADS_OFF)


class PyChatError(Exception):
    """Base of every error PyChat raises on purpose."""


class ClientError(PyChatError):
    """A client's mistake: answered with one ``ERROR:`` line, the connection stays open.
    ``word``: the command word it answers (for ``/cap end``), when the line was a command."""

    def __init__(self, message: str, code: str, word: str = ""):
        super().__init__(message)
        self.message = message
        self.code = code
        self.word = word

    def line(self, codes: bool = False) -> str:
        return f"@code={self.code} ERROR: {self.message}" if codes else f"ERROR: {self.message}"


class LineTooLong(ClientError):
    def __init__(self, limit: int):
        super().__init__(f"line too long (max {limit} bytes)", LINE_TOO_LONG)
        self.limit = limit


class InvalidUTF8(ClientError):
    def __init__(self) -> None:
        super().__init__("invalid UTF-8", INVALID_UTF8)


class BusError(PyChatError):
    """A frame on the acceptor-router bus that does not follow wire.bus."""
