"""Acceptor component tests: the real acceptor process, with the test playing the router
(``support/fake_router.py``; its fixtures ``fake``, ``start`` and ``clients`` are in conftest)."""

from __future__ import annotations

import re
import signal
import socket
import time
import uuid
from itertools import pairwise

import pytest

from pychat.wire import bus, replies
from pychat.wire.commands import Say
from support.client import Connection, ConnectionClosed
from support.fake_router import (
    WAIT,
    admit,
    connect,
    expect_open,
    is_close,
    is_cmd,
    local_reply,
    members_of,
    read_to_eof,
)

pytestmark = pytest.mark.timeout(90)


# ---- tests ---------------------------------------------------------------------------------------

def test_hello_names_the_acceptor_and_it_heartbeats(start, fake):
    acc = start()
    assert acc.hello.acceptor == acc.name
    assert re.fullmatch(r"[0-9a-f]{12}", acc.hello.epoch)
    hello_ident = next(ident for _, ident, m in fake.received if isinstance(m, bus.Hello))
    assert hello_ident == acc.ident  # the routing id is the name
    mark = fake.mark()
    for _ in range(6):
        hb = fake.expect(lambda m: isinstance(m, bus.Heartbeat), timeout=3.0)
        assert hb.epoch == acc.hello.epoch
    beats = [t for t, ident, m in fake.received[mark:] if isinstance(m, bus.Heartbeat)]
    assert {ident for _, ident, _ in fake.received} == {acc.ident}
    gaps = [b - a for a, b in pairwise(beats)]
    assert 0.1 <= sum(gaps) / len(gaps) <= 0.5, gaps  # about every 0.2 s, loosely


def test_connect_gets_welcome_and_router_gets_open_then_session_lines(start, clients):
    acc = start()
    c, conn = connect(acc, clients)
    acc.send(bus.SessionSet(conn, "123456", "", "#lobby"), bus.ToConn(conn, "ID:123456"),
             bus.ToRoom("#lobby", "USERS:123456"))
    assert c.read_line() == replies.WELCOME  # it waited for the ID, to go out with it
    assert c.read_line() == "ID:123456"
    assert c.read_line() == "USERS:123456"
    assert c.uid == "123456" and c.users == ("123456",)


def test_text_is_forwarded_as_say_and_local_commands_stay_local(start, fake, clients):
    acc = start()
    c, conn = connect(acc, clients)
    admit(acc, c, conn, "123456")
    c.send("hello")
    assert fake.expect(lambda m: isinstance(m, bus.Cmd)) == bus.Cmd(conn, Say("hello"))
    mark = fake.mark()
    c.send("/ping x")
    assert local_reply(acc, c) == "PONG x"
    c.send("/cap time")
    assert local_reply(acc, c) == "OK cap time"
    c.send("fence")
    fake.expect(is_cmd(conn, Say("fence")))
    # between "hello" and "fence" nothing of this client crossed the bus: local replies stay
    between = fake.since(mark)
    assert between == [bus.Cmd(conn, Say("fence"))], between


def test_chat_room_reaches_all_30_local_members_tagged_only_for_cap_time(start, clients):
    acc = start()
    members = members_of(acc, clients, 30, "#r")
    capped = set(range(0, 30, 3))
    for i in sorted(capped):
        members[i].send("/cap time")
        assert local_reply(acc, members[i]) == "OK cap time"
    outsider, oconn = connect(acc, clients)
    admit(acc, outsider, oconn, "999999", room="#other")

    stamp = "2026-11-26T11:34:42.123Z"
    acc.send(bus.ChatRoom("#r", stamp, "100007: hi all"))
    acc.send(bus.ToConn(oconn, "fence"))
    for i, c in enumerate(members):
        want = f"@time={stamp} 100007: hi all" if i in capped else "100007: hi all"
        assert c.read_line() == want, i
    assert outsider.read_line() == "fence"  # the other room's member got nothing before it


def test_one_batch_of_chat_lines_reaches_the_client_in_order(start, clients):
    acc = start()
    c, conn = connect(acc, clients)
    admit(acc, c, conn, "123456", room="#b")
    texts = [f"222222: line {i:03d} " + "x" * 20 for i in range(100)]
    acc.send(*(bus.ChatRoom("#b", "2026-11-26T11:34:42.123Z", t) for t in texts))
    expected = "".join(t + "\n" for t in texts).encode()
    data = bytearray()
    recvs = 0
    c.sock.settimeout(WAIT)
    while len(data) < len(expected):
        chunk = c.sock.recv(1 << 20)
        assert chunk, "closed early"
        recvs += 1
        data += chunk
    assert bytes(data) == expected
    # written as one batch (one write per client per turn): it comes in a few reads, not 100
    assert recvs <= 5, recvs


def test_300_members_get_every_line_of_50_batches_once_and_in_order(start, clients):
    # A round of writes goes FLUSH_SLICE (128) clients at a time, and batches that arrive
    # between slices join the queues of the clients it has not reached yet: nobody may miss a
    # line, get one twice or out of order, whichever slice the batch met.
    acc = start()
    members = members_of(acc, clients, 300, "#big")
    texts = [f"222222: line {i:03d}" for i in range(50)]
    for t in texts:  # 50 batches, back to back: several land while a round is being written
        acc.send(bus.ChatRoom("#big", "2026-11-26T11:34:42.123Z", t))
    for i, c in enumerate(members):
        got = [c.read_line() for _ in texts]
        assert got == texts, (i, [g for g in got if g not in texts][:3])
    fence, fconn = connect(acc, clients)
    admit(acc, fence, fconn, "999999", room="#big")
    acc.send(bus.ChatRoom("#big", "2026-11-26T11:34:42.123Z", "222222: after"))
    for c in members:  # and nothing more than the 50 came before this one
        assert c.read_line() == "222222: after"


def test_kick_sends_its_text_then_closes_that_client_only(start, fake, clients):
    acc = start()
    c1, conn1 = connect(acc, clients)
    admit(acc, c1, conn1, "111111")
    c2, conn2 = connect(acc, clients)
    admit(acc, c2, conn2, "222222")
    acc.send(bus.Kick(conn1, "ERROR: kicked for testing"))
    assert c1.read_until_closed() == ["ERROR: kicked for testing"]
    fake.expect(is_close(conn1))
    acc.send(bus.ToConn(conn2, "still here"), bus.ToConn(conn1, "too late"))
    assert c2.read_line() == "still here"
    c2.send("/ping ok")
    assert local_reply(acc, c2) == "PONG ok"


def test_slow_reader_is_dropped_at_the_send_queue_and_the_room_goes_on(start, fake, clients):
    acc = start("--send-queue", "65536")
    fast, fconn = connect(acc, clients)
    admit(acc, fast, fconn, "111111", room="#q")
    # the slow client never reads; a small receive buffer keeps the kernel from hiding it long
    slow = socket.socket()
    clients.append(slow)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", acc.port))
    sconn = expect_open(acc, slow)
    acc.send(bus.SessionSet(sconn, "222222", "", "#q"))

    stamp = "2026-11-26T11:34:42.123Z"
    pad = "y" * 1000
    seq = 0
    dropped = None
    per_batch = 16  # 16 KB a batch: the fast reader's queue stays far below 64 KB

    def push_and_check_fast(n_batches: int) -> None:
        nonlocal seq
        for _ in range(n_batches):
            first = seq
            acc.send(*(bus.ChatRoom("#q", stamp, f"333333: {seq + i:07d} {pad}")
                       for i in range(per_batch)))
            seq += per_batch
            for i in range(first, seq):
                assert fast.read_line() == f"333333: {i:07d} {pad}"

    for _ in range(3000):  # up to 48 MB in all; the drop comes far sooner
        push_and_check_fast(1)
        fake.pump(0)
        closes = [m for m in fake.since(0) if isinstance(m, bus.Close) and m.conn == sconn]
        if closes:
            dropped = closes[0]
            break
    assert dropped is not None, f"slow client still connected after {seq} lines"
    assert "send queue" in dropped.reason
    push_and_check_fast(5)  # the room goes on, every line in order
    assert not [m for m in fake.since(0) if isinstance(m, bus.Close) and m.conn == fconn]
    # the slow client's connection is gone: reading what it got ends in EOF or a reset
    read_to_eof(slow)
    # dropped by the stall check (over --send-queue, not draining) or by the hard limit
    acc.proc.wait_for(rf"conn {sconn} \(\S+\) disconnected: send queue over "
                      rf"(65536 bytes and not draining|4194304 bytes)")


def test_flooder_is_slowed_but_every_line_arrives_in_order(start, fake, clients):
    acc = start("--flood-burst", "5", "--flood-rate", "20")
    c, conn = connect(acc, clients)
    admit(acc, c, conn, "123456")
    lines = [f"flood {i:02d}" for i in range(60)]
    began = time.monotonic()
    c.send_raw("".join(line + "\n" for line in lines).encode())
    got = []
    for _ in lines:
        got.append(fake.expect(lambda m: isinstance(m, bus.Cmd) and m.conn == conn))
    took = time.monotonic() - began
    assert got == [bus.Cmd(conn, Say(line)) for line in lines]
    # 5 at once, then 20 a second: the last one cannot come before 55/20 s (a lower bound)
    assert took >= 55 / 20 - 0.25, took
    c.send("/ping alive")
    assert local_reply(acc, c) == "PONG alive"


def test_resync_replays_hello_and_a_sync_per_session(start, fake, clients):
    acc = start()
    c1, conn1 = connect(acc, clients)
    admit(acc, c1, conn1, "111111", name="alice")
    c2, conn2 = connect(acc, clients)
    admit(acc, c2, conn2, "222222", room="#x")
    c3, conn3 = connect(acc, clients)  # the router never answered this one's Open
    acc.send(bus.SessionSet(conn2, "222222", "", "#y"))  # the latest view wins
    acc.send(bus.ToConn(conn2, "fence"))
    assert c2.read_line() == "fence"

    acc.send(bus.Resync())  # every batch was acknowledged: nothing to send again
    hello = fake.expect(lambda m: isinstance(m, bus.Hello))
    assert hello == acc.hello  # same name, same epoch: it did not restart
    wanted = {  # with their peers: a restarted router bans and throttles by address
        bus.Sync(conn1, "111111", "alice", "#lobby", "127.0.0.1:%d" % c1.sock.getsockname()[1]),
        bus.Sync(conn2, "222222", "", "#y", "127.0.0.1:%d" % c2.sock.getsockname()[1]),
        bus.Open(conn3, "127.0.0.1:%d" % c3.sock.getsockname()[1]),
    }
    mark = fake.cursor
    for _ in wanted:
        fake.expect(lambda m: isinstance(m, (bus.Sync, bus.Open)))
    replay = [m for m in fake.since(mark) if isinstance(m, (bus.Sync, bus.Open))]
    assert set(replay) == wanted and len(replay) == 3


def test_unacknowledged_batches_are_sent_again_after_the_hello_with_their_numbers(
        start, fake, clients):
    acc = start()
    c, conn = connect(acc, clients)
    admit(acc, c, conn, "111111")
    fake.auto_ack = False
    c.send("line 0")
    fake.expect(is_cmd(conn, Say("line 0")))
    c.send("/ping acked")  # held until line 0's batch is answered
    first = next(n for n, msgs in fake.numbered if bus.Cmd(conn, Say("line 0")) in msgs)
    acc.send(bus.Ack(first))  # line 0 handled
    assert local_reply(acc, c) == "PONG acked"  # so the Ack has been read
    for i in (1, 2):  # lines 1 and 2 not acknowledged
        c.send(f"line {i}")
        fake.expect(is_cmd(conn, Say(f"line {i}")))
    before = dict(fake.numbered)

    count = len(fake.numbered)
    acc.send(bus.Heartbeat(uuid.uuid4().hex[:12]))  # a new router epoch: resync
    hello = fake.expect(lambda m: isinstance(m, bus.Hello))
    assert hello.epoch == acc.hello.epoch
    fake.expect(is_cmd(conn, Say("line 2")))
    again = fake.numbered[count:]
    numbers = [n for n, _ in again]
    assert numbers == sorted(numbers) and first not in numbers  # in order; acked not again
    cmds = [m for _, msgs in again for m in msgs if isinstance(m, bus.Cmd)]
    assert cmds[:2] == [bus.Cmd(conn, Say("line 1")), bus.Cmd(conn, Say("line 2"))]
    for n, msgs in again:
        if n in before:  # the same batch, under the same number
            assert msgs == before[n]
    # the Hello came before every batch sent again
    hello_at = next(i for i, (_, _, m) in enumerate(fake.received) if m == hello)
    line1_at = max(i for i, (_, _, m) in enumerate(fake.received)
                   if m == bus.Cmd(conn, Say("line 1")))
    assert hello_at < line1_at


def test_a_line_that_waited_too_long_for_a_gone_router_is_refused_and_not_sent_again(
        start, fake, clients):
    """The fake router heartbeats once (at start) and then falls silent, acknowledging
    nothing: after 3 heartbeats the acceptor calls it gone, and a command still unacknowledged
    5 s (ROUTER_WAIT) after it was sent is refused to its sender. A new router then gets the
    resync without it."""
    acc = start()
    c, conn = connect(acc, clients)
    admit(acc, c, conn, "111111")
    fake.auto_ack = False
    c.send("anyone there?")
    fake.expect(is_cmd(conn, Say("anyone there?")))
    began = time.monotonic()
    assert c.read_line(timeout=15) == "ERROR: not sent, the router is unavailable: anyone there?"
    assert time.monotonic() - began >= 5.0 - 0.5  # not before ROUTER_WAIT (less our latency)
    acc.proc.wait_for(r"router gone for over 5s: refused \d+ waiting batches")

    fake.auto_ack = True
    count = len(fake.numbered)
    acc.send(bus.Heartbeat(uuid.uuid4().hex[:12]))  # a new router: resync
    fake.expect(lambda m: isinstance(m, bus.Hello))
    c.send("/ping after")
    assert local_reply(acc, c) == "PONG after"
    again = [m for _, msgs in fake.numbered[count:] for m in msgs]
    assert bus.Cmd(conn, Say("anyone there?")) not in again, again


def test_results_of_a_batch_already_delivered_are_dropped(start, fake, clients):
    acc = start()
    c, conn = connect(acc, clients)
    admit(acc, c, conn, "111111")
    origin = uuid.uuid4().hex[:12]
    stamp = "2026-12-06T12:00:00.000Z"  # as a router stamps every chat line
    chat = bus.ChatRoom("#lobby", stamp, "111111: once")
    acc.send(bus.From(origin, 7), chat, bus.From("", 0), bus.ToConn(conn, "fence 1"))
    assert c.read_line() == "111111: once"
    assert c.read_line() == "fence 1"
    # batch 7 handled again (a new router after a restart), and an older one: both dropped;
    # what follows an empty From (no batch caused it) is delivered
    acc.send(bus.From(origin, 7), chat, bus.From(origin, 5), chat,
             bus.From("", 0), bus.ToConn(conn, "fence 2"))
    assert c.read_line() == "fence 2"
    acc.send(bus.From(origin, 8), bus.ChatRoom("#lobby", stamp, "111111: twice"))
    assert c.read_line() == "111111: twice"


def test_max_connections_refuses_the_fourth_and_keeps_the_three(start, fake, clients):
    acc = start("--max-connections", "3")
    three = [connect(acc, clients, welcome=True) for _ in range(3)]
    fourth = Connection("127.0.0.1", acc.port, timeout=WAIT)
    clients.append(fourth)
    lines = fourth.read_until_closed()
    assert len(lines) == 1 and lines[0].startswith("ERROR: server full"), lines
    for i, (c, conn) in enumerate(three):
        c.send(f"/ping {i}")
        assert local_reply(acc, c) == f"PONG {i}"
        c.send(f"still {i}")
        fake.expect(is_cmd(conn, Say(f"still {i}")))
    opens = [m for m in fake.since(0) if isinstance(m, bus.Open)]
    assert sorted(m.conn for m in opens) == sorted(conn for _, conn in three)


def test_sigterm_tells_every_client_closes_them_and_exits_zero(start, fake, clients):
    acc = start()
    sessions = []
    for i in range(3):
        c, conn = connect(acc, clients)
        admit(acc, c, conn, f"{111111 * (i + 1)}")
        sessions.append((c, conn))
    acc.proc.signal(signal.SIGTERM)
    for c, _ in sessions:
        assert c.read_until_closed() == ["ERROR: server shutting down"]
    assert acc.proc.proc.wait(WAIT) == 0
    closed = set()
    for _ in sessions:
        closed.add(fake.expect(lambda m: isinstance(m, bus.Close)).conn)
    assert closed == {conn for _, conn in sessions}
    for c, _ in sessions:
        with pytest.raises(ConnectionClosed):
            c.read_line(timeout=1)
