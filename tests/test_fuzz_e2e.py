"""Socket-level fuzzing against `pychat serve`, with a watcher pair that must lose nothing.

Several fuzzing clients open short sessions, one after another, and send random and mutated
lines: mutations of every command (bytes flipped, inserted or cut), invalid UTF-8, NULs and
other controls, ANSI escapes, huge lines, random bytes, all cut into chunks at random points (so
half lines are the rule); each session ends a random way: FIN, an abrupt reset (SO_LINGER 0),
`/quit`, or a half line left hanging until the slowloris guard closes it. Meanwhile two watchers
chat with numbered lines, each sending its next line once the previous one came back.

Afterwards: every process of the serve is up with the pids it started with, nothing logged a bug,
and each watcher received every numbered line of the other, in order. The randomness is seeded
(``PYCHAT_FUZZ_SEED``, printed on failure) so a failure reproduces; the figures are printed
(``pytest -s``).
"""

from __future__ import annotations

import os
import random
import re
import socket
import struct
import threading
import time

import pytest

from support.procs import start_serve, web_port

from .test_serve_e2e import child_pids, gone

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SEED = int(os.environ.get("PYCHAT_FUZZ_SEED", "20261126"))
FUZZERS = 4
FUZZ_SECONDS = float(os.environ.get("PYCHAT_FUZZ_SECONDS", "10"))
WAIT = 15.0

CORPUS = [
    "hello world", "/nick fuzzer", "/nick Fuzz_1", "/nick " + "n" * 30, "/nick 123456",
    "/join #fuzz", "/join #lobby", "/join #" + "r" * 40, "/join lobby", "/msg 123456 hi",
    "/w nobody x", "/msg", "/users", "/rooms", "/history 5", "/history 99999999999999999999",
    "/history -1", "/cap time", "/cap nope", "/ping tok", "/ping", "/help", "//slash", "/",
    "//", " ", "\t", "/NICK Upper", "é中😀 unicode", "a\tb",
]
SPECIALS = [b"\x00", b"\x00" * 16, b"\x1b[31m", b"\x1b]0;title\x07", b"\x1b]8;;http://x\x1b\\",
            b"\x9b2J", b"\xc2\x9b", b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80", b"\r", b"\x07", b"\x7f", b"\xef\xbb\xbf", b"\x1bP", b"%s%n",
            b"\x08" * 8, b"\xe2\x80\xae", b"\x1b", b"\\", b"\r\r"]


def mutate(rng: random.Random, line: bytes) -> bytes:
    b = bytearray(line)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        at = rng.randint(0, len(b))
        if op < 0.3 and b:
            b[rng.randrange(len(b))] = rng.getrandbits(8)
        elif op < 0.65:
            b[at:at] = rng.choice(SPECIALS)
        elif op < 0.8:
            del b[at:at + rng.randint(1, 8)]
        else:
            b[at:at] = b[max(0, at - 8):at] * rng.randint(1, 5)
    return bytes(b)


def fuzz_line(rng: random.Random, stats: dict) -> bytes:
    """One line without its newline."""
    r = rng.random()
    if r < 0.45:
        stats["mutated"] += 1
        return mutate(rng, rng.choice(CORPUS).encode())
    if r < 0.7:
        stats["random"] += 1
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))).replace(b"\n", b"")
    if r < 0.85:
        stats["plain"] += 1
        return rng.choice(CORPUS).encode()
    if r < 0.97:
        stats["specials"] += 1
        return b"".join(rng.choice(SPECIALS) for _ in range(rng.randint(1, 20)))
    stats["huge"] += 1
    size = rng.choice([4097, 5000, 65536, 300_000, 1_500_000])
    return (rng.choice([b"A", b"\xff", b"/msg x ", b"\x1b["]) * size)[:size]


def drain(sock: socket.socket) -> None:
    """Read whatever the server sent, without waiting: a fuzzer is hostile, not stalled."""
    timeout = sock.gettimeout()
    sock.settimeout(0)  # with a timeout set, recv would wait for data first
    try:
        while sock.recv(1 << 16):
            pass
    except (BlockingIOError, InterruptedError):
        pass
    finally:
        sock.settimeout(timeout)


def send_in_pieces(rng: random.Random, sock: socket.socket, data: bytes) -> None:
    """``data`` cut at random points, what the server sends read (never waited for) after each
    piece."""
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 7, 100, 1500, 65536])
        sock.sendall(data[pos:pos + step])
        pos += step
        drain(sock)


def fuzz_session(rng: random.Random, port: int, stats: dict) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    stats["sessions"] += 1
    try:
        data = b"".join(fuzz_line(rng, stats) + rng.choice([b"\n", b"\r\n", b"\n", b"\n"])
                        for _ in range(rng.randint(10, 200)))
        stats["lines"] += data.count(b"\n")
        stats["bytes"] += len(data)
        send_in_pieces(rng, sock, data)  # half lines in most sends
        end = rng.random()
        if end < 0.35:
            stats["end_reset"] += 1
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif end < 0.55:
            stats["end_half_line_reset"] += 1
            sock.sendall(fuzz_line(rng, stats)[:50] or b"x")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif end < 0.75:
            stats["end_quit"] += 1
            sock.sendall(b"/quit fuzzed\n")
        elif end < 0.8:  # a half line left hanging: the slowloris guard must close it
            stats["end_hanging"] += 1
            sock.sendall(b"never finished")
            sock.settimeout(WAIT)
            while sock.recv(1 << 16):
                pass
        else:
            stats["end_fin"] += 1
    except OSError:
        stats["closed_by_server"] += 1  # e.g. after a /quit in the fuzz, or a reset
    finally:
        sock.close()


# ---- the web door: HTTP heads and WebSocket frames -------------------------------------------

HTTP_CORPUS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD / HTTP/1.0\r\n\r\n", b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /../../etc/passwd HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nIf-None-Match: \"x\"\r\nConnection: close\r\n\r\n",
]
HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def ws_frame(rng: random.Random, payload: bytes, opcode: int = 1, fin: bool = True,
             masked: bool = True) -> bytes:
    """A client frame (RFC 6455 5.2), masked unless told otherwise."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = rng.randbytes(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def fuzz_frame(rng: random.Random, stats: dict) -> bytes:
    r = rng.random()
    if r < 0.5:
        stats["text"] += 1
        return ws_frame(rng, fuzz_line(rng, stats)[:70_000])
    if r < 0.6:
        stats["binary"] += 1
        return ws_frame(rng, fuzz_line(rng, stats)[:70_000], opcode=2)
    if r < 0.7:
        stats["fragmented"] += 1
        parts = [fuzz_line(rng, stats)[:5000] for _ in range(rng.randint(2, 5))]
        return b"".join(ws_frame(rng, part, opcode=1 if i == 0 else 0,
                                 fin=i == len(parts) - 1) for i, part in enumerate(parts))
    if r < 0.8:
        stats["control"] += 1
        return ws_frame(rng, rng.randbytes(rng.choice([0, 5, 125, 126, 300])),
                        opcode=rng.choice([9, 10, 8]))
    stats["broken"] += 1
    choice = rng.random()
    if choice < 0.3:
        return ws_frame(rng, b"unmasked", masked=False)
    if choice < 0.6:
        return ws_frame(rng, b"odd opcode", opcode=rng.choice([3, 4, 5, 6, 7, 11, 12, 15]))
    if choice < 0.8:
        return ws_frame(rng, b"", opcode=0)  # a continuation of nothing
    return rng.randbytes(rng.randint(1, 64))


def fuzz_web_session(rng: random.Random, port: int, stats: dict) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    stats["sessions"] += 1
    try:
        if rng.random() < 0.25:  # HTTP only
            stats["http"] += 1
            data = b"".join(mutate(rng, rng.choice(HTTP_CORPUS)) if rng.random() < 0.7
                            else rng.choice(HTTP_CORPUS) for _ in range(rng.randint(1, 10)))
        else:
            data = (mutate(rng, HANDSHAKE) if rng.random() < 0.1 else HANDSHAKE) + b"".join(
                fuzz_frame(rng, stats) for _ in range(rng.randint(5, 100)))
        stats["bytes"] += len(data)
        send_in_pieces(rng, sock, data)  # half frames in most sends
        if rng.random() < 0.4:
            stats["end_reset"] += 1
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            stats["end_fin"] += 1
    except OSError:
        stats["closed_by_server"] += 1  # a protocol error closes the connection
    finally:
        sock.close()


def fuzzer(seed: int, port: int, deadline: float, stats: dict, errors: list,
           session=fuzz_session) -> None:
    rng = random.Random(seed)
    try:
        while time.monotonic() < deadline:
            session(rng, port, stats)
    except Exception as e:
        errors.append(f"fuzzer {seed}: {e!r}")


class Watcher:
    """A plain client whose lines are read by a thread of its own, into ``lines``."""

    def __init__(self, port: int, tag: str):
        self.tag = tag
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.closed = False
        self.sent = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.uid = self.wait(lambda ln: ln.startswith("ID:"))[3:]

    def _read(self) -> None:
        buf = b""
        try:
            while chunk := self.sock.recv(1 << 16):
                buf += chunk
                *done, buf = buf.split(b"\n")
                with self.cond:
                    self.lines += [d.decode("utf-8", "replace") for d in done]
                    self.cond.notify_all()
        except OSError:
            pass
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait(self, pred, start: int = 0, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                for k in range(i, len(self.lines)):
                    if pred(self.lines[k]):
                        return self.lines[k]
                i = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise AssertionError(f"watcher {self.tag}: no expected line "
                                         f"(closed={self.closed}, seed {SEED})")
                self.cond.wait(left)

    def chat(self, until: threading.Event, errors: list) -> None:
        """Numbered lines, each after the previous one came back."""
        try:
            while not until.is_set():
                mark = len(self.lines)
                text = f"{self.tag}-{self.sent}"
                self.sock.sendall(text.encode() + b"\n")
                self.wait(lambda ln, want=f"{self.uid}: {text}": ln == want, start=mark)
                self.sent += 1
        except Exception as e:
            errors.append(f"watcher {self.tag}: {e!r}")

    def numbers_from(self, other: Watcher) -> list[int]:
        rx = re.compile(rf"{other.uid}: {other.tag}-(\d+)\Z")
        with self.cond:
            return [int(m.group(1)) for ln in self.lines if (m := rx.match(ln))]


@pytest.mark.parametrize("door", ["line", "web"])
def test_fuzzing_clients_crash_nothing_and_the_watchers_lose_nothing(procs, door):
    """``line``: the fuzzers on the line door; ``web``: on the web door (HTTP heads and
    WebSocket frames, mutated, fragmented, broken), the watchers on the line door."""
    p, port = start_serve("--partial-line-timeout", "1")
    procs.append(p)
    target, session = (port, fuzz_session) if door == "line" else (web_port(p), fuzz_web_session)
    pids = child_pids(p)
    assert set(pids) == {"router", "acceptor 1", "acceptor 2"}
    a, b = Watcher(port, "a"), Watcher(port, "b")
    errors: list[str] = []
    stop = threading.Event()
    chatters = [threading.Thread(target=w.chat, args=(stop, errors)) for w in (a, b)]
    stats = [dict.fromkeys(("sessions", "lines", "bytes", "mutated", "random", "plain",
                            "specials", "huge", "end_reset", "end_half_line_reset", "end_quit",
                            "end_hanging", "end_fin", "closed_by_server", "http", "text",
                            "binary", "fragmented", "control", "broken"), 0)
             for _ in range(FUZZERS)]
    began = time.monotonic()
    deadline = began + FUZZ_SECONDS
    fuzzers = [threading.Thread(target=fuzzer, args=(SEED + i, target, deadline, stats[i], errors,
                                                     session))
               for i in range(FUZZERS)]
    for t in chatters + fuzzers:
        t.start()
    for t in fuzzers:
        t.join()
    stop.set()
    for t in chatters:
        t.join()
    took = time.monotonic() - began
    assert not errors, f"seed {SEED}: {errors}"

    # each watcher's last line reached the other; then every one of them, in order
    a.wait(lambda ln: ln == f"{b.uid}: b-{b.sent - 1}")
    b.wait(lambda ln: ln == f"{a.uid}: a-{a.sent - 1}")
    assert b.numbers_from(a) == list(range(a.sent)), f"seed {SEED}"
    assert a.numbers_from(b) == list(range(b.sent)), f"seed {SEED}"

    # every process is up, with the pids it started with; nothing logged a bug
    assert child_pids(p) == pids and p.alive(), f"seed {SEED}"
    assert not [pid for pid in pids.values() if gone(pid)]
    log = "\n".join(p.output)
    assert not re.search(r"died|Traceback|bug while|exception", log, re.I), log[-3000:]
    # and the server still serves newcomers
    c = Watcher(port, "c")
    c.sock.sendall(b"/ping after\n")
    c.wait(lambda ln: ln == "PONG after")
    for w in (a, b, c):
        w.sock.close()

    total = {k: sum(s[k] for s in stats) for k in stats[0]}
    print(f"\nfuzz, {door} door (seed {SEED}, {FUZZERS} fuzzers, {took:.1f}s): "
          f"{total['lines']} lines "
          f"({total['bytes'] / 1e6:.1f} MB) in {total['sessions']} sessions: {total}; "
          f"watchers: a sent {a.sent}, b sent {b.sent}, all received in order, among "
          f"{len(a.lines)} and {len(b.lines)} lines each received in all")
    assert a.sent >= 20 and b.sent >= 20, total
    if door == "line":
        assert total["lines"] >= 1000, total
    else:
        assert total["text"] >= 1000 and total["http"] >= 10 and total["broken"] >= 20, total
