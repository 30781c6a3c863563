"""One client connection: bytes in, commands out; queued lines out, one write per loop turn.

A ``Session`` is an asyncio ``Protocol`` with its own line buffer (no streams). It owns:
- the line buffer and the flood bucket (reading pauses while the bucket is empty; the lines
  already read wait in ``pending`` and nothing is dropped);
- what the router told it (uid, name, room) and the ``/cap time`` flag: enough to replay the
  session into a restarted router;
- ``out``: lines queued for the client this turn, written by ``Acceptor.flush`` in one write.

A client's mistake becomes one ``ERROR:`` line; any other exception is a bug, logged with the
connection id, and only that connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

from wire import bus, replies
from wire.commands import ROUTED, Cap, Command, Help, Ping, Quit, help_lines, parse_line
from wire.errors import ClientError, LineTooLong
from wire.framing import LineBuffer, decode, sanitize

from .limits import TokenBucket

if TYPE_CHECKING:
    from .server import Acceptor

log = logging.getLogger("pychat.acceptor")


class Session(asyncio.Protocol):
    __slots__ = ("acceptor", "conn", "transport", "peer", "lines", "bucket", "pending",
                 "out", "uid", "name", "room", "cap_time", "open", "paused", "_resume")

    def __init__(self, acceptor: Acceptor, conn: int):
        limits = acceptor.limits
        self.acceptor = acceptor
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.lines = LineBuffer(limits.max_line)
        self.bucket = TokenBucket(limits.flood_rate, limits.flood_burst)
        self.pending: deque[bytes | LineTooLong] = deque()
        self.out: list[bytes] = []
        self.uid = ""
        self.name = ""
        self.room = ""
        self.cap_time = False
        self.open = False  # registered with the acceptor (and announced to the router)
        self.paused = False
        self._resume: asyncio.TimerHandle | None = None

    # ---- asyncio callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:
                pass
        self.acceptor.session_opened(self)

    def data_received(self, data: bytes) -> None:
        items = self.lines.feed(data)
        if not items:
            return
        if self.pending:
            self.pending.extend(items)
        else:
            self._process(deque(items))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self.pending.clear()
        self.out.clear()
        self.acceptor.session_closed(self, "connection lost" if exc is None else str(exc))
        self.transport = None

    # ---- input ------------------------------------------------------------------------------------

    def _process(self, items: deque) -> None:
        """Handle lines while the flood bucket allows; the rest wait with reading paused."""
        bucket = self.bucket
        now = time.monotonic()
        while items:
            if self.transport is None or self.transport.is_closing():
                items.clear()
                return
            if not bucket.take(now):
                self.pending = items
                self._pause(bucket.wait())
                return
            item = items.popleft()
            try:
                self._handle(item)
            except ClientError as e:
                self.send_line(e.line())
            except Exception:
                log.exception("bug while serving conn %d (%s); closing it", self.conn, self.peer)
                self.close()
                return

    def _pause(self, delay: float) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._resume = self.acceptor.loop.call_later(delay, self._unpause)

    def _unpause(self) -> None:
        self._resume = None
        items, self.pending = self.pending, deque()
        self._process(items)
        if not self.pending and self.paused and self.transport is not None:
            self.paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def _handle(self, item: bytes | LineTooLong) -> None:
        if isinstance(item, LineTooLong):
            raise item
        cmd = parse_line(sanitize(decode(item)))
        if cmd is None:
            return
        if type(cmd) in ROUTED:
            self.acceptor.to_router(self, cmd)
        else:
            self._local(cmd)

    # local commands, named after the command -----------------------------------------------------

    def _local(self, cmd: Command) -> None:
        if isinstance(cmd, Ping):
            self.send_line(replies.format_pong(cmd.token))
        elif isinstance(cmd, Cap):
            self.on_cap(cmd)
        elif isinstance(cmd, Help):
            self.send_line("\n".join(help_lines()))
        elif isinstance(cmd, Quit):
            self.on_quit(cmd)

    def on_cap(self, cmd: Cap) -> None:
        if cmd.name != "time":
            raise ClientError(f"unknown capability {cmd.name} (known: time)")
        self.cap_time = True
        self.send_line("OK cap time")

    def on_quit(self, cmd: Quit) -> None:
        self.send_line("BYE")
        self.acceptor.session_closed(self, f"quit: {cmd.reason}" if cmd.reason else "quit")
        self.close()

    # ---- output -----------------------------------------------------------------------------------

    def send_line(self, text: str) -> None:
        """Queue a line (or several joined by newlines) for this client's next write."""
        self.acceptor.queue(self, (text + "\n").encode("utf-8"))

    def close(self) -> None:
        """Close after writing what is queued."""
        if self.transport is not None and not self.transport.is_closing():
            self.acceptor.write_now(self)
            self.transport.close()

    def snapshot(self) -> bus.Sync:
        return bus.Sync(self.conn, self.uid, self.name, self.room)
