"""Pure tier: the bus link (wire/link.py), both ends, with a fake clock and no sockets.

The unit tests pin each rule of the protocol. The simulation at the end wires acceptor ends and
router ends (with a real ``RouterState``) through in-memory pipes that behave as ZeroMQ's do
here (a DEALER keeps what it could not deliver and hands it to whichever router binds next; what
a dying router had taken in, or not yet written out, is lost), kills the router at every step of
a conversation, in every way, and checks that every line reaches every member exactly once, each
sender's lines in order (lines of different senders may be seen in another order by members on
different acceptors after a crash: the protocol orders per sender, not across them).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import deque

import pytest

from pychat.router.history import MemoryHistory
from pychat.router.state import RouterState
from pychat.wire import bus
from pychat.wire.bus import (
    Ack,
    ChatRoom,
    Cmd,
    Err,
    From,
    Heartbeat,
    Hello,
    Open,
    Peers,
    Resync,
    Seq,
    SessionSet,
    Sync,
    ToConn,
)
from pychat.wire.commands import Join, Say
from pychat.wire.link import ROUTER_WAIT, AcceptorLink, Answered, ResyncNeeded, RouterLink


class FixedClock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def now(self) -> float:
        return self.t


def decode_out(link: AcceptorLink) -> list[list[bus.BusMessage]]:
    return [bus.decode(frames) for frames, _ in link.out]


def drain(link: AcceptorLink) -> list[list[bus.BusMessage]]:
    got = decode_out(link)
    link.out.clear()
    return got


def router_batch(*msgs: bus.BusMessage) -> list[bytes]:
    return bus.encode(list(msgs))


# ---- the acceptor's end -------------------------------------------------------------------------

def test_messages_of_one_turn_share_a_numbered_batch_and_send_returns_its_number():
    a = AcceptorLink("acc", "ep", heartbeat=1.0, now=0.0)
    assert a.ticket == 1
    assert a.send(Open(1, "p")) == 1
    assert a.send(Cmd(1, Say("hi"))) == 1
    a.flush(0.0)
    assert a.ticket == 2 and a.send(Cmd(1, Say("again"))) == 2
    a.flush(0.0)
    a.flush(0.0)  # nothing collected: no empty batch
    assert drain(a) == [[Seq(1), Open(1, "p"), Cmd(1, Say("hi"))], [Seq(2), Cmd(1, Say("again"))]]


def test_answered_follows_acks_and_refusals_in_number_order():
    a = AcceptorLink("acc", "ep", heartbeat=1.0, now=0.0)
    for i in range(3):
        a.send(Cmd(1, Say(f"m{i}")))
        a.flush(0.0)
    assert a.answered == 0
    a.receive(router_batch(Ack(2)), 0.1)
    assert a.answered == 2 and a.unacked == 1
    a.send(Cmd(1, Say("collected, not flushed")))
    assert a.answered == 2  # batch 4 is still being collected
    a.receive(router_batch(Ack(3)), 0.2)
    assert a.answered == 3


def test_hello_batch_is_unnumbered_and_names_the_peers_and_interval():
    a = AcceptorLink("acc", "ep", heartbeat=0.25, now=0.0)
    a.receive(router_batch(Peers('["acc", "other"]')), 0.0)
    a.hello([Sync(3, "123456", "al", "#x")], 0.0)
    assert drain(a) == [[Hello("acc", "ep", '["acc", "other"]', 250),
                         Sync(3, "123456", "al", "#x")]]


def test_resync_sends_hello_then_every_unacknowledged_batch_with_its_number():
    a = AcceptorLink("acc", "ep", heartbeat=1.0, now=0.0)
    for i in range(3):
        a.send(Cmd(1, Say(f"m{i}")))
        a.flush(0.0)
    a.receive(router_batch(Ack(1)), 0.0)
    drain(a)
    a.send(Cmd(1, Say("pending")))  # still being collected when the resync comes
    assert a.resync([Open(1, "p")], 0.5) == 3
    got = drain(a)
    assert got[0] == [Hello("acc", "ep", "[]", 1000), Open(1, "p")]
    assert got[1:] == [[Seq(2), Cmd(1, Say("m1"))], [Seq(3), Cmd(1, Say("m2"))],
                       [Seq(4), Cmd(1, Say("pending"))]]


def test_results_of_an_origin_already_seen_are_dropped_and_others_kept():
    a = AcceptorLink("acc", "ep", heartbeat=1.0, now=0.0)
    first = a.receive(router_batch(From("e1", 5), ToConn(1, "a"), From("", 0), ToConn(1, "b")), 0)
    assert first == [ToConn(1, "a"), ToConn(1, "b")]
    again = a.receive(router_batch(From("e1", 5), ToConn(1, "a"), From("e1", 4), ToConn(1, "x"),
                                   From("e1", 6), ToConn(1, "c"), From("e2", 1), ToConn(1, "d")),
                      0.1)
    assert again == [ToConn(1, "c"), ToConn(1, "d")]


def test_results_of_a_later_batch_of_ours_mark_the_earlier_ones_answered_in_the_stream():
    a = AcceptorLink("acc", "ep", heartbeat=1.0, now=0.0)
    for i in range(4):
        a.send(Cmd(1, Say(f"m{i}")))
        a.flush(0.0)
    got = a.receive(router_batch(From("ep", 1), ToConn(1, "r1"), From("other", 9), ToConn(2, "x"),
                                 From("ep", 3), ToConn(1, "r3"), Ack(3)), 0.1)
    assert got == [ToConn(1, "r1"), ToConn(2, "x"), Answered(2), ToConn(1, "r3"), Answered(3)]
    assert a.answered == 3
    a.receive(router_batch(From("ep", 2), ToConn(1, "late?")), 0.2)  # never goes back
    assert a.answered == 3


def test_a_new_router_epoch_asks_for_a_resync_and_the_router_can_ask_too():
    a = AcceptorLink("acc", "ep", heartbeat=1.0, now=0.0)
    assert a.receive(router_batch(Heartbeat("r1")), 0.0) == []
    assert a.router_alive and a.router_epoch == "r1"
    got = a.receive(router_batch(Heartbeat("r2"), ToConn(1, "x")), 0.1)
    assert got == [ResyncNeeded("router restarted (epoch r2)"), ToConn(1, "x")]
    assert a.receive(router_batch(Resync()), 0.2) == [ResyncNeeded("the router asked")]


def test_heartbeats_every_interval_and_the_router_is_dead_after_three_of_its_own():
    a = AcceptorLink("acc", "ep", heartbeat=1.0, now=0.0)
    a.receive(router_batch(Heartbeat("r1", 200)), 0.0)  # the router beats every 0.2 s
    a.tick(0.0)
    a.flush(0.0)
    assert drain(a) == [[Seq(1), Heartbeat("ep", 1000)]]
    a.tick(0.5)  # not due: the router's silence is judged when we heartbeat
    assert a.router_alive and not a.out
    a.tick(1.0)
    assert not a.router_alive  # 1 s of silence: more than 3 of the router's 0.2 s


def test_a_different_router_interval_is_logged(caplog):
    a = AcceptorLink("acc", "ep", heartbeat=1.0, now=0.0)
    with caplog.at_level(logging.WARNING, "pychat.acceptor"):
        a.receive(router_batch(Heartbeat("r1", 500)), 0.0)
    assert "heartbeat is 0.5s, ours 1s" in caplog.text


def test_a_batch_that_waited_too_long_for_a_gone_router_is_refused_once_and_never_resent():
    a = AcceptorLink("acc", "ep", heartbeat=1.0, now=0.0)
    a.receive(router_batch(Heartbeat("r1")), 0.0)
    a.tick(0.0)
    a.send(Cmd(7, Say("late")))
    a.flush(0.5)
    for t in (1.0, 2.0, 3.0, 4.0, 5.0):
        a.tick(t)
        assert a.take_refused() == []  # gone since 3.0, but waited less than 5 s
    a.tick(6.0)
    refused = a.take_refused()
    assert [m for batch in refused for m in batch if isinstance(m, Cmd)] == [Cmd(7, Say("late"))]
    assert a.answered == 1  # the refused batch no longer holds replies back
    drain(a)
    a.resync([], 6.5)
    assert all(Cmd(7, Say("late")) not in batch for batch in drain(a))
    a.tick(7.0)
    assert a.take_refused() == []


def test_no_router_ever_heard_nothing_expires():
    a = AcceptorLink("acc", "ep", heartbeat=1.0, now=0.0)
    a.send(Cmd(7, Say("waits")))
    a.flush(0.0)
    for t in range(1, 30):
        a.tick(float(t))
    assert a.take_refused() == [] and a.answered == 0


def test_the_backlog_is_bounded_and_the_oldest_batch_is_refused():
    a = AcceptorLink("acc", "ep", heartbeat=1.0, now=0.0, max_backlog=3)
    for i in range(5):
        a.send(Cmd(1, Say(f"m{i}")))
        a.flush(0.0)
    assert len(a.out) == 3
    refused = [m.command.text for b in a.take_refused() for m in b if isinstance(m, Cmd)]
    assert refused == ["m0", "m1"]


# ---- the router's end ---------------------------------------------------------------------------

class Recorder:
    """A LinkApp that records what it was handed and answers each Cmd with a line."""

    def __init__(self, to: tuple[str, ...] = ()) -> None:
        self.handled: list[tuple[str, bus.BusMessage]] = []
        self.gone: list[str] = []
        self.to = to  # acceptors that also get each answer (a room spread over them)

    def handle(self, acceptor: str, msg: bus.BusMessage) -> list[bus.Delivery]:
        self.handled.append((acceptor, msg))
        if isinstance(msg, Cmd) and isinstance(msg.command, Say):
            line = ToConn(msg.conn, f"got {msg.command.text}")
            return [(acceptor, line)] + [(other, line) for other in self.to if other != acceptor]
        return []

    def acceptor_gone(self, acceptor: str) -> list[bus.Delivery]:
        self.gone.append(acceptor)
        return []

    def end_turn(self) -> list[bus.Delivery]:
        return []


def sent_to(r: RouterLink, name: str) -> list[list[bus.BusMessage]]:
    peer = r.peers[name]
    got = [bus.decode(frames[1:]) for frames in peer.queue]
    peer.queue.clear()
    return got


def joined(r: RouterLink, name: str, now: float = 0.0, peers: str = "[]") -> None:
    r.receive(name.encode(), bus.encode([Hello(name, f"ep-{name}", peers, 1000)]), now)
    r.end_turn(now)
    sent_to(r, name)


def test_a_number_is_handled_once_and_acknowledged_after_the_queues_empty():
    app = Recorder()
    r = RouterLink(app, "R", heartbeat=1.0, now=0.0, settle_seconds=0)
    joined(r, "a")
    batch = bus.encode([Seq(1), Cmd(4, Say("x"))])
    r.receive(b"a", batch, 0.1)
    r.receive(b"a", batch, 0.1)  # the same number again (a second resync)
    r.end_turn(0.1)
    assert [m for _, m in app.handled] == [Cmd(4, Say("x"))]
    assert not r.release_acks()  # the results still wait in the queue
    assert sent_to(r, "a") == [[From("ep-a", 1), ToConn(4, "got x")]]
    assert r.release_acks()
    assert sent_to(r, "a") == [[Ack(1)]]
    assert not r.release_acks()


def test_a_stalled_peer_holds_every_ack_back_and_is_lost_past_its_backlog():
    app = Recorder(to=("a", "stuck"))
    r = RouterLink(app, "R", heartbeat=1.0, now=0.0, settle_seconds=0, max_backlog=5)
    joined(r, "a")
    joined(r, "stuck")
    sent_to(r, "a")
    r.peers["stuck"].queue.clear()
    r.receive(b"a", bus.encode([Seq(1), Cmd(1, Say("x"))]), 0.1)
    r.end_turn(0.1)
    sent_to(r, "a")  # a's results leave; stuck's stay (its socket pushes back)
    assert not r.release_acks()  # one queue is not empty: no acks for anyone yet
    for i in range(4):
        r.receive(b"a", bus.encode([Seq(2 + i), Cmd(1, Say("y"))]), 0.2)
        r.end_turn(0.2)
        sent_to(r, "a")
        assert not r.release_acks()
    assert "stuck" in r.peers and len(r.peers["stuck"].queue) == 5
    r.receive(b"a", bus.encode([Seq(6), Cmd(1, Say("one too many"))]), 0.3)
    r.end_turn(0.3)
    assert "stuck" not in r.peers and app.gone == ["stuck"]
    sent_to(r, "a")
    assert r.release_acks()
    assert sent_to(r, "a") == [[Ack(6)]]


class Disk:
    """A gate (durable mode's history): each Say writes a row; ``commit`` makes rows done."""

    def __init__(self) -> None:
        self.rows = 0
        self.committed = 0

    def ticket(self) -> int:
        return self.rows

    def done(self) -> int:
        return self.committed


class Writer(Recorder):
    def __init__(self, disk: Disk, to: tuple[str, ...] = ()) -> None:
        super().__init__(to)
        self.disk = disk

    def handle(self, acceptor: str, msg: bus.BusMessage) -> list[bus.Delivery]:
        if isinstance(msg, Cmd) and isinstance(msg.command, Say):
            self.disk.rows += 1
        return super().handle(acceptor, msg)


def durable_pair() -> tuple[Disk, RouterLink]:
    """A durable router's link with acceptors a and b joined (their welcomes taken); every
    line of a's goes to b too."""
    disk = Disk()
    r = RouterLink(Writer(disk, to=("b",)), "R", heartbeat=1.0, now=0.0, settle_seconds=0,
                   gate=disk)
    joined(r, "a")
    joined(r, "b")
    sent_to(r, "a"), sent_to(r, "b")
    return disk, r


def test_a_durable_turn_waits_for_its_rows_and_its_ack_for_its_results():
    disk, r = durable_pair()
    r.receive(b"a", bus.encode([Seq(1), Cmd(4, Say("one"))]), 0.1)
    r.end_turn(0.1)
    r.receive(b"a", bus.encode([Seq(2), Cmd(4, Say("two"))]), 0.2)
    r.end_turn(0.2)
    assert sent_to(r, "a") == [] and sent_to(r, "b") == []  # nothing before its row is on disk
    assert not r.release_acks()
    disk.committed = 1  # the first row: the first turn goes, the second still waits
    r.release_held(0.3)
    assert sent_to(r, "b") == [[From("ep-a", 1), ToConn(4, "got one")]]
    assert not r.release_acks()  # a's copy of the results has not left yet
    assert sent_to(r, "a") == [[From("ep-a", 1), ToConn(4, "got one")]]
    assert r.release_acks()
    assert sent_to(r, "a") == [[Ack(1)]]  # not held behind the second turn
    disk.committed = 2
    r.release_held(0.4)
    assert sent_to(r, "a") == [[From("ep-a", 2), ToConn(4, "got two")]]
    sent_to(r, "b")
    assert r.release_acks() and sent_to(r, "a") == [[Ack(2)]]


def test_a_held_turn_for_an_acceptor_lost_meanwhile_is_dropped():
    disk, r = durable_pair()
    r.receive(b"a", bus.encode([Seq(1), Cmd(4, Say("one"))]), 0.1)
    r.end_turn(0.1)
    old_b = r.peers["b"]
    r.lost("b", "test", 0.2)
    joined(r, "b", 0.2)  # back, with a new epoch: it must not get the old one's results
    assert r.peers["b"] is not old_b
    assert sent_to(r, "b") == []  # its welcome waits behind the turn before it, too
    disk.committed = 1
    r.release_held(0.3)
    assert sent_to(r, "b") == [[Heartbeat("R", 1000), Peers('["a", "b"]')]]  # not "got one"
    assert sent_to(r, "a")[0] == [From("ep-a", 1), ToConn(4, "got one")]  # then the Peers lists
    assert r.release_acks() and sent_to(r, "a") == [[Ack(1)]]


def test_an_acceptor_silent_for_three_of_its_intervals_is_lost():
    app = Recorder()
    r = RouterLink(app, "R", heartbeat=1.0, now=0.0, settle_seconds=0)
    r.receive(b"a", bus.encode([Hello("a", "ep-a", "[]", 250)]), 0.0)  # beats every 0.25 s
    r.end_turn(0.0)
    r.tick(0.5)  # our heartbeat: 0.5 s of silence is not three of its 0.25 s yet
    assert "a" in r.peers
    r.tick(1.0)  # between our heartbeats: nothing is judged
    assert "a" in r.peers
    r.tick(1.5)
    assert "a" not in r.peers and app.gone == ["a"]


def test_an_unknown_acceptor_is_asked_to_resync_at_most_once_a_heartbeat_and_told_of_refusals():
    app = Recorder()
    r = RouterLink(app, "R", heartbeat=1.0, now=0.0, settle_seconds=0)
    r.receive(b"x", bus.encode([Seq(9), Cmd(1, Say("numbered"))]), 0.0)
    r.receive(b"x", bus.encode([Seq(10), Cmd(1, Say("numbered"))]), 0.5)
    r.receive(b"x", bus.encode([Cmd(2, Say("unnumbered"))]), 1.5)
    assert app.handled == []
    raw = [(ident, msgs) for ident, msgs in r.raw]
    assert raw == [(b"x", [Resync()]),
                   (b"x", [Err(2, "not-sent", "not sent, the router was restarting: unnumbered")]),
                   (b"x", [Resync()])]


def test_a_starting_router_waits_for_the_named_acceptors_asking_each_by_name():
    app = Recorder()
    r = RouterLink(app, "R", heartbeat=1.0, now=0.0)  # settles within 2 heartbeats
    r.receive(b"a", bus.encode([Hello("a", "ep-a", '["a", "b"]'), Open(1, "p")]), 0.0)
    r.receive(b"a", bus.encode([Seq(1), Cmd(1, Say("early"))]), 0.0)
    r.end_turn(0.0)
    assert [m for _, m in app.handled] == [Open(1, "p")]  # the Sync/Open: yes; chat: waits
    assert (b"b", [Resync()]) in r.raw
    r.raw.clear()
    r.tick(0.03)
    assert not r.raw  # asked 30 ms ago: not yet again
    r.tick(0.06)
    assert list(r.raw) == [(b"b", [Resync()])]
    r.receive(b"b", bus.encode([Hello("b", "ep-b", '["a", "b"]')]), 0.07)
    r.end_turn(0.07)
    assert r.settled
    assert [m for _, m in app.handled][-1] == Cmd(1, Say("early"))


def test_a_starting_router_stops_waiting_after_two_heartbeats():
    app = Recorder()
    r = RouterLink(app, "R", heartbeat=1.0, now=0.0)
    r.receive(b"a", bus.encode([Hello("a", "ep-a", '["a", "gone"]')]), 0.0)
    r.receive(b"a", bus.encode([Seq(1), Cmd(1, Say("early"))]), 0.0)
    r.end_turn(0.0)
    r.tick(1.9)
    assert not r.settled
    r.tick(2.0)
    assert r.settled and [m for _, m in app.handled] == [Cmd(1, Say("early"))]


# ---- the simulation -----------------------------------------------------------------------------

class SimAcceptor:
    """An acceptor reduced to what the link needs: sessions, their rooms, what each received."""

    def __init__(self, name: str, clock: FixedClock):
        self.name = name
        self.clock = clock
        self.link = AcceptorLink(name, f"ep-{name}", heartbeat=1.0, now=clock.t)
        self.sessions: dict[int, list[str]] = {}  # conn -> [uid, name, room]
        self.got: dict[int, list[str]] = {}
        self.refused: list[tuple[int, str]] = []
        self.link.hello([], clock.t)

    def open(self, conn: int) -> None:
        self.sessions[conn] = ["", "", ""]
        self.got[conn] = []
        self.link.send(Open(conn, f"{self.name}:{conn}"))

    def command(self, conn: int, cmd) -> None:
        self.link.send(Cmd(conn, cmd))

    def take(self, frames: list[bytes]) -> None:
        for msg in self.link.receive(frames, self.clock.t):
            if isinstance(msg, ResyncNeeded):
                snap: list[bus.BusMessage] = [
                    Sync(c, *s) if s[0] else Open(c, f"{self.name}:{c}")
                    for c, s in self.sessions.items()]
                self.link.resync(snap, self.clock.t)
            elif isinstance(msg, SessionSet):
                if msg.conn in self.sessions:
                    self.sessions[msg.conn] = [msg.uid, msg.name, msg.room]
            elif isinstance(msg, ChatRoom):
                for c, s in self.sessions.items():
                    if s[2] == msg.room:
                        self.got[c].append(msg.text)
            elif isinstance(msg, ToConn) and msg.conn in self.got:
                self.got[msg.conn].extend(msg.text.split("\n"))

    def turn(self) -> None:
        self.link.tick(self.clock.t)
        self.link.flush(self.clock.t)
        for batch in self.link.take_refused():
            self.refused += [(m.conn, m.command.text) for m in batch
                             if isinstance(m, Cmd) and isinstance(m.command, Say)]


class SimDisk(MemoryHistory):
    """Durable mode's history file: rows survive a router's death once committed (the file is
    shared by the routers of one run); ``commit`` is the writer finishing a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.committed = 0

    def append(self, room: str, stamp: str, line: str) -> bool:
        self.rows.append(line)
        return super().append(room, stamp, line)

    def ticket(self) -> int:
        return len(self.rows)

    def done(self) -> int:
        return self.committed

    def commit(self) -> None:
        self.committed = len(self.rows)

    def crash(self) -> None:
        del self.rows[self.committed:]


class SimRouter:
    def __init__(self, clock: FixedClock, n: int, disk: SimDisk | None = None):
        self.state = RouterState(clock, disk if disk is not None else MemoryHistory(),
                                 rng=random.Random(n),
                                 durable=disk is not None)
        self.link = RouterLink(self.state, f"router-{n}", heartbeat=1.0, now=clock.t,
                               gate=disk)
        self.inbox: deque[tuple[bytes, list[bytes]]] = deque()


PHASES = ("taken_in", "handled", "results_out", "half_out")


class Sim:
    """In-memory pipes with ZeroMQ's behaviour here: a DEALER's queue outlives the router (it is
    delivered to the next one); what a router took in but did not handle, or queued but did not
    send, dies with it. ``step(kill=phase)`` SIGKILLs the router during its turn:
    ``taken_in``: after reading batches, before handling them; ``handled``: after handling, with
    the results still in its queues; ``results_out``: after the results left, before the acks;
    ``half_out``: after the results for the first acceptor left, not the others'."""

    def __init__(self, names: tuple[str, ...] = ("a", "b"), disk: SimDisk | None = None):
        self.clock = FixedClock()
        self.routers = itertools.count(1)
        self.disk = disk  # durable mode: the writer commits once per step, after the sends
        self.router = SimRouter(self.clock, next(self.routers), disk)
        self.acceptors = {n: SimAcceptor(n, self.clock) for n in names}
        self.to_acceptor: dict[str, deque[list[bytes]]] = {n: deque() for n in names}

    def step(self, dt: float = 0.01, kill: str | None = None) -> None:
        self.clock.t += dt
        now = self.clock.t
        for name, acc in self.acceptors.items():
            acc.turn()
            while acc.link.out:  # the DEALER takes everything (its HWM is far away)
                frames, _ = acc.link.out[0]
                acc.link.sent_one()
                self.router.inbox.append((name.encode(), frames))
        r = self.router
        if kill == "taken_in" and r.inbox:
            r.inbox.clear()
            return self._restart()
        while r.inbox:
            ident, frames = r.inbox.popleft()
            r.link.receive(ident, frames, now)
        if now >= r.link.next_wake(now):
            r.link.tick(now)
        else:
            r.link.end_turn(now)
        if kill == "handled":
            return self._restart()
        self.router_send(kill)
        if kill in ("results_out", "half_out"):
            self._restart()
        elif self.disk is not None:
            self.disk.commit()
            r.link.release_held(now)
            self.router_send()
        for name, acc in self.acceptors.items():
            pipe = self.to_acceptor[name]
            while pipe:
                acc.take(pipe.popleft())

    def router_send(self, kill: str | None = None) -> None:
        r = self.router
        for ident, msgs in list(r.link.raw):
            if ident.decode() in self.to_acceptor:
                self.to_acceptor[ident.decode()].append(bus.encode(msgs))
        r.link.raw.clear()
        while True:
            for name, peer in r.link.peers.items():
                while peer.queue:
                    self.to_acceptor[name].append(peer.queue.popleft()[1:])
                if kill == "half_out":
                    return
            if kill == "results_out" or not r.link.release_acks():
                return

    def _restart(self) -> None:
        if self.disk is not None:  # whatever any acceptor was sent is on disk already
            sent = {line for pipe in self.to_acceptor.values() for batch in pipe
                    for m in bus.decode(batch) if isinstance(m, ChatRoom) for line in [m.text]}
            sent |= {line for acc in self.acceptors.values() for got in acc.got.values()
                     for line in got if line[:6].isdigit()}
            assert sent <= set(self.disk.rows[:self.disk.committed])
            self.disk.crash()
        self.router = SimRouter(self.clock, next(self.routers), self.disk)

    def run(self, seconds: float) -> None:
        for _ in range(int(seconds / 0.01)):
            self.step()


def settle_in_room(sim: Sim, room: str, per_acceptor: int) -> list[tuple[str, int]]:
    members = []
    for name, acc in sim.acceptors.items():
        for conn in range(1, per_acceptor + 1):
            acc.open(conn)
            acc.command(conn, Join(room))
            members.append((name, conn))
    sim.run(0.2)
    return members


@pytest.mark.parametrize("durable", [False, True], ids=["", "durable"])
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("kill_at", [1, 2, 3, 5, 7, 10, 13, 18, 23, 29])
def test_router_death_at_any_step_loses_and_repeats_no_line(kill_at, phase, durable):
    """Durable too: there, no line any acceptor was sent is missing from the file at the
    death (checked in ``Sim._restart``), and the file ends with every line."""
    sim = Sim(disk=SimDisk() if durable else None)
    members = settle_in_room(sim, "#r", 3)
    sent: list[str] = []
    for k in range(30):
        name, conn = members[k % len(members)]
        text = f"{name}{conn}-{k}"
        sim.acceptors[name].command(conn, Say(text))
        sent.append(text)
        if k % 4 == 0:  # a few lines share a batch, as under load
            continue
        sim.step(kill=phase if k == kill_at else None)
    sim.run(3.0)  # the new router settles; resync, replay
    assert sim.router.link.settled and next(sim.routers) == 3  # exactly one restart happened
    refused = {text for acc in sim.acceptors.values() for _, text in acc.refused}
    assert not refused  # it came back well within ROUTER_WAIT: nothing refused
    seen = set()
    for name, conn in members:
        got = [line.split(": ", 1)[1] for line in sim.acceptors[name].got[conn]
               if line[:6].isdigit()]
        assert sorted(got) == sorted(sent), (name, conn)  # every line, once
        for sender in {t.split("-")[0] for t in sent}:  # each sender's lines in its order
            mine = [t for t in got if t.startswith(sender + "-")]
            assert mine == [t for t in sent if t.startswith(sender + "-")], (name, conn)
        seen.add(tuple(got))
    if phase in ("taken_in", "handled"):  # no result had left: everyone sees one order
        assert len(seen) == 1
    if sim.disk is not None:
        on_disk = [line.split(": ", 1)[1] for line in sim.disk.rows]
        assert set(on_disk) == set(sent) and sim.disk.committed == len(sim.disk.rows)


def test_router_gone_longer_than_the_wait_refuses_lines_and_they_never_arrive_later():
    sim = Sim()
    members = settle_in_room(sim, "#r", 2)
    for acc in sim.acceptors.values():  # every router is gone: nothing arrives, nothing answers
        acc.open(99)
    dead = sim.router
    sim.router = SimRouter(sim.clock, 0)
    sim.router.link.receive = lambda *a: None  # type: ignore[method-assign]  # a black hole
    sim.acceptors["a"].command(1, Say("into the void"))
    sim.run(ROUTER_WAIT + 4)
    assert ("a", 1) in members and sim.acceptors["a"].refused == [(1, "into the void")]
    sim.router = SimRouter(sim.clock, 5)  # a router comes back
    sim.run(3.0)
    assert not any("into the void" in line for acc in sim.acceptors.values()
                   for lines in acc.got.values() for line in lines)
    assert dead is not sim.router
