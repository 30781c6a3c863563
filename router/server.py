"""The router's ZeroMQ pump: one ROUTER socket, one thread, around ``RouterLink`` and the state.

The bus protocol (numbering, acks, dedupe, settling, heartbeats) is ``wire.link.RouterLink``; the
chat is ``RouterState``; this file only moves bytes and time between them and the socket.

One ROUTER socket (ROUTER_MANDATORY, LINGER 0, explicit HWMs) bound to the bus endpoint. Each
turn: receive every batch that is ready (up to ``max_batches``) into the link, end the turn, then
send each acceptor's queue, then the acknowledgements the link releases once their turns'
results have left every queue. A send the socket pushes back (the acceptor's high-water mark)
stays at the head of that acceptor's queue and is tried again every 10 ms; an acceptor the
socket no longer knows is lost.
``status?`` from any DEALER (``pychat status``) is answered at once and never makes it a peer.

Durable mode (``durable``: the history, a ``wire.link.Gate``): the link holds each turn's
results until the history rows written up to the end of that turn are committed (group commit:
the writer takes everything queued at once); the writer pokes the wake socket after each commit,
and each send pass first releases what it passed. An ack follows its turn's results, so an
acceptor keeps (and sends again to a restarted router) a command until what it caused is on disk
and on its way.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import time
from collections import deque
from typing import Any

import zmq

from pychat.wire import bus, transfer
from pychat.wire.link import Gate, RouterLink

from .state import RouterState

log = logging.getLogger("pychat.router")

RATE_WINDOW = 10  # seconds over which `pychat status` reports messages per second
# a batch's frames are sent one by one with these flags as plain ints: pyzmq's send_multipart
# spent half its time on enum arithmetic (7.6 µs a 4-frame batch against 3.7); only the first
# frame can be refused (a ZeroMQ message is taken whole or not at all), as in send_multipart
_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_LAST = int(zmq.NOBLOCK)
STATUS_ASK = bus.encode([bus.StatusAsk()])  # a whole batch; matched before decoding


def send_frames(sock: zmq.Socket, frames: list[bytes]) -> None:
    """``sock.send_multipart(frames, zmq.NOBLOCK)``, without its per-frame enum arithmetic."""
    last = len(frames) - 1
    send = sock.send
    for i, frame in enumerate(frames):
        send(frame, _LAST if i == last else _MORE)


def status_of(part: object) -> dict[str, Any]:
    """A clock's or a history's own status, or {} for one that has none."""
    status = getattr(part, "status", None)
    return status() if callable(status) else {}


class RouterServer:
    def __init__(self, state: RouterState, endpoint: str, *, heartbeat: float = 1.0,
                 hwm: int = 100_000, max_batches: int = 1000, max_backlog: int = 10_000,
                 max_waiting: int = 100_000, settle_seconds: float | None = None,
                 ctx: zmq.Context | None = None, curve: tuple[bytes, bytes] | None = None,
                 durable: Gate | None = None):
        self.state = state
        self.durable = durable  # the history whose commits gate what is sent, or None
        self.endpoint = endpoint
        self.max_batches = max_batches
        self.epoch = os.urandom(6).hex()  # as uuid4().hex[:12]: 12 random hex digits
        self.started = time.monotonic()
        self.link = RouterLink(state, self.epoch, heartbeat=heartbeat, now=self.started,
                               settle_seconds=settle_seconds, max_backlog=max_backlog,
                               max_waiting=max_waiting, gate=durable)
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.setsockopt(zmq.MAXMSGSIZE, bus.MAX_FRAME)  # a larger frame: peer disconnected
        if curve is not None:  # CurveZMQ server: (public, secret); a ZAP handler vets peers
            self.sock.curve_server = True
            self.sock.curve_publickey, self.sock.curve_secretkey = curve
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.received = 0
        self.turn_seconds: Any = None  # a metrics Histogram when --metrics-port is given
        # files (router/transfers.py): the file channel's messages, and the web doors' URLs
        self.transfers = state.transfers
        self._file_out: deque[tuple[bytes, list[bytes]]] = deque()  # pushed back by the socket
        if self.transfers is not None:
            self.transfers.poke = self.poke
        state.web_url = self.web_url
        self._chat_counts: deque[tuple[float, int]] = deque()  # (when, chat messages so far)

    def web_url(self, acceptor: str) -> str:
        """The base URL of ``acceptor``'s web door; if it has none, another's ("": none)."""
        peers = self.link.peers
        peer = peers.get(acceptor)
        if peer is not None and peer.web:
            return peer.web
        return next((p.web for p in peers.values() if p.web), "")

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
        link = self.link
        try:
            while not self._stop:
                now = time.monotonic()
                wake = link.next_wake(now)
                push_at = self.state.next_push()
                if push_at is not None:
                    wake = min(wake, push_at)
                stuck = any(p.queue for p in link.peers.values()) or bool(self._file_out)
                timeout = 10 if stuck else max(0, int((wake - now) * 1000)) + 1
                events = dict(poller.poll(timeout))
                if self._wake_r.fileno() in events:
                    self._drain_wakeups()
                now = time.monotonic()
                if self.sock in events:
                    self._turn(now)
                elif now >= wake:  # a heartbeat, a settling step, or a throttled list is due
                    self._tick(now)
                elif self.state.jobs.ready or (self.transfers is not None and (
                        self.transfers.finished or self.transfers.written)):
                    link.end_turn(now)  # a password checked, a file stored: their answers
                self._flush(now)
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

    def _turn(self, now: float) -> None:
        began = time.perf_counter()
        link = self.link
        sock = self.sock
        for _ in range(self.max_batches):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.received += 1
            if frames[1:] == STATUS_ASK:
                self._send_raw(frames[0], [bus.Status(json.dumps(self.status()))])
            elif len(frames) > 1 and frames[1] == transfer.HEADER:
                if self.transfers is not None and frames[0].decode("utf-8", "replace") \
                        in link.peers:
                    self.transfers.receive(frames[0], frames[1:])
            else:
                link.receive(frames[0], frames[1:], now)
        if now >= link.next_wake(now):
            self._tick(now)  # a busy router still heartbeats on time
        else:
            link.end_turn(now)
        if self.turn_seconds is not None:
            self.turn_seconds.observe(time.perf_counter() - began)

    def _tick(self, now: float) -> None:
        if self.transfers is not None:
            self.transfers.tick()  # expired and stalled uploads (told at this tick's turn)
        self.link.tick(now)
        self._sample_rate(now)

    # ---- sending ---------------------------------------------------------------------------------

    def _flush(self, now: float) -> None:
        """Each acceptor's queue, in order; then the acks whose turns' results have all left;
        then the file channel's messages: an upload's end (its HTTP answer) after the turn's
        results, so the room has the ``FILE:`` line before the uploader hears it is done (a
        client that quits on that answer still gets its own line)."""
        link = self.link
        while link.raw:
            ident, msgs = link.raw.popleft()
            self._send_raw(ident, msgs)
        self._send_results(now)
        if self.transfers is not None:
            self._send_files()

    def _send_results(self, now: float) -> None:
        link = self.link
        while True:  # the results, then (once they all left) the acknowledgements
            link.release_held(now)  # durable: the turns whose rows are committed
            if link.turn_open:
                link.end_turn(now)
            lost = False
            for acceptor, peer in list(link.peers.items()):
                queue = peer.queue
                while queue:
                    try:
                        send_frames(self.sock, queue[0])
                    except zmq.Again:
                        break  # its high-water mark: tried again in 10 ms
                    except zmq.ZMQError as e:
                        if e.errno != errno.EHOSTUNREACH:
                            raise
                        link.lost(acceptor, "unreachable", now)
                        lost = True
                        break
                    queue.popleft()
            if lost:
                link.end_turn(now)
                continue
            if not link.release_acks():
                break

    def _send_files(self) -> None:
        """The file channel's messages, in order; one the socket pushes back waits (its
        transfer's credit bounds how many can)."""
        assert self.transfers is not None
        out = self._file_out
        out.extend(self.transfers.out)
        self.transfers.out.clear()
        while out:
            ident, frames = out[0]
            try:
                self.sock.send_multipart([ident, *frames], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as e:  # gone: its transfers end with it
                log.debug("file channel: could not reach %r: %s", ident, e)
            out.popleft()

    def poke(self) -> None:
        """Wake the loop from another thread (the history writer after a commit)."""
        try:
            self._wake_w.send(b"c")
        except OSError:  # full (the loop wakes anyway) or closed (stopping)
            pass

    def _send_raw(self, ident: bytes, msgs: list[bus.BusMessage]) -> None:
        try:
            self.sock.send_multipart([ident, *bus.encode(msgs)], zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log.debug("could not reach %r: %s", ident, e)

    # ---- for operators ---------------------------------------------------------------------------

    def _sample_rate(self, now: float) -> None:
        counts = self._chat_counts
        counts.append((now, self.state.chat_messages))
        while counts and counts[0][0] < now - RATE_WINDOW:
            counts.popleft()

    def status(self) -> dict[str, Any]:
        """The router's view for operators (`pychat status`)."""
        now = time.monotonic()
        state = self.state
        link = self.link
        per_acceptor: dict[str, int] = {}
        for user in state.users.values():
            per_acceptor[user.acceptor] = per_acceptor.get(user.acceptor, 0) + 1
        rate = 0.0
        if self._chat_counts:
            then, count = self._chat_counts[0]
            if now > then:
                rate = (state.chat_messages - count) / max(now - then, 1.0)
        return {
            "epoch": self.epoch, "endpoint": self.endpoint,
            # a CurveZMQ bus (only authorised keys get in), or a plain one
            "curve": bool(self.sock.getsockopt(zmq.CURVE_SERVER)),
            "uptime_s": round(now - self.started, 1), "settled": link.settled,
            "acceptors": [{"name": name, "epoch": p.epoch, "users": per_acceptor.get(name, 0),
                           "last_heard_s": round(now - p.last_seen, 2),
                           "backlog": len(p.queue)} for name, p in sorted(link.peers.items())],
            "durable": self.durable is not None,
            "held_turns": len(link.held),
            "users": len(state.users), "named": len(state.names),
            "logged_in": sum(len(s) for s in state.logins.values()),
            "logins": {"done": state.logins_done, "failed": state.logins_failed,
                       "hashing": state.jobs.running, "refused_busy": state.jobs.refused},
            "rooms": {room: len(members) for room, members in sorted(state.rooms.items())},
            "messages_per_s": round(rate, 2),
            "clock": status_of(state.clock),
            "history": status_of(state.history),
            "files": {} if self.transfers is None else {
                **status_of(self.transfers.store), "uploads_waiting": len(self.transfers.slots),
                "uploads_done": self.transfers.uploads_done,
                "downloads_running": len(self.transfers.downloads),
                "downloads_done": self.transfers.downloads_done},
        }

    def register_metrics(self, m: Any) -> None:
        state = self.state
        link = self.link
        m.gauge("pychat_router_acceptors", "acceptors alive", lambda: len(link.peers))
        m.gauge("pychat_router_users", "users online", lambda: len(state.users))
        m.gauge("pychat_router_rooms", "rooms with members", lambda: len(state.rooms))
        m.counter("pychat_router_chat_messages_total", "public and private messages handled",
                  lambda: state.chat_messages)
        m.counter("pychat_router_logins_total", "logins, registrations and resumes that succeeded",
                  lambda: state.logins_done)
        m.counter("pychat_router_logins_failed_total", "logins that failed (wrong password, "
                  "unknown name or token)", lambda: state.logins_failed)
        m.gauge("pychat_router_passwords_checking", "password hashes queued or running",
                lambda: state.jobs.running)
        m.counter("pychat_router_bus_batches_received_total", "batches from acceptors",
                  lambda: self.received)
        m.counter("pychat_router_bus_messages_sent_total", "messages sent to acceptors",
                  lambda: link.messages_queued)
        m.gauge("pychat_router_bus_backlog_batches", "batches waiting for slow acceptors",
                lambda: sum(len(p.queue) for p in link.peers.values()))
        m.gauge("pychat_router_clock_offset_seconds", "NTP correction applied to stamps",
                lambda: (status_of(state.clock).get("offset_ms") or 0) / 1000)
        m.gauge("pychat_router_history_pending", "history rows waiting for the disk",
                lambda: status_of(state.history).get("pending", 0))
        transfers = self.transfers
        if transfers is not None:
            m.counter("pychat_router_uploads_total", "files stored from /upload",
                      lambda: transfers.uploads_done)
            m.counter("pychat_router_downloads_total", "file downloads completed",
                      lambda: transfers.downloads_done)
            m.gauge("pychat_router_files_bytes", "bytes of stored files",
                    lambda: transfers.store.usage()[1])
        self.turn_seconds = m.histogram(
            "pychat_router_turn_seconds", "time to handle one turn of bus batches",
            (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
