"""The TCP door: one client's socket, pumped into its ``Connection`` and out of its queue.

``Session`` is an asyncio ``Protocol`` and nothing more than a pump: bytes read go to the
client's ``Connection`` (acceptor/connection.py, the rules every door shares), and the actions it
returns are carried out here: lines queued for the client (``out``, written by the acceptor's
``Output`` in rounds), commands sent to the router in the bus batch being collected, reading
paused or resumed, the connection closed. What the router says a session is (uid, name, room)
is kept here too, to resync a restarted router.

A client's mistake is an ``ERROR:`` line made by the ``Connection``; any other exception is a
bug, logged with the connection id, and only that connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from pychat.wire import bus, replies

from .connection import CUT, PAUSE, RESUME, Action, Close, Connection, Route, Write

if TYPE_CHECKING:
    from .irc import IrcDoor
    from .output import Run
    from .server import Acceptor

log = logging.getLogger("pychat.acceptor")

# TCP keepalive knobs (Linux names; macOS has TCP_KEEPALIVE for the idle time); None: not here
KEEPIDLE = getattr(socket, "TCP_KEEPIDLE", getattr(socket, "TCP_KEEPALIVE", None))
KEEPINTVL = getattr(socket, "TCP_KEEPINTVL", None)
KEEPCNT = getattr(socket, "TCP_KEEPCNT", None)
WELCOME = (replies.WELCOME + "\n").encode()


class Session(asyncio.Protocol):
    KIND = 0  # Output keeps a room's members by kind: 0 lines, 1 IRC (translated), 2 frames
    __slots__ = ("_armed", "_timer", "acceptor", "account", "blocked", "cap_time", "conn",
                 "counted", "door", "fd", "fresh", "greeting", "host", "id", "mark", "name",
                 "open", "out", "peer", "pinged", "room", "run", "seal", "tls", "transport",
                 "uid")

    def __init__(self, acceptor: Acceptor, conn_id: int):
        self.acceptor = acceptor
        self.id = conn_id
        self.transport: asyncio.Transport | None = None
        self.conn: Connection  # set when the acceptor admits the session
        self.peer = ""
        self.host = ""  # the peer's IP address, for the per-address limit
        self.out: list[bytes] = []  # lines queued for the client's next write
        # a line member's room's shared lines (acceptor/output.py Run), and how many of them
        # it has had (written, or moved into ``out``)
        self.run: Run | None = None
        self.mark = 0
        self.uid = ""
        self.name = ""
        self.room = ""
        self.account = ""  # the account it is logged in to, and the router's seal of that
        self.seal = ""
        self.counted = False  # admitted, and counted against the per-address limits
        self.open = False  # a session: announced to the router
        self.greeting = False  # its Welcome waits to go out in one write with its ID
        self.blocked = False  # the transport holds unsent bytes: lines wait in ``out``
        self.fd = -1  # the socket's fd, for the acceptor's direct writes (-1: TLS, or none)
        self.tls = False
        self.cap_time = False  # the connection's, copied here for the fan-out's hot loop
        # no list of its room that the router's next change applies to (new, moved, resynced):
        # its next USERS/NAMES push is the whole list even with /cap deltas
        self.fresh = True
        self.door: IrcDoor | None = None  # the IRC door's translator (None: the line protocol)
        self.pinged = 0.0  # when the server last pinged it (web and IRC doors)
        self._timer: asyncio.TimerHandle | None = None
        self._armed: float | None = None

    # ---- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.admit(transport):
            self.acceptor.session_opened(self)

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """The socket's options, and the acceptor's admission: False if it refused (and closed)
        the connection."""
        # a stream transport (uvloop's is one too, without subclassing asyncio.Transport)
        self.transport = cast(asyncio.Transport, transport)
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
        # a TLS session was admitted (and counted) at its accept, before its handshake
        # (Acceptor._accept_tls); a plain one is admitted here
        if not self.counted and not self.acceptor.session_accepted(self):
            return False
        # pause_writing as soon as a write leaves bytes unsent (the kernel buffer is full): the
        # lines that follow wait in ``out`` (shared with the room's other members) and go in
        # one write on resume_writing, not one transport write (a uvloop request) per flush.
        # Plain transports pause at size > high: high=0, so "not blocked" means "nothing
        # unsent", and Output may write to the fd itself. TLS ones pause at size >= high:
        # high=1 (0 would pause at once), and are never written directly.
        self.tls = transport.get_extra_info("ssl_object") is not None
        if sock is not None and not self.tls:
            self.fd = sock.fileno()
        self.transport.set_write_buffer_limits(high=1 if self.tls else 0, low=0)
        return True

    def pause_writing(self) -> None:
        self.blocked = True
        self.acceptor.output.watch(self)

    def resume_writing(self) -> None:
        self.blocked = False
        self.acceptor.output.unblocked(self)

    def data_received(self, data: bytes) -> None:
        if self.open:
            self.pump(self.conn.receive_data, data)

    def eof_received(self) -> bool:
        """A half-close: the connection serves what was read, answers it, then closes. asyncio's
        TLS transport cannot stay half-open, so there the reading side's end is the end."""
        if self.open:
            self.pump(self.conn.receive_eof)
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        self.out.clear()
        self.acceptor.session_closed(self, "connection lost" if exc is None else str(exc))
        self.transport = None

    # ---- the pump ------------------------------------------------------------------------------

    def pump(self, call: Callable[..., list[Action]], *args: object) -> None:
        """Run one ``Connection`` call with the clock, the bus ticket and what the router has
        answered; carry out its actions."""
        acceptor = self.acceptor
        try:
            actions = call(*args, acceptor.loop.time(), acceptor.bus.link.ticket,
                           acceptor.answered)
        except Exception:
            log.exception("bug while serving conn %d (%s); closing it", self.id, self.peer)
            self.close()
            return
        self._after(actions)

    def answered(self, n: int) -> None:
        """The router has answered every batch up to ``n``: what waited on that goes on."""
        self._after(self.conn.answered_up_to(n))

    def _after(self, actions: list[Action]) -> None:
        if actions:
            self.act(actions)
        conn = self.conn
        self.cap_time = conn.cap_time
        if conn.wake_at != self._armed:
            self._arm(conn.wake_at)
        if conn.awaits_answers:
            self.acceptor.holding[self] = None

    def act(self, actions: list[Action]) -> None:
        acceptor = self.acceptor
        for action in actions:
            kind = type(action)
            if kind is Route:
                assert isinstance(action, Route)
                acceptor.bus.send(bus.Cmd(self.id, action.command))
            elif kind is Write:
                assert isinstance(action, Write)
                self.send_line(action.text)
            elif kind is Close:
                assert isinstance(action, Close)
                acceptor.leaving(self, action.reason)
                self.close()
            elif action is CUT:
                acceptor.bus.cut()
            elif action is PAUSE and self.transport is not None:
                self.transport.pause_reading()
            elif (action is RESUME and self.transport is not None
                  and not self.transport.is_closing()):
                self.transport.resume_reading()

    def _arm(self, at: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = at
        if at is not None:
            self._timer = self.acceptor.loop.call_at(at, self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._armed = None
        if self.open:
            self.pump(self.conn.tick)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ---- output --------------------------------------------------------------------------------

    def send_line(self, text: str) -> None:
        """Queue a line (or several joined by newlines) for this client's next write."""
        if self.greeting:
            self.greet()
        self.acceptor.output.queue(self, (text + "\n").encode("utf-8"))

    def ping(self, now: float) -> None:
        """Ask a quiet client for a sign of life, in its door's words (the line protocol has
        none: a line client is never pinged)."""

    def last_words(self, text: str, code: str | None = None) -> bytes:
        """The line that tells this client why the server closes it (``ERROR: text``, tagged
        with ``code`` when given), in this door's own words, ready to write."""
        return (replies.format_error(text, code) + "\n").encode("utf-8")

    def greet(self) -> None:
        """The Welcome line, which waited to share a write with the ID; first in the queue."""
        self.greeting = False
        self.acceptor.output.queue(self, WELCOME)

    def close(self) -> None:
        """Close after writing what is queued."""
        t = self.transport
        if t is not None and not t.is_closing():
            if self.greeting:
                self.greet()
            self.acceptor.output.write_now(self)
            t.close()

    def snapshot(self) -> bus.BusMessage:
        """This session for a router that does not know it."""
        return bus.Sync(self.id, self.uid, self.name, self.room, self.peer, self.account,
                        self.seal) if self.uid else bus.Open(self.id, self.peer)
