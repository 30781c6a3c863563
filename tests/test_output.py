"""The acceptor's rounds of writes (acceptor/output.py), driven without sockets.

Sessions here are stand-ins with the attributes ``Output`` reads and a transport that records
what is written; rounds are run by hand, slice by slice, so a line can be made to arrive in the
middle of one. The rules: each client gets every line of its room from its arrival on, once, in
order, with its own lines (replies, private messages) where they were queued; a client that
changes rooms keeps the old room's lines it had not had yet; a closed one keeps nothing, and
the room's run forgets what everyone left has had.
"""

from __future__ import annotations

import asyncio
import random
import re

import pytest

from pychat.acceptor import irc as irc_module
from pychat.acceptor import output as output_module
from pychat.acceptor import web
from pychat.acceptor.irc import IrcDoor
from pychat.acceptor.limits import Limits
from pychat.acceptor.output import FLUSH_SLICE, Output


class Transport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0


class Client:
    KIND = 0

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.room = ""
        self.blocked = False
        self.transport = Transport()
        self.fd = -1  # through the transport
        self.cap_time = False
        self.run = None
        self.mark = 0
        self.door = None  # (the line protocol: no IRC translator)
        self.uid = ""

    def lines(self) -> list[str]:
        return self.transport.data.decode().splitlines()


@pytest.fixture
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def output(loop) -> Output:
    return Output(loop, Limits(), {"writes": 0, "lines_out": 0}, lambda s, why: None,
                  lambda: None)


def join(o: Output, c: Client, room: str) -> None:
    o.move(c, room)  # (as the acceptor does: move, then the session's room)
    c.room = room


def finish(o: Output) -> None:
    """Write every round there is, now."""
    while o._dirty or o._dirty_rooms or o._round:
        if o._round:
            o._write_slice()
        else:
            o.flush()


def test_a_room_line_once_to_every_member_and_own_lines_in_their_place(loop):
    o = output(loop)
    a, b = Client(), Client()
    join(o, a, "#r")
    join(o, b, "#r")
    o.fan_out("#r", b"1\n")
    o.queue(a, b"private\n")  # after line 1, before line 2, for a alone
    o.fan_out("#r", b"2\n")
    finish(o)
    assert a.lines() == ["1", "private", "2"]
    assert b.lines() == ["1", "2"]
    run = o.runs["#r"]
    assert run.items == [] and run.lagging == 0  # everyone has had everything: forgotten


def test_a_line_arriving_mid_round_reaches_everyone_once(loop):
    o = output(loop)
    clients = [Client() for _ in range(3 * FLUSH_SLICE)]
    for c in clients:
        join(o, c, "#big")
    o.fan_out("#big", b"1\n")
    o.flush()  # the first slice is written
    o.fan_out("#big", b"2\n")  # the round has passed the first FLUSH_SLICE clients
    finish(o)
    for c in clients:
        assert c.lines() == ["1", "2"]
    passed, rest = clients[0], clients[-1]
    assert passed.transport.data == b"1\n2\n" and rest.transport.data == b"1\n2\n"


def test_a_client_changing_rooms_keeps_the_lines_it_had_not_had(loop):
    o = output(loop)
    a, b = Client(), Client()
    join(o, a, "#one")
    join(o, b, "#one")
    o.fan_out("#one", b"old\n")
    join(o, a, "#two")  # before any round: "old" is a's, still to be written
    o.queue(a, b"you are in #two\n")
    o.fan_out("#one", b"not for a\n")
    o.fan_out("#two", b"new\n")
    finish(o)
    assert a.lines() == ["old", "you are in #two", "new"]
    assert b.lines() == ["old", "not for a"]


def test_a_client_changing_rooms_with_nothing_else_to_come_is_still_written(loop):
    o = output(loop)
    a, b = Client(), Client()
    join(o, a, "#one")
    join(o, b, "#one")
    o.fan_out("#one", b"last\n")
    join(o, a, "#quiet")  # no line ever comes in #quiet
    finish(o)
    assert a.lines() == ["last"]


def test_a_closed_client_keeps_nothing_and_the_run_forgets(loop):
    o = output(loop)
    a, b = Client(), Client()
    join(o, a, "#r")
    join(o, b, "#r")
    o.fan_out("#r", b"1\n")
    o.forget(b)  # closed before the round
    finish(o)
    assert a.lines() == ["1"] and b.lines() == []
    assert o.runs["#r"].items == [] and o.runs["#r"].lagging == 0


def test_a_newcomer_gets_the_lines_from_its_arrival_on(loop):
    o = output(loop)
    a, b = Client(), Client()
    join(o, a, "#r")
    o.fan_out("#r", b"before\n")
    join(o, b, "#r")
    o.fan_out("#r", b"after\n")
    finish(o)
    assert a.lines() == ["before", "after"]
    assert b.lines() == ["after"]


def test_time_tagged_members_get_the_tagged_line(loop):
    o = output(loop)
    a, b = Client(), Client()
    b.cap_time = True
    join(o, a, "#r")
    join(o, b, "#r")
    o.fan_out("#r", b"123456: hi\n", ("2026-12-07T01:00:00.000Z", "123456: hi"))
    finish(o)
    assert a.lines() == ["123456: hi"]
    assert b.lines() == ["@time=2026-12-07T01:00:00.000Z 123456: hi"]


def test_many_lines_before_any_round_all_arrive(loop):
    """More lines than a run keeps before it trims, none written yet: nothing can be forgotten
    (every member lacks them all), and every one arrives."""
    o = output(loop)
    clients = [Client() for _ in range(3)]
    for c in clients:
        join(o, c, "#r")
    for k in range(2000):
        o.fan_out("#r", b"%d\n" % k)
    finish(o)
    for c in clients:
        assert c.lines() == [str(k) for k in range(2000)]
    assert o.runs["#r"].items == []


class WebClient(Client):
    """A WebSocket member: its room's lines come as frames, from the room's run of frames."""

    KIND = 2

    def frames(self, *lines: bytes) -> bytes:
        return b"".join(web.frames(line) for line in lines)


def test_websocket_members_get_the_room_framed_once_in_order_with_their_own(loop):
    o = output(loop)
    a, w, v = Client(), WebClient(), WebClient()
    v.cap_time = True
    for c in (a, w, v):
        join(o, c, "#r")
    o.fan_out("#r", b"1\n")
    o.queue(w, web.frames(b"private\n"))  # after line 1, before line 2, for w alone
    o.fan_out("#r", b"2\n", ("2026-12-07T04:00:00.000Z", "2"))
    finish(o)
    assert a.lines() == ["1", "2"]
    assert w.transport.data == w.frames(b"1\n", b"private\n", b"2\n")
    assert v.transport.data == v.frames(b"1\n", b"@time=2026-12-07T04:00:00.000Z 2")
    assert o.web_runs["#r"].items == [] and o.runs["#r"].items == []  # all had: forgotten
    assert o.web_runs["#r"].items is not o.runs["#r"].items


def test_a_websocket_member_mid_round_and_leaving_keeps_its_frames(loop):
    o = output(loop)
    webs = [WebClient() for _ in range(2 * FLUSH_SLICE)]
    for c in webs:
        join(o, c, "#big")
    o.fan_out("#big", b"1\n")
    o.flush()  # the first slice is written
    o.fan_out("#big", b"2\n")  # the round has passed the first FLUSH_SLICE members
    first = webs[0]
    join(o, first, "#other")  # before its next round: "2" stays queued for it
    o.fan_out("#big", b"not for it\n")
    finish(o)
    assert first.transport.data == first.frames(b"1\n", b"2\n")
    for c in webs[1:]:
        assert c.transport.data == c.frames(b"1\n", b"2\n", b"not for it\n")
    assert "#big" in o.web_runs and "#big" not in o.runs  # no line member: no line run


def irc_door(uid: str, nick: str, caps: str = "") -> IrcDoor:
    """A registered IRC translator, as its session has it (the core's answers by hand)."""
    d = IrcDoor()
    d.from_core(f"ID:{uid}")
    d.from_core("OK cap time codes end deltas")
    d.from_core("END cap")
    if caps:
        d.caps.update(caps.split())
    d.receive(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode())
    d.from_core(f"OK nick {nick}")
    d.from_core(f"NAMES:{NAMES}")
    d.from_core("END nick")
    assert d.registered
    return d


BOB = "200002"
NAMES = f"100001=alice,100002=bea,100003=cy,{BOB}=bob"
STAMP = "2026-12-07T05:00:00.000Z"


class IrcClient(Client):
    """An IRC member: a registered door (or not yet, ``door.registered`` False), whose other
    lines go through its translator as IrcSession.send_line does."""

    KIND = 1

    def __init__(self, o: Output, uid: str, nick: str, caps: str = "") -> None:
        super().__init__()
        self.o = o
        self.uid = uid
        self.door = irc_door(uid, nick, caps)
        self.cap_time = "server-time" in self.door.caps

    def send_line(self, text: str) -> None:
        for line in self.door.from_core(text):
            self.o.queue(self, (line + "\r\n").encode())

    def chat(self) -> list[str]:
        return [line for line in self.lines() if " PRIVMSG " in line or " NOTICE " in line]


def test_irc_members_share_one_translation_and_no_one_gets_its_own_line(loop, monkeypatch):
    o = output(loop)
    made = []
    chat_lines = irc_module.chat_lines
    monkeypatch.setattr(irc_module, "chat_lines", lambda *a: made.append(a) or chat_lines(*a))
    a, b, c = (IrcClient(o, "100001", "alice"), IrcClient(o, "100002", "bea"),
               IrcClient(o, "100003", "cy"))
    for m in (a, b, c):
        join(o, m, "#lobby")
    o.fan_out("#lobby", b"100002: one\n")  # b's: not back to b
    o.fan_out("#lobby", b"100001: two\n")  # a's, while a lags (has not had "one")
    o.queue(b, b":pychat NOTICE bea :yours\r\n")  # b's own line, after "two"
    o.fan_out("#lobby", b"100002: three\n")
    o.fan_out("#lobby", b"the server restarts soon\n")  # through each member's translator
    o.fan_out("#lobby", b"100003: four\n")
    finish(o)
    assert len(made) == 4  # each chat line translated once for the three of them
    say = ":{}!{}@pychat PRIVMSG #lobby :{}".format
    notice = ":pychat NOTICE {} :the server restarts soon".format
    assert a.chat() == [say("bea", "100002", "one"), say("bea", "100002", "three"),
                        notice("alice"), say("cy", "100003", "four")]
    assert b.chat() == [say("alice", "100001", "two"), ":pychat NOTICE bea :yours",
                        notice("bea"), say("cy", "100003", "four")]
    assert c.chat() == [say("bea", "100002", "one"), say("alice", "100001", "two"),
                        say("bea", "100002", "three"), notice("cy")]
    run = o.irc_runs["#lobby"]
    assert run.items == [] and run.lagging == 0  # all had: forgotten


def test_an_irc_member_gets_room_lines_once_registered_and_server_time_as_it_asked(loop):
    o = output(loop)
    plain = IrcClient(o, "100001", "alice")  # the first member: its door translates
    timed = IrcClient(o, "100002", "bea", caps="server-time")
    new = IrcClient(o, "100003", "cy")
    new.door.registered = False  # connected, not registered yet
    for m in (plain, timed, new):
        join(o, m, "#lobby")
    o.fan_out("#lobby", b"200002: before\n", (STAMP, "200002: before"))
    finish(o)
    assert new.chat() == []  # not registered: no room lines
    new.door.registered = True
    o.ready(new)
    o.fan_out("#lobby", b"200002: after\n", (STAMP, "200002: after"))
    finish(o)
    line = f":bob!{BOB}@pychat PRIVMSG #lobby :{{}}".format
    assert plain.chat() == [line("before"), line("after")]
    assert timed.chat() == [f"@time={STAMP} " + line("before"), f"@time={STAMP} " + line("after")]
    assert new.chat() == [line("after")]
    # the line's translation is fixed when it comes: its translating member (the first) may
    # move to another channel before the server-time member's copy is made
    o.fan_out("#lobby", b"200002: moving\n", (STAMP, "200002: moving"))
    plain.door.room = "#other"
    o.move(plain, "#other")
    plain.room = "#other"
    finish(o)
    assert timed.chat()[-1] == f"@time={STAMP} " + line("moving")
    assert plain.chat()[-1] == line("moving")  # (had it before it left)
    # leaving: out of the run, and the run goes with its last member
    for m in (plain, timed, new):
        o.forget(m)
    assert not o.irc_runs and not o.doors


def test_an_irc_member_given_a_new_uid_is_skipped_by_it_not_by_the_old_one(loop):
    """A new router may give a session another uid (its old one taken meanwhile): its own
    lines come under the new uid, and the old uid's new owner's lines are not its own. A stale
    entry never moves a member's mark nor the run's count (found in review: lines lost, and an
    AssertionError out of fan_out for a closed member)."""
    o = output(loop)
    a, b = IrcClient(o, "100001", "alice"), IrcClient(o, "100002", "bea")
    for m in (a, b):
        join(o, m, "#r")

    def set_session(s, uid: str, room: str) -> None:  # as Acceptor._set_session does
        old, s.uid = s.uid, uid
        if old != uid:
            o.renumbered(s, old)
        o.move(s, room)
        s.room = room

    set_session(a, "100009", "#r")
    o.fan_out("#r", b"100009: mine\n")  # a's, under its new uid
    o.fan_out("#r", b"100001: from the new owner of 100001\n")
    finish(o)
    assert [ln.rsplit(":", 1)[1] for ln in a.chat()] == ["from the new owner of 100001"]
    assert [ln.rsplit(":", 1)[1] for ln in b.chat()] == ["mine", "from the new owner of 100001"]
    c = IrcClient(o, "100003", "cy")
    join(o, c, "#s")
    set_session(a, "100009", "#s")
    o.fan_out("#s", b"100004: s1\n")
    o.fan_out("#r", b"100009: still a's uid, in #r\n")  # (a is in #s now: nothing of a's)
    o.fan_out("#s", b"100004: s2\n")
    finish(o)
    assert [ln.rsplit(":", 1)[1] for ln in a.chat()][-2:] == ["s1", "s2"]
    assert b.chat()[-1].endswith(":still a's uid, in #r")
    o.forget(a)
    o.fan_out("#s", b"100009: after it closed\n")  # (no error, c gets it)
    finish(o)
    assert c.chat()[-1].endswith(":after it closed")
    assert o.irc_runs["#r"].senders == {"100002": b}


def test_the_first_member_s_own_line_is_translated_by_another_member(loop):
    """A member's own door knows its new nick before the others' lists do: a line of its own
    is translated by another member's door, as the others' lists say (found in review)."""
    o = output(loop)
    a, b = IrcClient(o, "100001", "alice"), IrcClient(o, "100002", "bea")
    for m in (a, b):
        join(o, m, "#lobby")
    a.door.nick = "alicia"  # (its NICK was answered; the room's lists have not said so yet)
    o.fan_out("#lobby", b"100001: hello\n")
    finish(o)
    assert b.chat() == [":alice!100001@pychat PRIVMSG #lobby :hello"]


def test_lines_before_a_cap_ack_go_out_as_the_client_asked_before_it(loop):
    """CAP REQ :server-time, read while room lines wait for the next round: those lines go
    out before the ACK, untagged; the lines after it are tagged (found in review: they went
    out tagged, before the ACK)."""
    from types import SimpleNamespace

    from pychat.acceptor.irc_session import IrcSession

    o = output(loop)
    s = IrcSession(SimpleNamespace(output=o, loop=loop), 1)
    s.irc = s.door = irc_door("100001", "alice")
    s.transport, s.fd, s.open, s.uid = Transport(), -1, True, "100001"
    s.conn = SimpleNamespace(seen=0.0, quitting=False)
    o.move(s, "#lobby")
    s.room = "#lobby"
    o.fan_out("#lobby", b"200002: before\n", (STAMP, "200002: before"))
    s.data_received(b"CAP REQ :server-time\r\n")
    o.fan_out("#lobby", b"200002: after\n", (STAMP, "200002: after"))
    finish(o)
    assert s.transport.data.decode().splitlines() == [
        f":bob!{BOB}@pychat PRIVMSG #lobby :before",
        ":pychat CAP alice ACK :server-time",
        f"@time={STAMP} :bob!{BOB}@pychat PRIVMSG #lobby :after"]


def _frames_text(data: bytes) -> list[str]:
    """Server frames (unmasked, short) back to their texts."""
    out, i = [], 0
    while i < len(data):
        n = data[i + 1]
        i += 2
        if n == 126:
            n = int.from_bytes(data[i:i + 2], "big")
            i += 2
        out.append(data[i:i + n].decode())
        i += n
    return out


def _interleaving(seed: int) -> None:
    """One random interleaving of fan-outs (a local sender or none), lines of a member's own,
    moves, IRC registrations, uid changes, closes, pauses and slices of rounds, against a model:
    each live member gets, once and in order, every line of its room from its arrival on (an
    IRC member: from its registration on, none of its own chat), and its own lines where they
    were queued; after every step each run counts exactly the members that lack lines."""
    rnd = random.Random(seed)
    loop = asyncio.new_event_loop()
    try:
        o = output(loop)
        clients: list[Client] = []
        expect: dict[Client, list[str]] = {}
        live: dict[Client, bool] = {}
        uids = iter(range(100001, 200000))
        for k in range(9):
            uid = str(next(uids))
            if k % 3 == 2:
                c: Client = IrcClient(o, uid, f"n{uid}", caps=rnd.choice(["", "server-time"]))
                c.door.registered = rnd.random() < 0.5
            else:
                c = Client() if k % 3 == 0 else WebClient()
                c.uid, c.cap_time = uid, rnd.random() < 0.3
            clients.append(c)
            expect[c], live[c] = [], True
        rooms = ["#a", "#b", "#c"]
        for c in clients:
            join(o, c, rnd.choice(rooms))
        n = 0
        for _ in range(400):
            op = rnd.random()
            c = rnd.choice(clients)
            if op < 0.35:
                room, who = rnd.choice(rooms), rnd.choice([*clients, None])
                sender = who.uid if who is not None else "999999"
                n += 1
                o.fan_out(room, f"{sender}: m{n}\n".encode(), (STAMP, f"{sender}: m{n}"))
                for m in clients:
                    if live[m] and m.room == room and not (
                            isinstance(m, IrcClient)
                            and (not m.door.registered or m.uid == sender)):
                        expect[m].append(f"m{n}")
            elif not live[c]:
                continue
            elif op < 0.45:
                n += 1
                o.queue(c, web.frames(f"own{n}\n".encode()) if isinstance(c, WebClient)
                        else f"x own{n}\n".encode())
                expect[c].append(f"own{n}")
            elif op < 0.55:
                join(o, c, rnd.choice(rooms))
            elif op < 0.6:
                if isinstance(c, IrcClient) and not c.door.registered:
                    c.door.registered = True
                    o.ready(c)
            elif op < 0.61:  # a new router's new uid (as Acceptor._set_session)
                old, c.uid = c.uid, str(next(uids))
                o.renumbered(c, old)
            elif op < 0.63:
                live[c] = False
                o.forget(c)
                c.transport.closing = True
            elif op < 0.7:
                if c.blocked:
                    c.blocked = False
                    o.unblocked(c)
                else:
                    c.blocked = True
            elif o._round and o._round_at < len(o._round):  # the loop turns: a slice
                o._write_slice()
            elif o._dirty or o._dirty_rooms:
                o.flush()
            for runs in o._all_runs:
                for room, run in runs.items():
                    lacking = sum(1 for m in run.members if m.mark < run.end)
                    assert run.lagging == lacking, (seed, room)
                    assert all(m.mark >= run.base for m in run.members), (seed, room)
        for c in clients:
            if c.blocked:
                c.blocked = False
                o.unblocked(c)
        finish(o)
        for c in clients:
            texts = (_frames_text(bytes(c.transport.data)) if isinstance(c, WebClient)
                     else c.lines())
            got = [m.group(1) for t in texts if (m := re.search(r"(m\d+|own\d+)$", t))]
            if live[c]:
                assert got == expect[c], (seed, c.uid)
        for runs in o._all_runs:
            for room, run in runs.items():
                assert not run.items, (seed, room)  # all written: nothing kept
                assert all(m.run is run and live[m] for m in run.members), (seed, room)
                assert all(m in run.members for m in (run.senders or {}).values()), (seed, room)
    finally:
        loop.close()


def test_random_interleavings_keep_every_member_s_lines(monkeypatch):
    """The runs of all three kinds against a model, over many random interleavings, with
    rounds cut into slices of 2 (a review's check, kept)."""
    monkeypatch.setattr(output_module, "FLUSH_SLICE", 2)
    for seed in range(300):
        _interleaving(seed)


class SlowSlices:
    """Output's clock for the cost of a round: every slice of writes "takes" 0.5 s."""

    def __init__(self) -> None:
        self.t = 0.0

    def perf_counter(self) -> float:
        self.t += 0.5  # (read at a slice's start and at its end)
        return self.t


def test_the_next_round_waits_only_after_a_round_that_batched(loop, monkeypatch):
    monkeypatch.setattr(output_module, "time", SlowSlices())
    o = Output(loop, Limits(coalesce_ms=1000, coalesce_factor=1.0),
               {"writes": 0, "lines_out": 0}, lambda s, why: None, lambda: None)
    a, b = Client(), Client()
    join(o, a, "#r")
    join(o, b, "#r")
    o.fan_out("#r", b"1\n")
    finish(o)  # a round of one line a write: the next line goes out at once
    o.fan_out("#r", b"2\n")
    assert not isinstance(o._flush_handle, asyncio.TimerHandle)
    finish(o)
    for n in (3, 4, 5):
        o.fan_out("#r", b"%d\n" % n)
    finish(o)  # three lines a write: lines come faster than rounds, the next one waits
    o.fan_out("#r", b"6\n")
    handle = o._flush_handle
    assert isinstance(handle, asyncio.TimerHandle)
    assert 0.4 < handle.when() - loop.time() <= 0.5  # the factor (1) times the round's 0.5 s
    finish(o)
    assert a.lines() == b.lines() == ["1", "2", "3", "4", "5", "6"]
