"""The exception tree, split by who is at fault (h11 style).

- ``ClientError``: the client sent something we will not act on. It becomes exactly one
  ``ERROR: <message>`` line to that client and the connection goes on.
- ``BusError``: a malformed or foreign acceptor-router frame. The frame is dropped and logged;
  a peer process sent it, never a chat client.

Anything else raised while serving a connection is a bug in PyChat and is logged with the
connection's id.
"""


class PyChatError(Exception):
    """Base of every error PyChat raises on purpose."""


class ClientError(PyChatError):
    """A client's mistake: answered with one ``ERROR:`` line, the connection stays open."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def line(self) -> str:
        return f"ERROR: {self.message}"


class LineTooLong(ClientError):
    def __init__(self, limit: int):
        super().__init__(f"line too long (max {limit} bytes)")
        self.limit = limit


class InvalidUTF8(ClientError):
    def __init__(self):
        super().__init__("invalid UTF-8")


class BusError(PyChatError):
    """A frame on the acceptor-router bus that does not follow wire.bus."""
