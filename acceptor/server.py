"""The acceptor: its client sessions, its end of the bus, and local fan-out.

Owns: the listening socket, every ``Session`` (by conn id), each room's *local* members, and the
bus link. It holds no chat state beyond its own sessions; what a session is (uid, name, room)
comes from the router's ``SessionSet`` and is kept so a restarted router can be resynced.

Fan-out: a room message arrives once per acceptor; its line is encoded once (twice at most: with
and without ``@time=``) and appended to each local member's queue. Queues are written in rounds
(``flush``), one write per client per round, ``FLUSH_SLICE`` clients at a time with the loop
running between slices (reads and router batches are not held up by a long round, and lines
that arrive meanwhile reach the clients not written yet in the same round); nobody ever waits
for a client. A plain client whose transport holds nothing unsent is written with ``os.write``
on its socket (cheaper than ``transport.write``); a partial write leaves the rest to the
transport, which pauses the session (``pause_writing``): a paused ("blocked") client's lines
wait in its queue, as references to the bytes the room shares, until ``resume_writing``.

Coalescing: the send syscall is most of an acceptor's cost under load, so after a round of writes
the next round waits ``coalesce_factor`` times as long as that round's writes took (at most
``coalesce_ms``), and lines that arrive meanwhile share one write. A light load (a quick round)
waits next to nothing; a busy acceptor batches more and spends a bounded share of its time in
send calls. A client
whose unsent bytes pass ``send_queue`` is watched: if it has drained nothing by the next stall
check it is disconnected; past ``send_queue_hard`` it is disconnected at once.

Faults: one sweep a second (``_sweep``, one timer for the whole acceptor) closes clients idle past
``idle_timeout`` and clients holding an unfinished line past ``partial_line_timeout`` (slowloris),
each with an ``ERROR:`` line. Clients are counted per IP address (``max_per_address``) as well as
in total (``max_connections``); one over either limit gets an ``ERROR:`` line and is closed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import ssl as ssl_module
import time
import uuid

from pychat.wire import bus, replies
from pychat.wire.commands import Command, describe
from pychat.wire.errors import BusError

from .limits import Limits, exempt_addresses
from .link import BusLink
from .session import Session

log = logging.getLogger("pychat.acceptor")

SHUTDOWN_LINE = b"ERROR: server shutting down\n"
MISSED_HEARTBEATS = 3
ROUTER_WAIT = 5.0  # seconds a command waits for a gone router before its sender is told
SWEEP_INTERVAL = 1.0  # seconds between sweeps for idle clients and unfinished lines
TLS_HANDSHAKE_TIMEOUT = 10.0  # seconds a TLS client has to finish its handshake
FLUSH_SLICE = 128  # clients a round writes before the loop gets a turn (reads, router batches)


class Acceptor:
    def __init__(self, loop: asyncio.AbstractEventLoop, *, name: str, router: str,
                 limits: Limits, heartbeat: float = 1.0, bus_hwm: int = 100_000,
                 curve: tuple[bytes, bytes, bytes] | None = None):
        limits.check()
        self.loop = loop
        self.name = name
        self.limits = limits
        self.heartbeat = heartbeat
        self.epoch = uuid.uuid4().hex[:12]
        self.sessions: dict[int, Session] = {}
        self.rooms: dict[str, dict[Session, None]] = {}
        self._ids = itertools.count(1)
        self._dirty: list[Session] = []
        self._flush_handle: asyncio.Handle | None = None
        self._coalesce_max = limits.coalesce_ms / 1000.0
        self._coalesce_factor = limits.coalesce_factor
        self._next_flush = 0.0  # loop time before which a round of writes waits
        self._round: list[Session] = []  # the round being written, FLUSH_SLICE at a time
        self._round_at = 0  # its next client
        self._round_cost = 0.0  # seconds its slices took so far
        self._beat_handle: asyncio.TimerHandle | None = None
        self._stall_handle: asyncio.TimerHandle | None = None
        self._over: dict[Session, int] = {}  # clients above send_queue -> bytes at last check
        self._held: dict[Session, tuple[int, int]] = {}  # blocked -> (lines, bytes) counted
        self.router_epoch: str | None = None
        self.router_seen = 0.0
        self.router_alive = False
        self.peers = "[]"  # the acceptors the router last named (bus.Peers), for our Hello
        self._seen_from: dict[str, int] = {}  # origin epoch -> last batch whose results we had
        self.server: asyncio.AbstractServer | None = None
        self.stats = {"accepted": 0, "send_queue_drops": 0, "full_refusals": 0,
                      "lines_out": 0, "writes": 0, "address_refusals": 0, "idle_closed": 0,
                      "unfinished_line_closed": 0}
        self.per_address: dict[str, int] = {}  # open sessions per peer IP address
        self._exempt = exempt_addresses(limits.per_address_exempt)
        self._sweep_handle: asyncio.TimerHandle | None = None
        self.link = BusLink(loop, router, name, self.on_batch, self.on_refused, hwm=bus_hwm,
                            curve=curve)

    async def start(self, host: str, port: int, reuse_port: bool,
                    ssl: ssl_module.SSLContext | None = None) -> None:
        tls = {"ssl": ssl, "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT} if ssl else {}
        self.server = await self.loop.create_server(
            lambda: Session(self, next(self._ids)), host, port,
            reuse_port=reuse_port or None, backlog=4096, **tls)
        self.link.send_control([bus.Hello(self.name, self.epoch, self.peers)])
        self._beat()
        self._sweep_handle = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def ports(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for s in self.server.sockets] if self.server else []

    # ---- sessions --------------------------------------------------------------------------------

    def session_opened(self, s: Session) -> None:
        if len(self.sessions) >= self.limits.max_connections:
            self.stats["full_refusals"] += 1
            s.transport.write(
                f"ERROR: server full (max {self.limits.max_connections} connections)\n".encode())
            s.transport.close()
            return
        if self._refuse_address(s):
            return
        self.stats["accepted"] += 1
        s.open = True
        self.per_address[s.host] = self.per_address.get(s.host, 0) + 1
        self.sessions[s.conn] = s
        s.send_line(replies.WELCOME)
        self.link.send(bus.Open(s.conn, s.peer))

    def session_closed(self, s: Session, reason: str) -> None:
        if not s.open:
            return
        s.open = False
        self._forget_address(s)
        self._over.pop(s, None)
        self._held.pop(s, None)
        del self.sessions[s.conn]
        self._leave_room(s)
        self.link.send(bus.Close(s.conn, s.quitting or reason))
        log.debug("conn %d (%s) closed: %s", s.conn, s.peer, reason)

    def _refuse_address(self, s: Session) -> bool:
        """Over ``max_per_address`` clients from this IP address: ERROR: line, close."""
        limit = self.limits.max_per_address
        if self.per_address.get(s.host, 0) < limit or self._exempt(s.host):
            return False
        self.stats["address_refusals"] += 1
        log.info("refused %s: %d connections from its address", s.peer, limit)
        s.transport.write(f"ERROR: too many connections from your address (max {limit})\n"
                          .encode())
        s.transport.close()
        return True

    def _forget_address(self, s: Session) -> None:
        n = self.per_address.get(s.host, 0) - 1
        if n > 0:
            self.per_address[s.host] = n
        else:
            self.per_address.pop(s.host, None)

    def _sweep(self) -> None:
        """Once a second over every session: close the idle and the slowloris, with ERROR:.

        A session paused by the flood limit is not the client's silence (we are not reading):
        it is skipped, and its clocks restart when reading resumes (``Session._unpause``)."""
        self._sweep_handle = self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        idle = self.limits.idle_timeout
        unfinished = self.limits.partial_line_timeout
        if not idle and not unfinished:
            return
        now = self.loop.time()
        late: list[tuple[Session, str, str]] = []
        for s in self.sessions.values():
            if s.quitting or s.paused:
                continue
            if unfinished and s.line_since and now - s.line_since > unfinished:
                late.append((s, f"ERROR: line not finished in {unfinished:g} s",
                             "unfinished line"))
            elif idle and now - s.seen > idle:
                late.append((s, f"ERROR: idle timeout (nothing received in {idle:g} s)",
                             "idle timeout"))
        for s, line, why in late:
            self.stats["idle_closed" if why == "idle timeout" else "unfinished_line_closed"] += 1
            log.info("conn %d (%s) closed: %s", s.conn, s.peer, why)
            s.quitting = why  # read nothing more; the router hears why it left
            s.send_line(line)
            s.close()

    def to_router(self, s: Session, cmd: Command) -> None:
        self.link.send(bus.Cmd(s.conn, cmd))

    def reply(self, s: Session, text: str, close: bool) -> None:
        """Send a locally made reply round through the router, so it reaches the client after
        the results of earlier commands (its ID and USERS too, for a client that has just
        connected). Before we have heard any router the relay waits in the bus queue like the
        commands do; only when the router we heard has gone silent do we answer at once."""
        if self.router_alive or self.router_epoch is None:
            self.link.send(bus.Relay(s.conn, text, int(close)))
        else:
            s.send_line(text)
            if close:
                s.close()

    def on_refused(self, msgs: list[bus.BusMessage]) -> None:
        """A batch will not reach a router (the backlog overflowed, or the router has been gone
        for ROUTER_WAIT): tell each sender its command was not sent, and answer relayed replies
        here. Opens, Closes and heartbeats need nothing: the resync carries the sessions."""
        for msg in msgs:
            if isinstance(msg, bus.Cmd) and (s := self.sessions.get(msg.conn)) is not None:
                s.send_line(f"ERROR: not sent, the router is unavailable: {describe(msg.command)}")
            elif isinstance(msg, bus.Relay) and (s := self.sessions.get(msg.conn)) is not None:
                s.send_line(msg.text)
                if msg.close:
                    s.close()
        log.error("router unavailable: refused a batch of %d bus messages", len(msgs))

    def _leave_room(self, s: Session) -> None:
        members = self.rooms.get(s.room)
        if members is not None:
            members.pop(s, None)
            if not members:
                del self.rooms[s.room]

    # ---- output ----------------------------------------------------------------------------------

    def queue(self, s: Session, data: bytes) -> None:
        if not s.out:
            self._dirty.append(s)
            if self._flush_handle is None:
                self._schedule_flush()
        s.out.append(data)

    def _schedule_flush(self) -> None:
        wait = self._next_flush - self.loop.time()
        self._flush_handle = (self.loop.call_later(wait, self.flush) if wait > 0
                              else self.loop.call_soon(self.flush))

    def unblocked(self, s: Session) -> None:
        """resume_writing: the lines that waited in ``s.out`` go in the next flush."""
        self._held.pop(s, None)
        if s.out:
            self._dirty.append(s)
            if self._flush_handle is None:
                self._schedule_flush()

    def watch(self, s: Session) -> None:
        """pause_writing: a blocked client's queue (mostly ``s.out``) is checked at each stall
        check for as long as it stays blocked."""
        self._over.setdefault(s, 0)
        if self._stall_handle is None:
            self._stall_handle = self.loop.call_later(self.limits.stall_check,
                                                      self._check_stalled)

    def write_now(self, s: Session) -> None:
        if s.out:
            self._write(s)

    def flush(self) -> None:
        """Start a round of writes: one write per client with lines queued."""
        if self._flush_handle is not None:  # (its own call: a no-op; any other: the one left)
            self._flush_handle.cancel()
        rest = self._round[self._round_at:]  # a round cut short keeps its clients, first
        self._round = rest + self._dirty if rest else self._dirty
        self._dirty = []
        self._round_at = 0
        self._round_cost = 0.0
        self._write_slice()

    def _write_slice(self) -> None:
        """Write ``FLUSH_SLICE`` clients of the round, then let the loop run before the next
        slice: the lines of senders on this acceptor are read meanwhile, and what the router
        sends back joins the queues of the clients the round has not reached yet (one write
        for both), instead of waiting behind a round of thousands of writes."""
        self._flush_handle = None
        self.link.flush()  # lines read since the last slice go to the router before this one
        began = time.perf_counter()
        dirty = self._round
        i = self._round_at
        end = min(i + FLUSH_SLICE, len(dirty))
        writes = lines = 0
        write = os.write
        for k in range(i, end):  # the hot loop: _write inlined
            s = dirty[k]
            out = s.out
            if not out:
                continue
            if s.blocked:
                self._hold(s)
                continue
            t = s.transport
            if t is None or t.is_closing():
                out.clear()
                continue
            n = len(out)
            data = out[0] if n == 1 else b"".join(out)
            out.clear()
            if s.fd >= 0:  # nothing unsent in the transport: write to the socket ourselves
                try:
                    sent = write(s.fd, data)  # os.write: ~1 us less than transport.write
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:  # reset, broken pipe: the transport's write meets it too
                    sent = 0
                if sent < len(data):  # the rest (all, on an error) to the transport
                    t.write(data[sent:] if sent else data)
            else:
                t.write(data)
            writes += 1
            lines += n
            if s.blocked:  # pause_writing ran inside write: bytes were left unsent
                self._check_queue(s, t)
        stats = self.stats
        stats["writes"] += writes
        stats["lines_out"] += lines
        self._round_cost += time.perf_counter() - began
        if end < len(dirty):
            self._round_at = end
            self._flush_handle = self.loop.call_soon(self._write_slice)
            return
        self._round = []
        self._next_flush = self.loop.time() + min(self._coalesce_max,
                                                  self._round_cost * self._coalesce_factor)
        # lines queued during the round for clients it had passed; blocked clients alone
        # (re-queued by _hold to be counted again) wait for new lines, as before
        if any(not s.blocked for s in self._dirty):
            self._schedule_flush()

    def _hold(self, s: Session) -> None:
        """``s`` is blocked: its lines wait in ``s.out`` (the same bytes objects as the other
        members', not a copy) for resume_writing. The new ones are counted against the hard
        limit, and ``s`` stays dirty to be counted again at the next flush."""
        t = s.transport
        if t is None or t.is_closing():
            s.out.clear()
            self._held.pop(s, None)
            return
        counted, size = self._held.get(s, (0, 0))
        out = s.out
        size += sum(map(len, out[counted:]))
        self._held[s] = (len(out), size)
        if size + t.get_write_buffer_size() > self.limits.send_queue_hard:
            self._drop(s, f"send queue over {self.limits.send_queue_hard} bytes")
        else:
            self._dirty.append(s)

    def _write(self, s: Session) -> None:
        out = s.out
        t = s.transport
        self._held.pop(s, None)
        if t is None or t.is_closing():
            out.clear()
            return
        stats = self.stats
        stats["writes"] += 1
        stats["lines_out"] += len(out)
        t.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        self._check_queue(s, t)

    def _check_queue(self, s: Session, t: asyncio.Transport) -> None:
        size = t.get_write_buffer_size()
        if size > self.limits.send_queue:
            if size > self.limits.send_queue_hard:
                self._drop(s, f"send queue over {self.limits.send_queue_hard} bytes")
            elif not self._over.get(s):  # not watched yet, or watched only as blocked
                self._over[s] = size
                if self._stall_handle is None:
                    self._stall_handle = self.loop.call_later(self.limits.stall_check,
                                                              self._check_stalled)

    def _check_stalled(self) -> None:
        """Drop clients above send_queue that drained nothing since the last check."""
        self._stall_handle = None
        for s, before in list(self._over.items()):
            t = s.transport
            size = t.get_write_buffer_size() if t is not None and not t.is_closing() else 0
            if s.blocked and size:
                size += sum(map(len, s.out))  # its lines wait there, not in the transport
            if size <= self.limits.send_queue:
                if s.blocked and size:
                    self._over[s] = 0  # still watched while blocked
                else:
                    del self._over[s]
            elif size >= before > self.limits.send_queue:
                self._drop(s, f"send queue over {self.limits.send_queue} bytes and not draining")
            else:
                self._over[s] = size
        if self._over:
            self._stall_handle = self.loop.call_later(self.limits.stall_check,
                                                      self._check_stalled)

    def _drop(self, s: Session, why: str) -> None:
        self._over.pop(s, None)
        self.stats["send_queue_drops"] += 1
        log.info("conn %d (%s) disconnected: %s", s.conn, s.peer, why)
        self.session_closed(s, why)
        if s.transport is not None:
            s.transport.abort()

    # ---- the bus: what the router sends ----------------------------------------------------------

    def on_batch(self, frames: list[bytes]) -> None:
        try:
            messages = bus.decode(frames)
        except BusError as e:
            log.warning("dropped a bad batch from the router: %s", e)
            return
        sessions = self.sessions
        skip = False
        for msg in messages:
            kind = type(msg)
            if kind is bus.From:  # whose batch caused what follows: results seen once only
                if msg.origin:
                    skip = msg.n <= self._seen_from.get(msg.origin, 0)
                    if not skip:
                        self._seen_from[msg.origin] = msg.n
                else:
                    skip = False
                continue
            if skip:
                continue
            if kind is bus.ChatRoom:
                self._fan_out_chat(msg)
            elif kind is bus.ToConn:
                if (s := sessions.get(msg.conn)) is not None:
                    self.queue(s, (msg.text + "\n").encode("utf-8"))
            elif kind is bus.ChatConn:
                if (s := sessions.get(msg.conn)) is not None:
                    line = replies.tagged(msg.stamp, msg.text) if s.cap_time else msg.text
                    self.queue(s, (line + "\n").encode("utf-8"))
            elif kind is bus.ToRoom:
                self._fan_out(msg.room, (msg.text + "\n").encode("utf-8"))
            elif kind is bus.SessionSet:
                self._set_session(msg)
            elif kind is bus.Heartbeat:
                self._router_heartbeat(msg.epoch)
            elif kind is bus.Kick:
                if (s := sessions.get(msg.conn)) is not None:
                    if msg.text:
                        s.send_line(msg.text)
                    s.close()
            elif kind is bus.Ack:
                self.link.ack(msg.n)
            elif kind is bus.Resync:
                self._resync("the router asked")
            elif kind is bus.Peers:
                self.peers = msg.names
            else:
                log.warning("router sent an acceptor-bound %s; dropped", msg.kind)
        if self._flush_handle is None and self._dirty:
            self._schedule_flush()

    def _fan_out(self, room: str, data: bytes, tagged: tuple[str, str] | None = None) -> None:
        """Queue ``data`` for every local member of ``room``: the hot path, so the queueing of
        ``queue`` is inlined (one flush scheduled per message, not a call per member). With
        ``tagged`` = (stamp, text), members with ``/cap time`` get the tagged line instead,
        encoded once, when the first of them is met."""
        members = self.rooms.get(room)
        if not members:
            return
        dirty = self._dirty
        tagged_data = None
        for s in members:
            out = s.out
            if not out:
                dirty.append(s)
            if tagged is not None and s.cap_time:
                if tagged_data is None:
                    tagged_data = (replies.tagged(*tagged) + "\n").encode("utf-8")
                out.append(tagged_data)
            else:
                out.append(data)
        if self._flush_handle is None:
            self._schedule_flush()

    def _fan_out_chat(self, msg: bus.ChatRoom) -> None:
        self._fan_out(msg.room, (msg.text + "\n").encode("utf-8"), (msg.stamp, msg.text))

    def _set_session(self, msg: bus.SessionSet) -> None:
        s = self.sessions.get(msg.conn)
        if s is None:
            return  # closed meanwhile; our Close is on its way
        if s.room != msg.room:
            self._leave_room(s)
            self.rooms.setdefault(msg.room, {})[s] = None
        s.uid, s.name, s.room = msg.uid, msg.name, msg.room

    # ---- heartbeats and resync -------------------------------------------------------------------

    def _beat(self) -> None:
        self.link.send(bus.Heartbeat(self.epoch))
        now = time.monotonic()
        if self.router_alive and now - self.router_seen > MISSED_HEARTBEATS * self.heartbeat:
            self.router_alive = False
            log.warning("router silent for %.1fs; commands wait in the bus queue",
                        now - self.router_seen)
        if not self.router_alive and self.router_epoch is not None:
            refused = self.link.expire(self.loop.time() - ROUTER_WAIT)
            if refused:
                log.warning("router gone for over %.0fs: refused %d waiting batches",
                            ROUTER_WAIT, refused)
        self._beat_handle = self.loop.call_later(self.heartbeat, self._beat)

    def _router_heartbeat(self, epoch: str) -> None:
        self.router_seen = time.monotonic()
        if not self.router_alive:
            self.router_alive = True
            log.info("router %s is alive", epoch)
        if self.router_epoch is None:
            self.router_epoch = epoch
        elif epoch != self.router_epoch:
            self.router_epoch = epoch
            self._resync(f"router restarted (epoch {epoch})")

    def _resync(self, why: str) -> None:
        """Hello and every session, then what the router has not acknowledged, again."""
        control: list[bus.BusMessage] = [bus.Hello(self.name, self.epoch, self.peers)]
        control += [s.snapshot() if s.uid else bus.Open(s.conn, s.peer)
                    for s in self.sessions.values()]
        again = self.link.resync(control)
        log.info("resyncing %d sessions, %d unacknowledged batches sent again: %s",
                 len(self.sessions), again, why)

    # ---- shutdown --------------------------------------------------------------------------------

    async def shutdown(self, grace: float = 2.0) -> None:
        """SIGTERM: stop accepting, tell every client, close, let the router know."""
        if self.server is not None:
            self.server.close()
        for handle in (self._beat_handle, self._stall_handle, self._sweep_handle):
            if handle is not None:
                handle.cancel()
        sessions = list(self.sessions.values())
        for s in sessions:
            self.write_now(s)
            if s.transport is not None and not s.transport.is_closing():
                s.transport.write(SHUTDOWN_LINE)
                s.transport.close()
        deadline = self.loop.time() + grace
        while any(s.transport is not None for s in sessions) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)  # polling our own transports to drain, not synchronising
        for s in sessions:
            if s.transport is not None:
                s.transport.abort()
        self.link.close(linger_ms=500)
