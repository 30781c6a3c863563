"""End to end: every row of the client contract (../shared/PROTOCOL.md) over real processes.

What this file owns: the protocol as a client on a raw TCP socket sees it, against
``pychat serve`` (two acceptors sharing one port) and a router with two acceptors started by hand.
Unit tests of the parser and of the router state live elsewhere; here only bytes on sockets count.

How the tests stay independent and fast:
- fresh clients per test; with ``shared_serve`` every test that looks at room-wide traffic first
  moves its clients into a room of its own (``make_room``), and names are unique per test;
- lobby-wide checks (exact ``USERS:`` lists, a Part 1 session's whole transcript) use the
  per-test ``serve``;
- nothing sleeps: a test waits for the line it expects (``Connection.expect``/``read_line`` with a
  timeout). "Nothing arrives" is checked with a marker: the observer's next chat line after the
  event must be a marker sent later, so anything leaked would have come first.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from datetime import datetime, timezone

import pytest

from support.client import Connection, WsConnection
from support.procs import start_serve

pytestmark = pytest.mark.e2e

WELCOME = "Welcome to PyChat Server!"
MAX_LINE = 4096
TOO_LONG = f"ERROR: line too long (max {MAX_LINE} bytes)"
BAD_UTF8 = "ERROR: invalid UTF-8"
TAG_RE = re.compile(r"@time=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (.*)\Z", re.S)
CHAT_RE = re.compile(r"(?:@time=\S+ )?(?:\d{6}: |\[Private\] )")
ROOMS_RE = re.compile(r"ROOMS:(#[A-Za-z0-9_-]+=\d+(,#[A-Za-z0-9_-]+=\d+)*)?\Z")


# ---- helpers ------------------------------------------------------------------------------------

def unique(prefix: str = "n") -> str:
    return prefix + uuid.uuid4().hex[:12]


def new_room() -> str:
    return "#" + unique("r")


def users(*clients) -> str:
    return "USERS:" + ",".join(c.uid for c in clients)


def names_of(line: str) -> dict[str, str]:
    assert line.startswith("NAMES:"), line
    body = line[len("NAMES:"):]
    return dict(item.split("=", 1) for item in body.split(",")) if body else {}


def is_chat(line: str) -> bool:
    return CHAT_RE.match(line) is not None


def next_chat(c, timeout: float | None = None) -> str:
    """The client's next chat line (public or private, tagged or not), skipping list pushes."""
    return c.expect(is_chat, timeout)


def say(c, text: str) -> str:
    """Send a public line and wait for its own echo (the connection works)."""
    c.send(text)
    return c.expect(f"{c.uid}: {text}")


def marker(c) -> str:
    """A unique public line from ``c``; returns the line every room member should get."""
    text = unique("marker-")
    c.send(text)
    return f"{c.uid}: {text}"


def assert_next_chat_is(line: str, *observers) -> None:
    for o in observers:
        got = next_chat(o)
        assert got == line, f"{o.uid} got {got!r} before the marker {line!r}"


def join(c, room: str, members: list, names: str = "NAMES:") -> None:
    """``/join``: ROOM:, then the new room's USERS (members in order of arrival), then NAMES."""
    c.send(f"/join {room}")
    c.expect(f"ROOM:{room}")
    assert c.read_line() == users(*members)
    assert c.read_line() == names


def client(connect, port: int):
    c = connect(port)
    c.handshake()
    return c


def make_room(connect, ports, n: int):
    """``n`` fresh clients (spread over ``ports``) in a new room; each has seen the full USERS."""
    if isinstance(ports, int):
        ports = [ports]
    room = new_room()
    members = []
    for i in range(n):
        c = client(connect, ports[i % len(ports)])
        join(c, room, members + [c])
        for m in members:
            assert m.read_line() == users(*members, c)
        members.append(c)
    return room, members


def parse_stamp(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def assert_tagged(line: str, body: str) -> str:
    """``line`` is ``@time=<now, UTC, ms, Z> <body>``; returns the stamp."""
    m = TAG_RE.match(line)
    assert m, f"not tagged: {line!r}"
    assert m.group(2) == body
    age = abs(datetime.now(timezone.utc) - parse_stamp(m.group(1))).total_seconds()
    assert age < 120, f"stamp {m.group(1)} is {age:.0f}s away from now (not UTC?)"
    return m.group(1)


class RawClient:
    """A bare socket, to see the server's bytes exactly (``Connection`` drops a ``\\r``)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.data = b""

    def read_until(self, needle: bytes, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.data:
            left = deadline - time.monotonic()
            assert left > 0, f"no {needle!r} in time; got {self.data!r}"
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before {needle!r}; got {self.data!r}"
            self.data += chunk
        return self.data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["tcp", "ws"])
def connect(request):
    """One suite, two transports: every test of this file that opens clients with ``connect``
    runs over TCP and over the web door's WebSocket (``/ws``, one text frame per line:
    support/client.py ``WsConnection``), against the same kinds of servers."""
    opened: list[Connection] = []
    kind = Connection if request.param == "tcp" else WsConnection

    def make(port: int, **kw) -> Connection:
        c = kind("127.0.0.1", port, **kw)
        opened.append(c)
        return c

    make.transport = request.param  # type: ignore[attr-defined]
    yield make
    for c in opened:
        c.close()


def tcp_only(connect, why: str) -> None:
    """A test of the TCP door's byte stream (packets, line ends): a WebSocket frame is a line."""
    if connect.transport != "tcp":
        pytest.skip(f"TCP framing: {why}")


@pytest.fixture
def raw():
    opened: list[RawClient] = []

    def make(port: int) -> RawClient:
        r = RawClient(port)
        opened.append(r)
        return r

    yield make
    for r in opened:
        r.close()


# ---- Part 1: the original PyChat -----------------------------------------------------------------

def test_handshake_welcome_id_users_in_order_of_arrival(serve, connect):
    a = connect(serve)
    assert a.read_line() == WELCOME
    id_line = a.read_line()
    assert re.fullmatch(r"ID:\d{6}", id_line), id_line  # six digits
    ua = id_line[3:]
    assert a.read_line() == f"USERS:{ua}"

    b = client(connect, serve)
    assert b.seen == [WELCOME, f"ID:{b.uid}", users(a, b)]
    assert a.read_line() == users(a, b)
    c = client(connect, serve)
    assert c.seen == [WELCOME, f"ID:{c.uid}", users(a, b, c)]
    assert a.read_line() == users(a, b, c)
    assert b.read_line() == users(a, b, c)
    assert len({a.uid, b.uid, c.uid}) == 3
    # the newcomer's handshake USERS is its push for its own arrival: no second USERS follows
    line = marker(c)
    assert c.read_line() == line
    assert a.read_line() == line


def test_users_pushed_to_the_others_when_someone_disconnects(serve, connect):
    a = client(connect, serve)
    b = client(connect, serve)
    a.expect(users(a, b))
    c = client(connect, serve)
    a.expect(users(a, b, c))
    b.expect(users(a, b, c))
    b.close()
    assert a.read_line() == users(a, c)
    assert c.read_line() == users(a, c)


def test_public_message_reaches_every_member_sender_included(shared_serve, connect):
    _, (a, b, c) = make_room(connect, shared_serve, 3)
    b.send("hello, room")
    for o in (a, b, c):
        assert o.read_line() == f"{b.uid}: hello, room"


def test_private_message_reaches_target_and_sender_only(shared_serve, connect):
    _, (a, b, c) = make_room(connect, shared_serve, 3)
    a.send(f"/msg {b.uid} just between us")
    assert b.read_line() == f"[Private] {a.uid}: just between us"
    assert a.read_line() == f"[Private] To {b.uid}: just between us"
    line = marker(a)
    assert_next_chat_is(line, c, b, a)


def test_line_sent_before_the_handshake_is_read_comes_after_it(serve, connect):
    a = client(connect, serve)
    b = connect(serve)
    b.send("typed at once")  # before reading anything
    b.expect(lambda line: line == f"{b.uid}: typed at once")  # uid known once ID: is read
    assert b.seen == [WELCOME, f"ID:{b.uid}", users(a, b), f"{b.uid}: typed at once"]
    assert a.read_line() == users(a, b)
    assert a.read_line() == f"{b.uid}: typed at once"


def test_part1_session_sees_exactly_part1(serve, connect):
    """Nobody in the lobby has a name: a client that only chats sees only Part 1 lines, even
    while a named user exists in another room."""
    a = client(connect, serve)
    b = client(connect, serve)
    a.expect(users(a, b))
    c = client(connect, serve)
    for o in (a, b):
        o.expect(users(a, b, c))
    a.send("hello all")
    for o in (a, b, c):
        o.expect(f"{a.uid}: hello all")
    b.send(f"/msg {a.uid} psst")
    a.expect(f"[Private] {b.uid}: psst")
    b.expect(f"[Private] To {a.uid}: psst")
    d = client(connect, serve)  # arrives, moves away, takes a name, talks in its room
    for o in (a, b, c):
        o.expect(users(a, b, c, d))
    join(d, new_room(), [d])
    for o in (a, b, c):
        o.expect(users(a, b, c))
    d.send(f"/nick {unique('d')}")
    d.expect_prefix("NAMES:")
    say(d, "elsewhere")
    c.close()
    for o in (a, b):
        o.expect(users(a, b))
    end = marker(b)
    a.expect(end)
    b.expect(end)
    assert a.seen == [
        WELCOME, f"ID:{a.uid}", users(a), users(a, b), users(a, b, c), f"{a.uid}: hello all",
        f"[Private] {b.uid}: psst", users(a, b, c, d), users(a, b, c), users(a, b), end]
    assert b.seen == [
        WELCOME, f"ID:{b.uid}", users(a, b), users(a, b, c), f"{a.uid}: hello all",
        f"[Private] To {a.uid}: psst", users(a, b, c, d), users(a, b, c), users(a, b), end]


def test_names_follow_users_pushes_while_someone_in_the_room_has_a_name(serve, connect):
    a = client(connect, serve)
    name = unique("Ann")
    a.send(f"/nick {name}")
    assert a.read_line() == f"OK nick {name}"
    assert a.read_line() == f"NAMES:{a.uid}={name}"
    b = client(connect, serve)  # the handshake's USERS is followed by NAMES
    assert b.read_line() == f"NAMES:{a.uid}={name}"
    assert b.seen == [WELCOME, f"ID:{b.uid}", users(a, b), f"NAMES:{a.uid}={name}"]
    assert a.read_line() == users(a, b)
    assert a.read_line() == f"NAMES:{a.uid}={name}"
    c = client(connect, serve)
    assert c.read_line() == f"NAMES:{a.uid}={name}"
    for o in (a, b):
        assert o.read_line() == users(a, b, c)
        assert o.read_line() == f"NAMES:{a.uid}={name}"
    b.close()  # a departure: USERS, then NAMES (a still has a name)
    for o in (a, c):
        assert o.read_line() == users(a, c)
        assert o.read_line() == f"NAMES:{a.uid}={name}"
    a.close()  # the last named member leaves: USERS, and no NAMES any more
    assert c.read_line() == users(c)
    line = marker(c)
    assert c.read_line() == line
    c.send(f"/nick {name.lower()}")  # and its name is free again
    assert c.read_line() == f"OK nick {name.lower()}"


# ---- Part 2: one test per row --------------------------------------------------------------------

def test_double_slash_sends_text_starting_with_slash(shared_serve, connect):
    _, (a, b) = make_room(connect, shared_serve, 2)
    a.send("//not a command")
    a.send("///two")
    for o in (a, b):
        assert o.read_line() == f"{a.uid}: /not a command"
        assert o.read_line() == f"{a.uid}: //two"


def test_w_is_the_same_as_msg(shared_serve, connect):
    _, (a, b, c) = make_room(connect, shared_serve, 3)
    a.send(f"/w {b.uid} whispered")
    assert b.read_line() == f"[Private] {a.uid}: whispered"
    assert a.read_line() == f"[Private] To {b.uid}: whispered"
    assert_next_chat_is(marker(a), c)


def test_nick_ok_then_names_to_the_room_only(shared_serve, connect):
    _, (a, b) = make_room(connect, shared_serve, 2)
    _, (out,) = make_room(connect, shared_serve, 1)
    na, nb = unique("Al"), unique("bo_")
    a.send(f"/nick {na}")
    assert a.read_line() == f"OK nick {na}"
    assert names_of(a.read_line()) == {a.uid: na}
    assert names_of(b.read_line()) == {a.uid: na}
    b.send(f"/nick {nb}")
    assert b.read_line() == f"OK nick {nb}"
    for o in (a, b):
        assert names_of(o.read_line()) == {a.uid: na, b.uid: nb}
    # a name change is pushed too
    na2 = unique("Al-")
    a.send(f"/nick {na2}")
    assert a.read_line() == f"OK nick {na2}"
    for o in (a, b):
        assert names_of(o.read_line()) == {a.uid: na2, b.uid: nb}
    # the other room heard none of it
    line = marker(out)
    assert out.read_line() == line


def test_nick_taken_ignoring_case_in_any_room(shared_serve, connect):
    _, (a,) = make_room(connect, shared_serve, 1)
    _, (b,) = make_room(connect, shared_serve, 1)
    name = unique("Taken")
    a.send(f"/nick {name}")
    a.expect(f"OK nick {name}")
    for asked in (name.upper(), name.lower(), name):
        b.send(f"/nick {asked}")
        assert b.read_line() == f"ERROR: name {asked} is taken"
    line = marker(b)
    assert b.read_line() == line
    # a name given up by renaming is free again
    a.send(f"/nick {unique('other')}")
    a.expect_prefix("OK nick ")
    b.send(f"/nick {name.lower()}")
    assert b.read_line() == f"OK nick {name.lower()}"


@pytest.mark.parametrize("shape", ["24 characters", "all kinds", "one character"])
def test_nick_valid_names(shared_serve, connect, shape):
    _, (a,) = make_room(connect, shared_serve, 1)
    # names are global on the shared server: unique ones of the given shape
    name = {"24 characters": "X" + uuid.uuid4().hex[:23], "all kinds": "A-b_9" + unique("z"),
            "one character": "7"}[shape]
    a.send(f"/nick {name}")
    assert a.read_line() == f"OK nick {name}"
    assert names_of(a.read_line()) == {a.uid: name}


@pytest.mark.parametrize("name", ["x" * 25, "bad!name", "dot.ted", "sp ace", "#room",
                                  "u123456"])
def test_nick_invalid_names_are_refused(shared_serve, connect, name):
    _, (a,) = make_room(connect, shared_serve, 1)
    a.send(f"/nick {name}")
    assert a.read_line().startswith("ERROR: ")
    a.send("/users")
    assert a.read_line() == users(a)
    assert a.read_line() == "NAMES:"  # no name was set
    line = marker(a)
    assert a.read_line() == line


def test_msg_to_a_display_name_ignoring_case_in_any_room(shared_serve, connect):
    _, (a,) = make_room(connect, shared_serve, 1)
    _, (b, c) = make_room(connect, shared_serve, 2)
    name = unique("Bob")
    b.send(f"/nick {name}")
    b.expect(f"OK nick {name}")
    c.expect_prefix("NAMES:")
    a.send(f"/msg {name.upper()} by name")
    assert b.expect(is_chat) == f"[Private] {a.uid}: by name"
    assert a.read_line() == f"[Private] To {b.uid}: by name"
    a.send(f"/w {name.lower()} again")
    assert b.read_line() == f"[Private] {a.uid}: again"
    assert a.read_line() == f"[Private] To {b.uid}: again"
    assert_next_chat_is(marker(b), c)


@pytest.mark.parametrize("target", ["nobody", "123", "000000x"])
def test_msg_to_an_unknown_target_is_an_error(shared_serve, connect, target):
    _, (a, b) = make_room(connect, shared_serve, 2)
    a.send(f"/msg {unique(target)} hello?")
    assert a.read_line().startswith("ERROR: ")
    assert_next_chat_is(marker(a), b, a)


def test_users_gives_users_then_names_which_may_be_empty(shared_serve, connect):
    _, (a, b) = make_room(connect, shared_serve, 2)
    b.send("/users")
    assert b.read_line() == users(a, b)
    assert b.read_line() == "NAMES:"
    name = unique("u")
    a.send(f"/nick {name}")
    a.expect(f"OK nick {name}")
    b.expect_prefix("NAMES:")
    b.send("/users")
    assert b.read_line() == users(a, b)
    assert names_of(b.read_line()) == {a.uid: name}


def test_join_moves_lists_and_messages(shared_serve, connect):
    r1, (a, b) = make_room(connect, shared_serve, 2)
    r2, (c,) = make_room(connect, shared_serve, 1)
    join(a, r2, [c, a])  # ROOM:, USERS: of r2, NAMES: (asked, so even empty)
    assert c.read_line() == users(c, a)  # the new room's members
    assert b.read_line() == users(b)  # the old room's members
    # nobody has a name: no NAMES unasked, and public messages stay in their room
    a.send("in r2")
    assert c.read_line() == f"{a.uid}: in r2"
    assert a.read_line() == f"{a.uid}: in r2"
    line = marker(b)
    assert b.read_line() == line
    c.send("still r2")
    assert a.read_line() == f"{c.uid}: still r2"
    assert c.read_line() == f"{c.uid}: still r2"
    assert_next_chat_is(marker(b), b)
    # joining back: r1's list grows again
    join(a, r1, [b, a])
    assert b.read_line() == users(b, a)
    assert c.read_line() == users(c)


def test_join_with_names_pushes_names_only_where_someone_has_one(shared_serve, connect):
    _r1, (a, b, c) = make_room(connect, shared_serve, 3)
    r2, (d,) = make_room(connect, shared_serve, 1)
    na, nb = unique("a"), unique("b")
    a.send(f"/nick {na}")
    a.expect(f"OK nick {na}")
    for o in (a, b, c):
        o.expect(lambda ln: ln.startswith("NAMES:") and names_of(ln) == {a.uid: na})
    b.send(f"/nick {nb}")
    b.expect(f"OK nick {nb}")
    for o in (a, b, c):
        o.expect(lambda ln: ln.startswith("NAMES:") and len(names_of(ln)) == 2)
    # a, named, moves to r2: r2 gets USERS then NAMES; r1 (b still named) gets USERS then NAMES
    a.send(f"/join {r2}")
    assert a.read_line() == f"ROOM:{r2}"
    assert a.read_line() == users(d, a)
    assert names_of(a.read_line()) == {a.uid: na}
    assert d.read_line() == users(d, a)
    assert names_of(d.read_line()) == {a.uid: na}
    for o in (b, c):
        assert o.read_line() == users(b, c)
        assert names_of(o.read_line()) == {b.uid: nb}
    # b, the last named member of r1, moves to a fresh room: c gets USERS and no NAMES
    join(b, new_room(), [b], names=f"NAMES:{b.uid}={nb}")
    assert c.read_line() == users(c)
    line = marker(c)
    assert c.read_line() == line


@pytest.mark.parametrize("room", ["lobby", "#", "#bad!", "#" + "x" * 33, "#a #b", "##x"])
def test_join_invalid_room_is_an_error_and_keeps_the_room(shared_serve, connect, room):
    _r, (a, b) = make_room(connect, shared_serve, 2)
    a.send(f"/join {room}")
    assert a.read_line().startswith("ERROR: ")
    line = marker(a)  # still in r: b hears it
    assert a.read_line() == line
    assert b.read_line() == line


def test_join_room_name_of_32_characters(shared_serve, connect):
    a = client(connect, shared_serve)
    room = "#" + (uuid.uuid4().hex * 2)[:32]
    join(a, room, [a])


def test_rooms_lists_rooms_with_members_and_counts(shared_serve, connect):
    r1, (a, b) = make_room(connect, shared_serve, 2)
    r2, (c,) = make_room(connect, shared_serve, 1)
    a.send("/rooms")
    line = a.read_line()
    assert ROOMS_RE.match(line), line
    rooms = dict(item.split("=") for item in line[len("ROOMS:"):].split(","))
    assert rooms[r1] == "2" and rooms[r2] == "1"
    assert all(int(n) >= 1 for n in rooms.values())
    join(c, r1, [a, b, c])  # r2 is empty now: not listed
    a.expect(users(a, b, c))
    a.send("/rooms")
    line = a.read_line()
    assert ROOMS_RE.match(line), line
    rooms = dict(item.split("=") for item in line[len("ROOMS:"):].split(","))
    assert rooms[r1] == "3" and r2 not in rooms


def test_history_per_room_tagged_as_sent(shared_serve, connect):
    r1, (a, b) = make_room(connect, shared_serve, 2)
    _r2, (c,) = make_room(connect, shared_serve, 1)
    b.send("/cap time")
    assert b.read_line() == "OK cap time"
    live = []
    for i in range(5):
        a.send(f"m{i}")
        live.append(b.read_line())  # b sees each with its @time= tag
    a.send(f"/msg {b.uid} not for the history")
    b.expect(lambda ln: ln.endswith(f"[Private] {a.uid}: not for the history"))
    a.expect(f"[Private] To {b.uid}: not for the history")
    say(c, "only in r2")
    # a newcomer to r1 gets r1's history, exactly as it was sent
    d = client(connect, shared_serve)
    join(d, r1, [a, b, d])
    d.send("/history")
    assert d.read_line() == "HISTORY:5"
    got = [d.read_line() for _ in range(5)]
    assert got == live
    for i, line in enumerate(got):
        assert_tagged(line, f"{a.uid}: m{i}")
    d.send("/history 2")
    assert d.read_line() == "HISTORY:2"
    assert [d.read_line(), d.read_line()] == live[-2:]
    d.send("/history 0")
    assert d.read_line() == "HISTORY:0"
    d.send("/ping after-history")
    assert d.read_line() == "PONG after-history"
    c.send("/history")
    assert c.read_line() == "HISTORY:1"
    assert_tagged(c.read_line(), f"{c.uid}: only in r2")


def test_history_defaults_to_20_and_caps_at_200(shared_serve, connect):
    _, members = make_room(connect, shared_serve, 3)
    a = members[0]
    for i, m in enumerate(members):  # 210 messages, 70 per client: within the flood burst
        m.send_raw(b"".join(f"h{i}-{j}\n".encode() for j in range(70)))
    order = [a.read_line() for _ in range(210)]  # the room's order, as the router made it
    for m in members[1:]:
        assert [m.read_line() for _ in range(210)] == order
    assert sorted(order) == sorted(f"{m.uid}: h{i}-{j}" for i, m in enumerate(members)
                                   for j in range(70))

    def history(arg: str) -> list[str]:
        a.send(f"/history {arg}".rstrip())
        head = a.read_line()
        assert re.fullmatch(r"HISTORY:\d+", head), head
        k = int(head[len("HISTORY:"):])
        lines = [a.read_line() for _ in range(k)]
        bodies = []
        for line in lines:
            m = TAG_RE.match(line)
            assert m, line
            bodies.append(m.group(2))
        return bodies

    assert history("") == order[-20:]
    assert history("500") == order[-200:]
    assert history("201") == order[-200:]
    assert history("200") == order[-200:]
    assert history("7") == order[-7:]


def test_cap_time_tags_chat_lines_only(shared_serve, connect):
    room, (a, b) = make_room(connect, shared_serve, 2)
    a.send("/cap time")
    assert a.read_line() == "OK cap time"
    after_cap = len(a.seen)
    a.send("tagged public")
    assert_tagged(a.read_line(), f"{a.uid}: tagged public")
    assert b.read_line() == f"{a.uid}: tagged public"  # b has no cap: untagged
    b.send("from b")
    assert_tagged(a.read_line(), f"{b.uid}: from b")
    assert b.read_line() == f"{b.uid}: from b"
    a.send(f"/msg {b.uid} private out")
    assert_tagged(a.read_line(), f"[Private] To {b.uid}: private out")
    assert b.read_line() == f"[Private] {a.uid}: private out"
    b.send(f"/msg {a.uid} private in")
    assert_tagged(a.read_line(), f"[Private] {b.uid}: private in")
    assert b.read_line() == f"[Private] To {a.uid}: private in"
    # replies are never tagged
    a.send("/users")
    assert a.read_line() == users(a, b)
    assert a.read_line() == "NAMES:"
    a.send("/ping tok")
    assert a.read_line() == "PONG tok"
    a.send("/nope")
    assert a.read_line() == "ERROR: unknown command /nope"
    name = unique("cap")
    a.send(f"/nick {name}")
    assert a.read_line() == f"OK nick {name}"
    assert names_of(a.read_line()) == {a.uid: name}
    a.send("/rooms")
    assert a.read_line().startswith("ROOMS:")
    a.send("/history 1")
    assert a.read_line() == "HISTORY:1"
    assert_tagged(a.read_line(), f"{b.uid}: from b")
    c = client(connect, shared_serve)
    join(c, room, [a, b, c], names=f"NAMES:{a.uid}={name}")
    assert a.read_line() == users(a, b, c)  # a newcomer's USERS push, untagged
    assert names_of(a.read_line()) == {a.uid: name}
    join(a, new_room(), [a], names=f"NAMES:{a.uid}={name}")
    a.send("last")
    assert_tagged(a.read_line(), f"{a.uid}: last")
    # every line since the cap: tagged exactly when it is a chat line
    for line in a.seen[after_cap:]:
        body = line.split(" ", 1)[1] if line.startswith("@time=") else line
        chat = re.match(r"\d{6}: |\[Private\] ", body) is not None
        assert line.startswith("@time=") == chat, line


def test_cap_unknown_capability_is_an_error(shared_serve, connect):
    _, (a,) = make_room(connect, shared_serve, 1)
    a.send("/cap colours")
    assert a.read_line().startswith("ERROR: ")
    line = marker(a)
    assert a.read_line() == line  # and still untagged


def test_ping_with_and_without_token(shared_serve, connect):
    a = client(connect, shared_serve)
    a.send("/ping")
    assert a.expect_prefix("PONG") == "PONG"
    a.send("/ping tok-123")
    assert a.expect_prefix("PONG") == "PONG tok-123"


def test_help_gives_at_least_one_line(shared_serve, connect):
    _, (a,) = make_room(connect, shared_serve, 1)
    a.send("/help")
    a.send("/ping end-of-help")
    lines = []
    while (line := a.read_line()) != "PONG end-of-help":
        lines.append(line)
    assert lines, "no help lines"
    assert not any(line.startswith("ERROR") for line in lines), lines
    text = "\n".join(lines)
    for word in ("msg", "w", "nick", "users", "join", "rooms", "history", "cap", "ping", "help",
                 "quit", "exit"):
        assert re.search(rf"/{word}\b", text), f"/{word} is not listed:\n{text}"


@pytest.mark.parametrize("line", ["/quit", "/quit gone fishing", "/exit"])
def test_quit_says_bye_closes_and_the_others_get_users(shared_serve, connect, line):
    _, (a, b) = make_room(connect, shared_serve, 2)
    a.send(line)
    assert a.read_until_closed() == ["BYE"]
    assert b.read_line() == users(b)


@pytest.mark.parametrize("word", ["frobnicate", "nicks", "QUITE"])
def test_unknown_command(shared_serve, connect, word):
    _, (a,) = make_room(connect, shared_serve, 1)
    a.send(f"/{word} with args")
    assert a.read_line() == f"ERROR: unknown command /{word}"
    line = marker(a)
    assert a.read_line() == line


# ---- every error keeps the connection ------------------------------------------------------------

ERROR_CASES = [
    # (bytes sent, the exact ERROR line or None for any "ERROR: <what>" line)
    pytest.param(b"/frobnicate\n", "ERROR: unknown command /frobnicate", id="unknown-command"),
    pytest.param(b"/msg nobody-has-this-name hi\n", None, id="msg-unknown-target"),
    pytest.param(b"/msg\n", None, id="msg-no-args"),
    pytest.param(b"/msg 123456\n", None, id="msg-no-text"),
    pytest.param(b"/w\n", None, id="w-no-args"),
    pytest.param(b"/nick bad!\n", None, id="nick-invalid"),
    pytest.param(b"/nick\n", None, id="nick-no-name"),
    pytest.param(b"/join lobby\n", None, id="join-invalid"),
    pytest.param(b"/join\n", None, id="join-no-room"),
    pytest.param(b"/history abc\n", None, id="history-not-a-number"),
    pytest.param(b"/history -1\n", None, id="history-negative"),
    pytest.param(b"/cap nosuch\n", None, id="cap-unknown"),
    pytest.param(b"/cap\n", None, id="cap-no-name"),
    pytest.param(b"x" * (MAX_LINE + 1) + b"\n", TOO_LONG, id="line-too-long"),
    pytest.param(b"\xff\xfe\n", BAD_UTF8, id="invalid-utf8"),
]


@pytest.mark.parametrize("data,error", ERROR_CASES)
def test_error_is_one_line_and_the_connection_goes_on(shared_serve, connect, data, error):
    _, (a, b) = make_room(connect, shared_serve, 2)
    a.send_raw(data)
    line = a.read_line()
    if error is None:
        assert line.startswith("ERROR: ") and len(line) > len("ERROR: "), line
    else:
        assert line == error
    echo = marker(a)
    assert a.read_line() == echo  # one ERROR line, then the connection goes on
    assert b.read_line() == echo


def test_taken_name_error_keeps_the_connection(shared_serve, connect):
    _, (a, b) = make_room(connect, shared_serve, 2)
    name = unique("k")
    a.send(f"/nick {name}")
    a.expect(f"OK nick {name}")
    for o in (a, b):
        assert names_of(o.expect_prefix("NAMES:")) == {a.uid: name}
    b.send(f"/nick {name.upper()}")
    assert b.read_line() == f"ERROR: name {name.upper()} is taken"
    line = marker(b)
    assert b.read_line() == line
    assert a.read_line() == line


# ---- framing, over raw bytes ---------------------------------------------------------------------

def test_line_sent_one_byte_per_send(shared_serve, connect):
    _, (a, b) = make_room(connect, shared_serve, 2)
    for byte in "slow héllo wörld\n".encode():
        a.send_raw(bytes([byte]))
    for o in (a, b):
        assert o.read_line() == f"{a.uid}: slow héllo wörld"


def test_many_lines_in_one_packet(shared_serve, connect):
    _, (a, b) = make_room(connect, shared_serve, 2)
    a.send_raw(b"".join(b"packed %d\n" % i for i in range(40)))
    for o in (a, b):
        assert [o.read_line() for _ in range(40)] == [f"{a.uid}: packed {i}" for i in range(40)]


@pytest.mark.parametrize("text", ["café", "😀 four bytes", "日本語"])
def test_utf8_character_split_across_packets(shared_serve, connect, text):
    _, (a, b) = make_room(connect, shared_serve, 2)
    data = text.encode("utf-8") + b"\n"
    first_multibyte = next(i for i, ch in enumerate(data) if ch >= 0x80)
    cut = first_multibyte + 1  # inside the character
    a.send_raw(data[:cut])
    a.send_raw(data[cut:cut + 1])
    a.send_raw(data[cut + 1:])
    for o in (a, b):
        assert o.read_line() == f"{a.uid}: {text}"


def test_crlf_line_endings_echo_without_cr(shared_serve, raw):
    r = raw(shared_serve)
    r.read_until(b"\nUSERS:")
    uid = re.search(rb"ID:(\d{6})\n", r.data).group(1).decode()
    room = new_room()
    r.sock.sendall(f"/join {room}\r\n".encode())
    r.read_until(f"ROOM:{room}\n".encode())
    r.sock.sendall(b"one\r\ntwo\nthree\r\n")
    data = r.read_until(f"{uid}: three\n".encode())
    tail = data[data.index(f"ROOM:{room}\n".encode()):]
    assert f"{uid}: one\n{uid}: two\n{uid}: three\n".encode() in tail
    assert b"\r" not in data


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_line_of_exactly_max_bytes_is_accepted(shared_serve, connect, ending):
    _, (a, b) = make_room(connect, shared_serve, 2)
    ascii_text = "a" * MAX_LINE
    a.send_raw(ascii_text.encode() + ending)
    for o in (a, b):
        assert o.read_line() == f"{a.uid}: {ascii_text}"
    wide = "é" * (MAX_LINE // 2)  # 4096 bytes, 2048 characters: the limit counts bytes
    a.send_raw(wide.encode() + ending)
    assert a.read_line() == f"{a.uid}: {wide}"


@pytest.mark.parametrize("data", [
    b"a" * (MAX_LINE + 1) + b"\n",
    b"a" * (MAX_LINE + 1) + b"\r\n",
    "é".encode() * (MAX_LINE // 2) + b"!\n",
    b"b" * (64 * 1024) + b"\n",
], ids=["4097", "4097-crlf", "4097-utf8", "64KiB"])
def test_line_over_max_bytes_is_refused_and_the_next_line_works(shared_serve, connect, data):
    _, (a, b) = make_room(connect, shared_serve, 2)
    a.send_raw(data)
    assert a.read_line() == TOO_LONG
    a.send("next")
    assert a.read_line() == f"{a.uid}: next"
    assert_next_chat_is(f"{a.uid}: next", b)


def test_line_limit_is_configurable_and_the_error_names_it(procs, connect):
    p, port = start_serve("--max-line", "100")
    procs.append(p)
    a = client(connect, port)
    a.send("x" * 100)
    assert a.read_line() == f"{a.uid}: " + "x" * 100
    a.send("y" * 101)
    assert a.read_line() == "ERROR: line too long (max 100 bytes)"
    line = marker(a)
    assert a.read_line() == line


def test_too_long_line_and_next_line_in_one_packet(shared_serve, connect):
    _, (a, b) = make_room(connect, shared_serve, 2)
    a.send_raw(b"c" * (MAX_LINE + 10) + b"\nright after\n")
    assert a.read_line() == TOO_LONG
    assert a.read_line() == f"{a.uid}: right after"
    assert_next_chat_is(f"{a.uid}: right after", b)


def test_too_long_line_in_pieces_is_discarded_up_to_its_newline(shared_serve, connect):
    tcp_only(connect, "a line refused before its newline comes")
    _, (a, b) = make_room(connect, shared_serve, 2)
    a.send_raw(b"d" * (MAX_LINE + 100))  # already too long: refused without waiting for \n
    assert a.read_line() == TOO_LONG
    a.send_raw(b"d" * 1000)
    a.send_raw(b"tail of the long line\nnext line\n")
    assert a.read_line() == f"{a.uid}: next line"
    assert_next_chat_is(f"{a.uid}: next line", b)


def test_max_bytes_plus_cr_then_lf_in_another_packet_is_accepted(shared_serve, connect):
    _, (a, b) = make_room(connect, shared_serve, 2)
    text = "e" * MAX_LINE
    a.send_raw(text.encode() + b"\r")
    a.send_raw(b"\n")
    for o in (a, b):
        assert o.read_line() == f"{a.uid}: {text}"


@pytest.mark.parametrize("data", [b"\xff", b"caf\xc3", b"\xc0\xaf", b"\xed\xa0\x80 surrogate",
                                  b"ok \x80 then"])
def test_invalid_utf8_is_refused_and_the_next_line_works(shared_serve, connect, data):
    _, (a, b) = make_room(connect, shared_serve, 2)
    a.send_raw(data + b"\nvalid after\n")
    assert a.read_line() == BAD_UTF8
    assert a.read_line() == f"{a.uid}: valid after"
    assert_next_chat_is(f"{a.uid}: valid after", b)


SANITIZE_CASES = [
    ("a\x1b[31mred\x1b[0m\x07b", "aredb"),
    ("x\x1b[1;31;42my\x1b[2Jz", "xyz"),
    ("title\x1b]0;evil title\x07done", "titledone"),
    ("nul\x00bell\x07bs\x08del\x7fend", "nulbellbsdelend"),
    ("c1\u0085x\u0084y\u009cz", "c1xyz"),
    ("csi8\u009b31mbit", "csi8bit"),
    ("dcs8\u0090q#1\u009cbit", "dcs8bit"),
    ("cr\rinside", "crinside"),
    ("tab\tkept", "tab\tkept"),
    ("esc\x1bcreset", "escreset"),
]


@pytest.mark.parametrize("sent,shown", SANITIZE_CASES,
                         ids=["csi-colour", "csi-params", "osc-title", "c0-del", "c1", "csi-8bit",
                              "dcs-8bit", "cr-inside", "tab", "esc-two-byte"])
def test_controls_and_ansi_escapes_are_removed_for_everyone(shared_serve, connect, sent, shown):
    _, (a, b) = make_room(connect, shared_serve, 2)
    a.send_raw(sent.encode("utf-8") + b"\n")
    for o in (a, b):
        assert o.read_line() == f"{a.uid}: {shown}"


def test_private_text_is_sanitized_too(shared_serve, connect):
    _, (a, b) = make_room(connect, shared_serve, 2)
    a.send_raw(f"/msg {b.uid} \x1b[5mblink\x1b[0m\x07!\n".encode())
    assert b.read_line() == f"[Private] {a.uid}: blink!"
    assert a.read_line() == f"[Private] To {b.uid}: blink!"


def test_blank_and_control_only_lines_are_ignored(shared_serve, connect):
    _, (a, b) = make_room(connect, shared_serve, 2)
    a.send_raw(b"\n\r\n   \n\t\n \t \n\x07\n\x1b[0m\n \x00 \x1b[2J \n\xc2\x85\n"
               + "\u00a0\u3000\u2003\n".encode())
    line = marker(a)
    assert a.read_line() == line
    assert b.read_line() == line


# ---- across acceptors ----------------------------------------------------------------------------

def test_hand_cluster_public_private_rooms_and_names_across_acceptors(hand_cluster, connect):
    p1, p2 = hand_cluster
    a = client(connect, p1)
    b = client(connect, p2)
    a.expect(users(a, b))
    c = client(connect, p2)
    d = client(connect, p1)
    for o in (a, b, c):
        o.expect(users(a, b, c, d))
    # public, both ways
    a.send("from p1")
    b.send("from p2")
    for o in (a, b, c, d):
        assert {o.read_line(), o.read_line()} == {f"{a.uid}: from p1", f"{b.uid}: from p2"}
    # private, both ways, by uid and by name
    a.send(f"/msg {b.uid} p1 to p2")
    assert b.read_line() == f"[Private] {a.uid}: p1 to p2"
    assert a.read_line() == f"[Private] To {b.uid}: p1 to p2"
    name = unique("Dee")
    d.send(f"/nick {name}")  # d (p1) names itself: NAMES to everyone on both acceptors
    assert d.read_line() == f"OK nick {name}"
    for o in (a, b, c, d):
        assert names_of(o.expect_prefix("NAMES:")) == {d.uid: name}
    c.send(f"/msg {name.swapcase()} p2 to p1 by name")
    assert d.read_line() == f"[Private] {c.uid}: p2 to p1 by name"
    assert c.read_line() == f"[Private] To {d.uid}: p2 to p1 by name"
    assert_next_chat_is(marker(c), a, b, c, d)
    # a (p1) and b (p2) move to a room: lists on both sides, messages stay in the room
    room = new_room()
    join(a, room, [a])
    for o in (b, c, d):
        assert o.read_line() == users(b, c, d)
        assert names_of(o.read_line()) == {d.uid: name}
    join(b, room, [a, b])
    assert a.read_line() == users(a, b)
    for o in (c, d):
        assert o.read_line() == users(c, d)
        assert names_of(o.read_line()) == {d.uid: name}
    nb = unique("Bee")
    b.send(f"/nick {nb}")
    assert b.read_line() == f"OK nick {nb}"
    for o in (a, b):
        assert names_of(o.read_line()) == {b.uid: nb}
    b.send("room only")
    for o in (a, b):
        assert o.read_line() == f"{b.uid}: room only"
    assert_next_chat_is(marker(d), c, d)
    a.send(f"/msg {c.uid} out of the room")
    assert c.read_line() == f"[Private] {a.uid}: out of the room"
    assert a.read_line() == f"[Private] To {c.uid}: out of the room"


def test_serve_clients_spread_over_acceptors_all_talk(serve, connect):
    """The kernel spreads connections over the two acceptors; six clients make it near-certain
    that both are used (and every pair is checked)."""
    cs = []
    for _ in range(6):
        c = client(connect, serve)
        for o in cs:
            o.expect(users(*cs, c))
        cs.append(c)
    for i, c in enumerate(cs):
        c.send(f"public {i}")
        for o in cs:
            assert o.read_line() == f"{c.uid}: public {i}"
    for i, c in enumerate(cs):
        t = cs[(i + 1) % len(cs)]
        c.send(f"/msg {t.uid} private {i}")
        assert t.expect(is_chat) == f"[Private] {c.uid}: private {i}"
        assert c.expect(is_chat) == f"[Private] To {t.uid}: private {i}"
    room = new_room()
    inside, outside = cs[:3], cs[3:]
    for k, c in enumerate(inside):
        join(c, room, inside[:k + 1])
        for o in inside[:k]:
            assert o.read_line() == users(*inside[:k + 1])
        for o in outside:  # the lobby's list shrinks, on both acceptors
            assert o.read_line() == users(*cs[k + 1:])
    name = unique("Zed")
    inside[2].send(f"/nick {name}")
    inside[2].expect(f"OK nick {name}")
    for o in inside:
        assert names_of(o.expect_prefix("NAMES:")) == {inside[2].uid: name}
    outside[0].send(f"/msg {name.lower()} by name")
    assert inside[2].read_line() == f"[Private] {outside[0].uid}: by name"
    assert outside[0].read_line() == f"[Private] To {inside[2].uid}: by name"
    inside[0].send("inside only")
    for o in inside:
        assert o.read_line() == f"{inside[0].uid}: inside only"
    line = marker(outside[1])  # the lobby heard nothing of the room
    for o in outside:
        assert o.read_line() == line


# ---- capabilities codes and end (machine-readable replies) -------------------------------------

def test_codes_tag_every_error_with_its_stable_code(shared_serve, connect):
    room = new_room()
    a = client(connect, shared_serve)
    name = unique("n")
    a.send(f"/nick {name}")
    a.expect(f"OK nick {name}")
    b = client(connect, shared_serve)
    b.send("/cap codes")
    b.expect("OK cap codes")
    for line, want in [
            (f"/nick {name.upper()}", f"@code=name-taken ERROR: name {name.upper()} is taken"),
            ("/msg nobody-here hi", "@code=no-such-user ERROR: no such user nobody-here"),
            ("/frobnicate", "@code=unknown-command ERROR: unknown command /frobnicate"),
            ("/join lobby", "@code=invalid-room ERROR: invalid room lobby: # and 1-32 letters, "
                            "digits, _ or -"),
            ("/msg", "@code=usage ERROR: usage: /msg <target> <text>")]:
        b.send(line)
        assert b.expect_prefix("@code=") == want
    b.send(f"/join {room}")  # an error changes nothing: the connection goes on
    b.expect(f"ROOM:{room}")


def test_end_closes_each_reply_so_a_client_needs_no_ping_markers(shared_serve, connect):
    room = new_room()
    c = client(connect, shared_serve)
    c.send_raw(f"/cap end\n/join {room}\n/users\nhello\n/history 1\n/nosuch\n/rooms\n".encode())
    got = []
    while not got or got[-1] != "END rooms":
        got.append(c.read_line())
    assert got[:3] == ["OK cap end", "END cap", f"ROOM:{room}"]
    ends = [line for line in got if line.startswith("END ")]
    assert ends == ["END cap", "END join", "END users", "END history", "END nosuch", "END rooms"]
    # each END comes after its command's whole reply, and before the next command's
    assert got.index("END users") > got.index(f"USERS:{c.uid}", got.index("END join"))
    assert got.index("END history") > got.index("HISTORY:1") > got.index(f"{c.uid}: hello")
    assert got.index("ERROR: unknown command /nosuch") < got.index("END nosuch")
    assert got[-2].startswith("ROOMS:")
