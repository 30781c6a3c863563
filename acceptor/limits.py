"""Per-connection limits, named, with safe defaults; enforced where the bytes are parsed.

``Limits`` is validated at start (``check``), before anything binds. ``TokenBucket`` is the flood
limit on commands that reach other users (public and private messages, nick, join, ...): ``burst``
at once, then ``rate`` a second. A flooder is slowed down (reading paused until a token is due),
never dropped. A command costs one token, and one more for every ``flood_bytes`` that it made the
server send (the router reports it: a ``/history`` of long lines, a ``/join`` whose pushes reach a
crowded room, a line to a large room), so the work one client causes is paced: at most
``flood_rate`` × ``flood_bytes`` a second, after the burst. Lines that only cost the sender
(errors, /ping, /help) take no token; ``lines_per_turn`` keeps any one connection from holding the
loop.

Send queues: a client with more than ``send_queue`` bytes waiting that has not drained any of them
by the next check (``stall_check`` seconds) has stopped reading and is disconnected; any client
past ``send_queue_hard`` is disconnected at once. A fast reader hit by a burst keeps draining and
stays; memory per client is bounded by the hard limit.

The kernel send buffer is bounded (``sndbuf``) so that a client that stops reading fills its queue,
and is disconnected, after a few hundred KiB rather than after the megabytes that loopback
autotuning allows; it also bounds kernel memory per stalled client.

Clients that end no message with a newline (the original PyChat client sends one message per
``send()``): until a connection has sent its first ``\n``, a piece that has sat unfinished for
``piece_idle`` seconds is taken as a line; after it, lines are strict. 0 turns this off.

Faults (checked by the acceptor's one sweep a second, not a timer per connection): a client that
sent nothing for ``idle_timeout`` seconds, or that has held an unfinished line (bytes, no newline)
for ``partial_line_timeout`` seconds (slowloris), gets one ``ERROR:`` line and is closed; 0 turns
either off. Time a client spends paused by the flood limit does not count: then it is we who are
not reading. ``max_per_address`` caps the clients of one IP address, like ``max_connections`` caps
them all, and ``connect_burst``/``connect_rate`` pace an address's new connections (each costs its
room's arrival pushes); loopback addresses are exempt by default (a local proxy, a load generator
on the same host), ``per_address_exempt`` says otherwise. TCP keepalive (``keepalive_*``, where the
OS has the options) lets the kernel find a peer that vanished without a FIN (a half-open
connection) even when the idle limit is off.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

from pychat.wire.framing import DEFAULT_MAX_LINE


@dataclass(frozen=True)
class Limits:
    max_line: int = DEFAULT_MAX_LINE  # bytes per line, without its newline
    send_queue: int = 256 * 1024  # bytes waiting for a client that has stopped draining them
    send_queue_hard: int = 4 * 1024 * 1024  # bytes waiting for any client, draining or not
    stall_check: float = 1.0  # seconds between checks of clients above send_queue
    flood_burst: int = 100  # lines a client may send at once ...
    flood_rate: float = 50.0  # ... and then per second
    flood_bytes: int = 64 * 1024  # what a command makes the server send costs a token per this
    max_connections: int = 10_000  # clients on this acceptor
    sndbuf: int = 64 * 1024  # kernel send buffer per client socket (0: the kernel's autotuning)
    lines_per_turn: int = 256  # lines of one client handled before others get a turn
    coalesce_ms: float = 4.0  # the longest a line waits to share a write (0: every turn)
    coalesce_factor: float = 0.125  # the wait after a round that batched, times its duration
    idle_timeout: float = 0.0  # seconds without a byte from a client before it is closed (0: off)
    partial_line_timeout: float = 30.0  # seconds an unfinished line may stay unfinished (0: off)
    piece_idle: float = 0.5  # before a client's first newline: an idle piece is a line (0: off)
    max_per_address: int = 64  # clients from one IP address on this acceptor ...
    connect_burst: int = 20  # ... new connections from one address at once ...
    connect_rate: float = 5.0  # ... and then per second (the same exemptions)
    tls_handshake_timeout: float = 10.0  # seconds from a TLS client's accept to its session
    per_address_exempt: str = "loopback"  # ... except these: addresses, "loopback" or "none"
    transfer_stall: float = 30.0  # seconds an upload or download may move nothing (web door)
    # MB/s all of an acceptor's file transfers may move together (0: as fast as they can): a
    # file takes longer so that chat lines do not wait behind it
    transfer_mbps: float = 40.0
    ping_after: float = 30.0  # seconds of silence before a web or IRC client is pinged (0: never)
    keepalive_idle: int = 60  # TCP keepalive: seconds of silence before the first probe ...
    keepalive_interval: int = 10  # ... seconds between probes ...
    keepalive_count: int = 6  # ... unanswered probes before the kernel drops the connection

    def check(self) -> None:
        for name in ("max_line", "send_queue", "send_queue_hard", "stall_check", "flood_burst",
                     "flood_rate", "flood_bytes", "max_connections", "lines_per_turn",
                     "max_per_address", "connect_burst", "connect_rate", "tls_handshake_timeout",
                     "transfer_stall",
                     "keepalive_idle", "keepalive_interval", "keepalive_count"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.send_queue_hard < self.send_queue:
            raise ValueError("send_queue_hard must be at least send_queue")
        if self.sndbuf < 0:
            raise ValueError("sndbuf must not be negative")
        if not 0 <= self.coalesce_ms <= 1000:
            raise ValueError("coalesce_ms must be within 0..1000")
        if not 0 <= self.coalesce_factor <= 100:
            raise ValueError("coalesce_factor must be within 0..100")
        exempt_addresses(self.per_address_exempt)  # raises ValueError when malformed
        for name in ("idle_timeout", "partial_line_timeout", "piece_idle", "ping_after",
                     "transfer_mbps"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be 0 (off) or a number of seconds")


def exempt_addresses(text: str) -> Callable[[str], bool]:
    """``per_address_exempt`` as a predicate on a peer's address: comma-separated IP
    addresses, ``loopback`` (127.0.0.0/8, ::1, and IPv4-mapped loopback) or ``none``."""
    loopback = False
    exact: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for item in (t.strip() for t in text.split(",")):
        if item in ("", "none"):
            continue
        if item == "loopback":
            loopback = True
        else:
            exact.add(ipaddress.ip_address(item))

    def exempt(host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(addr, "ipv4_mapped", None)
        if mapped is not None:
            addr = mapped
        return addr in exact or (loopback and addr.is_loopback)
    return exempt


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float | None = None):
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic() if now is None else now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False

    def full(self, now: float) -> bool:
        """Refilled to the burst by ``now`` (nothing owed, nothing to remember)."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst

    def wait(self) -> float:
        """Seconds until the next token, from the last ``take``."""
        return max(0.0, (1.0 - self.tokens) / self.rate)
