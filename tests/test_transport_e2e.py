"""End to end: the transport rules of PROTOCOL.md ("Transport") against ``pychat serve``.

What this file covers, with real processes on loopback sockets (127.0.0.1 only):
- the original PyChat client, which ends no message with ``\\n`` and sends one message per
  ``sendall``: its first single ``recv`` holds the Welcome, ID and USERS lines (the handshake in
  one write); until its first ``\\n`` a piece idle for 0.5 s is a line (two pieces less than
  0.5 s apart are one line, joined as sent); ``--piece-idle 0`` turns this off; after a first
  ``\\n`` a piece waits for its newline however long it sits;
- half-close (EOF on the client's sending side): from ``nc -N`` (netcat-openbsd), ``socat -t 5``
  and a Python socket's ``shutdown(SHUT_WR)``: the last unfinished piece is a line, every line
  already read is served (also when the flood limit has slowed the client), every reply due is
  sent, in order, then the server closes;
- reply order: local replies (``OK cap``, ``PONG``, ``HELP:``, ``ERROR:``, ``BYE``) come after the
  results of every command sent before them, with everything pipelined in one packet (repeated on
  fresh connections, since ordering bugs depend on timing).

Waiting is always for a line (or EOF) with a deadline. The only sleeps are the conditions under
test (time for a piece to sit idle, or a gap between two pieces); each is explained where it is
and paired with a barrier (a marker line from another connection, or the line that completes the
piece) showing the server was live and had not taken the piece as a line.

The tests that need an exact ``USERS:`` list use the per-test ``serve``, so the lobby holds only
their own clients.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import uuid

import pytest

from support.client import Connection
from support.procs import start_serve

pytestmark = pytest.mark.e2e

WELCOME = "Welcome to PyChat Server!"
HANDSHAKE_RE = re.compile(rb"Welcome to PyChat Server!\nID:(\d{6})\nUSERS:([\d,]+)\n")
TAGGED_RE = re.compile(r"@time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (.*)\Z", re.S)
PIECE_IDLE = 0.5  # the default --piece-idle
# Long enough past PIECE_IDLE that a server taking the piece as a line would have done so (and
# its echo would have been routed well before the barrier that follows).
WELL_PAST_PIECE_IDLE = 1.5

needs_nc = pytest.mark.skipif(
    shutil.which("nc") is None,
    reason="missing nc (Debian: netcat-openbsd, for nc -N; .ci/run installs it)")
needs_socat = pytest.mark.skipif(
    shutil.which("socat") is None, reason="missing socat (Debian: socat; .ci/run installs it)")


# ---- helpers ------------------------------------------------------------------------------------

def unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:10]


class Raw:
    """A plain socket, as the original client uses one: the server's bytes exactly as sent."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        # each sendall leaves at once as its own segment (the pieces under test stay apart)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.data = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_once(self, timeout: float = 10.0) -> bytes:
        """One single ``recv``, as a client that reads once."""
        self.sock.settimeout(timeout)
        chunk = self.sock.recv(65536)
        self.data += chunk
        return chunk

    def _more(self, deadline: float, waiting_for: str) -> None:
        left = deadline - time.monotonic()
        assert left > 0, f"no {waiting_for} in time; got {self.data!r}"
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no {waiting_for} in time; got {self.data!r}") from None
        except ConnectionResetError:
            raise AssertionError(f"connection reset before {waiting_for}; "
                                 f"got {self.data!r}") from None
        if not chunk:
            self.eof = True
        self.data += chunk

    def read_until(self, needle: bytes, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.data:
            assert not self.eof, f"closed before {needle!r}; got {self.data!r}"
            self._more(deadline, repr(needle))
        return self.data

    def read_to_eof(self, timeout: float = 20.0) -> bytes:
        """Everything until the server closes (a clean EOF, not a reset)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._more(deadline, "EOF")
        return self.data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw():
    opened: list[Raw] = []

    def make(port: int) -> Raw:
        r = Raw(port)
        opened.append(r)
        return r

    yield make
    for r in opened:
        r.close()


def read_handshake(a: Raw) -> str:
    """Read until the Welcome, ID and USERS lines are in; returns the uid."""
    deadline = time.monotonic() + 10
    while not HANDSHAKE_RE.match(a.data):
        assert not a.eof, f"closed before the handshake; got {a.data!r}"
        a._more(deadline, "handshake")
    return handshake_uid(a.data)


def handshake_uid(data: bytes) -> str:
    m = HANDSHAKE_RE.match(data)
    assert m, f"no Welcome, ID, USERS at the start of {data!r}"
    return m.group(1).decode()


def alone(uid: str) -> bytes:
    """The handshake of a client alone in the lobby."""
    return f"{WELCOME}\nID:{uid}\nUSERS:{uid}\n".encode()


def lines_of(data: bytes) -> list[str]:
    text = data.decode("utf-8")
    assert text.endswith("\n"), f"output does not end with a newline: {text!r}"
    return text[:-1].split("\n")


def observer(connect, port: int) -> Connection:
    c = connect(port)
    c.handshake()
    return c


def chat(line: str) -> bool:
    return re.match(r"\d{6}: ", line) is not None


def run_tool(argv: list[str], data: bytes, timeout: float = 20.0) -> tuple[list[str], float]:
    """Run a client tool (nc, socat) with ``data`` on its stdin; returns its output lines and how
    long it ran. It must exit 0 on its own (the server closed) within ``timeout``."""
    t0 = time.monotonic()
    done = subprocess.run(argv, input=data, capture_output=True, timeout=timeout)
    took = time.monotonic() - t0
    assert done.returncode == 0, (argv, done.returncode, done.stdout, done.stderr)
    return lines_of(done.stdout), took


# ---- the original PyChat client: no newline, one message per sendall ----------------------------

def test_original_client_reads_once_then_sends_messages_without_newline(serve, raw, connect):
    b = observer(connect, serve)  # a second client in #lobby
    a = raw(serve)
    # The handshake's first lines reach the client in one write: a client that reads once (one
    # recv) gets all three.
    first = a.recv_once()
    uid = handshake_uid(first)
    assert first == f"{WELCOME}\nID:{uid}\nUSERS:{b.uid},{uid}\n".encode()
    assert b.read_line() == f"USERS:{b.uid},{uid}"

    mark = len(a.data)
    t0 = time.monotonic()
    a.send(b"hello")  # exactly what the original client does: no newline
    a.read_until(f"{uid}: hello\n".encode())
    took = time.monotonic() - t0
    assert a.data[mark:] == f"{uid}: hello\n".encode()
    # the piece became a line because it sat idle for 0.5 s, not before
    assert took >= PIECE_IDLE - 0.05, f"piece taken as a line after {took:.3f}s, before 0.5 s"
    assert b.read_line() == f"{uid}: hello"

    mark = len(a.data)
    a.send(b"second message")  # after the first echo arrived, as a user types the next one
    a.read_until(f"{uid}: second message\n".encode())
    assert a.data[mark:] == f"{uid}: second message\n".encode()
    assert b.read_line() == f"{uid}: second message"

    # commands work the same way for the original client
    mark = len(a.data)
    a.send(b"/ping orig")
    a.read_until(b"PONG orig\n")
    assert a.data[mark:] == b"PONG orig\n"


def test_original_client_pieces_less_than_half_a_second_apart_are_one_line(serve, raw, connect):
    """The rule: the idle time counts from the piece's last byte, so pieces sent less than 0.5 s
    apart are one line, their bytes joined as sent (no separator added); the next piece after the
    line was taken starts a new line."""
    b = observer(connect, serve)
    for _attempt in range(3):
        a = raw(serve)
        uid = read_handshake(a)
        b.expect(lambda line, uid=uid: line.startswith("USERS:") and line.endswith(uid))
        mark = len(a.data)
        t0 = time.monotonic()
        a.send(b"part one, ")
        # The gap between the two pieces is the condition under test: long enough that the server
        # reads them apart (two segments: TCP_NODELAY), shorter than the 0.5 s idle time.
        time.sleep(0.1)
        a.send(b"part two")
        gap = time.monotonic() - t0
        if gap < PIECE_IDLE - 0.15:  # else this machine stalled us: try again on a new client
            break
        a.close()
    else:
        pytest.fail(f"could not send two pieces less than 0.35 s apart (last gap {gap:.2f}s)")
    joined = f"{uid}: part one, part two"
    a.read_until(f"{joined}\n".encode())
    assert a.data[mark:] == f"{joined}\n".encode(), "two pieces < 0.5 s apart must be one line"
    # (an abandoned attempt's pieces become its own line when it closes: skip other uids)
    def mine(line: str) -> bool:
        return line.startswith(f"{uid}: ")

    assert b.expect(mine) == joined

    mark = len(a.data)
    a.send(b"part three")
    a.read_until(f"{uid}: part three\n".encode())
    assert a.data[mark:] == f"{uid}: part three\n".encode()
    assert b.expect(mine) == f"{uid}: part three"


def test_piece_idle_0_a_newline_less_piece_is_never_a_line(procs, raw, connect):
    p, port = start_serve("--piece-idle", "0")
    procs.append(p)
    b = observer(connect, port)
    a = raw(port)
    uid = read_handshake(a)
    b.expect(f"USERS:{b.uid},{uid}")

    a.send(b"never a line")
    # Waiting is the condition under test: with --piece-idle 0 the piece must still not be a line
    # well after the default 0.5 s. The barrier below shows the server was live meanwhile.
    time.sleep(WELL_PAST_PIECE_IDLE)
    b.send("barrier one")
    # had the piece been taken as a line, its echo (routed a second earlier) would come first
    assert b.expect(chat) == f"{b.uid}: barrier one"
    a.read_until(f"{b.uid}: barrier one\n".encode())
    assert f"{uid}: ".encode() not in a.data, a.data

    a.send(b"\n")  # the newline ends the held piece: it was kept, not dropped
    a.read_until(f"{uid}: never a line\n".encode())
    assert b.expect(chat) == f"{uid}: never a line"


@pytest.mark.parametrize("together", [False, True], ids=["piece-after-line", "same-packet"])
def test_after_a_first_newline_a_piece_waits_for_its_newline(serve, raw, connect, together):
    b = observer(connect, serve)
    a = raw(serve)
    uid = read_handshake(a)
    b.expect(f"USERS:{b.uid},{uid}")

    if together:
        a.send(b"first\ndangling")
        a.read_until(f"{uid}: first\n".encode())
    else:
        a.send(b"first\n")
        a.read_until(f"{uid}: first\n".encode())
        a.send(b"dangling")
    assert b.expect(chat) == f"{uid}: first"
    # Waiting is the condition under test: after the first newline, a piece idle well past 0.5 s
    # is still not a line. The barrier below shows the server was live meanwhile.
    time.sleep(WELL_PAST_PIECE_IDLE)
    b.send("barrier two")
    # had the piece been taken as a line, its echo (routed a second earlier) would come first
    assert b.expect(chat) == f"{b.uid}: barrier two"
    a.read_until(f"{b.uid}: barrier two\n".encode())
    assert a.data.count(f"{uid}: ".encode()) == 1, a.data  # only "first"

    mark = len(a.data)
    a.send(b" end\n")  # completes the held piece: one line, as sent
    a.read_until(f"{uid}: dangling end\n".encode())
    assert a.data[mark:] == f"{uid}: dangling end\n".encode()
    assert b.expect(chat) == f"{uid}: dangling end"


# ---- half-close: nc -N, socat, a Python socket ---------------------------------------------------

@needs_nc
def test_nc_N_one_line_gets_handshake_echo_and_exits(serve):
    out, _ = run_tool(["nc", "-N", "127.0.0.1", str(serve)], b"hello\n")
    assert len(out) == 4, out
    uid = out[1][3:]
    assert out == [WELCOME, f"ID:{uid}", f"USERS:{uid}", f"{uid}: hello"]
    assert re.fullmatch(r"\d{6}", uid), out


@needs_nc
def test_nc_N_several_lines_every_reply_in_order(serve):
    name = unique("nc_")
    data = f"hello\n/nick {name}\n/users\n/ping p1\n/rooms\n/nosuch\nlast\n".encode()
    out, _ = run_tool(["nc", "-N", "127.0.0.1", str(serve)], data)
    uid = out[1][3:] if len(out) > 1 else "?"
    assert out == [
        WELCOME, f"ID:{uid}", f"USERS:{uid}",
        f"{uid}: hello",
        f"OK nick {name}", f"NAMES:{uid}={name}",
        f"USERS:{uid}", f"NAMES:{uid}={name}",
        "PONG p1",
        "ROOMS:#lobby=1",
        "ERROR: unknown command /nosuch",
        f"{uid}: last",
    ]


@needs_socat
def test_socat_last_piece_without_newline_is_a_line_at_eof(serve):
    out, took = run_tool(["socat", "-t", "5", "-", f"TCP:127.0.0.1:{serve}"],
                         b"hello\nlast without newline")
    uid = out[1][3:] if len(out) > 1 else "?"
    assert out == [WELCOME, f"ID:{uid}", f"USERS:{uid}",
                   f"{uid}: hello", f"{uid}: last without newline"]
    # socat gives up 5 s after its EOF; it ended sooner because the server closed
    assert took < 4.5, f"socat ran {took:.1f}s: the server did not close after answering"


def test_half_close_serves_lines_replies_and_last_piece_then_eof(serve, raw):
    a = raw(serve)
    a.send(b"a\n/users\n/ping p\nlast piece")
    a.sock.shutdown(socket.SHUT_WR)
    data = a.read_to_eof()
    uid = handshake_uid(data)
    assert data == alone(uid) + (
        f"{uid}: a\n"
        f"USERS:{uid}\nNAMES:\n"
        "PONG p\n"
        f"{uid}: last piece\n").encode()


def test_half_close_of_a_flooder_serves_all_300_lines_then_eof(serve, raw):
    """Burst 100 commands, then 50/s: the 200 past the burst take about 4 s."""
    a = raw(serve)
    a.send(b"".join(b"flood %03d\n" % i for i in range(300)))
    t0 = time.monotonic()
    a.sock.shutdown(socket.SHUT_WR)
    data = a.read_to_eof(timeout=60)
    took = time.monotonic() - t0
    uid = handshake_uid(data)
    assert data == alone(uid) + b"".join(f"{uid}: flood {i:03d}\n".encode() for i in range(300))
    assert took >= 3.0, f"300 lines in {took:.1f}s: the flood limit did not slow them"


def test_half_close_of_a_flooder_with_pings_keeps_reply_order(serve, raw):
    """Pings take no flood token but still wait for the results of the lines before them."""
    a = raw(serve)
    sent, want = [], []
    for i in range(200):
        sent.append(f"m{i}")
        want.append("{uid}: " + f"m{i}")
        if i % 20 == 19:
            sent.append(f"/ping {i}")
            want.append(f"PONG {i}")
    a.send("".join(s + "\n" for s in sent).encode())
    a.sock.shutdown(socket.SHUT_WR)
    data = a.read_to_eof(timeout=60)
    uid = handshake_uid(data)
    assert lines_of(data)[3:] == [w.replace("{uid}", uid) for w in want]


# ---- replies in command order, everything pipelined in one packet -------------------------------

def test_pipelined_commands_in_one_packet_reply_in_order(serve, raw):
    for _ in range(10):
        r = unique("")
        name, room = f"carol_{r}", f"#room-{r}"
        a = raw(serve)
        a.send((f"/cap time\n/nick {name}\n/join {room}\nhello\n/users\n/ping mark\n/rooms\n"
                "/nosuch\n/quit\n").encode())
        data = a.read_to_eof()
        a.close()
        uid = handshake_uid(data)
        out = lines_of(data)
        # every earlier client moved to its own room before its BYE, so the lobby holds only us
        # (its USERS is exact); an earlier client's room may still be listed if the router has not
        # yet handled that client's departure, so ROOMS is checked for ours only
        tagged = TAGGED_RE.match(out[9]) if len(out) > 9 else None
        rooms = out[13] if len(out) > 13 else ""
        assert out[:9] == [WELCOME, f"ID:{uid}", f"USERS:{uid}",
                           "OK cap time",
                           f"OK nick {name}", f"NAMES:{uid}={name}",
                           f"ROOM:{room}", f"USERS:{uid}", f"NAMES:{uid}={name}"], out
        assert tagged and tagged.group(1) == f"{uid}: hello", out
        assert out[10:13] == [f"USERS:{uid}", f"NAMES:{uid}={name}", "PONG mark"], out
        assert rooms.startswith("ROOMS:") and f"{room}=1" in rooms[6:].split(","), out
        assert out[14:] == ["ERROR: unknown command /nosuch", "BYE"], out


def test_local_replies_between_routed_commands_in_one_packet_keep_order(serve, raw):
    for _ in range(10):
        room = "#" + unique("r")
        a = raw(serve)
        a.send((f"/join {room}\none\n/ping 1\ntwo\n/help\nthree\n/bogus\n/msg\nfour\n"
                "/ping 2\n/users\n/quit\n").encode())
        data = a.read_to_eof()
        a.close()
        uid = handshake_uid(data)
        out = lines_of(data)
        helps = [line for line in out if line.startswith("HELP:")]
        assert len(helps) >= 5, out
        # the HELP block stands for itself once, where it comes
        first_help = out.index(helps[0])
        assert out[first_help:first_help + len(helps)] == helps, out
        folded = out[:first_help] + ["HELP"] + out[first_help + len(helps):]
        assert folded == [
            WELCOME, f"ID:{uid}", f"USERS:{uid}",
            f"ROOM:{room}", f"USERS:{uid}", "NAMES:",
            f"{uid}: one", "PONG 1",
            f"{uid}: two", "HELP",
            f"{uid}: three", "ERROR: unknown command /bogus",
            "ERROR: usage: /msg <target> <text>",
            f"{uid}: four", "PONG 2",
            f"USERS:{uid}", "NAMES:",
            "BYE",
        ], out


def test_handshake_reaches_each_new_client_in_one_read(serve, raw):
    for _ in range(3):
        a = raw(serve)
        first = a.recv_once()
        uid = handshake_uid(first)
        assert first.startswith(f"{WELCOME}\nID:{uid}\nUSERS:".encode()), first
        assert first.endswith(f"{uid}\n".encode()) and first.count(b"\n") == 3, first
