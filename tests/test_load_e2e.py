"""End to end under load, against `pychat serve`: many clients, order, stalled readers,
garbage, connect/disconnect churn. These are correctness checks; figures live in bench/.
"""

from __future__ import annotations

import itertools
import random
import re
import socket
import struct
import threading
import time

import pytest

from support.client import Connection
from support.procs import start_serve

pytestmark = pytest.mark.e2e

UID = re.compile(r"\d{6}\Z")


def read_all_chat(conn: Connection, want: int, timeout: float = 60.0) -> list[str]:
    """Read until ``want`` public chat lines (``<uid>: ...``) have arrived."""
    out = []
    while len(out) < want:
        line = conn.read_line(timeout)
        if re.match(r"\d{6}: ", line):
            out.append(line)
    return out


def test_300_simultaneous_clients_get_unique_ids_and_see_each_other(serve, connect):
    watcher = connect(serve)
    watcher.handshake()
    clients = [connect(serve, timeout=30) for _ in range(300)]  # all connected at once
    uids = [c.handshake(timeout=30) for c in clients]
    assert all(UID.match(u) for u in uids)
    assert len(set(uids + [watcher.uid])) == 301
    # the watcher is told of every arrival; its last list holds all 301
    everyone = set(uids) | {watcher.uid}
    watcher.expect(lambda ln: ln.startswith("USERS:") and set(ln[6:].split(",")) == everyone,
                   timeout=30)
    # and a line from the last one reaches the first one
    clients[-1].send("last to first")
    assert clients[0].expect_prefix(f"{uids[-1]}: ", timeout=30) == f"{uids[-1]}: last to first"


def test_per_sender_order_across_50_concurrent_senders(serve, connect):
    clients = [connect(serve, timeout=60) for _ in range(50)]
    for c in clients:
        c.handshake()
    clients[0].expect(lambda ln: ln.startswith("USERS:") and ln.count(",") == 49)
    per_sender = 150  # past the flood burst (100): the rest are slowed, not dropped

    def send_all(c: Connection) -> None:
        c.send_raw("".join(f"n{i}\n" for i in range(per_sender)).encode())

    threads = [threading.Thread(target=send_all, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results: dict[int, list[str]] = {}

    def receive(i: int, c: Connection) -> None:
        results[i] = read_all_chat(c, 50 * per_sender)

    readers = [threading.Thread(target=receive, args=(i, c)) for i, c in enumerate(clients)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    senders = {c.uid for c in clients}
    for i, lines in results.items():
        seen: dict[str, list[int]] = {}
        for line in lines:
            uid, _, text = line.partition(": ")
            seen.setdefault(uid, []).append(int(text[1:]))
        assert set(seen) == senders, f"client {i} heard from {len(seen)} senders"
        for uid, numbers in seen.items():
            assert numbers == list(range(per_sender)), f"client {i}: {uid} out of order"


def test_client_that_stops_reading_is_dropped_and_nobody_waits(procs, connect):
    serve_proc, port = start_serve("--send-queue", "65536")
    procs.append(serve_proc)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))  # never reads from here on
    talker = connect(port)
    talker.handshake()
    watcher = connect(port)
    watcher.handshake()
    pad = "z" * 3000
    sent = 0
    dropped = False
    # talk until the server reports the stalled client gone; the watcher reads everything
    while not dropped:
        assert sent < 20000, "the stalled client was never dropped"
        for _ in range(20):
            talker.send(f"{sent} {pad}")
            sent += 1
        for i in range(sent - 20, sent):
            assert watcher.expect_prefix(f"{talker.uid}: ") == f"{talker.uid}: {i} {pad}"
            talker.expect_prefix(f"{talker.uid}: ")
        dropped = any("send queue over" in line for line in serve_proc.output)
    # the watcher saw the stalled client leave, and chat goes on
    talker.send("after the drop")
    assert watcher.expect_prefix(f"{talker.uid}: after") == f"{talker.uid}: after the drop"
    stalled.close()


def test_2mb_of_garbage_gets_errors_and_the_connection_and_others_go_on(serve, connect):
    rng = random.Random(7)
    garbage = bytes(rng.getrandbits(8) for _ in range(2 * 1024 * 1024))
    a = connect(serve)
    a.handshake()
    b = connect(serve)
    b.handshake()
    g = connect(serve, timeout=60)
    g.handshake()
    done = threading.Event()

    def chat() -> None:  # the watcher pair keeps talking while the garbage arrives
        i = 0
        while not done.is_set():
            a.send(f"w{i}")
            b.expect(f"{a.uid}: w{i}")
            i += 1

    t = threading.Thread(target=chat)
    t.start()
    try:
        g.send_raw(garbage + b"\n/ping after-garbage\n")
        lines = []
        while True:
            line = g.read_line(60)
            lines.append(line)
            if line == "PONG after-garbage":
                break
    finally:
        done.set()
        t.join()
    errors = [ln for ln in lines if ln.startswith("ERROR: ")]
    assert len(errors) > 1000  # thousands of bad lines, each answered
    assert set(errors) <= {"ERROR: invalid UTF-8", "ERROR: line too long (max 4096 bytes)"} | {
        e for e in errors if e.startswith(("ERROR: unknown command", "ERROR: usage",
                                           "ERROR: invalid", "ERROR: no such user",
                                           "ERROR: unknown capability", "ERROR: name"))}
    g.send("still here")
    assert g.expect_prefix(f"{g.uid}: still") == f"{g.uid}: still here"


def test_500_connect_disconnect_cycles_leave_no_ghosts(serve, connect):
    watcher = connect(serve)
    watcher.handshake()
    for i in range(500):
        c = Connection("127.0.0.1", serve)
        c.handshake()
        if i % 3 == 0:
            c.send("/quit")
            assert c.read_until_closed()[-1] == "BYE"  # after any USERS pushes due to it
        elif i % 3 == 1:  # abrupt: reset instead of FIN
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    # every cycle's leaving reaches the router, over either acceptor: ask until the list,
    # as of a /ping right after it, is the watcher alone (its stream also holds older pushes
    # that once said so, so the last USERS before the PONG is the one that counts)
    deadline = time.monotonic() + 20
    for attempt in itertools.count():
        watcher.send("/users")
        watcher.send(f"/ping settled {attempt}")
        last = None
        while (line := watcher.read_line()) != f"PONG settled {attempt}":
            if line.startswith("USERS:"):
                last = line
        if last == f"USERS:{watcher.uid}":
            break
        assert time.monotonic() < deadline, f"ghosts stay: {last}"
    other = connect(serve)
    other.handshake()
    assert other.users == (watcher.uid, other.uid)


def test_error_then_more_lines_in_one_packet_all_answered_in_order(serve, connect):
    c = connect(serve)
    c.handshake()
    c.send_raw(b"/cap colours\n/ping one\n\xff\xfe\nhello\n/nosuch\n/ping two\n")
    assert c.read_line().startswith("ERROR: unknown capability")
    assert c.read_line() == "PONG one"
    assert c.read_line() == "ERROR: invalid UTF-8"
    assert c.read_line() == f"{c.uid}: hello"
    assert c.read_line() == "ERROR: unknown command /nosuch"
    assert c.read_line() == "PONG two"
