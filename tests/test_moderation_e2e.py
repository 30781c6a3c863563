"""End to end: moderation (../shared/PROTOCOL.md Part 3: /topic, /kick, /ban, /unban, operators
from ``pychat admin op``, room owners, banned accounts and addresses) and its persistence across
a router SIGKILL, over real processes.

Other client addresses are other loopback addresses: a client that connects from 127.0.0.2 is,
to the server, another host (Linux routes all of 127.0.0.0/8 to lo), so an address ban is tested
without touching any other test's clients. Nothing sleeps: with ``/cap end`` each command's reply
is read up to its ``END``.
"""

from __future__ import annotations

import subprocess

import pytest

from support.client import Connection
from support.procs import kill_router, python_m, start_serve
from tests.test_accounts_e2e import PASSWORD, client, registered, unique

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("moderation"))
    p, port = start_serve("--data-dir", data)
    yield port, data
    p.stop()


def admin(data: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(python_m("pychat", "admin", *args, "--data-dir", data),
                          capture_output=True, text=True, timeout=60)


def operator(port: int, data: str, connect) -> tuple[Connection, str]:
    c, name = registered(port, connect, unique("op"))
    done = admin(data, "op", name)
    assert done.returncode == 0, done.stderr
    return c, name


def test_the_owner_sets_the_topic_and_joiners_see_it(server, connect):
    port, _ = server
    room = "#" + unique("r")
    owner, _ = registered(port, connect)  # the first logged-in account to enter owns the room
    owner.ask(f"/join {room}")
    guest = client(port, connect, room=room)
    owner.expect_prefix("NAMES:")  # the guest came (the push: USERS, NAMES)
    assert guest.ask("/topic") == [f"TOPIC:{room}"]  # none yet
    assert guest.ask("/topic mine now") == [
        "ERROR: not allowed: only the room's owner or an operator sets its topic"]
    assert owner.ask("/topic plans for <friday> ✓") == [f"TOPIC:{room} plans for <friday> ✓"]
    assert guest.read_line() == f"TOPIC:{room} plans for <friday> ✓"
    late = client(port, connect)
    reply = late.ask(f"/join {room}")
    assert reply[0] == f"ROOM:{room}" and reply[-1] == f"TOPIC:{room} plans for <friday> ✓"
    assert reply[-2].startswith("NAMES:")  # the topic comes after the lists
    assert owner.ask("/topic -")[-1] == f"TOPIC:{room}"  # cleared
    assert owner.ask("/topic " + "x" * 391) == ["ERROR: topic too long (max 390 characters)"]


def test_the_owner_kicks_from_the_room_but_not_from_the_lobby(server, connect):
    port, _ = server
    room = "#" + unique("r")
    owner, _ = registered(port, connect)
    owner.ask(f"/join {room}")
    target = client(port, connect, room=room)
    owner.expect_prefix("NAMES:")  # the target came (the push: USERS, NAMES)
    assert owner.ask(f"/kick {target.uid} behave") == [
        f"USERS:{owner.uid}", f"NAMES:{owner.uid}={owner.names[owner.uid]}",
        f"OK kick {target.uid}"]
    assert target.read_line() == f"KICKED:{room} behave"
    assert target.read_line() == "ROOM:#lobby"
    target.expect_prefix("NAMES:")  # the lobby's lists (and, from now on, its pushes)
    # in the lobby only an operator kicks; the owner of another room may not
    assert owner.ask(f"/kick {target.uid}") == [
        "ERROR: not allowed: only an operator, or the owner of the user's room, kicks"]
    target.send(f"/kick {owner.uid}")
    target.expect("ERROR: not allowed: only an operator, or the owner of the user's room, kicks")
    assert owner.ask(f"/kick {owner.uid}") == ["ERROR: not allowed: you cannot kick yourself"]
    gone = client(port, connect)
    uid = gone.uid
    gone.send("/quit")
    gone.read_until_closed()
    reply = owner.ask(f"/kick {uid}")
    assert reply in ([f"ERROR: no such user {uid}"], [
        "ERROR: not allowed: only an operator, or the owner of the user's room, kicks"])


def test_an_operator_kicks_from_the_lobby_off_the_server(server, connect):
    port, data = server
    op, op_name = operator(port, data, connect)
    target = connect(port)
    target.handshake()  # in the lobby
    assert op.ask(f"/kick {target.uid} spam") == [f"OK kick {target.uid}"]
    assert target.read_until_closed()[-1] == "BYE kicked: spam"
    other_op, _ = operator(port, data, connect)
    assert other_op.ask(f"/kick {op_name}") == [
        "ERROR: not allowed: an operator cannot be kicked"]
    admin(data, "deop", op_name)
    assert op.ask(f"/kick {other_op.uid}")[0].startswith("ERROR: not allowed")  # at once


def test_an_operator_bans_an_account_until_unban(server, connect):
    port, data = server
    op, _ = operator(port, data, connect)
    victim, name = registered(port, connect)
    second = client(port, connect)
    second.ask(f"/login {name} {PASSWORD}")  # a second device: banned with the account
    assert op.ask(f"/ban {name} 0 flooding") == [f"OK ban {name}"]
    for device in (victim, second):
        assert device.read_until_closed()[-1] == "BYE banned: flooding"
    again = client(port, connect)
    again.send(f"/login {name} {PASSWORD}")
    assert again.read_until_closed() == ["ERROR: banned: flooding"]
    listed = admin(data, "bans")
    assert f"account:{name}" in listed.stdout and "flooding" in listed.stdout
    assert op.ask(f"/unban {name}") == [f"OK unban {name}"]
    assert op.ask(f"/unban {name}") == [f"ERROR: no ban on {name}"]
    assert client(port, connect).ask(f"/login {name} {PASSWORD}")[0] == f"OK login {name}"


def test_a_guest_is_banned_by_its_address_with_everyone_behind_it(server, connect):
    port, data = server
    op, _ = operator(port, data, connect)
    guest = connect(port, source="127.0.0.2")
    guest.handshake()
    neighbour = connect(port, source="127.0.0.2")  # behind the same address
    neighbour.handshake()
    bystander = client(port, connect)  # from 127.0.0.1
    assert op.ask(f"/ban {guest.uid} 5 bot") == ["OK ban 127.0.0.2"]
    for c in (guest, neighbour):
        assert c.read_until_closed()[-1] == "BYE banned: bot"
    refused = connect(port, source="127.0.0.2")
    assert refused.read_until_closed() == ["Welcome to PyChat Server!", "ERROR: banned: bot"]
    assert bystander.ask("/ping") == ["PONG"]
    assert op.ask(f"/ban {op.uid}") == ["ERROR: not allowed: you cannot ban yourself"]
    assert op.ask("/unban 127.0.0.2") == ["OK unban 127.0.0.2"]
    back = connect(port, source="127.0.0.2")
    back.handshake()


def test_a_room_owner_bans_from_the_room_only(server, connect):
    port, _ = server
    room = "#" + unique("r")
    owner, _ = registered(port, connect)
    owner.ask(f"/join {room}")
    target, target_name = registered(port, connect)
    target.ask(f"/join {room}")
    owner.expect_prefix("NAMES:")
    assert owner.ask(f"/ban {target_name} 0 rude")[-1] == f"OK ban {target_name}"
    assert target.read_line() == f"KICKED:{room} rude"
    assert target.read_line() == "ROOM:#lobby"
    target.expect_prefix("NAMES:")  # the lobby's lists
    target.send(f"/join {room}")
    target.expect(f"ERROR: banned from {room}: rude")
    target.expect("END join")
    elsewhere = "#" + unique("e")
    target.send(f"/join {elsewhere}")  # banned from that room only
    target.expect(f"ROOM:{elsewhere}")
    target.expect("END join")
    guest = client(port, connect)
    assert guest.ask(f"/ban {owner.uid}")[0].startswith("ERROR: not allowed")
    assert owner.ask(f"/unban {target_name}") == [f"OK unban {target_name}"]
    assert target.ask(f"/join {room}")[0] == f"ROOM:{room}"


def test_moderation_survives_a_router_sigkill(procs, connect, tmp_path):
    data = str(tmp_path / "data")
    p, port = start_serve("--data-dir", data)
    procs.append(p)
    room = "#" + unique("r")
    owner, owner_name = registered(port, connect)
    owner.ask(f"/join {room}")
    owner.ask("/topic kept across a kill")
    op, _ = operator(port, data, connect)
    _, banned_name = registered(port, connect)
    assert op.ask(f"/ban {banned_name} 0 gone for good") == [f"OK ban {banned_name}"]
    kill_router(p)
    # accounts, the ban, the topic and the ownership are still there
    newcomer = client(port, connect)
    assert newcomer.ask(f"/nick {owner_name}") == [f"ERROR: name {owner_name} is registered"]
    assert newcomer.ask(f"/join {room}")[-1] == f"TOPIC:{room} kept across a kill"
    late = client(port, connect)
    late.send(f"/login {banned_name} {PASSWORD}")
    assert late.read_until_closed() == ["ERROR: banned: gone for good"]
    owner.expect(lambda line: line.startswith("NAMES:"))  # (the restart's and the joins' pushes)
    fresh = client(port, connect)
    assert fresh.ask(f"/login {owner_name} {PASSWORD}")[0] == f"OK login {owner_name}"
    fresh.ask(f"/join {room}")
    assert fresh.ask("/topic still mine")[-1] == f"TOPIC:{room} still mine"
