"""Pure tier: `/cap deltas` (LEFT:, JOINED:, NAMED: instead of whole USERS:/NAMES: pushes).

The router sends each room push with its change since the room's last push (``ToRoom.delta``);
an acceptor gives a member with the capability the change, unless the member has no list it
applies to (new, moved, resynced: ``fresh``), and the whole lists to everyone else. A client
applies both with ``wire.replies.Roster``. The property: a client with deltas always holds the
very list a client without them holds, through any sequence of arrivals, departures, renames,
room changes, replies to /users and /join, and throttled pushes in large rooms; and after the
pushes settle, both equal the router's own list.
"""

from __future__ import annotations

import random

import pytest

from pychat.router.history import MemoryHistory
from pychat.router.state import RouterState
from pychat.wire import replies
from pychat.wire.bus import ChatConn, ChatRoom, Cost, Err, Kick, SessionSet, ToConn, ToRoom
from pychat.wire.commands import Join, Nick, Users
from pychat.wire.replies import Roster, parse_server_line


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def now(self) -> float:
        return self.t


class Client:
    """A session as its acceptor and its client see it: ``view`` from what it is sent (with
    deltas, and the acceptor's ``fresh`` rule), ``twin`` from whole lists only."""

    def __init__(self, deltas: bool) -> None:
        self.deltas = deltas
        self.fresh = True
        self.room = ""
        self.uid = ""
        self.view = Roster()
        self.twin = Roster()
        self.delta_lines = 0

    def lines(self, text: str, twin_text: str | None = None) -> None:
        for line in text.split("\n"):
            if not self.view.apply(parse_server_line(line)) and line.startswith(("JOINED",
                                                                                 "LEFT", "NAMED")):
                raise AssertionError(line)
            self.delta_lines += line.startswith(("JOINED:", "LEFT:", "NAMED:"))
        for line in (text if twin_text is None else twin_text).split("\n"):
            self.twin.apply(parse_server_line(line))


class World:
    def __init__(self, seed: int, coalesce_above: int = 3):
        self.rng = random.Random(seed)
        self.clock = Clock()
        self.state = RouterState(self.clock, MemoryHistory(), random.Random(seed),
                                 coalesce_above=coalesce_above, push_budget=2_000.0,
                                 monotonic=lambda: self.clock.t)
        self.clients: dict[tuple[str, int], Client] = {}
        self.next_conn = 0

    def deliver(self, out) -> None:
        for acc, msg in out:
            if isinstance(msg, SessionSet):
                c = self.clients.get((acc, msg.conn))
                if c is None:
                    continue
                if msg.room != c.room:
                    c.fresh = True
                c.room, c.uid = msg.room, msg.uid
            elif isinstance(msg, ToConn):
                c = self.clients.get((acc, msg.conn))
                if c is not None:
                    c.lines(msg.text)
            elif isinstance(msg, ToRoom):
                members = [c for (a, _), c in self.clients.items()
                           if a == acc and c.room == msg.room]
                assert members, msg
                for c in members:
                    if c.deltas and not c.fresh and msg.delta:
                        c.lines(msg.delta, msg.text)
                    else:
                        c.fresh = False
                        c.lines(msg.text)
            else:
                assert isinstance(msg, (ChatConn, ChatRoom, Cost, Err, Kick)), msg
            self.check()

    def check(self) -> None:
        for key, c in self.clients.items():
            assert c.view.uids == c.twin.uids, key
            assert c.view.names == c.twin.names, key

    def step(self) -> None:
        rng = self.rng
        state = self.state
        keys = list(self.clients)
        r = rng.random()
        if r < 0.25 or not keys:
            self.next_conn += 1
            acc = rng.choice("AB")
            self.clients[(acc, self.next_conn)] = Client(deltas=rng.random() < 0.7)
            out = state.open(acc, self.next_conn)
        elif r < 0.4:
            key = rng.choice(keys)
            del self.clients[key]
            out = state.close(*key)
        elif r < 0.6:
            key = rng.choice(keys)
            out = state.command(*key, Join(rng.choice(["#lobby", "#a", "#b"])))
        elif r < 0.8:
            key = rng.choice(keys)
            out = state.command(*key, Nick(f"n{rng.randrange(12)}"))
        elif r < 0.88:
            key = rng.choice(keys)
            out = state.command(*key, Users())
        else:
            self.clock.t += rng.choice([0.01, 0.05, 0.3, 2.0])
            out = []
        self.deliver(out)
        if rng.random() < 0.6:
            self.deliver(state.end_turn())

    def settle(self) -> None:
        for _ in range(50):
            self.clock.t += 20.0
            self.deliver(self.state.end_turn())
            if not self.state._dirty:
                break
        rooms = self.state.rooms
        for key, c in self.clients.items():
            members = rooms[c.room]
            assert c.view.uids == list(members), key
            assert c.view.names == {u: m.name for u, m in members.items() if m.name}, key


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("coalesce_above", [500, 3])
def test_a_client_with_deltas_holds_the_list_a_client_without_them_holds(seed, coalesce_above):
    world = World(seed, coalesce_above)
    for _ in range(400):
        world.step()
    world.settle()
    assert sum(c.delta_lines for c in world.clients.values()) or not world.clients


def test_the_change_lines_say_who_left_arrived_and_was_named():
    world = World(1)
    state = world.state
    a = Client(deltas=True)
    world.clients[("A", 1)] = a
    world.deliver(state.open("A", 1))
    world.clients[("A", 2)] = Client(deltas=False)
    world.deliver(state.open("A", 2))
    b = world.clients[("A", 2)].uid
    world.clients[("A", 3)] = Client(deltas=False)
    out = state.open("A", 3)
    pushes = [m for _, m in out if isinstance(m, ToRoom)]
    c = world.clients[("A", 3)]
    world.deliver(out)
    assert pushes[0].text == f"USERS:{a.uid},{b},{c.uid}"
    assert pushes[0].delta == f"JOINED:{c.uid}"
    out = state.command("A", 2, Nick("bob"))
    assert [m.delta for _, m in out if isinstance(m, ToRoom)] == [f"NAMED:{b}=bob"]
    world.deliver(out)
    out = state.close("A", 3)
    del world.clients[("A", 3)]
    assert [m.delta for _, m in out if isinstance(m, ToRoom)] == [f"LEFT:{c.uid}"]
    world.deliver(out)
    out = state.command("A", 2, Join("#x")) + state.command("A", 2, Join("#lobby"))
    deltas = [m.delta for _, m in out if isinstance(m, ToRoom) and m.room == "#lobby"]
    assert deltas == [f"LEFT:{b}", f"JOINED:{b}\nNAMED:{b}=bob"]  # back: at the end, named
    world.deliver(out)
    assert a.view.uids == [a.uid, b] and a.view.names == {b: "bob"}


def test_roster_applies_each_line_as_documented():
    r = Roster()
    for line in ["USERS:1,2,3", "NAMES:2=bo", "LEFT:1,9", "JOINED:2,4", "NAMED:4=di,3=",
                 "JOINED:4"]:
        assert r.apply(parse_server_line(line))
    assert r.uids == ["3", "2", "4"] and r.names == {"2": "bo", "4": "di"}
    assert not r.apply(parse_server_line("123456: JOINED:1"))
    assert replies.format_joined(["1", "2"]) == "JOINED:1,2"
    assert replies.format_left(["1"]) == "LEFT:1"
    assert replies.format_named([("1", "a"), ("2", "")]) == "NAMED:1=a,2="
