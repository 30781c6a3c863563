"""Pure tier: router.state.RouterState, driven without any I/O.

Each test builds a ``Net``: the state plus a tiny model of the acceptors (which session is in
which room, from ``SessionSet``) so that the lines each client would see can be asserted, not
only the bus messages.
"""

from __future__ import annotations

import inspect
import random
import re
from collections import Counter, defaultdict

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pychat.router.history import MemoryHistory
from pychat.router.state import RouterState
from pychat.wire.bus import (
    ChatConn,
    ChatRoom,
    Cmd,
    Cost,
    Done,
    Err,
    Kick,
    Notice,
    SessionSet,
    ToConn,
    ToRoom,
)
from pychat.wire.commands import History, Join, Nick, Private, Say, parse_line
from pychat.wire.errors import NAME_TAKEN, NO_SUCH_USER

T0 = 1795692882.123  # 2026-11-26T11:34:42.123Z
STAMP0 = "2026-11-26T11:34:42.123Z"
UID_RE = re.compile(r"[0-9]{6}\Z")


class FakeClock:
    """A stand-in for router.clock.LocalClock so timestamps are predictable: ``now()`` returns
    ``t``, which only a test moves."""

    def __init__(self, t: float = T0):
        self.t = t

    def now(self) -> float:
        return self.t


def make_state(seed: int = 1, rng: random.Random | None = None, coalesce: bool = False,
               clock: FakeClock | None = None) -> RouterState:
    """``coalesce=True``: every room's pushes wait for the end of the turn or the room's next
    delivery (a router that pushes small rooms at once is told to coalesce every room)."""
    kw = {}
    if coalesce and "coalesce_above" in inspect.signature(RouterState).parameters:
        kw["coalesce_above"] = 0
        if "push_budget" in inspect.signature(RouterState).parameters:
            kw["push_budget"] = float("inf")  # coalesce per turn, never wait for an interval
    return RouterState(clock or FakeClock(), MemoryHistory(), rng or random.Random(seed), **kw)


class Net:
    """The state and what each client sees, as the acceptors would deliver it (no cap time).

    Each operation ends the turn unless ``turn=False``: whether a router pushes a list change at
    once or at the end of the turn, the deliveries of one settled turn come in the same order.
    """

    def __init__(self, seed: int = 1, rng: random.Random | None = None, coalesce: bool = False):
        self.clock = FakeClock()
        self.state = make_state(seed, rng, coalesce, self.clock)
        self.sessions: dict[tuple[str, int], SessionSet] = {}
        self.seen: dict[tuple[str, int], list[str]] = defaultdict(list)
        self.done: Counter[tuple[str, int]] = Counter()  # Done (awaited commands answered)
        self.costs: Counter[tuple[str, int]] = Counter()  # Cost reported per session
        self._conns: Counter[str] = Counter()

    # -- driving -------------------------------------------------------------------------------

    def deliver(self, deliveries):
        for acc, msg in deliveries:
            if isinstance(msg, SessionSet):
                self.sessions[(acc, msg.conn)] = msg
            elif isinstance(msg, (ToConn, ChatConn, Kick)):
                assert (acc, msg.conn) in self.sessions, msg
                self.seen[(acc, msg.conn)].extend(msg.text.split("\n") if msg.text else [])
            elif isinstance(msg, Err):  # as a client without /cap codes reads it
                assert (acc, msg.conn) in self.sessions, msg
                self.seen[(acc, msg.conn)].append(f"ERROR: {msg.text}")
            elif isinstance(msg, Done):
                self.done[(acc, msg.conn)] += 1
            elif isinstance(msg, Cost):
                self.costs[(acc, msg.conn)] += msg.bytes
            elif isinstance(msg, (ToRoom, ChatRoom, Notice)):
                local = [k for k, s in self.sessions.items() if k[0] == acc and s.room == msg.room]
                assert local, f"{msg} sent to {acc}, which has nobody in {msg.room}"
                for key in local:
                    self.seen[key].extend(msg.text.split("\n"))
            else:
                raise AssertionError(f"unexpected delivery {msg!r}")
        return deliveries

    def _run(self, out, turn: bool):
        out = list(out)
        if turn:
            out += self.state.end_turn()
        return self.deliver(out)

    def open(self, acc: str = "A", turn: bool = True) -> tuple[str, int]:
        """A client connects; with ``turn`` its handshake is complete."""
        self._conns[acc] += 1
        key = (acc, self._conns[acc])
        self._run(self.state.open(*key), turn)
        return key

    def cmd(self, key, line_or_cmd, turn: bool = True):
        cmd = parse_line(line_or_cmd) if isinstance(line_or_cmd, str) else line_or_cmd
        return self._run(self.state.command(*key, cmd), turn)

    def close(self, key, turn: bool = True):
        self.sessions.pop(key, None)  # the acceptor forgets it before the router hears of it
        return self._run(self.state.close(*key), turn)

    def gone(self, acc: str, turn: bool = True):
        for key in [k for k in self.sessions if k[0] == acc]:
            del self.sessions[key]
        return self._run(self.state.acceptor_gone(acc), turn)

    def sync(self, acc, conn, uid, name, room, turn: bool = True):
        return self._run(self.state.sync(acc, conn, uid, name, room), turn)

    def turn(self):
        return self.deliver(self.state.end_turn())

    # -- looking -------------------------------------------------------------------------------

    def uid(self, key) -> str:
        return self.sessions[key].uid

    def lines(self, key) -> list[str]:
        """What the client saw since the last call."""
        out = list(self.seen[key])
        self.seen[key].clear()
        return out

    def clear(self):
        self.seen.clear()


def users_line(net: Net, *keys) -> str:
    return "USERS:" + ",".join(net.uid(k) for k in keys)


# ---- open: ID, then the USERS push that includes the newcomer -----------------------------------

def test_open_sends_session_then_id_then_the_users_push():
    state = make_state()
    out = state.open("A", 1)
    out += state.end_turn()  # the push comes at once or at the end of the turn
    assert len(out) == 3
    (acc1, sess), (acc2, idline), (acc3, push) = out
    assert acc1 == acc2 == acc3 == "A"
    assert isinstance(sess, SessionSet)
    assert (sess.conn, sess.name, sess.room) == (1, "", "#lobby")
    assert UID_RE.match(sess.uid)
    assert idline == ToConn(1, f"ID:{sess.uid}")
    assert push == ToRoom("#lobby", f"USERS:{sess.uid}", f"JOINED:{sess.uid}")
    assert state.end_turn() == []


def test_handshake_as_the_client_sees_it():
    net = Net()
    a = net.open("A")
    assert net.lines(a) == [f"ID:{net.uid(a)}", f"USERS:{net.uid(a)}"]


def test_users_push_lists_everyone_in_arrival_order_to_every_acceptor():
    net = Net()
    keys = [net.open(acc) for acc in ("A", "B", "A", "C", "B")]
    net.clear()
    newcomer = net.open("C")
    expected = users_line(net, *keys, newcomer)
    for k in keys:
        assert net.lines(k) == [expected]
    assert net.lines(newcomer) == [f"ID:{net.uid(newcomer)}", expected]


def test_the_users_push_crosses_the_bus_once_per_acceptor():
    state = make_state()
    for conn, acc in enumerate("ABACB"):
        state.open(acc, conn)
        state.end_turn()
    out = state.open("C", 99) + state.end_turn()
    pushes = [(acc, msg) for acc, msg in out if isinstance(msg, ToRoom)]
    assert sorted(acc for acc, _ in pushes) == ["A", "B", "C"]
    assert len({msg for _, msg in pushes}) == 1
    assert pushes[0][1].text == "USERS:" + ",".join(state.rooms["#lobby"])
    assert list(state.rooms["#lobby"])[-1] == out[0][1].uid  # the newcomer last


@pytest.mark.parametrize("coalesce", [False, True])
def test_users_push_reaches_members_before_the_next_chat_line(coalesce):
    net = Net(coalesce=coalesce)
    a = net.open("A")
    net.clear()
    b = net.open("B", turn=False)  # the turn is not over
    net.cmd(a, "hello", turn=False)
    assert net.lines(a) == [users_line(net, a, b), f"{net.uid(a)}: hello"]
    assert net.lines(b) == [f"ID:{net.uid(b)}", users_line(net, a, b), f"{net.uid(a)}: hello"]
    assert net.turn() == []


class _Mono:
    """A monotonic clock the test moves by hand (a stand-in for time.monotonic)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def throttled_state(mono: _Mono) -> RouterState:
    # rooms of 2+ members count as large; a budget of 28 bytes/s makes the interval for
    # n members 7*n*n/28 s: 1 s at 2, 2.25 s at 3
    return RouterState(FakeClock(), MemoryHistory(), random.Random(3), coalesce_above=1,
                       push_budget=28.0, monotonic=mono)


def test_large_room_lists_are_throttled_and_a_newcomer_still_gets_its_own():
    mono = _Mono()
    state = throttled_state(mono)
    state.open("A", 1)
    state.end_turn()
    out = state.open("A", 2)  # the first push of a large room goes out at once
    assert [type(m) for _, m in out] == [SessionSet, ToConn, ToRoom]
    mono.t = 0.5
    out = state.open("A", 3)  # within 2.25 s of that push: only the newcomer hears now
    uids = list(state.rooms["#lobby"])
    assert out[1:] == [("A", ToConn(3, f"ID:{uids[2]}")),
                       ("A", ToConn(3, "USERS:" + ",".join(uids)))]
    assert state.next_push() == pytest.approx(2.25)
    mono.t = 2.0
    assert state.end_turn() == []
    mono.t = 2.3
    assert state.end_turn() == [("A", ToRoom("#lobby", "USERS:" + ",".join(uids),
                                             f"JOINED:{uids[2]}"))]  # since the last push
    assert state.next_push() is None


def test_chat_in_a_large_room_does_not_force_a_throttled_push():
    mono = _Mono()
    state = throttled_state(mono)
    state.open("A", 1)
    state.open("A", 2)
    mono.t = 0.5
    state.open("A", 3)
    out = state.command("A", 1, Say("hi"))
    assert [type(m) for _, m in out] == [ChatRoom]


def test_push_interval_grows_with_the_square_of_the_room_and_is_capped():
    state = RouterState(FakeClock(), MemoryHistory())
    assert state.push_interval(500) == 0.0
    assert state.push_interval(1000) == pytest.approx(0.35)
    assert state.push_interval(10_000) == pytest.approx(35.0)
    assert state.push_interval(100_000) == 60.0


def test_uids_are_six_digits_and_unique_over_2000_opens():
    net = Net(seed=7)
    uids = []
    for conn in range(2000):
        out = net.state.open("A" if conn % 2 else "B", conn)
        uids.append(out[0][1].uid)
    assert len(set(uids)) == 2000
    assert all(UID_RE.match(u) for u in uids)
    assert set(net.state.users) == set(uids)


class _RepeatingRng(random.Random):
    """randrange returns the same values again and again: every uid collides at first."""

    def __init__(self, values):
        super().__init__(0)
        self._values = iter(values)

    def randrange(self, *args, **kw):
        return next(self._values)


def test_a_colliding_uid_is_drawn_again():
    net = Net(rng=_RepeatingRng([123456, 123456, 123456, 654321]))
    a = net.open()
    b = net.open()
    assert (net.uid(a), net.uid(b)) == ("123456", "654321")


def test_duplicate_open_is_ignored():
    net = Net()
    net.state.open("A", 1)
    net.state.end_turn()
    assert net.state.open("A", 1) == []
    assert len(net.state.users) == 1


def test_command_from_an_unknown_session_is_dropped():
    net = Net()
    assert net.state.command("A", 99, Say("hi")) == []


# ---- public messages ----------------------------------------------------------------------------

def test_public_message_crosses_the_bus_once_per_acceptor_with_members_in_the_room():
    net = Net()
    lobby = [net.open(acc) for acc in ("A", "A", "B", "C", "C", "C")]
    elsewhere = [net.open("D"), net.open("D")]
    for k in elsewhere:
        net.cmd(k, "/join #other")
    net.clear()
    sender = lobby[0]
    out = net.cmd(sender, "hello all")
    line = f"{net.uid(sender)}: hello all"
    assert sorted(acc for acc, _ in out) == ["A", "B", "C"]
    assert all(msg == ChatRoom("#lobby", STAMP0, line) for _, msg in out)
    for k in lobby:  # the sender too
        assert net.lines(k) == [line]
    for k in elsewhere:
        assert net.lines(k) == []


def test_public_message_is_stamped_with_the_router_clock():
    net = Net()
    a = net.open()
    net.clock.t = 0.5
    (_, msg), = net.cmd(a, "x")
    assert msg.stamp == "1970-01-01T00:00:00.500Z"


def test_slash_slash_text_is_public():
    net = Net()
    a = net.open()
    net.clear()
    net.cmd(a, "//shrug")
    assert net.lines(a) == [f"{net.uid(a)}: /shrug"]


# ---- private messages ---------------------------------------------------------------------------

def test_private_by_uid_across_acceptors():
    net = Net()
    a, b, c = net.open("A"), net.open("B"), net.open("B")
    net.clear()
    out = net.cmd(a, f"/msg {net.uid(b)} psst")
    assert out == [("B", ChatConn(b[1], STAMP0, f"[Private] {net.uid(a)}: psst")),
                   ("A", ChatConn(a[1], STAMP0, f"[Private] To {net.uid(b)}: psst"))]
    assert net.lines(b) == [f"[Private] {net.uid(a)}: psst"]
    assert net.lines(a) == [f"[Private] To {net.uid(b)}: psst"]
    assert net.lines(c) == []


def test_private_by_name_ignoring_case_and_in_another_room():
    net = Net()
    a, b = net.open("A"), net.open("B")
    net.cmd(b, "/nick Alice")
    net.cmd(b, "/join #elsewhere")
    net.clear()
    net.cmd(a, "/w aLiCe hi there")
    assert net.lines(b) == [f"[Private] {net.uid(a)}: hi there"]
    assert net.lines(a) == [f"[Private] To {net.uid(b)}: hi there"]


def test_private_to_an_unknown_target_is_an_error_to_the_sender_only():
    net = Net()
    a, b = net.open("A"), net.open("A")
    net.clear()
    out = net.cmd(a, "/msg nobody hi")
    assert out == [("A", Err(a[1], NO_SUCH_USER, "no such user nobody"))]
    assert net.lines(b) == []
    assert net.lines(a) == ["ERROR: no such user nobody"]
    assert "999999" not in net.state.users
    net.cmd(a, "/msg 999999 hi")
    assert net.lines(a) == ["ERROR: no such user 999999"]


def test_private_to_a_user_who_left_is_an_error():
    net = Net()
    a, b = net.open("A"), net.open("B")
    gone_uid = net.uid(b)
    net.close(b)
    net.clear()
    net.cmd(a, f"/msg {gone_uid} hi")
    assert net.lines(a) == [f"ERROR: no such user {gone_uid}"]


# ---- /nick --------------------------------------------------------------------------------------

def test_nick_ok_then_names_push_to_the_room():
    net = Net()
    a, b = net.open("A"), net.open("B")
    net.clear()
    out = net.cmd(a, "/nick alice")
    names = f"NAMES:{net.uid(a)}=alice"
    assert out[:2] == [("A", SessionSet(a[1], net.uid(a), "alice", "#lobby")),
                       ("A", ToConn(a[1], "OK nick alice"))]
    named = f"NAMED:{net.uid(a)}=alice"
    assert sorted(out[2:], key=lambda d: d[0]) == [("A", ToRoom("#lobby", names, named)),
                                                    ("B", ToRoom("#lobby", names, named))]
    assert net.lines(a) == ["OK nick alice", names]
    assert net.lines(b) == [names]


def test_nick_taken_ignoring_case_is_refused_with_the_name_as_requested():
    net = Net()
    a, b = net.open("A"), net.open("B")
    net.cmd(a, "/nick alice")
    net.clear()
    out = net.cmd(b, "/nick ALICE")
    assert out == [("B", Err(b[1], NAME_TAKEN, "name ALICE is taken"))]
    assert net.turn() == []
    assert net.state.names["alice"].uid == net.uid(a)
    assert net.sessions[b].name == ""


def test_renaming_yourself_in_another_case_is_allowed():
    net = Net()
    a, b = net.open("A"), net.open("B")
    net.cmd(a, "/nick alice")
    net.clear()
    net.cmd(a, "/nick ALICE")
    assert net.lines(a) == ["OK nick ALICE", f"NAMES:{net.uid(a)}=ALICE"]
    assert net.lines(b) == [f"NAMES:{net.uid(a)}=ALICE"]
    assert net.sessions[a].name == "ALICE"
    assert list(net.state.names) == ["alice"]


def test_a_changed_name_frees_the_old_one():
    net = Net()
    a, b = net.open("A"), net.open("B")
    net.cmd(a, "/nick alice")
    net.cmd(a, "/nick bob")
    net.clear()
    net.cmd(b, "/nick Alice")
    assert net.lines(b) == ["OK nick Alice", f"NAMES:{net.uid(a)}=bob,{net.uid(b)}=Alice"]
    net.cmd(b, "/nick BOB")
    assert net.lines(b) == ["ERROR: name BOB is taken"]


# ---- /users -------------------------------------------------------------------------------------

def test_users_without_names_gives_an_empty_names_line():
    net = Net()
    a, b = net.open("A"), net.open("B")
    net.clear()
    net.cmd(b, "/users")
    assert net.lines(b) == [users_line(net, a, b), "NAMES:"]
    assert net.lines(a) == []


def test_users_with_names():
    net = Net()
    a, b, c = net.open("A"), net.open("B"), net.open("B")
    net.cmd(c, "/nick carol")
    net.cmd(a, "/nick al")
    net.clear()
    net.cmd(b, "/users")
    assert net.lines(b) == [users_line(net, a, b, c),
                            f"NAMES:{net.uid(a)}=al,{net.uid(c)}=carol"]


# ---- /join --------------------------------------------------------------------------------------

def test_join_gives_room_then_the_new_rooms_lists_and_the_old_room_its_users():
    net = Net()
    a, b, c = net.open("A"), net.open("B"), net.open("A")
    net.clear()
    out = net.cmd(b, "/join #dev")
    assert out == [
        ("B", SessionSet(b[1], net.uid(b), "", "#dev")),
        ("B", ToConn(b[1], "ROOM:#dev")),
        ("B", ToRoom("#dev", f"USERS:{net.uid(b)}", f"JOINED:{net.uid(b)}")),
        ("B", ToConn(b[1], "NAMES:")),
        ("A", ToRoom("#lobby", users_line(net, a, c), f"LEFT:{net.uid(b)}")),  # the old room
    ]
    assert net.lines(b) == ["ROOM:#dev", f"USERS:{net.uid(b)}", "NAMES:"]
    assert net.lines(a) == [users_line(net, a, c)]
    assert net.lines(c) == [users_line(net, a, c)]
    assert net.lines(b) == []


def test_join_a_room_with_named_members_pushes_users_and_names_to_all_of_them():
    net = Net()
    w, x = net.open("A"), net.open("B")
    net.cmd(w, "/nick wally")
    net.cmd(w, "/join #dev")
    net.clear()
    net.cmd(x, "/join #dev")
    push = f"{users_line(net, w, x)}\nNAMES:{net.uid(w)}=wally"
    assert net.lines(x) == ["ROOM:#dev", *push.split("\n")]  # no extra empty NAMES:
    assert net.lines(w) == push.split("\n")


def test_join_your_own_room_repeats_room_users_names_to_you_only():
    net = Net()
    a, b = net.open("A"), net.open("A")
    net.clear()
    out = net.cmd(a, "/join #lobby")
    assert out == [("A", ToConn(a[1], f"ROOM:#lobby\n{users_line(net, a, b)}\nNAMES:"))]
    assert net.turn() == []


def test_chat_after_a_join_reaches_only_the_new_room():
    net = Net()
    a, b, c = net.open("A"), net.open("A"), net.open("B")
    net.cmd(a, "/join #dev")
    net.cmd(c, "/join #dev")
    net.clear()
    net.cmd(a, "in dev")
    assert net.lines(c) == [f"{net.uid(a)}: in dev"]
    assert net.lines(b) == []


# ---- NAMES is never pushed unasked where nobody has a name --------------------------------------

PART1_LINE = re.compile(
    r"(ID:\d{6}|USERS:(\d{6}(,\d{6})*)?|\d{6}: .*|\[Private\] (To )?\d{6}: .*)\Z")


def test_a_part1_client_sees_only_part1_lines():
    net = Net()
    p1, p2 = net.open("A"), net.open("B")
    others = [net.open("C") for _ in range(4)]
    for i, k in enumerate(others):  # Part 2 users, all named, all in other rooms
        net.cmd(k, f"/join #r{i % 2}")
        net.cmd(k, f"/nick n{i}")
    u1, u2, u0 = net.uid(p1), net.uid(p2), net.uid(others[0])
    net.cmd(others[0], f"/msg {u1} hi p1")
    net.cmd(p1, "hello")
    net.cmd(p2, f"/msg {u1} hi")
    late = net.open("C")  # a newcomer arrives in the lobby, then leaves for a named room
    u_late = net.uid(late)
    net.cmd(late, "/join #r0")
    net.close(others[1])
    net.gone("C")
    net.cmd(p2, "bye")
    net.close(p2)
    seen = net.lines(p1)
    assert [line for line in seen if not PART1_LINE.match(line)] == []
    for expected in (f"[Private] {u0}: hi p1", f"{u1}: hello", f"[Private] {u2}: hi",
                     f"USERS:{u1},{u2},{u_late}", f"{u2}: bye"):
        assert expected in seen
    assert seen[-1] == f"USERS:{u1}"


def test_names_stop_following_users_once_the_last_named_member_leaves():
    net = Net()
    a, b, c = net.open("A"), net.open("A"), net.open("B")
    net.cmd(c, "/nick carol")
    net.clear()
    net.close(c)
    assert net.lines(a) == [users_line(net, a, b)]
    d = net.open("B")
    assert net.lines(a) == [users_line(net, a, b, d)]
    assert net.lines(d) == [f"ID:{net.uid(d)}", users_line(net, a, b, d)]


def test_handshake_users_is_followed_by_names_when_someone_has_a_name():
    net = Net()
    a = net.open("A")
    net.cmd(a, "/nick al")
    net.clear()
    b = net.open("B")
    assert net.lines(b) == [f"ID:{net.uid(b)}", users_line(net, a, b), f"NAMES:{net.uid(a)}=al"]


# ---- /rooms -------------------------------------------------------------------------------------

def test_rooms_lists_rooms_with_members_and_their_counts():
    net = Net()
    keys = [net.open(acc) for acc in "AABBC"]
    net.cmd(keys[0], "/join #dev")
    net.cmd(keys[2], "/join #dev")
    net.cmd(keys[4], "/join #zzz")
    net.cmd(keys[4], "/join #aaa")  # #zzz is empty again: not listed
    net.clear()
    net.cmd(keys[1], "/rooms")
    assert net.lines(keys[1]) == ["ROOMS:#aaa=1,#dev=2,#lobby=2"]


# ---- /history -----------------------------------------------------------------------------------

def _say_at(net, key, text, t):
    net.clock.t = t
    net.cmd(key, text)


def test_history_returns_the_last_n_with_their_own_time_tags():
    net = Net()
    a, b = net.open("A"), net.open("B")
    for i in range(5):
        _say_at(net, a if i % 2 else b, f"m{i}", 1000.0 + i)
    net.clear()
    net.clock.t = 99999.0  # now is later: the tags are the send times
    net.cmd(a, "/history 3")
    assert net.lines(a) == [
        "HISTORY:3",
        f"@time=1970-01-01T00:16:42.000Z {net.uid(b)}: m2",
        f"@time=1970-01-01T00:16:43.000Z {net.uid(a)}: m3",
        f"@time=1970-01-01T00:16:44.000Z {net.uid(b)}: m4",
    ]
    assert net.lines(b) == []


def test_history_default_zero_and_more_than_there_is():
    net = Net()
    a = net.open()
    for i in range(3):
        net.cmd(a, f"m{i}")
    net.clear()
    net.cmd(a, "/history 0")
    assert net.lines(a) == ["HISTORY:0"]
    net.cmd(a, "/history")
    assert [line.split(" ", 1)[1] for line in net.lines(a)[1:]] == [
        f"{net.uid(a)}: m{i}" for i in range(3)]
    net.cmd(a, "/history 50")
    lines = net.lines(a)
    assert lines[0] == "HISTORY:3" and len(lines) == 4
    assert all(line.startswith(f"@time={STAMP0} ") for line in lines[1:])


def test_history_of_an_empty_room_is_history_0():
    net = Net()
    a = net.open()
    net.clear()
    net.cmd(a, "/history 10")
    assert net.lines(a) == ["HISTORY:0"]


def test_history_is_per_room():
    net = Net()
    a, b = net.open("A"), net.open("B")
    net.cmd(b, "/join #dev")
    net.cmd(a, "lobby talk")
    net.cmd(b, "dev talk")
    net.clear()
    net.cmd(b, "/history")
    assert net.lines(b) == ["HISTORY:1", f"@time={STAMP0} {net.uid(b)}: dev talk"]
    net.cmd(a, "/history")
    assert net.lines(a) == ["HISTORY:1", f"@time={STAMP0} {net.uid(a)}: lobby talk"]


def test_history_is_capped_at_200():
    net = Net()
    a = net.open()
    for i in range(250):
        net.cmd(a, f"m{i}")
    net.clear()
    net.cmd(a, "/history 500")
    lines = net.lines(a)
    assert lines[0] == "HISTORY:200"
    assert lines[1].endswith(": m50") and lines[-1].endswith(": m249")
    assert len(lines) == 201
    net.cmd(a, History(1000))  # even past the parser's cap, the store keeps only 200
    assert net.lines(a)[0] == "HISTORY:200"


def test_private_messages_are_not_in_history():
    net = Net()
    a, b = net.open("A"), net.open("B")
    net.cmd(a, f"/msg {net.uid(b)} secret")
    net.clear()
    net.cmd(b, "/history")
    assert net.lines(b) == ["HISTORY:0"]


# ---- close, acceptor_gone, empty rooms ----------------------------------------------------------

def test_close_pushes_users_without_the_user_and_frees_the_name():
    net = Net()
    a, b, c = net.open("A"), net.open("B"), net.open("A")
    net.cmd(b, "/nick bob")
    net.clear()
    net.close(b)
    assert net.lines(a) == [users_line(net, a, c)]  # no NAMES: nobody left has a name
    assert net.lines(c) == [users_line(net, a, c)]
    assert "bob" not in net.state.names
    net.cmd(a, "/nick BOB")
    assert net.lines(a) == ["OK nick BOB", f"NAMES:{net.uid(a)}=BOB"]


def test_close_keeps_names_of_the_others_in_the_push():
    net = Net()
    a, b, c = net.open("A"), net.open("B"), net.open("A")
    net.cmd(a, "/nick al")
    net.clear()
    net.close(b)
    assert net.lines(c) == [users_line(net, a, c), f"NAMES:{net.uid(a)}=al"]


def test_close_of_an_unknown_session_does_nothing():
    net = Net()
    net.open()
    assert net.state.close("A", 42) == []
    assert net.state.close("Z", 1) == []
    assert len(net.state.users) == 1


def test_acceptor_gone_removes_all_its_users():
    net = Net()
    a1, b1, a2, b2 = net.open("A"), net.open("B"), net.open("A"), net.open("B")
    b3 = net.open("B")
    net.cmd(b1, "/nick gone1")
    net.cmd(b3, "/join #only-b")
    net.clear()
    gone_uids = {net.uid(k) for k in (b1, b2, b3)}
    out = net.gone("B")
    out += net.turn()
    assert all(acc == "A" for acc, _ in out)
    assert net.lines(a1) == [users_line(net, a1, a2)]
    assert not gone_uids & set(net.state.users)
    assert net.state.acceptors() == {"A"}
    assert "#only-b" not in net.state.rooms
    assert "gone1" not in net.state.names


def test_a_room_disappears_when_empty():
    net = Net()
    a, b = net.open("A"), net.open("A")
    net.cmd(a, "/join #dev")
    assert "#dev" in net.state.rooms
    net.cmd(a, "/join #lobby")
    assert "#dev" not in net.state.rooms
    assert "#dev" not in net.state.room_acceptors
    net.close(a)
    net.close(b)
    assert net.state.rooms == {}
    assert net.state.room_acceptors == {}


# ---- sync: adopting sessions after a router restart ---------------------------------------------

def test_sync_adopts_a_session_with_its_uid_name_and_room():
    net = Net()
    out = net.sync("A", 5, "123456", "alice", "#dev")
    assert out == [("A", SessionSet(5, "123456", "alice", "#dev")),
                   ("A", ToRoom("#dev", "USERS:123456\nNAMES:123456=alice",
                                "JOINED:123456\nNAMED:123456=alice"))]
    assert net.state.names["alice"].uid == "123456"
    b = net.open("B")
    net.cmd(b, "/msg ALICE hi")
    assert net.lines(("A", 5))[-1] == f"[Private] {net.uid(b)}: hi"


def test_sync_without_a_room_lands_in_the_lobby_and_duplicates_are_ignored():
    net = Net()
    net.sync("A", 5, "123456", "", "")
    assert net.sessions[("A", 5)].room == "#lobby"
    assert net.state.sync("A", 5, "654321", "x", "#x") == []
    assert list(net.state.users) == ["123456"]


def test_sync_settles_a_uid_clash_and_a_name_clash():
    net = Net()
    net.sync("A", 1, "123456", "alice", "#lobby")
    net.clear()
    net.sync("B", 1, "123456", "ALICE", "#lobby")
    sess = net.sessions[("B", 1)]
    assert sess.uid != "123456" and UID_RE.match(sess.uid)
    assert sess.name == ""
    seen = net.lines(("B", 1))
    assert f"ID:{sess.uid}" in seen
    assert "ERROR: name ALICE is taken" in seen
    assert net.state.names["alice"].uid == "123456"
    assert set(net.state.users) == {"123456", sess.uid}


@pytest.mark.parametrize("bad_uid", ["", "12345", "1234567", "12345a", "abcdef"])
def test_sync_replaces_an_invalid_uid(bad_uid):
    net = Net()
    net.sync("A", 1, bad_uid, "", "#lobby")
    uid = net.sessions[("A", 1)].uid
    assert UID_RE.match(uid)
    assert f"ID:{uid}" in net.lines(("A", 1))


def test_sync_replaces_a_uid_of_non_ascii_digits():
    net = Net()
    net.sync("A", 1, "١٢٣٤٥٦", "", "#lobby")
    assert UID_RE.match(net.sessions[("A", 1)].uid)


# ---- invariants after any sequence --------------------------------------------------------------

def check_invariants(state: RouterState) -> None:
    """The invariants of router/state.py's docstring, checked from the outside."""
    users = state.users
    assert len(state.by_conn) == len(users)
    for uid, u in users.items():
        assert u.uid == uid and UID_RE.match(uid)
        assert state.by_conn[(u.acceptor, u.conn)] is u
    # a name is unique after casefold; names maps the folded name to its user
    named = [u for u in users.values() if u.name]
    assert len({u.name.casefold() for u in named}) == len(named)
    assert state.names == {u.name.casefold(): u for u in named}
    # every user is in exactly one room; a room exists while it has members
    for room, members in state.rooms.items():
        assert members, f"empty room {room} kept"
        for uid, u in members.items():
            assert users[uid] is u and u.room == room
    assert sum(len(m) for m in state.rooms.values()) == len(users)
    assert all(u.uid in state.rooms[u.room] for u in users.values())
    # room_acceptors counts members per acceptor
    assert set(state.room_acceptors) == set(state.rooms)
    for room, members in state.rooms.items():
        assert state.room_acceptors[room] == dict(Counter(u.acceptor for u in members.values()))


ACCS = st.sampled_from(["A", "B", "C", "D"])
NAMES = st.sampled_from(["alice", "ALICE", "Alice", "bob", "Bob", "carol", "x"])
ROOMS = st.sampled_from(["#lobby", "#a", "#b", "#B"])
PICK = st.integers(0, 10_000)


class RouterMachine(RuleBasedStateMachine):
    """Random open/close/nick/join/say/msg/acceptor_gone/sync/end_turn against a model of the
    rooms (members in arrival order) and names, and the USERS-before-chat rule."""

    coalesce = False

    def __init__(self):
        super().__init__()
        self.state = make_state(seed=3, coalesce=self.coalesce)
        self.conn = 0
        self.rooms: dict[str, list[str]] = {}  # model: room -> uids in arrival order
        self.names: dict[str, str] = {}  # model: uid -> name
        self.pushed: dict[str, list[str]] = {}  # room -> uids of its last USERS push

    def _pick(self, i):
        users = list(self.state.users.values())
        return users[i % len(users)] if users else None

    def _enter(self, uid, room):
        self.rooms.setdefault(room, []).append(uid)

    def _leave(self, uid):
        for room, members in self.rooms.items():
            if uid in members:
                members.remove(uid)
                if not members:
                    del self.rooms[room]
                return

    def _watch(self, out):
        """Pushes update what members were told; a chat line must follow an up-to-date list."""
        for acc, msg in out:
            if isinstance(msg, ToRoom) and msg.text.startswith("USERS:"):
                first = msg.text.split("\n")[0][len("USERS:"):]
                self.pushed[msg.room] = first.split(",") if first else []
            elif isinstance(msg, ChatRoom):
                assert self.pushed.get(msg.room) == list(self.state.rooms[msg.room])
                assert acc in self.state.room_acceptors[msg.room]
            elif isinstance(msg, ChatConn):
                room = self.state.by_conn[(acc, msg.conn)].room
                assert self.pushed.get(room) == list(self.state.rooms[room])
        chat_rooms = [(acc, m.room, m.text) for acc, m in out if isinstance(m, ChatRoom)]
        assert len(chat_rooms) == len(set(chat_rooms)), "a room message crossed twice"
        return out

    @rule(acc=ACCS)
    def open(self, acc):
        self.conn += 1
        out = self._watch(self.state.open(acc, self.conn))
        uid = out[0][1].uid
        self._enter(uid, "#lobby")

    @rule(i=PICK)
    def close(self, i):
        u = self._pick(i)
        if u is not None:
            self._watch(self.state.close(u.acceptor, u.conn))
            self._leave(u.uid)
            self.names.pop(u.uid, None)

    @rule(i=PICK, name=NAMES)
    def nick(self, i, name):
        u = self._pick(i)
        if u is None:
            return
        holder = next((uid for uid, n in self.names.items() if n.casefold() == name.casefold()),
                      None)
        out = self._watch(self.state.command(u.acceptor, u.conn, Nick(name)))
        replies_to_user = [m.text if isinstance(m, ToConn) else f"ERROR: {m.text}"
                           for _, m in out if isinstance(m, (ToConn, Err))]
        if holder is not None and holder != u.uid:
            assert replies_to_user == [f"ERROR: name {name} is taken"]
        else:
            assert replies_to_user == [f"OK nick {name}"]
            self.names[u.uid] = name

    @rule(i=PICK, room=ROOMS)
    def join(self, i, room):
        u = self._pick(i)
        if u is None:
            return
        old = u.room
        out = self._watch(self.state.command(u.acceptor, u.conn, Join(room)))
        to_user = [m.text for acc, m in out
                   if isinstance(m, ToConn) and (acc, m.conn) == (u.acceptor, u.conn)]
        if room == old:
            assert len(to_user) == 1 and to_user[0].startswith(f"ROOM:{room}\nUSERS:")
        else:
            # NAMES is asked for: an empty one when nobody in the new room (joiner included)
            # has a name, else it follows the USERS push to the room
            nobody_named = not any(self.names.get(m) for m in [*self.rooms.get(room, []), u.uid])
            assert to_user == ([f"ROOM:{room}", "NAMES:"] if nobody_named else [f"ROOM:{room}"])
        if room != old:
            self._leave(u.uid)
            self._enter(u.uid, room)

    @rule(i=PICK)
    def say(self, i):
        u = self._pick(i)
        if u is not None:
            out = self._watch(self.state.command(u.acceptor, u.conn, Say("hi")))
            chats = [acc for acc, m in out if isinstance(m, ChatRoom)]
            assert sorted(chats) == sorted(self.state.room_acceptors[u.room])

    @rule(i=PICK, j=PICK, by_name=st.booleans())
    def msg(self, i, j, by_name):
        u, v = self._pick(i), self._pick(j)
        if u is None:
            return
        target = (v.name.upper() if by_name and v.name else v.uid)
        out = self._watch(self.state.command(u.acceptor, u.conn, Private(target, "p")))
        assert [type(m) for _, m in out if not isinstance(m, ToRoom)] == [ChatConn, ChatConn]

    @rule(acc=ACCS)
    def acceptor_gone(self, acc):
        leaving = [u.uid for u in self.state.users.values() if u.acceptor == acc]
        self._watch(self.state.acceptor_gone(acc))
        for uid in leaving:
            self._leave(uid)
            self.names.pop(uid, None)

    @rule(acc=ACCS, i=PICK, clash_uid=st.booleans(), name=st.one_of(st.just(""), NAMES),
          room=ROOMS)
    def sync(self, acc, i, clash_uid, name, room):
        u = self._pick(i)
        uid = u.uid if (clash_uid and u) else str(100000 + (i * 7919) % 900000)
        self.conn += 1
        taken = name and any(n.casefold() == name.casefold() for n in self.names.values())
        out = self._watch(self.state.sync(acc, self.conn, uid, name, room))
        sess = next(m for _, m in out if isinstance(m, SessionSet))
        self._enter(sess.uid, room)
        if taken:
            assert sess.name == ""
        elif name:
            assert sess.name == name
            self.names[sess.uid] = name

    @rule()
    def end_turn(self):
        out = self._watch(self.state.end_turn())
        for _acc, msg in out:
            assert isinstance(msg, ToRoom)
            members = self.state.rooms[msg.room].values()
            # NAMES only where a member has a name: a Part 1 room stays Part 1
            assert ("NAMES:" in msg.text) == any(m.name for m in members)
        assert self.state.end_turn() == []
        # every room's members have been told the current list
        for room, members in self.state.rooms.items():
            assert self.pushed.get(room) == list(members)

    @invariant()
    def invariants(self):
        check_invariants(self.state)
        assert {r: list(m) for r, m in self.state.rooms.items()} == self.rooms
        for room, members in self.rooms.items():  # the kept USERS line is the members, in order
            assert self.state._users_line(room) == "USERS:" + ",".join(members)
        assert {uid: u.name for uid, u in self.state.users.items() if u.name} == self.names


class CoalescingRouterMachine(RouterMachine):
    coalesce = True


_machine_settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestRouterMachine = RouterMachine.TestCase
TestRouterMachine.settings = _machine_settings
TestCoalescingRouterMachine = CoalescingRouterMachine.TestCase
TestCoalescingRouterMachine.settings = _machine_settings


def test_long_random_walk_keeps_the_invariants():
    rng = random.Random(2024)
    net = Net(seed=11)
    keys: list[tuple[str, int]] = []
    for _step in range(3000):
        op = rng.random()
        if op < 0.25 or not keys:
            keys.append(net.open(rng.choice("ABCD")))
        elif op < 0.4:
            net.close(keys.pop(rng.randrange(len(keys))))
        elif op < 0.55:
            net.cmd(rng.choice(keys), f"/nick {rng.choice(['a', 'A', 'b', 'B', 'c'])}")
        elif op < 0.75:
            net.cmd(rng.choice(keys), f"/join {rng.choice(['#lobby', '#x', '#y'])}")
        elif op < 0.85:
            net.cmd(rng.choice(keys), "hello")
        elif op < 0.88:
            acc = rng.choice("ABCD")
            net.gone(acc)
            keys = [k for k in keys if k[0] != acc]
        else:
                check_invariants(net.state)
        assert set(net.state.by_conn) == set(keys)
    for room, members in net.state.rooms.items():
        assert len(members) == sum(net.state.room_acceptors[room].values())


# ---- the cost of a command --------------------------------------------------------------------

def test_a_costly_command_is_reported_with_what_it_made_the_server_send():
    net = Net()
    a = net.open("A")
    net.open("B")
    for i in range(30):  # 30 lines of 1,000 characters in the lobby's history
        net.cmd(a, "x" * 1000 + f" {i}")
    out = net.state.handle("A", Cmd(a[1], History(20)))
    costs = [m for _, m in out if isinstance(m, Cost)]
    history = next(m for _, m in out if isinstance(m, ToConn) and m.text.startswith("HISTORY:"))
    assert costs == [Cost(a[1], len(history.text) + 1)] and costs[0].bytes > 20_000
    assert [acc for acc, m in out if isinstance(m, Cost)] == ["A"]  # to the asker's acceptor


def test_a_line_to_a_room_costs_its_length_times_the_members_and_small_things_nothing():
    net = Net()
    members = [net.open("A" if i % 2 else "B") for i in range(40)]
    speaker = members[0]
    out = net.state.handle(speaker[0], Cmd(speaker[1], Say("y" * 200)))
    line = next(m for _, m in out if isinstance(m, ChatRoom))
    cost = (len(line.text) + 1) * 40
    assert [m for _, m in out if isinstance(m, Cost)] == [Cost(speaker[1], cost)]
    out = net.state.handle(speaker[0], Cmd(speaker[1], Say("hi")))  # 40 x 11 bytes: not reported
    assert not [m for _, m in out if isinstance(m, Cost)]
