"""The shared client core: connect, frame, parse server lines into events, keep the roster.

``Connection`` is a small blocking client over one TCP socket. It reads with the same line
buffer as the server (``wire.framing``) and understands every server line through
``wire.replies.parse_server_line``, so clients and server cannot disagree on the format. Tests
use it directly; the GUI, console and load generator build on it.

Waiting is always for a line with a deadline (``expect``), never for a fixed time.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Callable

from pychat.wire import replies
from pychat.wire.framing import LineBuffer

DEFAULT_TIMEOUT = 10.0


def tcp_socket(host: str, port: int, timeout: float, source: str = "") -> socket.socket:
    """A connected TCP socket with TCP_NODELAY; ``source``: the local address to connect from."""
    sock = socket.create_connection((host, port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class ConnectionClosed(Exception):
    """The server closed the connection (or it broke) before the expected line came."""


class Timeout(Exception):
    """The expected line did not come in time."""


class Connection:
    def __init__(self, host: str = "127.0.0.1", port: int = 65432, *,
                 timeout: float = DEFAULT_TIMEOUT, max_line: int = 1 << 20, source: str = ""):
        """``source``: the local address to connect from (another loopback address, 127.0.0.2,
        is another client address to the server)."""
        self.sock = tcp_socket(host, port, timeout, source)
        self._start(timeout, max_line)

    def _start(self, timeout: float, max_line: int) -> None:
        """What the client knows before the server has said anything."""
        self.timeout = timeout
        self._buffer = LineBuffer(max_line)
        self._lines: deque[str] = deque()
        self.seen: list[str] = []  # every line received, in order
        self.closed = False
        self.uid = ""
        self.users: tuple[str, ...] = ()
        self.names: dict[str, str] = {}
        self.room = "#lobby"

    # ---- sending ---------------------------------------------------------------------------------

    def send(self, line: str) -> None:
        self.send_raw(line.encode("utf-8") + b"\n")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    # ---- receiving -------------------------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Timeout("no line in time")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise Timeout("no line in time") from None
        except (ConnectionResetError, BrokenPipeError) as e:
            self.closed = True
            raise ConnectionClosed(str(e)) from None
        if not data:
            self.closed = True
            raise ConnectionClosed("server closed the connection")
        for item in self._buffer.feed(data):
            if isinstance(item, bytes):
                self._received(item.decode("utf-8", "replace"))

    def _received(self, line: str) -> None:
        self._lines.append(line)
        self.seen.append(line)
        self._track(replies.parse_server_line(line))

    def _track(self, event: replies.Event) -> None:
        if isinstance(event, replies.IdAssigned):
            self.uid = event.uid
        elif isinstance(event, replies.UserList):
            self.users = event.uids
        elif isinstance(event, replies.NameList):
            self.names = dict(event.names)
        elif isinstance(event, replies.RoomChanged):
            self.room = event.room

    def read_line(self, timeout: float | None = None) -> str:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._lines:
            self._fill(deadline)
        return self._lines.popleft()

    def read_event(self, timeout: float | None = None) -> replies.Event:
        return replies.parse_server_line(self.read_line(timeout))

    def expect(self, match: str | Callable[[str], bool], timeout: float | None = None) -> str:
        """Read lines until one matches (equal to a string, or a predicate); return it.

        Lines read on the way are dropped (they stay in ``seen``)."""
        pred = (lambda line: line == match) if isinstance(match, str) else match
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            while self._lines:
                line = self._lines.popleft()
                if pred(line):
                    return line
            self._fill(deadline)

    def expect_prefix(self, prefix: str, timeout: float | None = None) -> str:
        return self.expect(lambda line: line.startswith(prefix), timeout)

    def ask(self, line: str, word: str | None = None, timeout: float | None = None) -> list[str]:
        """Send ``line`` and return the lines of its reply, up to (without) its ``END <word>``
        (the connection must have ``/cap end``; ``word`` defaults to the command's name)."""
        if word is None:
            word = line[1:].split(None, 1)[0].lower() if line.startswith("/") else ""
        self.send(line)
        out = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            got = self.read_line(max(0.0, deadline - time.monotonic()))
            if got == f"END {word}":
                return out
            out.append(got)

    def read_until_closed(self, timeout: float | None = None) -> list[str]:
        """Every line until the server closes the connection."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out = []
        while True:
            while self._lines:
                out.append(self._lines.popleft())
            try:
                self._fill(deadline)
            except ConnectionClosed:
                out.extend(self._lines)
                self._lines.clear()
                return out

    def handshake(self, timeout: float | None = None) -> str:
        """Read Welcome, ID and USERS; return our uid."""
        assert self.read_line(timeout) == replies.WELCOME
        line = self.read_line(timeout)
        assert line.startswith("ID:"), line
        line = self.read_line(timeout)
        assert line.startswith("USERS:") and self.uid in line.split(":", 1)[1].split(","), line
        return self.uid

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WsConnection(Connection):
    """The same client over the web door's WebSocket (``/ws``): one text frame per line.

    ``port`` is the server's line-protocol port; the web door of the same server is found in
    ``support.procs.WEB_PORTS`` (or give ``web_port``). ``send_raw`` takes the bytes a TCP
    client would send: each complete line becomes one frame (a text frame if it is UTF-8, else
    a binary one, which the door takes as TCP's bytes), and a piece without its newline waits
    for the rest, as it would in a client's line editor."""

    def __init__(self, host: str = "127.0.0.1", port: int = 65432, *,
                 timeout: float = DEFAULT_TIMEOUT, max_line: int = 1 << 20, source: str = "",
                 web_port: int = 0, origin: str | None = None):
        from websockets.sync.client import connect  # (a test dependency: only for these)

        from support.procs import WEB_PORTS
        web = web_port or WEB_PORTS[port]
        self.sock = tcp_socket(host, web, timeout, source)
        self.ws = connect(f"ws://{host}:{web}/ws", sock=self.sock, open_timeout=timeout,
                          max_size=None, origin=origin,  # type: ignore[arg-type]
                          compression=None, ping_interval=None, close_timeout=2).__enter__()
        self._start(timeout, max_line)
        self._pending = b""  # a piece of send_raw's bytes without its newline yet

    def send_raw(self, data: bytes) -> None:
        data = self._pending + data
        *lines, self._pending = data.split(b"\n")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            try:
                self.ws.send(line.decode("utf-8"))
            except UnicodeDecodeError:
                self.ws.send(line)

    def _fill(self, deadline: float) -> None:
        from websockets.exceptions import ConnectionClosed as WsClosed
        left = deadline - time.monotonic()
        if left <= 0:
            raise Timeout("no line in time")
        try:
            message = self.ws.recv(timeout=left)
        except TimeoutError:
            raise Timeout("no line in time") from None
        except WsClosed as e:
            self.closed = True
            raise ConnectionClosed(str(e)) from None
        self._received(message if isinstance(message, str)
                       else message.decode("utf-8", "replace"))

    def close(self) -> None:
        self.closed = True
        try:
            self.ws.close()
        except Exception:
            pass
