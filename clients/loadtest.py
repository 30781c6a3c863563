"""``pychat loadtest``: N simulated clients, S senders at an aggregate rate, and what it measured.

Lean on purpose (on two cores the generator must not measure itself): one asyncio process
(uvloop when installed), Protocol objects, no per-line Python work on most clients. Every client
counts chat lines with ``bytes.count``; only ``--sample`` receivers parse each line for latency
(the send time rides inside the message), duplicates and per-sender order. They are spread over
the join order (``--sample-at``), and a line counts as received when the kernel queued it on
their socket (``--stamp kernel``, ``SO_TIMESTAMPNS``), not when this busy process read it.
Senders are the first S clients; a 2 ms tick sends what the aggregate rate has made due, round
robin.

It speaks PyChat (public messages echo to the sender), IRC (``--proto irc``: NICK/USER, JOIN,
PRIVMSG; no echo), so the same figures can be taken from an IRC server, or PyChat over
WebSocket (``--proto ws``, ``--port`` the web door's: ``GET /ws``, one text frame per line,
RFC 6455). Its WebSocket is its own, lean as the rest (``WsReader``, ``ws_frame``): a counting
client walks the frame headers of a read (a few operations a frame) and counts the marker in
the complete frames with one ``bytes.count``; only control frames (pings, answered with pongs)
and fragmented messages take the general path. ``--tls``/``--ca`` connect with TLS (verified;
the sampled receivers decrypt through memory buffers, so their lines keep the kernel's stamps).

It reports its own CPU (per million deliveries too), the whole machine's (``/proc/stat``), and
says when it, not the server, was the bottleneck. Progress goes to stderr once a second, on one
line rewritten with ``\r`` on a terminal, a line each otherwise (a log). ``--plot`` checks for
matplotlib before the run, and draws after the summary is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import resource
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable

from pychat.options import LOADTEST, add_options
from pychat.wire.framing import LineBuffer

from .loadstats import Latencies, Summary, plot, table
from .options import tls_context
from .session import tls_problem

TICK = 0.002  # the sender tick: fine enough that arrivals are not lumped together
FLAT_OUT_IN_FLIGHT = 20  # flat out: messages per sender not yet seen by every sampled receiver
LOADGEN_BOUND_PCT = 90.0
# Linux's SO_TIMESTAMPNS (= SCM_TIMESTAMPNS; Python does not name it): the kernel stamps each
# received segment with CLOCK_REALTIME, and recvmsg hands the stamp back
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("@ll")
ANCILLARY = socket.CMSG_SPACE(TIMESPEC.size)


# ---- WebSocket (RFC 6455), the client's side ---------------------------------------------------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_CONT, WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
WS_MAX_MESSAGE = 1 << 24  # a frame or message longer than this is the server's error
WS_MAX_HEAD = 16384  # the server's HTTP answer to the upgrade, at most


class WsError(Exception):
    """The server broke RFC 6455 (or refused the upgrade): the connection is closed."""


def ws_key() -> bytes:
    return base64.b64encode(os.urandom(16))


def ws_accept(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server must answer ``key`` with."""
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def ws_request(host: str, port: int, key: bytes, path: str = "/ws", tls: bool = False) -> bytes:
    """The HTTP upgrade a client opens with (its Origin: the page the door serves)."""
    origin = f"{'https' if tls else 'http'}://{host}:{port}"
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n").encode()


def ws_check_answer(head: bytes, key: bytes) -> None:
    """The server's answer to the upgrade (up to its blank line): a 101 that accepts ``key``."""
    status, _, rest = head.partition(b"\r\n")
    parts = status.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or parts[1] != b"101":
        raise WsError(f"the server refused the WebSocket upgrade: "
                      f"{status.decode('latin-1')[:200]!r}")
    headers = {}
    for line in rest.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if headers.get(b"sec-websocket-accept") != ws_accept(key):
        raise WsError("the server's Sec-WebSocket-Accept does not answer our key")
    if headers.get(b"sec-websocket-extensions"):
        raise WsError("the server chose an extension we did not offer")


def ws_mask(data: bytes, mask: bytes) -> bytes:
    """``data`` XOR the 4-byte ``mask`` repeated: one big-integer XOR, not a loop per byte."""
    n = len(data)
    if not n:
        return b""
    key = (mask * ((n + 3) >> 2))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def ws_frame(payload: bytes, opcode: int = WS_TEXT, fin: bool = True) -> bytes:
    """One client frame: masked (RFC 6455 5.3), with a fresh random mask."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = bytes((first, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0xFF)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    return head + mask + ws_mask(payload, mask)


class WsReader:
    """The server's frames from a byte stream: whole messages out, whatever the reads' sizes.

    ``feed`` returns ``(opcode, payload)`` for each complete message: text (fragments joined)
    and binary messages, and control frames (ping, pong, close) as they come, also between the
    fragments of a message. ``count`` is the counting clients' fast path: it walks the headers
    of unmasked, unfragmented text frames (the server's lines) and counts ``marker`` in them
    with one ``bytes.count`` over the complete frames; at any other frame it hands the rest of
    the bytes to ``feed``. (Counting over the headers too is exact for the marker ``: LT ``:
    no header byte of such a frame (0x81, then the length) followed by a line's first bytes
    can make it.)"""

    __slots__ = ("buf", "part_op", "parts", "size")

    def __init__(self) -> None:
        self.buf = b""
        self.parts: list[bytes] | None = None  # a fragmented message's payloads so far
        self.part_op = 0
        self.size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.buf + data if self.buf else data
        out: list[tuple[int, bytes]] = []
        n, pos = len(buf), 0
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, p = b1 & 0x7F, pos + 2
            if length == 126:
                if n - p < 2:
                    break
                length, p = int.from_bytes(buf[p:p + 2], "big"), p + 2
            elif length == 127:
                if n - p < 8:
                    break
                length, p = int.from_bytes(buf[p:p + 8], "big"), p + 8
            if length > WS_MAX_MESSAGE:
                raise WsError(f"a frame of {length} bytes")
            if b1 & 0x80:  # a server must not mask; unmasked all the same
                if n - p < 4:
                    break
                mask, p = buf[p:p + 4], p + 4
            else:
                mask = b""
            end = p + length
            if end > n:
                break
            payload = buf[p:end] if not mask else ws_mask(buf[p:end], mask)
            pos = end
            if b0 & 0x70:
                raise WsError("a frame with RSV bits set (no extension was agreed)")
            op, fin = b0 & 0x0F, b0 & 0x80
            if op >= WS_CLOSE:  # control frames: whole, and may come between fragments
                if not fin or length > 125:
                    raise WsError("a fragmented or long control frame")
                out.append((op, payload))
            elif op == WS_CONT:
                if self.parts is None:
                    raise WsError("a continuation frame with no message to continue")
                self.parts.append(payload)
                self.size += length
                if self.size > WS_MAX_MESSAGE:
                    raise WsError("a message too long")
                if fin:
                    out.append((self.part_op, b"".join(self.parts)))
                    self.parts = None
            elif op in (WS_TEXT, WS_BINARY):
                if self.parts is not None:
                    raise WsError("a new message inside a fragmented one")
                if fin:
                    out.append((op, payload))
                else:
                    self.parts, self.part_op, self.size = [payload], op, length
            else:
                raise WsError(f"a frame of unknown opcode {op}")
        self.buf = buf[pos:]
        return out

    def count(self, data: bytes, marker: bytes) -> tuple[int, list[tuple[int, bytes]]]:
        """How many times ``marker`` is in the complete simple text frames of ``data`` (and
        what came before it), and the messages of any other frames (``feed``'s)."""
        if self.parts is not None:  # inside a fragmented message: the general path
            msgs = self.feed(data)
            return 0, msgs
        buf = self.buf + data if self.buf else data
        n, pos = len(buf), 0
        while n - pos >= 2:
            b1 = buf[pos + 1]
            if b1 < 126:
                end = pos + 2 + b1
            elif b1 == 126:
                if n - pos < 4:
                    break
                end = pos + 4 + (buf[pos + 2] << 8 | buf[pos + 3])
            else:  # masked, or a 64-bit length: the general path
                break
            if buf[pos] != 0x81 or end > n:
                break
            pos = end
        found = buf.count(marker, 0, pos)
        if n - pos >= 2 and (buf[pos] != 0x81 or buf[pos + 1] > 126):
            self.buf = b""
            return found, self.feed(buf[pos:])  # a frame of another kind: the general path
        self.buf = buf[pos:]
        return found, []


class KernelStamped:
    """A sampled receiver's socket, read with ``recvmsg`` for the kernel's receive time.

    Latency is the time from the send stamp in the message to the moment the line reached this
    client's socket, not to the moment this process got round to reading it: on two cores the
    load generator is busy, and its own queueing would be counted as the server's. The stamp is
    the kernel's, of the newest data a read takes in: segments that wait unread are merged in
    the receive queue and keep the newest one's time, so a line is never stamped early, and is
    stamped late only when this process was late to read and more data came meanwhile (reading
    line by line does not help: the merge has happened). How late the reads came is reported
    apart (``loadgen_delay_ms``). Writes are small (pings, handshakes, the senders' lines): sent
    at once, the rest buffered until the socket is writable.

    With TLS (``tls``) the bytes read go through an ``ssl.SSLObject`` on memory buffers, so the
    stamp is still the kernel's, of the encrypted bytes that carried the line: the same moment.
    ``handshake`` is done once the handshake is (or failed, with the ``ssl`` error)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, client: Client,
                 tls: ssl.SSLContext | None = None, host: str = ""):
        self.loop, self.sock, self.client = loop, sock, client
        self.fd = sock.fileno()
        self.pending = b""
        self.closed = False
        self.tls: ssl.SSLObject | None = None
        self.handshake: asyncio.Future[None] | None = None
        if tls is not None:
            self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = tls.wrap_bio(self.incoming, self.outgoing, server_hostname=host)
            self.handshake = loop.create_future()
        loop.add_reader(self.fd, self._readable)
        if self.tls is not None:
            self._shake()

    def _shake(self) -> None:
        """The TLS handshake, as far as the bytes in allow."""
        assert self.tls is not None and self.handshake is not None
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as e:
            self._flush()
            self.close()
            if not self.handshake.done():
                self.handshake.set_exception(e)
            return
        self._flush()
        if not self.handshake.done():
            self.handshake.set_result(None)

    def _flush(self) -> None:
        """What TLS has to send, sent."""
        data = self.outgoing.read()
        if data:
            self._send(data)

    def _readable(self) -> None:
        try:
            data, anc, _, _ = self.sock.recvmsg(1 << 18, ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, anc = b"", []
        if not data:
            self._lost(ConnectionError("the server closed the connection"))
            return
        stamp = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = TIMESPEC.unpack_from(payload)
                # to the monotonic clock the send stamps use, at this moment's offset
                stamp = sec * 1_000_000_000 + nsec - (time.time_ns() - time.monotonic_ns())
        if self.tls is not None:
            data = self._decrypt(data)
            if not data:
                return
        self.client.rx_ns = stamp
        self.client.data_received(data)

    def _decrypt(self, data: bytes) -> bytes:
        """The plain bytes the encrypted ``data`` completes (b"" for none yet)."""
        tls, handshake = self.tls, self.handshake
        assert tls is not None and handshake is not None
        self.incoming.write(data)
        if not handshake.done():
            self._shake()
            if not handshake.done() or self.closed:
                return b""
        chunks = []
        try:
            while True:
                chunk = tls.read(1 << 18)
                if not chunk:
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLError) as e:  # closed, or broken
            self._lost(e)
            return b""
        self._flush()  # (what reading may have to answer)
        return b"".join(chunks)

    def _lost(self, e: Exception) -> None:
        self.close()
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(e)
        else:
            self.client.connection_lost(None)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.tls is not None:
            try:
                self.tls.write(data)
            except ssl.SSLError:
                return  # broken: the read side sees it
            data = self.outgoing.read()
        self._send(data)

    def _send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.pending:
            self.pending += data
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            return  # reset: the read side sees it
        if n < len(data):
            self.pending = data[n:]
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        try:
            n = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = len(self.pending)
        self.pending = self.pending[n:]
        if not self.pending:
            self.loop.remove_writer(self.fd)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.sock.close()


class Client(asyncio.Protocol):
    """One simulated user. ``sampled`` clients parse every line; the others only count."""

    def __init__(self, run: Run, idx: int, sampled: bool):
        self.run = run
        self.idx = idx
        self.sampled = sampled
        self.transport: asyncio.Transport | None = None
        self.lines = LineBuffer(1 << 20)
        self.ready = asyncio.get_running_loop().create_future()
        self.settled = False  # past the arrival pushes: counting mode
        self.counting = False
        self.count = 0
        self.tail = b""
        self.last_seq: dict[int, int] = {}
        self.paused = False
        self.closed = False
        self.rx_ns: int | None = None  # the kernel's receive time of the line being read
        # --proto ws: the upgrade's key and the server's answer so far, then the frames
        self.ws: WsReader | None = None
        self.ws_key = b""
        self.ws_head = b""
        self.heard = False  # any byte from the server yet (none at all: a TLS port, likely)
        # client 0 keeps its room's members (nicks on IRC, uids else) until the settle: when it
        # knows all the clients, the connect storm's last push has left the server
        self.members: set[bytes] | None = set() if idx == 0 else None
        self.want = 0  # the settle's: how many members it waits for
        self.all_in: asyncio.Future[None] | None = None

    # ---- asyncio ---------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        run = self.run
        if run.proto == "irc":
            nick = f"lt{self.idx}"
            transport.write(f"NICK {nick}\r\nUSER {nick} 0 * :loadtest\r\n".encode())
        elif run.proto == "ws":
            self.ws_key = ws_key()
            transport.write(ws_request(run.args.host, run.args.port, self.ws_key,
                                       tls=run.tls is not None))
        elif run.tls is None:  # said at once: a TLS port closes at once on plain text
            transport.write(b"/ping hello\n")

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        if ws is not None or self.ws_key:
            try:
                if ws is None:  # the upgrade's answer, then frames
                    data = self._ws_upgraded(data)
                    ws = self.ws
                    if ws is None or not data:
                        return
                if self.counting and not self.sampled:
                    found, msgs = ws.count(data, self.run.marker)
                    self.count += found
                else:
                    msgs = ws.feed(data)
                for op, payload in msgs:
                    self._ws_message(op, payload)
            except WsError as e:
                self._fail(e)
            return
        if self.counting and not self.sampled:
            chunk = self.tail + data
            self.count += chunk.count(self.run.marker)
            self.tail = data[-(len(self.run.marker) - 1):]
            if self.run.proto == "irc" and b"PING" in data:
                self._lines(data)
            return
        self._lines(data)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(
                f"client {self.idx} closed early" if self.heard else
                "the server closed the connection without a word: does it want TLS? (--tls, "
                "or --ca FILE)"))

    def _fail(self, e: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(e)
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    # ---- WebSocket -------------------------------------------------------------------------------

    def _ws_upgraded(self, data: bytes) -> bytes:
        """The server's answer to the upgrade: checked once whole; returns the bytes after it
        (frames already)."""
        self.heard = True
        head = self.ws_head + data
        if not head.startswith(b"HTTP/"[:len(head)]):  # a line server, say: not a web door
            first = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")[:200]
            raise WsError(f"the server did not answer the WebSocket upgrade in HTTP: {first!r}")
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > WS_MAX_HEAD:
                raise WsError("the server's answer to the upgrade never ended")
            self.ws_head = head
            return b""
        ws_check_answer(head[:end], self.ws_key)
        self.ws_head = b""
        self.ws = WsReader()
        return head[end + 4:]

    def _ws_message(self, op: int, payload: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if op == WS_TEXT:
            if self.counting and not self.sampled:
                self.count += payload.count(self.run.marker)
            else:
                self._line(payload)
        elif op == WS_PING:
            transport.write(ws_frame(payload, WS_PONG))
        elif op == WS_CLOSE:  # answered, then closed (the server closes its side)
            transport.write(ws_frame(payload[:2], WS_CLOSE))
            transport.close()
            self.connection_lost(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # ---- lines -----------------------------------------------------------------------------------

    def _lines(self, data: bytes) -> None:
        self.heard = True
        for item in self.lines.feed(data):
            if isinstance(item, bytes):
                self._line(item)

    def _track(self, line: bytes) -> None:
        """The room's members as this client is told them: PyChat's USERS (whole), JOINED and
        LEFT; IRC's NAMES (353), JOIN, PART, QUIT and NICK."""
        m = self.members
        assert m is not None
        if line.startswith(b"USERS:"):
            m.clear()
            m.update(line[6:].split(b","))
        elif line.startswith(b"JOINED:"):
            m.update(line[7:].split(b","))
        elif line.startswith(b"LEFT:"):
            m.difference_update(line[5:].split(b","))
        elif line.startswith(b":") and self.run.proto == "irc":  # (the run's channel only:
            source, _, rest = line[1:].partition(b" ")  # the lobby's names come first)
            nick = source.split(b"!", 1)[0]
            verb, _, params = rest.partition(b" ")
            if params.startswith(b":"):
                head, last = b"", params[1:]
            else:
                head, _, last = params.partition(b" :")
            words = head.split()
            room = self.run.room.encode()
            if verb == b"353" and room in words:
                m.update(n.lstrip(b"@+") for n in last.split())
            elif verb in (b"JOIN", b"PART") and room in (words[:1] or [last]):
                if verb == b"JOIN":
                    m.add(nick)
                else:
                    m.discard(nick)
            elif verb == b"QUIT":
                m.discard(nick)
            elif verb == b"NICK" and nick in m:
                m.discard(nick)
                m.add((last or head).strip())
        if self.all_in is not None and len(m) >= self.want and not self.all_in.done():
            self.all_in.set_result(None)

    def _line(self, line: bytes) -> None:
        if self.members is not None:  # (client 0, until the settle)
            self._track(line)
        run = self.run
        if run.proto == "irc":
            transport = self.transport
            assert transport is not None  # lines come only once connection_made has run
            if line.startswith(b"PING"):
                transport.write(b"PONG" + line[4:] + b"\r\n")
                return
            if not self.ready.done():
                if b" 001 " in line:
                    transport.write(f"JOIN {run.room}\r\n".encode())
                elif b" 366 " in line or b" 331 " in line or b" 332 " in line:
                    self.ready.set_result(None)  # joined (end of NAMES), or settled (TOPIC)
                return
        elif not self.ready.done():
            if line.startswith(b"USERS:") or line == b"PONG settle":
                self.ready.set_result(None)
            return
        if not self.counting:
            return
        i = line.find(run.marker)
        if i < 0:
            if b" JOIN " in line or line.startswith((b"USERS:", b"JOINED:")):
                run.late_pushes += 1  # an arrival of the connect storm, after the settle
            return
        fields = line[i + len(run.marker):].split(b" ", 3)
        sender, seq, sent_ns = int(fields[0]), int(fields[1]), int(fields[2])
        last = self.last_seq.get(sender, -1)
        if seq == last:
            run.duplicated += 1
            return
        if seq < last:  # an older message after a newer one
            run.order_violations += 1
        else:
            self.last_seq[sender] = seq
        self.count += 1
        now = time.monotonic_ns()
        if self.rx_ns is not None:  # kernel-stamped: how late this process read it, apart
            run.delays.add(0, (now - self.rx_ns) / 1e6)
            now = self.rx_ns
        run.latencies.add(int(now / 1e9 - run.t0), (now - sent_ns) / 1e6)

    def send(self, text: str) -> None:
        transport = self.transport
        assert transport is not None  # only connected clients are in Run.clients
        if self.run.proto == "irc":
            transport.write(f"PRIVMSG {self.run.room} :{text}\r\n".encode())
        elif self.run.proto == "ws":
            transport.write(ws_frame(text.encode()))
        else:
            transport.write(f"{text}\n".encode())


class Run:
    def __init__(self, args: argparse.Namespace, tls: ssl.SSLContext | None = None):
        self.args = args
        self.tls = tls
        self.proto = args.proto
        self.room = args.room
        self.marker = b":LT " if self.proto == "irc" else b": LT "
        self.sample = receivers_sampled(args.sample, args.rate, args.sample_lines)
        self.clients: list[Client] = []
        self.latencies = Latencies()
        self.delays = Latencies()  # kernel receive time to this process reading the line
        self.duplicated = 0
        self.order_violations = 0
        self.late_pushes = 0
        self.notes: list[str] = []  # for the summary
        self.sent = 0
        self.t0 = 0.0
        self.pad = "x" * max(0, args.size - 40)
        self.tty = sys.stderr.isatty()  # progress: one line rewritten, or a line each

    async def connect_all(self) -> float:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(self.args.connect_concurrency)
        sampled = sampled_indices(self.args.clients, self.sample, self.args.sample_at)
        began = time.monotonic()

        async def one(i: int) -> None:
            async with sem:
                client = Client(self, i, sampled=i in sampled)
                if client.sampled and self.args.stamp == "kernel":
                    await self.connect_stamped(client)
                elif self.tls is not None:
                    await loop.create_connection(lambda: client, self.args.host,
                                                 self.args.port, ssl=self.tls,
                                                 server_hostname=self.args.host)
                else:
                    await loop.create_connection(lambda: client, self.args.host,
                                                 self.args.port)
                self.clients.append(client)
                await asyncio.wait_for(client.ready, self.args.timeout)

        results = await asyncio.gather(*(one(i) for i in range(self.args.clients)),
                                       return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            first = failures[0]
            why = (f"TLS: {tls_problem(first)}" if isinstance(first, ssl.SSLError)
                   else str(first) or repr(first))
            print(f"loadtest: {len(failures)} clients failed to connect to "
                  f"{self.args.host}:{self.args.port}: {why}", file=sys.stderr)
        self.clients.sort(key=lambda c: c.idx)
        return time.monotonic() - began

    async def connect_stamped(self, client: Client) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:  # not Linux: no stamps come, and the latency is read time
                pass
            await loop.sock_connect(sock, (self.args.host, self.args.port))
        except BaseException:
            sock.close()
            raise
        stamped = KernelStamped(loop, sock, client, self.tls, self.args.host)
        if stamped.handshake is not None:
            try:
                await asyncio.wait_for(stamped.handshake, self.args.timeout)
            except BaseException:
                stamped.close()
                raise
        client.connection_made(stamped)

    async def settle(self) -> None:
        """Let the arrival pushes (USERS/JOIN lines) of the connect storm drain: a round trip
        through the router on every client (PyChat replies keep command order), then count
        from zero. On IRC, a TOPIC query: a PING is answered by the IRC door itself, ahead of
        the pushes still coming from the router (ngircd answers both in order)."""
        ping = (f"TOPIC {self.room}\r\n".encode() if self.proto == "irc"
                else b"/ping settle\n")
        await self.all_arrived()
        waiters = []
        for c in self.clients:
            if c.closed or c.transport is None:
                continue
            c.ready = asyncio.get_running_loop().create_future()
            c.transport.write(ws_frame(b"/ping settle") if self.proto == "ws" else ping)
            waiters.append(c.ready)
        await asyncio.wait_for(asyncio.gather(*waiters), self.args.timeout)
        for c in self.clients:
            c.counting = True
            c.count = 0
            c.tail = b""

    async def all_arrived(self) -> None:
        """Wait until client 0 knows every connected client as a member: a room over 500's
        list pushes are throttled (up to 0.35 s apart at 1,000 members, 35 s at 10,000), so
        the round trip alone can come before the storm's last push, which then lands in the
        run (at 1,000 IRC clients, a push of ~175 arrivals: p99 47-80 ms instead of 5-9)."""
        tracker = next((c for c in self.clients if c.idx == 0), None)
        if tracker is None or tracker.closed or tracker.members is None:
            return
        want = sum(1 for c in self.clients if not c.closed)
        tracker.want = want
        tracker.all_in = asyncio.get_running_loop().create_future()
        if len(tracker.members) < want:
            try:
                await asyncio.wait_for(tracker.all_in, self.args.timeout)
            except asyncio.TimeoutError:
                self.notes.append(f"the settle gave up waiting for the arrivals: client 0 knew "
                                  f"{len(tracker.members)} of {want} members")
        tracker.members = None  # (no more tracking)

    async def send_phase(self) -> float:
        args = self.args
        senders = [c for c in self.clients[:args.senders] if not c.closed]
        if not senders:
            raise SystemExit("loadtest: no sender connected")
        count = args.count or 0
        deadline = None if count else time.monotonic() + args.duration
        self.t0 = time.monotonic()
        seqs = [0] * len(senders)
        sampled = [c for c in self.clients if c.sampled and not c.closed]
        window = FLAT_OUT_IN_FLIGHT * len(senders)
        k = 0
        next_progress = self.t0 + 1
        while True:
            now = time.monotonic()
            if (count and self.sent >= count) or (deadline and now >= deadline):
                break
            if args.rate:
                due = int((now - self.t0) * args.rate) - self.sent
            else:  # flat out: as fast as the server takes them, a bounded number in flight
                due = window - (self.sent - min((c.count for c in sampled), default=0))
            if count:
                due = min(due, count - self.sent)
            for _ in range(max(0, due)):
                s = senders[k % len(senders)]
                k += 1
                if s.closed:
                    continue
                s.send(f"LT {s.idx} {seqs[s.idx]} {time.monotonic_ns()} {self.pad}")
                seqs[s.idx] += 1
                self.sent += 1
                if count and self.sent >= count:
                    break
            if now >= next_progress:
                next_progress += 1
                self.progress(now)
            await asyncio.sleep(TICK if args.rate or due <= 0 else 0)
        return time.monotonic() - self.t0

    def delivered(self) -> int:
        return sum(c.count for c in self.clients)

    def expected(self) -> int:
        members = len(self.clients) - (1 if self.proto == "irc" else 0)
        return self.sent * members

    def progress(self, now: float) -> None:
        if self.args.quiet:
            return
        lat = self.latencies.all
        recent = sorted(lat[-2000:]) if lat else []
        p99 = recent[int(len(recent) * 0.99) - 1] if recent else float("nan")
        text = (f"t={now - self.t0:5.1f}s sent={self.sent} delivered={self.delivered()} "
                f"p99~{p99:.1f}ms")
        # a terminal: one line, rewritten; a file or a pipe (a log): a line each time
        sys.stderr.write(f"\r{text}   " if self.tty else f"loadtest: {text}\n")
        sys.stderr.flush()

    async def drain(self) -> None:
        """Wait for the deliveries still on their way: until all arrived or 2 s without any."""
        want = self.expected()
        last, still = -1, time.monotonic()
        while time.monotonic() - still < 2.0:
            got = self.delivered()
            if got >= want:
                return
            if got != last:
                last, still = got, time.monotonic()
            await asyncio.sleep(0.05)  # polling our own counters while the deliveries arrive


def receivers_sampled(sample: int, rate: float, budget: int) -> int:
    """How many receivers parse every line: ``--sample``, or fewer (at least 2) where they
    would parse more than ``budget`` lines a second. Each parsed line costs the generator a
    few microseconds: at 10,400 msg/s, 20 receivers took 0.15 of a core more than 5 and, on
    the 2-core test machine the server shares, doubled the p99 measured."""
    if rate <= 0:  # flat out: the rate is what is measured
        return sample
    return max(min(sample, 2), min(sample, int(budget // rate)))


def sampled_indices(clients: int, n: int, at: str) -> set[int]:
    """Which clients parse every line. A server writes a room's members in some order (PyChat
    oldest member first, ngircd newest first), so the clients written last in each round see
    the most latency: ``spread`` (the default) samples every k-th client, evenly over the join
    order, so the figure stands for the whole room on any server; ``last`` and ``first`` sample
    the clients that join last or first (``last`` was the only choice before)."""
    n = min(n, clients)
    if at == "last":
        return set(range(clients - n, clients))
    if at == "first":
        return set(range(n))
    return {(k * clients) // n + (clients // n) // 2 for k in range(n)}


def process_tree(pid: int) -> dict[int, float]:
    """A process and its descendants (Linux /proc): pid -> utime+stime in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(rest[1]), []).append(int(entry))
        times[int(entry)] = (int(rest[11]) + int(rest[12])) / tick
    tree, todo = {}, [pid]
    while todo:
        p = todo.pop()
        tree[p] = times.get(p, 0.0)
        todo.extend(children.get(p, ()))
    return tree


def cpu_seconds_of_tree(pid: int) -> float:
    """utime+stime of a process and its descendants, in seconds."""
    return sum(process_tree(pid).values())


def machine_busy_seconds() -> float | None:
    """CPU seconds every core of the machine spent not idle (``/proc/stat``), or None.

    The fair cost on loopback: the kernel sends a socket's queued data in whatever process
    handles the acknowledgement, so with Nagle's algorithm on much of a server's sending is
    counted to the load generator's reads, not to the server's pid."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


Report = Callable[[Summary, Latencies], None]


async def run_load(args: argparse.Namespace, tls: ssl.SSLContext | None = None,
                   report: Report | None = None) -> Summary:
    """The run; ``report`` gets the summary (and the latencies, for a plot) as soon as it is
    made, before ``--linger`` holds the connections and before they are closed."""
    run = Run(args, tls)
    summary = Summary(proto=args.proto, clients=args.clients, senders=args.senders,
                      rate=args.rate)
    summary.connect_s = await run.connect_all()
    summary.connected = len([c for c in run.clients if not c.closed])
    if not summary.connected:
        raise SystemExit(f"loadtest: no client connected to {args.host}:{args.port}")
    await run.settle()
    server0 = sum(cpu_seconds_of_tree(p) for p in args.server_pid)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    machine0 = machine_busy_seconds()
    wall0 = time.monotonic()
    summary.duration_s = await run.send_phase()
    await run.drain()
    wall = time.monotonic() - wall0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    machine1 = machine_busy_seconds()
    if not args.quiet and run.tty:
        sys.stderr.write("\n")  # (the progress line ends)
    summary.sent = run.sent
    summary.expected = run.expected()
    summary.delivered = run.delivered()
    summary.lost = max(0, summary.expected - summary.delivered)
    summary.duplicated = run.duplicated
    summary.order_violations = run.order_violations
    summary.late_pushes = run.late_pushes
    summary.sampled = len([c for c in run.clients if c.sampled])
    if run.sample < args.sample:
        summary.notes.append(f"{run.sample} receivers sampled, not --sample's {args.sample}: "
                             f"at {args.rate:g} msg/s they parse --sample-lines "
                             f"({args.sample_lines}) a second at most")
    summary.notes.extend(run.notes)
    if run.late_pushes:
        summary.notes.append(f"{run.late_pushes} arrival lines came after the settle (in a "
                             "room over 500, list pushes are throttled: the last of the "
                             "connect storm's may come during the run)")
    summary.disconnected = sum(1 for c in run.clients if c.closed)
    summary.deliveries_per_s = summary.delivered / max(summary.duration_s, 1e-9)
    summary.latency_ms = run.latencies.stats()
    if args.stamp == "kernel" and len(run.delays.all):  # (no stamps: the kernel gave none)
        summary.stamp = "kernel"
        summary.loadgen_delay_ms = run.delays.stats()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    summary.loadgen_cpu_pct = 100.0 * cpu / max(wall, 1e-9)
    summary.loadgen_cpu_s = cpu
    if summary.delivered:
        summary.loadgen_cpu_s_per_million = cpu / summary.delivered * 1e6
        user = usage1.ru_utime - usage0.ru_utime
        summary.loadgen_user_cpu_s_per_million = user / summary.delivered * 1e6
    if args.server_pid:
        summary.server_cpu_s = sum(cpu_seconds_of_tree(p) for p in args.server_pid) - server0
        if summary.delivered:
            summary.server_cpu_s_per_million = summary.server_cpu_s / summary.delivered * 1e6
    if machine0 is not None and machine1 is not None and summary.delivered:
        summary.machine_cpu_s = machine1 - machine0
        summary.machine_cpu_s_per_million = summary.machine_cpu_s / summary.delivered * 1e6
    if summary.loadgen_cpu_pct >= LOADGEN_BOUND_PCT:
        summary.loadgen_bound = True
        summary.notes.append("the load generator used a whole core: it, not the server, may "
                             "have been the bottleneck")
    if args.rate and summary.duration_s and run.sent < 0.95 * args.rate * summary.duration_s:
        summary.notes.append("the asked rate was not reached")
    if report is not None:
        report(summary, run.latencies)
    if args.linger:
        if not args.quiet:
            print(f"loadtest: {summary.connected} clients idle for {args.linger:g} s",
                  file=sys.stderr, flush=True)
        await asyncio.sleep(args.linger)  # holding the connections open, idle, on purpose
    for c in run.clients:
        if c.transport is not None:
            c.transport.close()
    return summary


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted), hard))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pychat loadtest",
                                description="Simulate many chat users and measure the server.")
    add_options(p, LOADTEST)  # pychat/options.py declares them
    return p


def plot_title(args: argparse.Namespace) -> str:
    return (f"{args.proto} {args.clients} clients, {args.senders} senders, "
            f"{'flat out' if not args.rate else f'{args.rate:g} msg/s'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.plot:  # before the run, not after it: a missing library costs nothing
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("loadtest: --plot needs matplotlib, which is not installed (pip install "
                  "'pychat[plot]', or matplotlib); nothing was run", file=sys.stderr)
            return 2
    try:
        tls = tls_context(args)
    except ValueError as e:
        print(f"loadtest: {e}", file=sys.stderr)
        return 2
    if args.senders > args.clients:
        args.senders = args.clients
    raise_fd_limit(args.clients + 256)
    if args.loop in ("auto", "uvloop"):
        try:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            if args.loop == "uvloop":
                print("loadtest: uvloop is not installed (pip install 'pychat[speed]')",
                      file=sys.stderr)
                return 2

    def report(summary: Summary, latencies: Latencies) -> None:
        """The summary first, then the plot (which may take seconds, or fail)."""
        print(summary.to_json() if args.json else table(summary), flush=True)
        if args.plot:
            try:
                plot(latencies, args.plot, plot_title(args))
            except Exception as e:  # the summary is out: a failed plot is told, not raised
                print(f"loadtest: --plot {args.plot}: {e}", file=sys.stderr)
            else:
                print(f"loadtest: plot written to {args.plot}", file=sys.stderr)

    summary = asyncio.run(run_load(args, tls, report))
    return 0 if summary.lost == 0 and summary.disconnected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
