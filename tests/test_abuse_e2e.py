"""End to end: what one client can make the server do is bounded by what it causes.

Each test starts `pychat serve` with small limits so that the bound shows within seconds, and
compares what the abuser got with what it asked for: the server sends what was asked, at the
pace its cost allows, and the other clients are served meanwhile.
"""

from __future__ import annotations

import time

import pytest

from support.client import Connection
from support.procs import start_serve

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def test_repeating_a_heavy_history_is_paced_by_what_it_sends_back(procs, connect):
    """A room of 4 KB lines; a client asks `/history 200` 30 times at once. Each reply is
    ~800 KB: with a token per 8 KiB here it costs ~98 tokens, so after the first (the burst of
    100 tokens pays for it) the client gets one reply every ~2 s (50 tokens a second), not 30
    in a burst (24 MB): a heavy command waits for the one before it, whose cost is charged."""
    p, port = start_serve("--flood-bytes", "8192", "--history", "memory", acceptors=1)
    procs.append(p)
    writer = connect(port)
    writer.handshake()
    writer.send("/join #heavy")
    writer.expect("ROOM:#heavy")
    for i in range(200):
        writer.send(f"{i:03d} " + "z" * 4000)
    writer.send("/ping filled")
    writer.expect("PONG filled", timeout=30)
    abuser = connect(port)
    abuser.handshake()
    abuser.send("/join #heavy")
    abuser.expect("ROOM:#heavy")
    bystander = connect(port)
    bystander.handshake()
    began = time.monotonic()
    abuser.send_raw(b"/history 200\n" * 30)
    replies = 0
    window = 3.5
    while time.monotonic() - began < window:
        try:
            line = abuser.read_line(timeout=max(0.05, window - (time.monotonic() - began)))
        except Exception:
            break
        replies += line.startswith("HISTORY:")
    # at once, after ~0.02 s, after ~2 s: 2 or 3 (without the pacing: all 30, 24 MB)
    assert 2 <= replies <= 3, replies
    bystander.send("/ping still served")  # meanwhile the server answers everyone else
    assert bystander.expect_prefix("PONG", timeout=5) == "PONG still served"


def test_an_address_opening_connections_fast_is_refused_past_its_pace(procs):
    """Every new connection costs its room's arrival pushes: an address gets `--connect-burst`
    at once, then `--connect-rate` a second; one more gets an ERROR: line and is closed, and
    the address's pace comes back with time. (Loopback is exempt by default: not here.)"""
    p, port = start_serve("--per-address-exempt", "none", "--connect-burst", "3",
                          "--connect-rate", "1", acceptors=1)
    procs.append(p)
    opened = [Connection("127.0.0.1", port) for _ in range(3)]
    for c in opened:
        c.handshake()
    refused = Connection("127.0.0.1", port)
    assert refused.read_until_closed() == [
        "ERROR: too many new connections from your address (at most 1 a second)"]
    p.wait_for(r"refused 127\.0\.0\.1:\d+: new connections from its address faster than 1")
    deadline = time.monotonic() + 5
    while True:  # a token comes back within a second: poll with a deadline, as a client retries
        later = Connection("127.0.0.1", port)
        first = later.read_line()
        if first.startswith("Welcome"):
            break
        later.close()
        assert time.monotonic() < deadline, first
        time.sleep(0.2)  # a client's retry pacing, not a synchronisation
    for c in [*opened, refused, later]:
        c.close()


def test_an_exempt_address_may_open_as_fast_as_it_likes(procs):
    p, port = start_serve("--connect-burst", "2", "--connect-rate", "1", acceptors=1)
    procs.append(p)
    clients = [Connection("127.0.0.1", port) for _ in range(6)]  # loopback: exempt by default
    try:
        for c in clients:
            c.handshake()
    finally:
        for c in clients:
            c.close()
    assert not any("new connections" in line for line in p.output)
