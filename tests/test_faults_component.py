"""Faults at one acceptor, with the test playing the router: idle clients, unfinished lines
(slowloris), connections per address, TCP keepalive on client sockets.

The real acceptor process and real TCP clients; the fake router from
``test_acceptor_component``. The acceptor's sweep runs once a second, so with a 1 s limit a client
is closed between 1 and about 2 s after its deadline started. Pacing (a trickle of bytes) follows
the fake router's 0.2 s heartbeats; waiting is for a line or a bus message with a deadline.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time

import pytest

from pychat.acceptor.limits import Limits, exempt_addresses
from pychat.wire import bus
from pychat.wire.commands import Say
from pychat.wire.framing import LineBuffer
from support.client import Connection
from support.fake_router import WAIT, admit, connect, is_close, local_reply

pytestmark = pytest.mark.timeout(90)


def tick(acc) -> None:
    """Wait for the acceptor's next heartbeat (every 0.2 s): the test's clock."""
    acc.fake.expect(lambda m: isinstance(m, bus.Heartbeat), timeout=5)


def closed_by_router_view(acc, conn: int) -> bus.Close | None:
    acc.fake.pump(0)
    closes = [m for m in acc.fake.since(0) if isinstance(m, bus.Close) and m.conn == conn]
    return closes[0] if closes else None


# ---- pure -------------------------------------------------------------------------------------

def test_line_buffer_knows_when_it_is_inside_a_line():
    lb = LineBuffer(8)
    assert not lb.partial
    lb.feed(b"ab")
    assert lb.partial
    lb.feed(b"c\n")
    assert not lb.partial
    lb.feed(b"x" * 20)  # over-long: reported, then discarded up to its newline
    assert lb.partial and lb.pending == 0
    lb.feed(b"yyy\n")
    assert not lb.partial


@pytest.mark.parametrize("field, value", [
    ("idle_timeout", -1), ("idle_timeout", float("nan")), ("partial_line_timeout", float("inf")),
    ("max_per_address", 0), ("keepalive_idle", 0), ("keepalive_interval", 0),
    ("keepalive_count", 0)])
def test_fault_limits_are_checked(field, value):
    with pytest.raises(ValueError):
        Limits(**{field: value}).check()


def test_per_address_exemptions():
    loopback = exempt_addresses("loopback")
    assert loopback("127.0.0.1") and loopback("127.0.0.2") and loopback("::1")
    assert loopback("::ffff:127.0.0.1") and not loopback("10.0.0.1") and not loopback("?")
    listed = exempt_addresses("10.0.0.1, 2001:db8::1")
    assert listed("10.0.0.1") and listed("2001:db8::1") and not listed("127.0.0.1")
    assert not exempt_addresses("none")("127.0.0.1") and not exempt_addresses("")("127.0.0.1")
    with pytest.raises(ValueError):
        Limits(per_address_exempt="10.0.0.300").check()


def test_max_per_address_leaves_loopback_alone_by_default(start, clients):
    acc = start("--max-per-address", "2")
    for i in range(4):
        c, _ = connect(acc, clients, welcome=True)
        c.send(f"/ping {i}")
        assert local_reply(acc, c) == f"PONG {i}"


def test_fault_limit_defaults_are_safe():
    d = Limits()
    d.check()
    assert d.idle_timeout == 0 and d.partial_line_timeout == 30 and d.max_per_address == 64
    Limits(idle_timeout=0, partial_line_timeout=0).check()  # 0: off


# ---- idle -------------------------------------------------------------------------------------

def test_idle_client_gets_error_and_is_closed_while_a_talker_stays(start, clients):
    acc = start("--idle-timeout", "1")
    began = time.monotonic()  # before the connection: its idle clock starts after this
    idle, iconn = connect(acc, clients)
    admit(acc, idle, iconn, "111111")
    talker, tconn = connect(acc, clients)
    admit(acc, talker, tconn, "222222")
    n = 0
    while (closed := closed_by_router_view(acc, iconn)) is None:
        assert time.monotonic() - began < WAIT, "the idle client was never closed"
        talker.send(f"/ping {n}")  # the talker is never silent for long
        assert local_reply(acc, talker) == f"PONG {n}"
        tick(acc)
        n += 1
    took = time.monotonic() - began
    assert closed.reason == "idle timeout"
    assert idle.read_until_closed() == ["ERROR: idle timeout (nothing received in 1 s)"]
    assert 1.0 <= took <= 6.0, took
    assert closed_by_router_view(acc, tconn) is None
    talker.send("still here")
    acc.fake.expect(lambda m: m == bus.Cmd(tconn, Say("still here")))
    acc.proc.wait_for(rf"conn {iconn} \(\S+\) closed: idle timeout")


def test_idle_timeout_zero_is_off(start, clients):
    acc = start("--idle-timeout", "0", "--partial-line-timeout", "0")
    c, conn = connect(acc, clients)
    admit(acc, c, conn, "111111")
    for _ in range(12):  # 2.4 s of silence; the sweep has run twice
        tick(acc)
    c.send("/ping quiet")
    assert local_reply(acc, c) == "PONG quiet"


# ---- slowloris --------------------------------------------------------------------------------

def test_an_unfinished_line_trickled_in_is_closed_with_error(start, clients):
    acc = start("--partial-line-timeout", "1", "--idle-timeout", "30")
    loris, lconn = connect(acc, clients)
    admit(acc, loris, lconn, "111111")
    steady, sconn = connect(acc, clients)
    admit(acc, steady, sconn, "222222")
    loris.send_raw(b"GET / HTTP/1.1 ")
    began = time.monotonic()
    n = 0
    while (closed := closed_by_router_view(acc, lconn)) is None:
        assert time.monotonic() - began < WAIT, "the slowloris was never closed"
        try:
            loris.send_raw(b"x")  # a byte each tick: never idle, never a whole line
        except OSError:
            pass  # closed meanwhile
        steady.send(f"line {n}")  # a whole line each tick: fine however slow
        acc.fake.expect(lambda m, n=n: m == bus.Cmd(sconn, Say(f"line {n}")))
        tick(acc)
        n += 1
    took = time.monotonic() - began
    assert closed.reason == "unfinished line"
    assert loris.read_until_closed() == ["ERROR: line not finished in 1 s"]
    assert 0.95 <= took <= 6.0, took  # (the server's clock started as the bytes arrived)
    assert n >= 2  # the steady client sent whole lines over the same time and stays
    steady.send("/ping ok")
    assert local_reply(acc, steady) == "PONG ok"
    # nothing of the unfinished line ever reached the router
    assert not [m for m in acc.fake.since(0) if isinstance(m, bus.Cmd) and m.conn == lconn]


def test_an_endless_over_long_line_counts_as_unfinished(start, clients):
    acc = start("--partial-line-timeout", "1", "--max-line", "100")
    c, conn = connect(acc, clients)
    admit(acc, c, conn, "111111")
    began = time.monotonic()
    while closed_by_router_view(acc, conn) is None:
        assert time.monotonic() - began < WAIT
        try:
            c.send_raw(b"z" * 500)  # discarded as it comes, but never ends
        except OSError:
            break
        tick(acc)
    # the too-long error as soon as it was known, then the close for the line never ended
    assert c.read_until_closed() == ["ERROR: line too long (max 100 bytes)",
                                     "ERROR: line not finished in 1 s"]


def test_a_flooder_paused_by_us_is_not_idle_or_slowloris(start, fake, clients):
    """Reading is paused while the flood bucket refills: that silence is ours, not the
    client's. 30 lines at 5/s (burst 5) take 5 s to be read, far past both 1 s limits."""
    acc = start("--flood-burst", "5", "--flood-rate", "5", "--idle-timeout", "1",
                "--partial-line-timeout", "1")
    c, conn = connect(acc, clients)
    admit(acc, c, conn, "111111")
    lines = [f"flood {i:02d}" for i in range(30)]
    c.send_raw("".join(line + "\n" for line in lines).encode() + b"and half a")
    got = [fake.expect(lambda m: isinstance(m, bus.Cmd) and m.conn == conn, timeout=20)
           for _ in lines]
    assert got == [bus.Cmd(conn, Say(line)) for line in lines]
    # every line arrived before any close; now the unfinished tail is the client's own doing
    assert not [m for m in fake.since(0) if isinstance(m, bus.Close) and m.conn == conn]
    assert c.read_until_closed() == ["ERROR: line not finished in 1 s"]


# ---- connections per address ------------------------------------------------------------------

def test_max_per_address_refuses_the_fourth_with_error_and_frees_a_place(start, fake, clients):
    acc = start("--max-per-address", "3", "--per-address-exempt", "none")
    three = [connect(acc, clients, welcome=True) for _ in range(3)]
    fourth = Connection("127.0.0.1", acc.port, timeout=WAIT)
    clients.append(fourth)
    assert fourth.read_until_closed() == [
        "ERROR: too many connections from your address (max 3)"]
    for i, (c, _conn) in enumerate(three):
        c.send(f"/ping {i}")
        assert local_reply(acc, c) == f"PONG {i}"
    assert len([m for m in fake.since(0) if isinstance(m, bus.Open)]) == 3  # never announced
    three[0][0].close()
    fake.expect(is_close(three[0][1]))
    again, _ = connect(acc, clients, welcome=True)  # the place is free again
    again.send("/ping again")
    assert local_reply(acc, again) == "PONG again"
    acc.proc.wait_for(r"refused 127\.0\.0\.1:\d+: 3 connections from its address")


# ---- TCP keepalive ----------------------------------------------------------------------------

@pytest.mark.skipif(not shutil.which("ss") or not hasattr(socket, "TCP_KEEPIDLE"),
                    reason="needs Linux and ss")
def test_client_sockets_have_tcp_keepalive_with_our_idle_time(start, clients):
    acc = start("--keepalive-idle", "7", "--keepalive-interval", "3", "--keepalive-count", "4")
    c, conn = connect(acc, clients)
    admit(acc, c, conn, "111111")
    out = subprocess.run(["ss", "-tnoH", "state", "established", f"( sport = :{acc.port} )"],
                         capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"timer:\(keepalive,([\d.]+)(ms|sec|min)", out)
    assert m, out
    seconds = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    assert 0 < seconds <= 7, out  # the kernel's default would be 7200 s
