"""End to end: accounts (../shared/PROTOCOL.md Part 3: /register, /login, /logout, /password,
/nick of a registered name) and what docs/PROTOCOL.md adds (/token, /resume, offline mail, several
devices, --require-login), over real processes: ``pychat serve`` with its router and acceptors.

Every test makes its own names (``unique``), so the tests share one server per module where
they can; a test that needs a server of its own (options, restarts) starts it. Nothing sleeps:
with ``/cap end`` each command's reply is read up to its ``END`` (``Connection.ask``).
"""

from __future__ import annotations

import re
import uuid

import pytest

from support.client import Connection
from support.procs import kill_router, start_serve

pytestmark = pytest.mark.e2e

PASSWORD = "correct-horse-9"
FAILED = "ERROR: login failed"
DELAYED_RE = re.compile(r"@time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[Private\] (\S+): (.*)\Z")


def unique(prefix: str = "a") -> str:
    return prefix + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    p, port = start_serve("--data-dir", str(tmp_path_factory.mktemp("accounts")))
    yield port
    p.stop()


def client(port: int, connect=None, codes: bool = False, room: str = "",
           source: str = "") -> Connection:
    """A client with ``/cap end`` in a room of its own (or ``room``), out of the lobby's pushes:
    its replies are exactly what ``ask`` returns. ``source``: another loopback address to
    connect from (the throttles count per address)."""
    c = connect(port, source=source) if connect is not None else Connection(
        "127.0.0.1", port, source=source)
    c.handshake()
    c.send("/cap end codes" if codes else "/cap end")
    c.expect("END cap")
    c.send(f"/join {room or '#' + unique('r')}")
    c.expect("END join")
    return c


def registered(port: int, connect, name: str | None = None) -> tuple[Connection, str]:
    name = name or unique()
    c = client(port, connect)
    assert c.ask(f"/nick {name}")[0] == f"OK nick {name}"
    assert c.ask(f"/register {PASSWORD}") == [f"OK register {name}"]
    return c, name


def test_register_then_login_from_another_connection(port, connect):
    a, name = registered(port, connect)
    b = client(port, connect, room=a.room)
    a.expect(f"NAMES:{a.uid}={name}")  # b came (the push: USERS, NAMES)
    reply = b.ask(f"/login {name} {PASSWORD}")
    assert reply == [f"OK login {name}", f"NAMES:{a.uid}={name},{b.uid}={name}"]
    assert a.read_line() == f"NAMES:{a.uid}={name},{b.uid}={name}"  # both devices


def test_a_registered_name_is_shown_only_by_a_session_logged_in_to_it(port, connect):
    a, name = registered(port, connect)
    guest = client(port, connect)
    for asked in (name, name.upper()):  # names that differ only in case are one name
        assert guest.ask(f"/nick {asked}") == [f"ERROR: name {asked} is registered"]
    a.close()  # not even once its holder has gone
    assert guest.ask(f"/nick {name}") == [f"ERROR: name {name} is registered"]
    other = client(port, connect)
    assert other.ask(f"/nick {name.upper()}") == [f"ERROR: name {name.upper()} is registered"]
    assert other.ask(f"/register {PASSWORD}") == ["ERROR: set a name with /nick first"]


def test_register_of_a_name_taken_or_registered_and_bad_passwords(port, connect):
    a, name = registered(port, connect)
    assert a.ask(f"/register {PASSWORD}") == [f"ERROR: you are logged in as {name}"]
    b = client(port, connect, codes=True)
    fresh = unique()
    b.ask(f"/nick {fresh}")
    assert b.ask("/register short") == [
        "@code=invalid-password ERROR: invalid password: 8-256 characters, no spaces or "
        "control characters"]
    assert b.ask("/register two words") == ["@code=usage ERROR: usage: /register <password>"]
    assert b.ask("/register " + "x" * 257)[0].startswith("@code=invalid-password ")
    # a password of any characters but spaces and controls, within limits
    odd = "pässwörd✓😀\"'\\;--<>"
    assert b.ask(f"/register {odd}") == [f"OK register {fresh}"]
    c = client(port, connect)
    assert c.ask(f"/login {fresh} {odd}")[0] == f"OK login {fresh}"


def test_unknown_name_and_wrong_password_get_the_same_line(port, connect):
    _, name = registered(port, connect)
    c = client(port, connect, codes=True)
    wrong = c.ask(f"/login {name} wrong-password")
    unknown = c.ask(f"/login {unique()} {PASSWORD}")
    assert wrong == unknown == ["@code=login-failed ERROR: login failed"]
    assert c.ask("/login not/a/name x") == [
        "@code=invalid-name ERROR: invalid name not/a/name: 1-24 letters, digits, _ or -"]


def test_lines_after_a_login_wait_for_its_answer(port, connect):
    """/login is answered after its password is hashed off the router's loop: the lines
    behind it in the same write are handled after, so their answers come after."""
    _, name = registered(port, connect)
    c = client(port, connect)
    c.send(f"/login {name} {PASSWORD}\n/ping after\n/nick other-{name[:10]}\nhello")
    lines = [c.read_line() for _ in range(7)]
    assert lines == [f"OK login {name}", f"NAMES:{c.uid}={name}", "END login",
                     "PONG after", "END ping",
                     f"ERROR: you are logged in as {name}; /logout first", "END nick"]
    assert c.read_line() == f"{c.uid}: hello"


def test_logout_makes_a_guest_without_a_name(port, connect):
    a, name = registered(port, connect)
    watcher = client(port, connect, room=a.room)
    a.expect(f"NAMES:{a.uid}={name}")  # the watcher came (the push: USERS, NAMES)
    assert a.ask("/logout") == ["OK logout", "NAMES:"]
    assert watcher.expect_prefix("NAMES:") == "NAMES:"
    assert a.ask("/logout") == ["ERROR: not logged in"]
    assert a.ask(f"/nick {name}") == [f"ERROR: name {name} is registered"]
    assert a.ask(f"/login {name} {PASSWORD}")[0] == f"OK login {name}"


def test_password_change(port, connect):
    a, name = registered(port, connect)
    token = a.ask("/token")[0].split()[2]
    assert a.ask(f"/password wrong-password new-{PASSWORD}") == [FAILED]
    assert a.ask(f"/password {PASSWORD} tiny") == [
        "ERROR: invalid password: 8-256 characters, no spaces or control characters"]
    assert a.ask(f"/password {PASSWORD} new-{PASSWORD}") == ["OK password"]
    b = client(port, connect)
    assert b.ask(f"/login {name} {PASSWORD}") == [FAILED]
    assert b.ask(f"/resume {name} {token}") == [FAILED]  # its tokens went with the password
    assert b.ask(f"/login {name} new-{PASSWORD}")[0] == f"OK login {name}"
    guest = client(port, connect)
    assert guest.ask(f"/password {PASSWORD} new-{PASSWORD}") == ["ERROR: not logged in"]


def test_a_token_logs_in_again_without_the_password(port, connect):
    a, name = registered(port, connect)
    token_line = a.ask("/token")[0]
    m = re.fullmatch(rf"TOKEN: {name} ([A-Za-z0-9_-]{{43}}) (\d{{4}}-\d\d-\d\dT[\d:.]+Z)",
                     token_line)
    assert m, token_line
    token = m.group(1)
    a.close()
    b = client(port, connect)
    assert b.ask(f"/resume {name} {token}")[0] == f"OK login {name}"
    assert b.ask(f"/resume {name} {token[:-1]}x") == [FAILED]
    assert b.ask(f"/resume {unique()} {token}") == [FAILED]  # a token is its account's only
    b.ask("/logout")  # the token this session logged in with ends with it
    c = client(port, connect)
    assert c.ask(f"/resume {name} {token}") == [FAILED]
    assert c.ask("/token") == ["ERROR: not logged in"]


def test_failed_logins_slow_down_and_leave_others_alone(port, connect):
    _, name = registered(port, connect)
    room = "#" + unique("r")
    speaker, listener = client(port, connect, room=room), client(port, connect, room=room)
    attacker = client(port, connect, codes=True)
    for _ in range(5):  # the first five cost a hash each
        assert attacker.ask(f"/login {name} guess-guess") == [
            "@code=login-failed ERROR: login failed"]
    throttled = attacker.ask(f"/login {name} {PASSWORD}")  # even the right one, for a while
    assert len(throttled) == 1 and re.fullmatch(
        r"@code=login-throttled ERROR: login failed: too many attempts, try again in \d+ s",
        throttled[0]), throttled
    speaker.send("still here")
    assert listener.expect_prefix(f"{speaker.uid}:") == f"{speaker.uid}: still here"
    # another account is not slowed by this one's failures (the address's own bound is 20)
    _, other_name = registered(port, connect)
    assert client(port, connect).ask(f"/login {other_name} {PASSWORD}")[0].startswith("OK login")


def test_a_private_message_to_every_device_and_to_an_offline_account(port, connect):
    a, alice = registered(port, connect)
    a2 = client(port, connect)
    a2.ask(f"/login {alice} {PASSWORD}")
    b, bob = registered(port, connect)
    assert b.ask(f"/msg {alice} to both") == [f"[Private] To {a.uid}: to both"]
    for device in (a, a2):
        assert device.expect_prefix("[Private]") == f"[Private] {b.uid}: to both"
    assert b.ask("/logout")[0] == "OK logout"  # the account has no session online now
    assert a.ask(f"/msg {bob} while you were out") == [
        f"[Private] To {bob}: while you were out"]
    guest = client(port, connect)
    assert guest.ask(f"/msg {bob} hi") == [
        f"ERROR: no such user {bob} (log in to leave a message for an account)"]
    assert guest.ask(f"/msg {unique()} hi")[0].startswith("ERROR: no such user ")
    back = client(port, connect)
    reply = back.ask(f"/login {bob} {PASSWORD}")
    assert reply[0] == f"OK login {bob}"
    assert reply[-2] == "DELAYED:1", reply
    assert DELAYED_RE.fullmatch(reply[-1]).groups() == (alice, "while you were out")
    again = client(port, connect)  # delivered once
    assert not any(line.startswith("DELAYED:") for line in again.ask(f"/login {bob} {PASSWORD}"))


def test_a_login_race_for_one_account(port, connect):
    _, name = registered(port, connect)
    # 4 at once: the most one address has checked at a time (an address of their own: the
    # module's other tests fail logins from 127.0.0.1)
    racers = [client(port, connect, source="127.0.0.4") for _ in range(4)]
    for c in racers:  # all at once: several devices are allowed, so all get in
        c.send(f"/login {name} {PASSWORD}")
    for c in racers:
        assert c.expect_prefix("OK ") == f"OK login {name}"
        c.expect("END login")
    for c in racers:
        assert c.ask("/users")[1] == f"NAMES:{c.uid}={name}"


def test_require_login_lets_guests_only_register_and_log_in(procs, connect):
    p, port = start_serve("--require-login")
    procs.append(p)
    c = client(port, connect, codes=True)
    for line in ("/join #x", "/users", "/rooms", "/history", "/msg 123456 hi", "/token",
                 "/topic"):
        word = line.split()[0][1:]
        assert c.ask(line) == [f"@code=not-logged-in ERROR: log in first (/login or "
                               f"/register): /{word} needs an account here"]
    c.send("hello")
    assert c.read_line() == ("@code=not-logged-in ERROR: log in first (/login or /register): "
                             "/say needs an account here")
    assert c.ask("/ping") == ["PONG"]
    name = unique()
    c.ask(f"/nick {name}")
    assert c.ask(f"/register {PASSWORD}") == [f"OK register {name}"]
    c.send("now I may")
    assert c.read_line() == f"{c.uid}: now I may"


def test_a_restarted_router_keeps_logins(procs, connect, tmp_path):
    p, port = start_serve("--data-dir", str(tmp_path / "data"))
    procs.append(p)
    a, name = registered(port, connect)
    b = client(port, connect)
    kill_router(p)
    a.expect(f"NAMES:{a.uid}={name}")  # the new router's pushes, after its resync
    b.expect(f"USERS:{b.uid}")
    # still logged in: the restarted router took the session's login from its sealed resync
    assert a.ask(f"/nick {unique()}") == [f"ERROR: you are logged in as {name}; /logout first"]
    assert a.ask("/token")[0].startswith(f"TOKEN: {name} ")
    assert b.ask(f"/msg {name} after") == [f"[Private] To {a.uid}: after"]
    assert a.expect_prefix("[Private]") == f"[Private] {b.uid}: after"
    assert b.ask(f"/nick {name}") == [f"ERROR: name {name} is registered"]


def test_ten_thousand_wrong_passwords_in_a_minute(procs, connect):
    """100 connections send 100 wrong logins each, as fast as the server takes them (the flood
    limit raised so that they do arrive within the minute): every attempt gets exactly one
    answer, a failure or a throttle; the hashing stays bounded (the throttles answer without
    one); a bystander chats meanwhile; the right password works once the address's wait is
    over for another address."""
    import json
    import subprocess

    from support.procs import python_m

    p, port = start_serve("--flood-rate", "1000", "--flood-burst", "1000",
                          "--max-per-address", "1000", "--connect-rate", "1000",
                          "--connect-burst", "1000")
    procs.append(p)
    _, name = registered(port, connect)
    room = "#" + unique("r")
    speaker, listener = client(port, connect, room=room), client(port, connect, room=room)
    attackers = [client(port, connect, codes=True) for _ in range(100)]
    for i, c in enumerate(attackers):  # to the account, and to made-up names
        target = name if i % 2 else unique()
        c.send("".join(f"/login {target} guess-{n:05d}\n" for n in range(100)))
    speaker.send("unbothered")
    assert listener.expect_prefix(f"{speaker.uid}:", timeout=30) == f"{speaker.uid}: unbothered"
    counts = {"login-failed": 0, "login-throttled": 0, "busy": 0}
    for c in attackers:
        for _ in range(100):
            line = c.expect(lambda s: s.startswith("@code="), timeout=60)
            code = line[len("@code="):].split(" ", 1)[0]
            counts[code] += 1
            c.expect("END login", timeout=60)
    assert sum(counts.values()) == 10_000
    endpoint = re.search(r"bus (ipc://\S+?)[,)]", "\n".join(p.output)).group(1)
    r = subprocess.run(python_m("pychat", "status", "--router", endpoint, "--json"),
                       capture_output=True, text=True, timeout=30)
    logins = json.loads(r.stdout)["logins"]
    # hashed: at most the free failures of each key before its first wait, and one per wait
    assert logins["failed"] == counts["login-failed"] < 300, (logins, counts)
    assert counts["login-throttled"] > 9_000, counts
    assert counts["busy"] == 0  # one address never fills the hashing queue (4 at a time)
    stranger = connect(port, source="127.0.0.3")  # another address is not slowed by this one
    stranger.handshake()
    stranger.send("/cap end")
    stranger.expect("END cap")
    stranger.send(f"/login {unique()} {PASSWORD}")
    assert stranger.expect(lambda s: s.startswith("ERROR:")) == FAILED


def test_a_password_that_is_not_utf8_is_an_error_and_the_connection_goes_on(port, connect):
    _, name = registered(port, connect)
    c = client(port, connect)
    c.send_raw(f"/login {name} ".encode() + b"\xff\xfe\xc3\x28pw\n")
    assert c.read_line() == "ERROR: invalid UTF-8"
    assert c.ask(f"/login {name} {PASSWORD}")[0] == f"OK login {name}"
