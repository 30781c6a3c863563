"""The router's ZeroMQ shell: thin, one thread, around ``RouterState``.

One ROUTER socket (ROUTER_MANDATORY, LINGER 0, explicit HWMs) bound to the bus endpoint. Each
turn: receive every batch that is ready (up to ``max_batches``), hand each message to the state,
then send what the state returned as one batch per acceptor. Heartbeats go to every known
acceptor each ``heartbeat`` seconds; an acceptor silent for ``3 * heartbeat`` is dead and its
users leave.

A message from an acceptor we do not know (we restarted, and its bus queue delivered what it sent
meanwhile) is held, and the acceptor is asked to Resync. Its Hello and Syncs come in one batch;
right after it the held messages are handled, in order, as if they had just arrived. Held
messages are bounded in number (``max_held``) and time (``hold_seconds``); a client command that
cannot be held, or waited too long, is answered with ``ERROR: not sent ...``: never lost silently.
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

from wire import bus
from wire.commands import describe
from wire.errors import BusError

from .state import Delivery, RouterState

log = logging.getLogger("pychat.router")

MISSED_HEARTBEATS = 3
RATE_WINDOW = 10  # seconds over which `pychat status` reports messages per second


class Peer:
    __slots__ = ("ident", "epoch", "last_seen", "backlog")

    def __init__(self, ident: bytes, epoch: str, now: float):
        self.ident = ident
        self.epoch = epoch
        self.last_seen = now
        self.backlog: deque[list[bytes]] = deque()


class RouterServer:
    def __init__(self, state: RouterState, endpoint: str, *, heartbeat: float = 1.0,
                 hwm: int = 100_000, max_batches: int = 1000, max_backlog: int = 10_000,
                 max_held: int = 10_000, hold_seconds: float = 5.0,
                 ctx: zmq.Context | None = None, curve: tuple[bytes, bytes] | None = None):
        self.state = state
        self.endpoint = endpoint
        self.heartbeat = heartbeat
        self.max_batches = max_batches
        self.max_backlog = max_backlog
        self.epoch = uuid.uuid4().hex[:12]
        self.peers: dict[str, Peer] = {}
        self._resync_asked: dict[str, float] = {}
        self.max_held = max_held
        self.hold_seconds = hold_seconds
        self._held: dict[str, tuple[float, list[bus.BusMessage]]] = {}
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
                timeout = 10 if backlog else max(0, int((wake - now) * 1000)) + 1
                events = dict(poller.poll(timeout))
                if self._wake_r.fileno() in events:
                    self._drain_wakeups()
                if backlog:
                    self._retry_backlogs()
                if self.sock in events:
                    self._turn()
                elif push_at is not None and time.monotonic() >= push_at:
                    out: dict[str, list] = {}
                    self._deliver(self.state.end_turn(), out)  # a throttled list falls due
                    for acceptor, msgs in out.items():
                        self._send(acceptor, msgs)
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
        out: dict[str, list[bus.BusMessage]] = {}
        now = time.monotonic()
        began = time.perf_counter()
        for _ in range(self.max_batches):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.received += 1
            self._handle(frames, now, out)
        for acceptor, msg in self.state.end_turn():
            out.setdefault(acceptor, []).append(msg)
        for acceptor, msgs in out.items():
            self._send(acceptor, msgs)
        if self.turn_seconds is not None:
            self.turn_seconds.observe(time.perf_counter() - began)

    def _handle(self, frames: list[bytes], now: float, out: dict[str, list]) -> None:
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
        if peer is None and not any(isinstance(m, bus.Hello) for m in messages):
            self._hold(acceptor, ident, messages, now, out)
            return
        self._dispatch(acceptor, ident, peer, messages, now, out)

    def _dispatch(self, acceptor: str, ident: bytes, peer: Peer | None,
                  messages: list[bus.BusMessage], now: float, out: dict[str, list]) -> None:
        state = self.state
        for i, msg in enumerate(messages):
            if isinstance(msg, bus.Hello):
                if peer is not None and peer.epoch != msg.epoch:
                    log.info("acceptor %s restarted (epoch %s)", acceptor, msg.epoch)
                    self._deliver(state.acceptor_gone(acceptor), out)
                    peer = None
                if peer is None:
                    self._resync_asked.pop(acceptor, None)
                    peer = self.peers[acceptor] = Peer(ident, msg.epoch, now)
                    log.info("acceptor %s joined (epoch %s)", acceptor, msg.epoch)
                    out.setdefault(acceptor, []).append(bus.Heartbeat(self.epoch))
                continue
            if peer is None:  # messages before its Hello in the same batch
                self._hold(acceptor, ident, [msg], now, out)
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
                reply = bus.Kick if msg.close else bus.ToConn
                out.setdefault(acceptor, []).append(reply(msg.conn, msg.text))
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
        held = self._held.pop(acceptor, None) if peer is not None else None
        if held is not None:  # its Hello and Syncs are in: what it sent meanwhile, in order
            log.info("acceptor %s resynced; handling %d held messages", acceptor, len(held[1]))
            self._dispatch(acceptor, ident, peer, held[1], now, out)

    def _hold(self, acceptor: str, ident: bytes, messages: list[bus.BusMessage], now: float,
              out: dict[str, list]) -> None:
        """Keep an unknown acceptor's messages until its resync; ask it for one."""
        since, held = self._held.setdefault(acceptor, (now, []))
        for msg in messages:
            if len(held) < self.max_held:
                held.append(msg)
            else:
                self._refuse(ident, [msg], "the router was restarting")
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

    def _expire_held(self, now: float) -> None:
        for acceptor, (since, held) in list(self._held.items()):
            if now - since > self.hold_seconds:
                del self._held[acceptor]
                log.warning("acceptor %s never resynced; refusing %d held messages",
                            acceptor, len(held))
                self._refuse(acceptor.encode("utf-8"), held, "the router did not hear back")

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
        part = getattr
        return {
            "epoch": self.epoch, "endpoint": self.endpoint,
            "uptime_s": round(now - self.started, 1),
            "acceptors": [{"name": name, "epoch": p.epoch, "users": per_acceptor.get(name, 0),
                           "last_heard_s": round(now - p.last_seen, 2),
                           "backlog": len(p.backlog)} for name, p in sorted(self.peers.items())],
            "users": len(state.users), "named": len(state.names),
            "rooms": {room: len(members) for room, members in sorted(state.rooms.items())},
            "messages_per_s": round(recent / RATE_WINDOW, 2),
            "clock": part(state.clock, "status", dict)(),
            "history": part(state.history, "status", dict)(),
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
                lambda: (getattr(state.clock, "status", dict)().get("offset_ms") or 0) / 1000)
        m.gauge("pychat_router_history_pending", "history rows waiting for the disk",
                lambda: getattr(state.history, "status", dict)().get("pending", 0))
        self.turn_seconds = m.histogram(
            "pychat_router_turn_seconds", "time to handle one turn of bus batches",
            (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))

    @staticmethod
    def _deliver(deliveries: list[Delivery], out: dict[str, list]) -> None:
        for acceptor, msg in deliveries:
            out.setdefault(acceptor, []).append(msg)

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

    def _beat(self, now: float) -> None:
        self._expire_held(now)
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
        out: dict[str, list] = {}
        self._deliver(self.state.acceptor_gone(acceptor), out)
        self._deliver(self.state.end_turn(), out)
        for other, msgs in out.items():
            self._send(other, msgs)
