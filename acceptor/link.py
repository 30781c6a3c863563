"""The acceptor's ZeroMQ pump: one DEALER socket driven by the asyncio loop, around the link.

The bus protocol is ``wire.link.AcceptorLink``; this file moves its batches to and from the
socket. Messages sent during a loop turn share one batch (``send`` schedules one ``flush`` per
turn). Incoming batches are drained until the socket has no more, a bounded number per
callback, and handed to ``on_batch``. ``on_change`` runs after every flush, since handing
batches to the socket can refuse the oldest (the link's bounded backlog).

ZeroMQ's FD is edge-triggered: it signals that *something may have changed*, so after it fires,
and after every send, we read ``EVENTS`` and drain until it shows no POLLIN. A send the socket
pushes back (the router's high-water mark) stays at the head of the link's queue and is tried
again every 10 ms.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import zmq

from pychat.wire import bus
from pychat.wire.link import AcceptorLink

log = logging.getLogger("pychat.acceptor")

MAX_BATCHES_PER_CALLBACK = 256
RECONNECT_MS = 25
RETRY_S = 0.01


class BusPump:
    def __init__(self, loop: asyncio.AbstractEventLoop, endpoint: str, link: AcceptorLink,
                 on_batch: Callable[[list[bytes]], None], on_change: Callable[[], None], *,
                 hwm: int = 100_000, ctx: zmq.Context | None = None,
                 curve: tuple[bytes, bytes, bytes] | None = None):
        self.loop = loop
        self.endpoint = endpoint
        self.link = link
        self.on_batch = on_batch
        self.on_change = on_change
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, link.name.encode("utf-8"))
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.setsockopt(zmq.MAXMSGSIZE, bus.MAX_FRAME)
        # a restarted router is found within 25 ms (ZeroMQ's default is 100 ms), not backed off
        self.sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
        if curve is not None:  # CurveZMQ client: (our public, our secret, the router's public)
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = curve
        self.sock.connect(endpoint)
        self._fd = self.sock.getsockopt(zmq.FD)
        self._flush_handle: asyncio.Handle | None = None
        self._drain_handle: asyncio.Handle | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self.raw: deque[list[bytes]] = deque()  # file-channel messages (wire/transfer.py)
        self.closed = False
        loop.add_reader(self._fd, self._drain)

    # ---- sending ---------------------------------------------------------------------------------

    def send(self, msg: bus.BusMessage) -> int:
        """Queue ``msg`` in the batch of this loop turn; returns the batch's number."""
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)
        return self.link.send(msg)

    def cut(self) -> None:
        """Close the batch being collected now; later messages go in the next one (handed to
        the socket at the end of the turn, as usual)."""
        self.link.flush(self.loop.time())
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Close this turn's batch and hand what is queued to the socket."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        link = self.link
        if self.closed or not (link.collecting or link.out):  # (before each slice of writes)
            return
        link.flush(self.loop.time())
        self._push()
        self.on_change()

    def send_raw(self, frames: list[bytes]) -> None:
        """A file-channel message (not a numbered batch: never sent again), at once."""
        self.raw.append(frames)
        if len(self.raw) == 1:
            self._push()

    def _push(self) -> None:
        link = self.link
        out = link.out
        sock = self.sock
        raw = self.raw
        while raw:  # (their transfers' credit bounds how many wait here)
            try:
                sock.send_multipart(raw[0], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                if self._retry_handle is None:
                    self._retry_handle = self.loop.call_later(RETRY_S, self._retry)
                break
            raw.popleft()
        while out:
            try:
                sock.send_multipart(out[0][0], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                if self._retry_handle is None:
                    self._retry_handle = self.loop.call_later(RETRY_S, self._retry)
                break
            link.sent_one()
        self._schedule_drain()

    def _retry(self) -> None:
        self._retry_handle = None
        if not self.closed:
            self._push()

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
        self.link.flush(self.loop.time())
        self._push()
        self.closed = True
        self.loop.remove_reader(self._fd)
        for handle in (self._flush_handle, self._drain_handle, self._retry_handle):
            if handle is not None:
                handle.cancel()
        self.sock.close(linger=linger_ms)
