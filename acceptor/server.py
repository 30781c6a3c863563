"""The acceptor: admits client sessions, hands them what the router sends, keeps their time.

Owns the listening socket and every ``Session`` (by conn id). The parts it holds:
- ``Output`` (acceptor/output.py): each room's local members and the rounds of writes;
- ``BusPump`` around ``AcceptorLink`` (acceptor/link.py, wire/link.py): the router;
- each session's ``Connection`` (acceptor/connection.py), through its ``Session`` pump.

It holds no chat state beyond its own sessions; what a session is (uid, name, room) comes from
the router's ``SessionSet`` and is kept so a restarted router can be resynced.

Its own jobs: admission at accept (``max_connections`` in all, ``max_per_address`` per IP
address, and new connections per address paced; one over gets an ``ERROR:`` line and is closed;
a TLS connection counts from its accept, and has ``tls_handshake_timeout`` to finish its
handshake before it becomes a session), the Welcome line (held up to ``WELCOME_WAIT`` so
that it leaves in one write with the ID and USERS, as the original server sent them), what the
router says (lines, sessions, kicks, resyncs), the replies sessions hold until the router has
answered what came before them (released as ``AcceptorLink.answered`` grows), batches the bus
refused (their senders get ``ERROR: not sent``), one sweep a second for the idle and slowloris
deadlines, and SIGTERM.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from pychat.wire import bus, errors, replies, transfer
from pychat.wire.commands import describe
from pychat.wire.errors import BusError
from pychat.wire.link import AcceptorLink, Answered, Missed, ResyncNeeded

from .connection import Connection
from .limits import Limits, TokenBucket, exempt_addresses
from .link import BusPump
from .output import Output
from .session import Session
from .web import Static

if TYPE_CHECKING:
    import ssl as ssl_module

    from .web_session import WebSession

# ssl comes with a certificate (acceptor/tls.py), the IRC door's modules with --irc-port and the
# web door's with the web door (at start): an acceptor loads only the doors it opens (issue 18)

log = logging.getLogger("pychat.acceptor")

SHUTDOWN = "server shutting down"
SWEEP_INTERVAL = 1.0  # seconds between sweeps for idle clients and unfinished lines
WELCOME_WAIT = 0.25  # at most, the Welcome waits for the ID to leave in one write with it
ACCEPTS_PER_CALLBACK = 64  # TLS connections accepted per wake-up before others get a turn


class Acceptor:
    def __init__(self, loop: asyncio.AbstractEventLoop, *, name: str, router: str,
                 limits: Limits, heartbeat: float = 1.0, bus_hwm: int = 100_000,
                 curve: tuple[bytes, bytes, bytes] | None = None,
                 web_origins: tuple[str, ...] = ()):
        limits.check()
        self.loop = loop
        self.name = name
        self.limits = limits
        self.epoch = os.urandom(6).hex()  # as uuid4().hex[:12]: 12 random hex digits
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self.stats = {"accepted": 0, "send_queue_drops": 0, "full_refusals": 0,
                      "lines_out": 0, "writes": 0, "address_refusals": 0, "idle_closed": 0,
                      "unfinished_line_closed": 0, "connect_rate_refusals": 0,
                      # the web door: HTTP requests answered (files and errors), WebSockets
                      # opened, handshakes refused for their origin
                      "web_requests": 0, "web_sockets": 0, "web_origin_refusals": 0}
        self.per_address: dict[str, int] = {}  # admitted connections per peer IP address
        self.handshaking = 0  # admitted TLS connections still in their handshake
        self.connects: dict[str, TokenBucket] = {}  # new connections per address, paced
        self._exempt = exempt_addresses(limits.per_address_exempt)
        self.holding: dict[Session, None] = {}  # sessions waiting for the router's answers
        self.answered = 0  # every batch up to this one is answered, as far as we have read
        self._greeting: deque[tuple[float, Session]] = deque()  # Welcome due at, oldest first
        self._greet_handle: asyncio.TimerHandle | None = None
        self._beat_handle: asyncio.TimerHandle | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None
        self.server: asyncio.Server | None = None
        self.irc_server: asyncio.Server | None = None
        self.web_server: asyncio.Server | None = None
        self.web_static = Static()  # the browser client's files (acceptor/web/)
        self.web_origins = web_origins  # allowed besides a page's own (acceptor/web.py)
        self.web_base = ""  # the web door's base URL (--web-url, or made from host and port)
        self.transfers: dict[int, WebSession] = {}  # uploads and downloads, by connection id
        # their pace (--transfer-mbps), in chunks: one bucket for all of this acceptor's
        self.transfer_pace = (TokenBucket(limits.transfer_mbps * 1e6 / transfer.CHUNK, 4,
                                          loop.time()) if limits.transfer_mbps else None)
        # a WebSocket message's longest: a line too long for the core still gets its ERROR:
        self.web_max_frame = max(65536, 4 * limits.max_line)
        self.tls: ssl_module.SSLContext | None = None
        # the TLS doors' own listening sockets (the line door's first, then the IRC door's)
        self._listening: list[socket.socket] = []
        self._web_tls: socket.socket | None = None  # the web door's among them
        link = AcceptorLink(name, self.epoch, heartbeat=heartbeat, now=loop.time())
        self.bus = BusPump(loop, router, link, self.on_batch, self.on_change, hwm=bus_hwm,
                           curve=curve)
        self.output = Output(loop, limits, self.stats, self._drop, self.bus.flush)

    @property
    def router_alive(self) -> bool:
        return self.bus.link.router_alive

    async def start(self, host: str, port: int, reuse_port: bool,
                    ssl: ssl_module.SSLContext | None = None, irc_port: int = 0,
                    web_port: int | None = None, web_url: str = "") -> None:
        """Listen on ``port`` (the line protocol), ``irc_port`` (IRC; 0: none) and ``web_port``
        (HTTP and WebSocket; None: none)."""
        self.tls = ssl
        if irc_port:
            from .irc_session import IrcSession
        if web_port is not None:
            from .web_session import WebSession
        if ssl is None:
            self.server = await self.loop.create_server(
                lambda: Session(self, next(self._ids)), host, port,
                reuse_port=reuse_port or None, backlog=4096)
            if irc_port:  # the IRC door (acceptor/irc.py)
                self.irc_server = await self.loop.create_server(
                    lambda: IrcSession(self, next(self._ids)), host, irc_port,
                    reuse_port=reuse_port or None, backlog=4096)
            if web_port is not None:  # the web door (acceptor/web_session.py)
                self.web_server = await self.loop.create_server(
                    lambda: WebSession(self, next(self._ids)), host, web_port,
                    reuse_port=reuse_port or None, backlog=4096)
        else:  # we accept, admit and count each connection before its handshake
            self._listen_tls(host, port, reuse_port, Session)
            if irc_port:  # the IRC door takes the same certificate
                self._listen_tls(host, irc_port, reuse_port, IrcSession)
            if web_port is not None:  # and the web door (https:// and wss://)
                self._web_tls = self._listen_tls(host, web_port, reuse_port, WebSession)
        if web_port is not None:  # told to the router: the URLs of uploads and files
            where = host
            if not web_url and host in ("0.0.0.0", "::", ""):  # every address: name this host
                where = socket.gethostname()
                log.warning("the URLs of files name this host as %r (--host %s): set --web-url "
                            "to the address clients reach", where, host or "''")
            where = f"[{where}]" if ":" in where else where
            self.web_base = web_url or f"{'https' if ssl else 'http'}://{where}:{self.web_port()}"
            self.bus.link.web = self.web_base
        self.bus.link.hello([], self.loop.time())
        self.bus.flush()
        self._beat()
        self._sweep_handle = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def ports(self) -> list[tuple[str, int]]:
        if self._listening:
            return [self._listening[0].getsockname()[:2]]
        return [s.getsockname()[:2] for s in self.server.sockets] if self.server else []

    def web_port(self) -> int:
        """The web door's port (0: none)."""
        if self.web_server is not None:
            return int(self.web_server.sockets[0].getsockname()[1])
        return int(self._web_tls.getsockname()[1]) if self._web_tls is not None else 0

    # ---- the TLS door: admitted at accept, a session once its handshake is done ------------

    def _listen_tls(self, host: str, port: int, reuse_port: bool,
                    factory: Callable[[Acceptor, int], Session]) -> socket.socket:
        listening = listening_socket(host, port, reuse_port)
        self._listening.append(listening)
        self.loop.add_reader(listening.fileno(), self._accept_tls, listening, factory)
        return listening

    def _accept_tls(self, listening: socket.socket,
                    factory: Callable[[Acceptor, int], Session]) -> None:
        assert self.tls is not None
        for _ in range(ACCEPTS_PER_CALLBACK):
            try:
                sock, addr = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of file descriptors, ...: the next wake-up retries
                log.warning("accept failed: %s", e)
                return
            host = str(addr[0])
            if self._admission_problem(host, f"{host}:{addr[1]}") is not None:
                sock.close()  # no line: a TLS client speaks no plain text
                continue
            sock.setblocking(False)
            self.per_address[host] = self.per_address.get(host, 0) + 1
            self.handshaking += 1
            self.loop.create_task(self._tls_session(sock, host, factory))

    async def _tls_session(self, sock: socket.socket, host: str,
                           factory: Callable[[Acceptor, int], Session]) -> None:
        """The handshake, within ``tls_handshake_timeout`` of the accept, by the loop's own TLS
        (``connect_accepted_socket``); the session is admitted already (counted)."""
        s = factory(self, next(self._ids))
        s.counted = True
        s.host = host
        limit = self.limits.tls_handshake_timeout
        # at the deadline its place is freed *before* the client can see the end (the loop's
        # own timeout closes first and tells us after: a client reconnecting at once would
        # still find the place taken); shutdown, not close: the transport owns the socket
        deadline = self.loop.call_later(limit, self._handshake_expired, s, sock)
        try:
            await self.loop.connect_accepted_socket(lambda: s, sock, ssl=self.tls,
                                                    ssl_handshake_timeout=limit + 1.0)
        except (OSError, asyncio.TimeoutError, ValueError) as e:
            log.debug("%s: no TLS session: %s", host, e)
            sock.close()
            if s.counted:  # (it never became a session)
                s.counted = False
                self._forget_address(s)
        finally:
            deadline.cancel()
            self.handshaking -= 1

    def _handshake_expired(self, s: Session, sock: socket.socket) -> None:
        if s.transport is not None or not s.counted:
            return  # a session by now (or already forgotten)
        s.counted = False
        self._forget_address(s)
        try:
            sock.shutdown(socket.SHUT_RDWR)  # the handshake fails at once; the task ends
        except OSError:
            pass

    # ---- sessions --------------------------------------------------------------------------------

    def session_accepted(self, s: Session) -> bool:
        """A plain connection was accepted: is it admitted? (A TLS one is admitted at its accept,
        before its handshake: ``_accept_tls``.) One over a limit gets an ``ERROR:`` line and is
        closed."""
        t = s.transport
        assert t is not None
        problem = self._admission_problem(s.host, s.peer)
        if problem is not None:
            t.write(s.last_words(problem))
            t.close()
            return False
        s.counted = True
        self.per_address[s.host] = self.per_address.get(s.host, 0) + 1
        return True

    def _admission_problem(self, host: str, peer: str) -> str | None:
        """Why a new connection from ``host`` is refused (counted in the stats), or None: the
        limits on connections in all (sessions and TLS handshakes), per address, and the pace
        of new ones per address."""
        if len(self.sessions) + self.handshaking >= self.limits.max_connections:
            self.stats["full_refusals"] += 1
            return f"server full (max {self.limits.max_connections} connections)"
        if self._exempt(host):
            return None
        limit = self.limits.max_per_address
        if self.per_address.get(host, 0) >= limit:
            self.stats["address_refusals"] += 1
            log.info("refused %s: %d connections from its address", peer, limit)
            return f"too many connections from your address (max {limit})"
        now = self.loop.time()
        bucket = self.connects.get(host)
        if bucket is None:
            bucket = self.connects[host] = TokenBucket(self.limits.connect_rate,
                                                       self.limits.connect_burst, now)
        if not bucket.take(now):  # each costs its room's arrival pushes: paced like commands
            self.stats["connect_rate_refusals"] += 1
            log.info("refused %s: new connections from its address faster than %g a second",
                     peer, self.limits.connect_rate)
            return (f"too many new connections from your address (at most "
                    f"{self.limits.connect_rate:g} a second)")
        return None

    def session_opened(self, s: Session) -> None:
        """An admitted connection (a TLS one once its handshake is done) becomes a session: the
        router hears of it, and its Welcome waits for its ID."""
        self.stats["accepted"] += 1
        now = self.loop.time()
        s.open = True
        self.sessions[s.id] = s
        s.conn = Connection(self.limits, now, self.bus.send(bus.Open(s.id, s.peer)))
        s.greeting = True
        self._greeting.append((now + WELCOME_WAIT, s))
        if self._greet_handle is None:
            self._greet_handle = self.loop.call_at(now + WELCOME_WAIT, self._greet_due)

    def session_closed(self, s: Session, reason: str) -> None:
        if s.counted:  # (an admitted connection: a session, or one that did not become one)
            s.counted = False
            self._forget_address(s)
        if not s.open:
            return
        s.open = False
        s.disarm()
        self.holding.pop(s, None)
        del self.sessions[s.id]
        self.output.forget(s)
        self.bus.send(bus.Close(s.id, s.conn.quitting or reason))
        log.debug("conn %d (%s) closed: %s", s.id, s.peer, reason)

    def leaving(self, s: Session, reason: str) -> None:
        """A session's connection closes it (quit, end of input, idle, slowloris)."""
        if reason in ("idle timeout", "unfinished line"):
            self.stats["idle_closed" if reason == "idle timeout"
                       else "unfinished_line_closed"] += 1
            log.info("conn %d (%s) closed: %s", s.id, s.peer, reason)

    def _forget_address(self, s: Session) -> None:
        n = self.per_address.get(s.host, 0) - 1
        if n > 0:
            self.per_address[s.host] = n
        else:
            self.per_address.pop(s.host, None)

    def _greet_due(self) -> None:
        """Welcome lines whose ID did not come in time go alone."""
        self._greet_handle = None
        now = self.loop.time()
        due = self._greeting
        while due and due[0][0] <= now:
            _, s = due.popleft()
            if s.open and s.greeting:
                s.greet()
        if due:
            self._greet_handle = self.loop.call_at(due[0][0], self._greet_due)

    def _sweep(self) -> None:
        """Once a second over every session: the idle and slowloris deadlines (each session's
        ``Connection`` decides; one timer for the acceptor, not one per connection)."""
        self._sweep_handle = self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        now = self.loop.time()
        full = [host for host, bucket in self.connects.items() if bucket.full(now)]
        for host in full:  # an address that paid its connections back needs no bucket
            del self.connects[host]
        if self.limits.ping_after:  # web and IRC clients: a ping keeps proxies and idle at bay
            quiet = now - self.limits.ping_after
            for s in self.sessions.values():
                if s.KIND and s.conn.seen < quiet and s.pinged < quiet:
                    s.ping(now)
        idle, unfinished = self.limits.idle_timeout, self.limits.partial_line_timeout
        if not idle and not unfinished:
            return
        idle_since = now - idle if idle else -1.0
        begun_by = now - unfinished if unfinished else -1.0
        due = [s for s in self.sessions.values()  # a cheap look first: tick decides
               if s.conn.seen < idle_since or 0.0 < s.conn.line_since < begun_by]
        for s in due:
            if not s.conn.quitting:
                s.pump(s.conn.tick)

    def _drop(self, s: Session, why: str) -> None:
        """Over its send queue: gone at once, without what was queued."""
        log.info("conn %d (%s) disconnected: %s", s.id, s.peer, why)
        self.session_closed(s, why)
        if s.transport is not None:
            s.transport.abort()

    # ---- the bus: what the router sends ----------------------------------------------------------

    def on_batch(self, frames: list[bytes]) -> None:
        if frames and frames[0] == transfer.HEADER:  # the file channel: a web door's transfer
            self._on_transfer(frames)
            return
        try:
            payload = self.bus.link.receive(frames, self.loop.time())
        except BusError as e:
            log.warning("dropped a bad batch from the router: %s", e)
            return
        sessions = self.sessions
        output = self.output
        for msg in payload:
            kind = type(msg)
            if kind is bus.ChatRoom:
                assert isinstance(msg, bus.ChatRoom)
                output.fan_out(msg.room, (msg.text + "\n").encode("utf-8"), (msg.stamp, msg.text))
            elif kind is bus.ToConn:
                assert isinstance(msg, bus.ToConn)
                if (s := sessions.get(msg.conn)) is not None:
                    s.send_line(msg.text)
            elif kind is bus.Err:
                assert isinstance(msg, bus.Err)
                if (s := sessions.get(msg.conn)) is not None:
                    s.send_line(replies.format_error(msg.text,
                                                     msg.code if s.conn.cap_codes else None))
            elif kind is bus.Cost:
                assert isinstance(msg, bus.Cost)
                if (s := sessions.get(msg.conn)) is not None:
                    s.conn.charge(msg.bytes)
            elif kind is bus.ChatConn:
                assert isinstance(msg, bus.ChatConn)
                if (s := sessions.get(msg.conn)) is not None:
                    s.send_line(replies.tagged(msg.stamp, msg.text) if s.conn.cap_time
                                else msg.text)
            elif kind is bus.ToRoom:
                assert isinstance(msg, bus.ToRoom)
                output.roster(msg.room, msg.text, msg.delta)
            elif kind is bus.SessionSet:
                assert isinstance(msg, bus.SessionSet)
                self._set_session(msg)
            elif kind is bus.Done:
                assert isinstance(msg, bus.Done)
                if (s := sessions.get(msg.conn)) is not None:
                    s.pump(s.conn.finish, "")
            elif kind is bus.Notice:
                assert isinstance(msg, bus.Notice)
                output.fan_out(msg.room, (msg.text + "\n").encode("utf-8"))
            elif kind is bus.Kick:
                assert isinstance(msg, bus.Kick)
                if (s := sessions.get(msg.conn)) is not None:
                    if msg.text:
                        s.send_line(msg.text)
                    s.close()
            elif kind is Answered:  # here in the stream, before the results of later batches
                assert isinstance(msg, Answered)
                self._answer(msg.n)
            elif kind is ResyncNeeded:
                assert isinstance(msg, ResyncNeeded)
                self._resync(msg.why)
            elif kind is Missed:
                assert isinstance(msg, Missed)
                for s in output.members(msg.room):
                    s.fresh = True
            else:
                log.warning("router sent an acceptor-bound %r; dropped", msg)
        output.kick()

    def _on_transfer(self, frames: list[bytes]) -> None:
        try:
            msg = transfer.decode(frames)
        except BusError as e:
            log.warning("dropped a bad file-channel message from the router: %s", e)
            return
        s = self.transfers.get(msg.xfer)
        if s is not None:
            s.on_transfer(msg)

    def transfer_wait(self) -> float:
        """0 if a chunk may move now (and it is counted), else the seconds until one may."""
        pace = self.transfer_pace
        if pace is None or pace.take(self.loop.time()):
            return 0.0
        return max(pace.wait(), 0.001)

    def send_transfer(self, msg: transfer.Transfer) -> None:
        self.bus.send_raw(transfer.encode(msg))

    def on_change(self) -> None:
        """After the link handed batches on: refusals to tell, replies that may go."""
        for msgs in self.bus.link.take_refused():
            self._refused(msgs)
        self._answer(self.bus.link.answered)

    def _answer(self, n: int) -> None:
        """Every batch up to ``n`` is answered: replies held behind them go out."""
        if n <= self.answered:
            return
        self.answered = n
        holding = self.holding
        for s in list(holding):
            if s.open:
                s.answered(n)
                if s.conn.awaits_answers:
                    continue
            holding.pop(s, None)

    def _refused(self, msgs: list[bus.BusMessage]) -> None:
        """A batch that will not reach a router (the backlog overflowed, or the router has been
        gone for ROUTER_WAIT): tell each sender its command was not sent. Opens, Closes and
        heartbeats need nothing: the resync carries the sessions."""
        for msg in msgs:
            if isinstance(msg, bus.Cmd) and (s := self.sessions.get(msg.conn)) is not None:
                s.send_line(replies.format_error(
                    f"not sent, the router is unavailable: {describe(msg.command)}",
                    errors.NOT_SENT if s.conn.cap_codes else None))
        log.error("router unavailable: refused a batch of %d bus messages", len(msgs))

    def _set_session(self, msg: bus.SessionSet) -> None:
        s = self.sessions.get(msg.conn)
        if s is None:
            return  # closed meanwhile; our Close is on its way
        if msg.room != s.room:
            s.fresh = True  # its new room's list comes whole
        old_uid, s.uid = s.uid, msg.uid  # (before the move: an IRC member's run knows its uid)
        if old_uid and old_uid != msg.uid:
            self.output.renumbered(s, old_uid)
        self.output.move(s, msg.room)
        s.name, s.room = msg.name, msg.room
        s.account, s.seal = msg.account, msg.seal

    # ---- heartbeats and resync -------------------------------------------------------------------

    def _beat(self) -> None:
        link = self.bus.link
        link.tick(self.loop.time())
        self.bus.flush()
        self._beat_handle = self.loop.call_at(link.next_wake(), self._beat)

    def _resync(self, why: str) -> None:
        """Hello and every session, then what the router has not acknowledged, again."""
        again = self.bus.link.resync([s.snapshot() for s in self.sessions.values()],
                                     self.loop.time())
        for s in list(self.sessions.values()):  # a new router knows nothing of what they got
            s.fresh = True
            if s.conn.awaiting:  # the router that was to answer it is gone
                s.pump(s.conn.finish, f"not done, the server restarted: /{s.conn.awaiting} "
                                      f"(try again)")
        self.bus.flush()
        log.info("resyncing %d sessions, %d unacknowledged batches sent again: %s",
                 len(self.sessions), again, why)

    # ---- shutdown --------------------------------------------------------------------------------

    async def shutdown(self, grace: float = 2.0) -> None:
        """SIGTERM: stop accepting, tell every client, close, let the router know."""
        for server in (self.server, self.irc_server, self.web_server):
            if server is not None:
                server.close()
        for listening in self._listening:
            self.loop.remove_reader(listening.fileno())
            listening.close()
        for handle in (self._beat_handle, self._sweep_handle, self._greet_handle):
            if handle is not None:
                handle.cancel()
        self.output.close()
        sessions = list(self.sessions.values())
        for s in sessions:
            if s.greeting:
                s.greet()
            self.output.write_now(s)
            if s.transport is not None and not s.transport.is_closing():
                s.transport.write(s.last_words(
                    SHUTDOWN, errors.SHUTTING_DOWN if s.conn.cap_codes else None))
                s.transport.close()
        deadline = self.loop.time() + grace
        while any(s.transport is not None for s in sessions) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)  # polling our own transports to drain, not synchronising
        for s in sessions:
            if s.transport is not None:
                s.transport.abort()
        self.bus.close(linger_ms=500)


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A non-blocking TCP listening socket as ``create_server`` would make it (the TLS door
    accepts on its own, to admit each connection before its handshake)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(4096)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
