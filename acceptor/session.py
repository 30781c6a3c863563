"""One client connection: bytes in, commands out; queued lines out, one write per loop turn.

A ``Session`` is an asyncio ``Protocol`` with its own line buffer (no streams). It owns:
- the line buffer and the flood bucket (reading pauses while the bucket is empty; the lines
  already read wait in ``pending`` and nothing is dropped);
- what the router told it (uid, name, room) and the ``/cap time`` flag: enough to replay the
  session into a restarted router;
- ``out``: lines queued for the client, written in one write by the acceptor's next round;
- ``seen`` (loop time of the last bytes received) and ``line_since`` (when the unfinished line
  in the buffer began, 0 when there is none) for the acceptor's idle and slowloris sweep.

A client's mistake becomes one ``ERROR:`` line; any other exception is a bug, logged with the
connection id, and only that connection is closed.

Replies stay in the order of the commands: a reply the acceptor makes itself (PONG, OK cap, HELP,
ERROR:, BYE) goes round through the router (``Acceptor.reply``), behind the results of the
commands sent before it, so ``/ping`` works as a barrier.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

from pychat.wire import bus, replies
from pychat.wire.commands import ROUTED, Cap, Command, Help, Ping, Quit, help_lines, parse_line
from pychat.wire.errors import ClientError, LineTooLong
from pychat.wire.framing import LineBuffer, decode, sanitize

from .limits import TokenBucket

if TYPE_CHECKING:
    from .server import Acceptor

log = logging.getLogger("pychat.acceptor")

# TCP keepalive knobs (Linux names; macOS has TCP_KEEPALIVE for the idle time); None: not here
KEEPIDLE = getattr(socket, "TCP_KEEPIDLE", getattr(socket, "TCP_KEEPALIVE", None))
KEEPINTVL = getattr(socket, "TCP_KEEPINTVL", None)
KEEPCNT = getattr(socket, "TCP_KEEPCNT", None)


class Session(asyncio.Protocol):
    __slots__ = (
        "_resume",
        "acceptor",
        "blocked",
        "bucket",
        "cap_time",
        "conn",
        "fd",
        "host",
        "line_since",
        "lines",
        "name",
        "open",
        "out",
        "paused",
        "peer",
        "pending",
        "quitting",
        "room",
        "seen",
        "transport",
        "uid",
    )

    def __init__(self, acceptor: Acceptor, conn: int):
        limits = acceptor.limits
        self.acceptor = acceptor
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.host = ""  # the peer's IP address, for the per-address limit
        self.lines = LineBuffer(limits.max_line)
        self.bucket = TokenBucket(limits.flood_rate, limits.flood_burst)
        self.pending: deque[bytes | LineTooLong | Command] = deque()
        self.out: list[bytes] = []
        self.uid = ""
        self.name = ""
        self.room = ""
        self.cap_time = False
        self.open = False  # registered with the acceptor (and announced to the router)
        self.paused = False
        self.quitting = ""  # the /quit reason once the client has asked to leave
        self._resume: asyncio.Handle | None = None
        self.seen = acceptor.loop.time()
        self.line_since = 0.0
        self.blocked = False  # the transport holds unsent bytes: lines wait in ``out``
        self.fd = -1  # the socket's fd, for the acceptor's direct writes (-1: TLS, or none)

    # ---- asyncio callbacks -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.host = str(peer[0]) if peer else "?"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            limits = self.acceptor.limits
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if limits.sndbuf:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limits.sndbuf)
            except OSError:
                pass
            for opt, value in ((KEEPIDLE, limits.keepalive_idle),
                               (KEEPINTVL, limits.keepalive_interval),
                               (KEEPCNT, limits.keepalive_count)):
                if opt is not None:
                    try:
                        sock.setsockopt(socket.IPPROTO_TCP, opt, value)
                    except OSError:
                        pass
        # pause_writing as soon as a write leaves bytes unsent (the kernel buffer is full): the
        # lines that follow wait in ``out`` (shared with the room's other members) and go in
        # one write on resume_writing, not one transport write (a uvloop request) per flush.
        # Plain transports pause at size > high: high=0, so "not blocked" means "nothing
        # unsent", and the acceptor may write to the fd itself (Acceptor._write_slice). TLS ones
        # pause at size >= high: high=1 (0 would pause at once), and never written directly.
        tls = transport.get_extra_info("ssl_object") is not None
        if sock is not None and not tls:
            self.fd = sock.fileno()
        transport.set_write_buffer_limits(high=1 if tls else 0, low=0)
        self.acceptor.session_opened(self)

    def pause_writing(self) -> None:
        self.blocked = True
        self.acceptor.watch(self)

    def resume_writing(self) -> None:
        self.blocked = False
        self.acceptor.unblocked(self)

    def data_received(self, data: bytes) -> None:
        if self.quitting:
            return
        lines = self.lines
        items = lines.feed(data)
        self.seen = now = self.acceptor.loop.time()
        if not lines.partial:
            self.line_since = 0.0
        elif items or not self.line_since:  # an unfinished line began in this chunk
            self.line_since = now
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

    # ---- input -----------------------------------------------------------------------------------

    def _process(self, items: deque) -> None:
        """Handle lines in order; the rest wait, with reading paused, when either
        - a command for the router finds the flood bucket empty (it waits for its token), or
        - this turn's line budget is spent (fairness: we go on at the next loop turn).
        Lines that only cost the sender (errors, local commands) take no flood token."""
        bucket = self.bucket
        budget = self.acceptor.limits.lines_per_turn
        now = time.monotonic()
        while items:
            if self.quitting or self.transport is None or self.transport.is_closing():
                items.clear()
                return
            item = items.popleft()
            try:
                if not isinstance(item, Command):
                    item = self._parse(item)
                    if item is None:
                        continue
                if type(item) in ROUTED:
                    if not bucket.take(now):
                        items.appendleft(item)  # parsed once; waits for its token
                        self.pending = items
                        self._pause(bucket.wait())
                        return
                    self.acceptor.to_router(self, item)
                else:
                    self._local(item)
            except ClientError as e:
                self.reply(e.line())
            except Exception:
                log.exception("bug while serving conn %d (%s); closing it", self.conn, self.peer)
                self.close()
                return
            budget -= 1
            if budget <= 0 and items:
                self.pending = items
                self._pause(0.0)
                return

    def _pause(self, delay: float) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        loop = self.acceptor.loop
        self._resume = (loop.call_soon(self._unpause) if delay <= 0
                        else loop.call_later(delay, self._unpause))

    def _unpause(self) -> None:
        self._resume = None
        items, self.pending = self.pending, deque()
        self._process(items)
        if not self.pending and self.paused and self.transport is not None:
            self.paused = False
            # the time spent paused was ours, not the client's: the idle clocks restart
            self.seen = now = self.acceptor.loop.time()
            if self.line_since:
                self.line_since = now
            if not self.transport.is_closing():
                self.transport.resume_reading()

    @staticmethod
    def _parse(item: bytes | LineTooLong) -> Command | None:
        if isinstance(item, LineTooLong):
            raise item
        return parse_line(sanitize(decode(item)))

    # local commands, named after the command -----------------------------------------------------

    def _local(self, cmd: Command) -> None:
        if isinstance(cmd, Ping):
            self.reply(replies.format_pong(cmd.token))
        elif isinstance(cmd, Cap):
            self.on_cap(cmd)
        elif isinstance(cmd, Help):
            self.reply("\n".join(help_lines()))
        elif isinstance(cmd, Quit):
            self.on_quit(cmd)

    def on_cap(self, cmd: Cap) -> None:
        if cmd.name != "time":
            raise ClientError(f"unknown capability {cmd.name} (known: time)")
        self.cap_time = True
        self.reply("OK cap time")

    def on_quit(self, cmd: Quit) -> None:
        """BYE after the results of what came before, then close; read nothing more."""
        self.quitting = f"quit: {cmd.reason}" if cmd.reason else "quit"
        self.pending.clear()
        if self.transport is not None and not self.paused:
            self.transport.pause_reading()
            self.paused = True
        self.reply("BYE", close=True)

    # ---- output ----------------------------------------------------------------------------------

    def send_line(self, text: str) -> None:
        """Queue a line (or several joined by newlines) for this client's next write."""
        self.acceptor.queue(self, (text + "\n").encode("utf-8"))

    def reply(self, text: str, close: bool = False) -> None:
        """A reply to a command, kept in order behind earlier commands' results."""
        self.acceptor.reply(self, text, close)

    def close(self) -> None:
        """Close after writing what is queued."""
        if self.transport is not None and not self.transport.is_closing():
            self.acceptor.write_now(self)
            self.transport.close()

    def snapshot(self) -> bus.Sync:
        return bus.Sync(self.conn, self.uid, self.name, self.room)
