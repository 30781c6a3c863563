"""`/cap deltas` over real processes: `pychat serve` with two acceptors, clients on both.

A client with the capability sees arrivals, names and departures as JOINED:/NAMED:/LEFT: lines
(and whole lists where it has none to apply them to: its own room change, /users, and after the
router was SIGKILLed and restarted), while a Part 1 client beside it sees the whole USERS:/NAMES:
lists as before. Both end up holding the same list (``wire.replies.Roster``).
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest

from pychat.wire.replies import Roster, parse_server_line
from support.procs import start_serve

from .test_serve_e2e import child_pids

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ROSTER = ("USERS:", "NAMES:", "JOINED:", "LEFT:", "NAMED:")


def joined(connect, port: int, room: str, deltas: bool = False):
    c = connect(port)
    c.handshake()
    if deltas:
        c.send("/cap deltas")
        c.expect("OK cap deltas")
    c.send(f"/join {room}")
    c.expect(f"ROOM:{room}")
    c.roster = Roster()
    c.roster.apply(parse_server_line(c.expect_prefix("USERS:")))
    c.roster.apply(parse_server_line(c.expect_prefix("NAMES:")))  # a joiner always gets it
    return c


def roster_lines(c, until) -> list[str]:
    """Read c's roster lines (applying them) until one satisfies ``until``."""
    got = []
    while True:
        line = c.read_line(timeout=15)
        if line.startswith(ROSTER):
            got.append(line)
            c.roster.apply(parse_server_line(line))
            if until(line):
                return got


def test_changes_come_as_lines_to_who_asked_and_whole_lists_to_the_others(procs, connect):
    serve, port = start_serve(acceptors=2)
    procs.append(serve)
    room = "#d" + uuid.uuid4().hex[:10]
    alice = joined(connect, port, room, deltas=True)
    old = joined(connect, port, room)  # a Part 1 client
    assert roster_lines(alice, lambda ln: True) == [f"JOINED:{old.uid}"]
    assert alice.roster.uids == old.roster.uids == [alice.uid, old.uid]

    bob = joined(connect, port, room)
    assert roster_lines(alice, lambda ln: True) == [f"JOINED:{bob.uid}"]
    assert roster_lines(old, lambda ln: True) == [f"USERS:{alice.uid},{old.uid},{bob.uid}"]

    bob.send("/nick bob")
    assert roster_lines(alice, lambda ln: True) == [f"NAMED:{bob.uid}=bob"]
    assert roster_lines(old, lambda ln: True) == [f"NAMES:{bob.uid}=bob"]

    bob.send("/join #elsewhere-" + uuid.uuid4().hex[:6])
    assert roster_lines(alice, lambda ln: True) == [f"LEFT:{bob.uid}"]
    assert roster_lines(old, lambda ln: True) == [f"USERS:{alice.uid},{old.uid}"]  # no names
    assert alice.roster.uids == old.roster.uids == [alice.uid, old.uid]
    assert alice.roster.names == old.roster.names == {}

    # alice moves: the new room's lists come whole, then changes again
    other = "#e" + uuid.uuid4().hex[:10]
    carol = joined(connect, port, other)
    carol.send("/nick carol")
    carol.expect("OK nick carol")
    alice.send(f"/join {other}")
    alice.expect(f"ROOM:{other}")
    assert roster_lines(alice, lambda ln: ln.startswith("NAMES:")) == [
        f"USERS:{carol.uid},{alice.uid}", f"NAMES:{carol.uid}=carol"]
    carol.close()
    assert roster_lines(alice, lambda ln: True) == [f"LEFT:{carol.uid}"]
    assert alice.roster.uids == [alice.uid] and alice.roster.names == {}


def test_after_a_router_restart_the_first_push_is_whole(procs, connect):
    """The new router's first push (when it adopts the resynced sessions) is whole for everyone;
    changes follow it. The resync may list the room in another order (sessions come back
    acceptor by acceptor): the client holds exactly what a Part 1 client holds."""
    serve, port = start_serve(acceptors=2)
    procs.append(serve)
    room = "#r" + uuid.uuid4().hex[:10]
    alice = joined(connect, port, room, deltas=True)
    bob = joined(connect, port, room)  # a Part 1 client
    assert roster_lines(alice, lambda ln: True) == [f"JOINED:{bob.uid}"]
    victim = child_pids(serve)["router"]
    os.kill(victim, signal.SIGKILL)
    serve.wait_for(rf"router \(pid {victim}\) died: signal 9")
    first = roster_lines(alice, lambda ln: True)
    assert first[0].startswith("USERS:")
    carol = joined(connect, port, room)
    roster_lines(alice, lambda ln: carol.uid in ln)
    roster_lines(bob, lambda ln: ln.startswith("USERS:") and carol.uid in ln)
    assert sorted(bob.roster.uids) == sorted([alice.uid, bob.uid, carol.uid])
    assert alice.roster.uids == bob.roster.uids
    dave = joined(connect, port, room)
    assert roster_lines(alice, lambda ln: True) == [f"JOINED:{dave.uid}"]
    roster_lines(bob, lambda ln: ln.startswith("USERS:") and dave.uid in ln)
    assert alice.roster.uids == bob.roster.uids and alice.roster.uids[-1] == dave.uid
