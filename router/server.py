"""The router's ZeroMQ shell: thin, one thread, around ``RouterState``.

One ROUTER socket (ROUTER_MANDATORY, LINGER 0, explicit HWMs) bound to the bus endpoint. Each
turn: receive every batch that is ready (up to ``max_batches``), hand each message to the state,
then send what the state returned as one batch per acceptor. Heartbeats go to every known
acceptor each ``heartbeat`` seconds; an acceptor silent for ``3 * heartbeat`` is dead and its
users leave.

Acceptors number their batches (``bus.Seq``) and keep each until it is acknowledged: at the end
of a turn every acceptor whose batches were handled gets ``bus.Ack`` (held back while any
acceptor's outgoing backlog is not empty, so an acknowledged batch's results have left). A batch
number already handled is not handled again. What a numbered batch caused is marked with
``bus.From`` (its acceptor's epoch and number) for every acceptor it goes to, so results of a
batch handled again, after a restart, are dropped where they were already delivered.

After a restart we know nobody. A batch from an acceptor we do not know is dropped (it is still
unacknowledged, so it comes again) and the acceptor is asked to Resync: its Hello batch (Hello,
then a Sync per session) and then its unacknowledged batches again. The Hello names the
acceptors the previous router had told it of (``bus.Peers``); until all of them have said Hello
(we send each a Resync by name every ``SETTLE_ASK_INTERVAL``), or ``settle_seconds`` have passed
since the first did, numbered batches wait, so a line is not fanned out to a room whose members
on a late acceptor we cannot see yet.
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import socket
import time
import uuid
from collections import deque

import zmq

from pychat.wire import bus
from pychat.wire.commands import describe
from pychat.wire.errors import BusError

from .state import Delivery, RouterState

log = logging.getLogger("pychat.router")

MISSED_HEARTBEATS = 3
SETTLE_ASK_INTERVAL = 0.05  # seconds between Resyncs to an acceptor a starting router awaits
RATE_WINDOW = 10  # seconds over which `pychat status` reports messages per second


def status_of(part) -> dict:
    """A clock's or a history's own status, or {} for one that has none."""
    return getattr(part, "status", dict)()


class Peer:
    __slots__ = ("backlog", "done", "epoch", "ident", "last_seen", "seq")

    def __init__(self, ident: bytes, epoch: str, now: float):
        self.ident = ident
        self.epoch = epoch
        self.last_seen = now
        self.backlog: deque[list[bytes]] = deque()
        self.seq = 0  # the highest batch number taken from it
        self.done = 0  # the highest batch number handled (acknowledged at the end of a turn)


class Outbox(dict):
    """acceptor -> the messages for it this turn. ``origin`` is (epoch, number) of the numbered
    batch being handled, or None; ``add`` puts a ``bus.From`` in front of a run of messages
    whenever the origin changes for that acceptor."""

    def __init__(self) -> None:
        super().__init__()
        self.origin: tuple[str, int] | None = None
        self._marked: dict[str, tuple[str, int] | None] = {}

    def add(self, acceptor: str, msg: bus.BusMessage) -> None:
        msgs = self.get(acceptor)
        if msgs is None:
            msgs = self[acceptor] = []
        origin = self.origin
        if self._marked.get(acceptor) != origin:
            self._marked[acceptor] = origin
            msgs.append(bus.From(*origin) if origin else bus.From("", 0))
        msgs.append(msg)


class RouterServer:
    def __init__(self, state: RouterState, endpoint: str, *, heartbeat: float = 1.0,
                 hwm: int = 100_000, max_batches: int = 1000, max_backlog: int = 10_000,
                 max_waiting: int = 100_000, settle_seconds: float | None = None,
                 ctx: zmq.Context | None = None, curve: tuple[bytes, bytes] | None = None):
        self.state = state
        self.endpoint = endpoint
        self.heartbeat = heartbeat
        self.max_batches = max_batches
        self.max_backlog = max_backlog
        self.epoch = uuid.uuid4().hex[:12]
        self.peers: dict[str, Peer] = {}
        self._resync_asked: dict[str, float] = {}
        self._ack_due: set[str] = set()
        # settling after a start: the acceptors we wait for (None: no Hello yet), the deadline,
        # and the numbered batches waiting meanwhile: (acceptor, number, messages)
        self.settled = False
        self.settle_seconds = 2 * heartbeat if settle_seconds is None else settle_seconds
        self._expected: set[str] | None = None
        self._settle_by = 0.0
        self.max_waiting = max_waiting
        self._waiting: list[tuple[str, int, list[bus.BusMessage]]] = []
        self._waiting_count = 0
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        if curve is not None:  # CurveZMQ server: (public, secret); a ZAP handler vets peers
            self.sock.curve_server = True
            self.sock.curve_publickey, self.sock.curve_secretkey = curve
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.received = 0
        self.started = time.monotonic()
        self.chat_messages = 0
        self.bus_messages_sent = 0
        self.turn_seconds = None  # a metrics Histogram when --metrics-port is given
        self._chat_seconds: deque[list[float]] = deque(maxlen=RATE_WINDOW + 1)  # [sec, count]

    def bind(self) -> None:
        self.sock.bind(self.endpoint)
        if self.endpoint.endswith(":0"):  # tcp port chosen by the OS
            self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("router bound to %s (epoch %s)", self.endpoint, self.epoch)

    def install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def stop(self) -> None:
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # ---- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        next_beat = time.monotonic()
        try:
            while not self._stop:
                now = time.monotonic()
                if now >= next_beat:
                    self._beat(now)
                    next_beat = now + self.heartbeat
                backlog = any(p.backlog for p in self.peers.values())
                wake = next_beat
                push_at = self.state.next_push()
                if push_at is not None:
                    wake = min(wake, push_at)
                settling = not self.settled and bool(self._expected)
                if settling:  # ask the acceptors we wait for again soon
                    wake = min(wake, now + SETTLE_ASK_INTERVAL)
                timeout = 10 if backlog else max(0, int((wake - now) * 1000)) + 1
                events = dict(poller.poll(timeout))
                if self._wake_r.fileno() in events:
                    self._drain_wakeups()
                if backlog:
                    self._retry_backlogs()
                if self.sock in events:
                    self._turn()
                elif settling or (push_at is not None and time.monotonic() >= push_at):
                    out = Outbox()  # settling: ask again, or settle; else a throttled list
                    self._check_settled(time.monotonic(), out)
                    self._deliver(self.state.end_turn(), out)
                    self._send_all(out)
        finally:
            self.close()

    def close(self) -> None:
        self.sock.close(0)
        self._wake_r.close()
        self._wake_w.close()

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _turn(self) -> None:
        out = Outbox()
        now = time.monotonic()
        began = time.perf_counter()
        for _ in range(self.max_batches):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.received += 1
            self._handle(frames, now, out)
        self._check_settled(now, out)
        self._deliver(self.state.end_turn(), out)
        self._send_all(out)
        if self.turn_seconds is not None:
            self.turn_seconds.observe(time.perf_counter() - began)

    def _send_all(self, out: Outbox) -> None:
        """Send a turn's messages, each acceptor's as one batch; then the Acks, if every result
        has left (none waits in a backlog here, where it would die with us)."""
        for acceptor, msgs in out.items():
            self._send(acceptor, msgs)
        if self._ack_due and not any(p.backlog for p in self.peers.values()):
            due, self._ack_due = self._ack_due, set()
            for acceptor in due:  # (a send can find an acceptor gone: _lost changes _ack_due)
                peer = self.peers.get(acceptor)
                if peer is not None:
                    self._send(acceptor, [bus.Ack(peer.done)])

    def _handle(self, frames: list[bytes], now: float, out: Outbox) -> None:
        ident = frames[0]
        try:
            acceptor = ident.decode("utf-8")
            messages = bus.decode(frames[1:])
        except (BusError, UnicodeDecodeError) as e:
            log.warning("dropped a bad batch from %r: %s", ident, e)
            return
        if messages and all(isinstance(m, bus.StatusAsk) for m in messages):
            self._send_raw(ident, [bus.Status(json.dumps(self.status()))])
            return
        peer = self.peers.get(acceptor)
        if messages and type(messages[0]) is bus.Seq:
            n = messages[0].n
            if peer is None:  # we restarted, or lost it: it sends this again after its resync
                self._ask_resync(acceptor, ident, now)
                return
            peer.last_seen = now
            if n <= peer.seq:  # handled already (sent again by a second resync)
                self._ack_due.add(acceptor)
                return
            peer.seq = n
            if self.settled:
                self._dispatch_numbered(acceptor, peer, n, messages[1:], now, out)
            elif self._waiting_count + len(messages) <= self.max_waiting:
                self._waiting.append((acceptor, n, messages[1:]))
                self._waiting_count += len(messages)
            else:
                self._refuse(ident, messages, "the router is restarting")
                peer.done = n
                self._ack_due.add(acceptor)
            return
        if peer is None and not any(isinstance(m, bus.Hello) for m in messages):
            self._refuse(ident, messages, "the router was restarting")
            self._ask_resync(acceptor, ident, now)
            return
        self._dispatch(acceptor, ident, peer, messages, now, out)

    def _dispatch_numbered(self, acceptor: str, peer: Peer, n: int,
                           messages: list[bus.BusMessage], now: float, out: Outbox) -> None:
        out.origin = (peer.epoch, n)
        self._dispatch(acceptor, peer.ident, peer, messages, now, out)
        out.origin = None
        peer.done = n
        self._ack_due.add(acceptor)

    def _dispatch(self, acceptor: str, ident: bytes, peer: Peer | None,
                  messages: list[bus.BusMessage], now: float, out: Outbox) -> None:
        state = self.state
        for msg in messages:
            if isinstance(msg, bus.Hello):
                if peer is not None and peer.epoch != msg.epoch:
                    log.info("acceptor %s restarted (epoch %s)", acceptor, msg.epoch)
                    self._deliver(state.acceptor_gone(acceptor), out)
                    peer = None
                if peer is None:
                    self._resync_asked.pop(acceptor, None)
                    peer = self.peers[acceptor] = Peer(ident, msg.epoch, now)
                    log.info("acceptor %s joined (epoch %s)", acceptor, msg.epoch)
                    out.add(acceptor, bus.Heartbeat(self.epoch))
                    self._joined(acceptor, msg.peers, now, out)
                continue
            if peer is None:  # messages before its Hello in the same batch
                self._refuse(ident, [msg], "the router was restarting")
                continue
            peer.last_seen = now
            kind = type(msg)
            if kind is bus.Cmd:
                deliveries = state.command(acceptor, msg.conn, msg.command)
                if msg.command.kind in ("say", "msg"):
                    self._count_chat(now)
            elif kind is bus.Heartbeat:
                continue
            elif kind is bus.Relay:  # no state involved: back in order behind earlier results
                out.add(acceptor, (bus.Kick if msg.close else bus.ToConn)(msg.conn, msg.text))
                continue
            elif kind is bus.Open:
                deliveries = state.open(acceptor, msg.conn)
            elif kind is bus.Close:
                deliveries = state.close(acceptor, msg.conn)
            elif kind is bus.Sync:
                deliveries = state.sync(acceptor, msg.conn, msg.uid, msg.name, msg.room)
            else:
                log.warning("acceptor %s sent a router-bound %s; dropped", acceptor, msg.kind)
                continue
            self._deliver(deliveries, out)

    # ---- settling after a start ------------------------------------------------------------------

    def _joined(self, acceptor: str, peers_json: str, now: float, out: Outbox) -> None:
        """An acceptor said Hello: tell everyone the new list; while settling, learn whom else
        to wait for from the list it brings."""
        self._announce_peers(out)
        if self.settled:
            return
        try:
            named = {p for p in json.loads(peers_json) if isinstance(p, str)}
        except (ValueError, TypeError):
            named = set()
        if self._expected is None:
            self._expected = set()
            self._settle_by = now + self.settle_seconds
        self._expected |= named
        self._expected -= self.peers.keys()
        # settled (if every one is in) at the end of the turn: after this Hello batch's Syncs

    def _announce_peers(self, out: Outbox) -> None:
        """Tell every acceptor the current list of acceptors (one message, built once)."""
        peers = bus.Peers(json.dumps(sorted(self.peers)))
        for name in self.peers:
            out.add(name, peers)

    def _check_settled(self, now: float, out: Outbox) -> None:
        if self.settled or self._expected is None:
            return
        if not self._expected:
            self._settle(now, out, "every acceptor has resynced")
        elif now >= self._settle_by:
            self._settle(now, out, f"{sorted(self._expected)} did not resync in time")
        else:  # don't wait for their next heartbeat: their routing id is their name
            for name in self._expected:
                if self._resync_asked.get(name, -1e9) < now - SETTLE_ASK_INTERVAL:
                    self._resync_asked[name] = now
                    try:
                        self.sock.send_multipart([name.encode(), *bus.encode([bus.Resync()])],
                                                 zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass  # not connected to us yet: asked again in a moment

    def _settle(self, now: float, out: Outbox, why: str) -> None:
        self.settled = True
        waiting, self._waiting, self._waiting_count = self._waiting, [], 0
        log.info("settled %.0f ms after start: %s; handling %d waiting batches",
                 (now - self.started) * 1000, why, len(waiting))
        for acceptor, n, messages in waiting:
            peer = self.peers.get(acceptor)
            if peer is not None:
                self._dispatch_numbered(acceptor, peer, n, messages, now, out)

    def _ask_resync(self, acceptor: str, ident: bytes, now: float) -> None:
        if self._resync_asked.get(acceptor, -1e9) < now - self.heartbeat:
            self._resync_asked[acceptor] = now
            log.info("unknown acceptor %s: asking it to resync", acceptor)
            self._send_raw(ident, [bus.Resync()])

    def _refuse(self, ident: bytes, messages: list[bus.BusMessage], why: str) -> None:
        """Tell each client whose command will not be handled."""
        errors: list[bus.BusMessage] = [
            bus.ToConn(m.conn, f"ERROR: not sent, {why}: {describe(m.command)}")
            for m in messages if isinstance(m, bus.Cmd)]
        if errors:
            self._send_raw(ident, errors)

    def _count_chat(self, now: float) -> None:
        self.chat_messages += 1
        second = float(int(now))
        if self._chat_seconds and self._chat_seconds[-1][0] == second:
            self._chat_seconds[-1][1] += 1
        else:
            self._chat_seconds.append([second, 1])

    def status(self) -> dict:
        """The router's view for operators (`pychat status`)."""
        now = time.monotonic()
        state = self.state
        per_acceptor: dict[str, int] = {}
        for user in state.users.values():
            per_acceptor[user.acceptor] = per_acceptor.get(user.acceptor, 0) + 1
        recent = sum(n for sec, n in self._chat_seconds if now - sec <= RATE_WINDOW)
        return {
            "epoch": self.epoch, "endpoint": self.endpoint,
            "uptime_s": round(now - self.started, 1), "settled": self.settled,
            "acceptors": [{"name": name, "epoch": p.epoch, "users": per_acceptor.get(name, 0),
                           "last_heard_s": round(now - p.last_seen, 2),
                           "backlog": len(p.backlog)} for name, p in sorted(self.peers.items())],
            "users": len(state.users), "named": len(state.names),
            "rooms": {room: len(members) for room, members in sorted(state.rooms.items())},
            "messages_per_s": round(recent / RATE_WINDOW, 2),
            "clock": status_of(state.clock),
            "history": status_of(state.history),
        }

    def register_metrics(self, m) -> None:
        state = self.state
        m.gauge("pychat_router_acceptors", "acceptors alive", lambda: len(self.peers))
        m.gauge("pychat_router_users", "users online", lambda: len(state.users))
        m.gauge("pychat_router_rooms", "rooms with members", lambda: len(state.rooms))
        m.counter("pychat_router_chat_messages_total", "public and private messages handled",
                  lambda: self.chat_messages)
        m.counter("pychat_router_bus_batches_received_total", "batches from acceptors",
                  lambda: self.received)
        m.counter("pychat_router_bus_messages_sent_total", "messages sent to acceptors",
                  lambda: self.bus_messages_sent)
        m.gauge("pychat_router_bus_backlog_batches", "batches waiting for slow acceptors",
                lambda: sum(len(p.backlog) for p in self.peers.values()))
        m.gauge("pychat_router_clock_offset_seconds", "NTP correction applied to stamps",
                lambda: (status_of(state.clock).get("offset_ms") or 0) / 1000)
        m.gauge("pychat_router_history_pending", "history rows waiting for the disk",
                lambda: status_of(state.history).get("pending", 0))
        self.turn_seconds = m.histogram(
            "pychat_router_turn_seconds", "time to handle one turn of bus batches",
            (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))

    @staticmethod
    def _deliver(deliveries: list[Delivery], out: Outbox) -> None:
        add = out.add
        for acceptor, msg in deliveries:
            add(acceptor, msg)

    def _send(self, acceptor: str, msgs: list[bus.BusMessage]) -> None:
        peer = self.peers.get(acceptor)
        if peer is None or not msgs:
            return
        self.bus_messages_sent += len(msgs)
        frames = [peer.ident, *bus.encode(msgs)]
        if peer.backlog:
            peer.backlog.append(frames)
            self._check_backlog(peer, acceptor)
            return
        self._send_frames(acceptor, peer, frames)

    def _send_raw(self, ident: bytes, msgs: list[bus.BusMessage]) -> None:
        try:
            self.sock.send_multipart([ident, *bus.encode(msgs)], zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log.warning("could not reach %r: %s", ident, e)

    def _send_frames(self, acceptor: str, peer: Peer, frames: list[bytes]) -> bool:
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:
            peer.backlog.append(frames)
            self._check_backlog(peer, acceptor)
        except zmq.ZMQError as e:
            if e.errno != errno.EHOSTUNREACH:
                raise
            self._lost(acceptor, "unreachable")
        return False

    def _check_backlog(self, peer: Peer, acceptor: str) -> None:
        if len(peer.backlog) > self.max_backlog:
            self._lost(acceptor, f"{len(peer.backlog)} batches behind")

    def _retry_backlogs(self) -> None:
        for acceptor, peer in list(self.peers.items()):
            while peer.backlog:
                frames = peer.backlog.popleft()
                try:
                    self.sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    peer.backlog.appendleft(frames)
                    break
                except zmq.ZMQError:
                    self._lost(acceptor, "unreachable")
                    break
        if self._ack_due and not any(p.backlog for p in self.peers.values()):
            self._send_all(Outbox())  # the acknowledgements held back for the backlog

    def _beat(self, now: float) -> None:
        deadline = now - MISSED_HEARTBEATS * self.heartbeat
        for acceptor, peer in list(self.peers.items()):
            if peer.last_seen < deadline:
                self._lost(acceptor, f"no heartbeat for {now - peer.last_seen:.1f}s")
        for acceptor in list(self.peers):
            self._send(acceptor, [bus.Heartbeat(self.epoch)])

    def _lost(self, acceptor: str, why: str) -> None:
        if self.peers.pop(acceptor, None) is None:
            return
        log.warning("acceptor %s lost: %s; its users leave", acceptor, why)
        self._ack_due.discard(acceptor)
        out = Outbox()
        self._deliver(self.state.acceptor_gone(acceptor), out)
        self._deliver(self.state.end_turn(), out)
        self._announce_peers(out)
        self._send_all(out)
