"""The acceptor's end of the bus: one DEALER socket driven by the asyncio loop.

Outgoing messages are collected during a loop turn and sent as one batch (``send`` schedules
one flush per turn). Incoming batches are drained until the socket has no more, a bounded number
per callback, and handed to ``on_batch``.

ZeroMQ's FD is edge-triggered: it signals that *something may have changed*, so after it fires,
and after every send, we read ``EVENTS`` and drain until it shows no POLLIN.

When the router cannot take more (its high-water mark), batches wait in a bounded backlog;
past ``max_backlog`` the oldest batch is refused and every client command in it is handed to
``on_refused`` so its sender gets an ``ERROR:`` line: nothing accepted is lost silently.

Every batch but the Hello batch is numbered (``bus.Seq`` first) and kept until the router
acknowledges it (``bus.Ack``). A router that died with batches in its socket buffers, or that
was handling one when it was killed, has not acknowledged them: after the resync (``resync``:
the Hello batch, then every unacknowledged batch again, with its own number) the new router
handles them. Numbers let the router handle each at most once, and let acceptors drop results
they have already delivered (``bus.From``). A batch that waited longer than ``expire``'s limit
for a router is refused instead (``on_refused``), and not sent again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import zmq

from pychat.wire import bus

log = logging.getLogger("pychat.acceptor")

MAX_BATCHES_PER_CALLBACK = 256
RECONNECT_MS = 25


class Sent:
    """A numbered batch the router has not acknowledged yet."""
    __slots__ = ("at", "frames", "msgs", "refused", "seq")

    def __init__(self, seq: int, at: float, frames: list[bytes], msgs: list[bus.BusMessage]):
        self.seq = seq
        self.at = at
        self.frames = frames
        self.msgs = msgs
        self.refused = False


class BusLink:
    def __init__(self, loop: asyncio.AbstractEventLoop, endpoint: str, ident: str,
                 on_batch: Callable[[list[bytes]], None],
                 on_refused: Callable[[list[bus.BusMessage]], None], *,
                 hwm: int = 100_000, max_backlog: int = 1_000,
                 ctx: zmq.Context | None = None,
                 curve: tuple[bytes, bytes, bytes] | None = None):
        self.loop = loop
        self.endpoint = endpoint
        self.on_batch = on_batch
        self.on_refused = on_refused
        self.max_backlog = max_backlog
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, ident.encode("utf-8"))
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        # a restarted router is found within 25 ms (ZeroMQ's default is 100 ms), not backed off
        self.sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
        if curve is not None:  # CurveZMQ client: (our public, our secret, the router's public)
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = curve
        self.sock.connect(endpoint)
        self._fd = self.sock.getsockopt(zmq.FD)
        self._outbox: list[bus.BusMessage] = []
        self._seq = 0
        self._unacked: deque[Sent] = deque()
        self._backlog: deque[tuple[list[bytes], Sent | None]] = deque()
        self._flush_handle: asyncio.Handle | None = None
        self._drain_handle: asyncio.Handle | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self.closed = False
        loop.add_reader(self._fd, self._drain)

    # ---- sending ---------------------------------------------------------------------------------

    def send(self, msg: bus.BusMessage) -> None:
        self._outbox.append(msg)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_handle = None
        if self.closed or not self._outbox:
            return
        msgs, self._outbox = self._outbox, []
        self._seq += 1
        sent = Sent(self._seq, self.loop.time(), bus.encode([bus.Seq(self._seq), *msgs]), msgs)
        self._unacked.append(sent)
        self._put(sent.frames, sent)

    def send_control(self, msgs: list[bus.BusMessage]) -> None:
        """An unnumbered batch (Hello and the session snapshots), after what is queued."""
        self.flush()
        if not self.closed:
            self._put(bus.encode(msgs), None)

    def _put(self, frames: list[bytes], sent: Sent | None) -> None:
        if self._backlog:
            self._queue(frames, sent)
        else:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._queue(frames, sent)
        self._schedule_drain()

    def _queue(self, frames: list[bytes], sent: Sent | None) -> None:
        self._backlog.append((frames, sent))
        while len(self._backlog) > self.max_backlog:
            _, refused = self._backlog.popleft()
            if refused is not None:
                self._refuse(refused)
        if self._retry_handle is None:
            self._retry_handle = self.loop.call_later(0.01, self._retry)

    def _refuse(self, sent: Sent) -> None:
        if not sent.refused:
            sent.refused = True
            self.on_refused(sent.msgs)

    def _retry(self) -> None:
        self._retry_handle = None
        while self._backlog and not self.closed:
            frames, sent = self._backlog[0]
            if sent is not None and sent.refused:  # waited too long: its sender was told
                self._backlog.popleft()
                continue
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._retry_handle = self.loop.call_later(0.01, self._retry)
                break
            self._backlog.popleft()
        self._schedule_drain()

    # ---- acknowledgements and resync -------------------------------------------------------------

    def ack(self, n: int) -> None:
        unacked = self._unacked
        while unacked and unacked[0].seq <= n:
            unacked.popleft()

    def expire(self, older_than: float) -> int:
        """Refuse the unacknowledged batches sent before loop time ``older_than`` (the router
        has been gone too long): their senders are told, and they are not sent again."""
        refused = 0
        for sent in self._unacked:
            if sent.at >= older_than:
                break
            if not sent.refused:
                self._refuse(sent)
                refused += 1
        while self._unacked and self._unacked[0].refused:
            self._unacked.popleft()
        return refused

    def resync(self, control: list[bus.BusMessage]) -> int:
        """A router that does not know us: the Hello batch ``control``, then every batch it
        has not acknowledged, in order, with their numbers. Returns how many were sent again."""
        self.flush()
        if self.closed:
            return 0
        self._backlog.clear()  # all of it is in _unacked (or a stale control batch)
        self._put(bus.encode(control), None)
        again = 0
        for sent in self._unacked:
            if not sent.refused:
                self._put(sent.frames, sent)
                again += 1
        return again

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    # ---- receiving -------------------------------------------------------------------------------

    def _schedule_drain(self) -> None:
        if self._drain_handle is None and not self.closed:
            self._drain_handle = self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_handle = None
        if self.closed:
            return
        sock = self.sock
        for _ in range(MAX_BATCHES_PER_CALLBACK):
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            self.on_batch(sock.recv_multipart(zmq.NOBLOCK))
            if self.closed:
                return
        self._schedule_drain()  # more to read: give the clients a turn first

    def close(self, linger_ms: int = 0) -> None:
        """Stop; ``linger_ms`` gives what was just flushed that long to reach the router."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        self.loop.remove_reader(self._fd)
        for handle in (self._flush_handle, self._drain_handle, self._retry_handle):
            if handle is not None:
                handle.cancel()
        self.sock.close(linger=linger_ms)
