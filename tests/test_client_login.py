"""The clients log in: the parser's new lines and ``ChatState`` (pure), then the ``Session``
against real servers: login, token, a dropped connection resumed with the token (never the
password), registering, refusals told to the front, a token revoked by a password change.

What the session sends is read on the wire: it talks to the server through ``Relay``, a TCP
relay in the test that records every byte the client sends, connection by connection, and can
cut the connection (a drop the session sees as the server going away). Every wait is for an
event or a line, with a timeout.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import threading
import time

import pytest

from pychat.clients import events
from pychat.clients.session import Credentials, Session
from pychat.clients.state import ERROR, PRIVATE, SYSTEM, ChatState
from pychat.wire import replies
from pychat.wire.replies import parse_server_line
from support.procs import ROOT, start_acceptor, start_router

from .test_client_core import Collector, is_status, start_acceptor_on

STAMP = "2026-12-06T18:00:00.000Z"
PASSWORD = "correct-horse-42"


# ---- the parser's new lines (pure) ---------------------------------------------------------------

def test_topic_kicked_delayed_token_and_goodbyes_with_a_reason_parse():
    assert parse_server_line("TOPIC:#dev the dev room") == replies.Topic(
        "TOPIC:#dev the dev room", "#dev", "the dev room")
    assert parse_server_line("TOPIC:#dev") == replies.Topic("TOPIC:#dev", "#dev", "")
    assert parse_server_line("KICKED:#dev go away") == replies.Kicked(
        "KICKED:#dev go away", "#dev", "go away")
    assert parse_server_line("KICKED:#dev") == replies.Kicked("KICKED:#dev", "#dev", "")
    assert parse_server_line("DELAYED:3") == replies.DelayedStart("DELAYED:3", 3)
    line = f"TOKEN: alice abc-_DEF123 {STAMP}"
    token = parse_server_line(line)
    assert token == replies.TokenIssued(line, "alice", "abc-_DEF123", STAMP)
    assert "abc-_DEF123" not in repr(token)  # a secret never reaches a log through repr
    assert parse_server_line("BYE") == replies.Bye("BYE", "")
    assert parse_server_line("BYE kicked: spam") == replies.Bye("BYE kicked: spam", "kicked: spam")
    assert parse_server_line("BYE banned: rude") == replies.Bye("BYE banned: rude", "banned: rude")
    for odd in ("TOPIC:dev x", "DELAYED:x", "TOKEN: alice onlytwo", "TOKEN:alice a b", "BYEBYE"):
        assert isinstance(parse_server_line(odd), replies.Info), odd


def test_private_lines_from_and_to_names_parse_and_uids_still_do():
    def parsed(line: str) -> replies.Chat:
        ev = parse_server_line(line)
        assert isinstance(ev, replies.Chat), line
        return ev

    ev = parsed(f"@time={STAMP} [Private] bob_2-x: kept for you")
    assert (ev.uid, ev.text, ev.private, ev.to, ev.time) == ("bob_2-x", "kept for you", True,
                                                               None, STAMP)
    ev = parsed("[Private] To carol: see you")
    assert (ev.uid, ev.to, ev.text) == ("carol", "carol", "see you")
    assert parsed("[Private] 123456: psst").uid == "123456"
    assert parsed("[Private] To 654321: psst").to == "654321"
    ev = parsed("[Private] To: hi")  # an account named "To" wrote to us
    assert (ev.uid, ev.to, ev.text) == ("To", None, "hi")
    assert parsed("123456: [Private] bob: not private").private is False
    # not a name: 25 characters, or a space: not a private line at all
    assert isinstance(parse_server_line(f"[Private] {'a' * 25}: x"), replies.Info)
    assert isinstance(parse_server_line("[Private] bob smith: x"), replies.Info)


# ---- ChatState (pure) ----------------------------------------------------------------------------

def feed(state: ChatState, *items):
    return [state.apply(parse_server_line(i) if isinstance(i, str) else i) for i in items]


def test_state_shows_the_login_the_topic_a_kick_and_the_delayed_messages():
    st = ChatState()
    feed(st, "ID:111111", "USERS:111111")
    assert st.title() == "PyChat - (no name) - ID 111111 - #lobby"
    logged, = feed(st, events.LoggedIn("alice"))
    assert (logged.kind, logged.text) == (SYSTEM, "you are logged in as alice")
    assert st.title() == "PyChat - alice (logged in) - ID 111111 - #lobby"
    header, kept = feed(st, "DELAYED:1", f"@time={STAMP} [Private] bob: while you were out")
    assert header.text == "1 private message came while you were away:"
    assert (kept.kind, kept.who, kept.text) == (PRIVATE, "from bob", "while you were out")
    entered, _, _, topic = feed(st, "ROOM:#dev", "USERS:222222,111111",
                                "NAMES:222222=bob,111111=alice", "TOPIC:#dev the dev room")
    assert entered.text == "you are in #dev"
    assert (topic.text, st.topic) == ("topic of #dev: the dev room", "the dev room")
    assert feed(st, "TOPIC:#other not ours")[0] is None and st.topic == "the dev room"
    cleared, = feed(st, "TOPIC:#dev")
    assert (cleared.text, st.topic) == ("the topic of #dev was cleared", "")
    kicked, lobby = feed(st, "KICKED:#dev go away", "ROOM:#lobby")
    assert (kicked.kind, kicked.text) == (ERROR, "you were kicked from #dev: go away")
    assert lobby.text == "you are in #lobby"
    again, = feed(st, events.LoggedIn("alice", restored=True))
    assert again is None  # a reconnect's resume: the status line says it
    out, = feed(st, "OK logout")
    assert out.text == "you are logged out: a guest, with no name"
    assert st.title() == "PyChat - (no name) - ID 111111 - #lobby"
    bye, = feed(st, "BYE banned: rude")
    assert (bye.kind, bye.text) == (ERROR, "the server closed the connection: banned: rude")


def test_state_says_a_refused_login_and_a_refused_resume():
    st = ChatState()
    feed(st, "ID:111111", "USERS:111111", events.LoggedIn("alice", registered=True))
    assert st.account == "alice" and st.name == "alice"
    refused, = feed(st, events.LoginRefused("alice", "login failed", "login-failed",
                                            restored=True))
    assert refused.kind == ERROR
    assert refused.text == ("could not log in again as alice (login failed): you are a guest; "
                            "log in again")
    assert (st.account, st.name) == ("", "")
    plain, = feed(st, events.LoginRefused("bob", "login failed", "login-failed"))
    assert plain.text == "login failed"


# ---- a TCP relay that records what the client sends ----------------------------------------------

class Relay:
    """Between the session and a server port: accepts, connects upstream, pumps both ways.
    ``sent[i]`` is what the client wrote on its i-th connection; ``cut()`` drops the current
    connections (both ends), as a dying server would."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent: list[bytearray] = []
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()  # nothing listens upstream: the client sees a drop
                continue
            server.settimeout(None)  # (the connect's timeout would end a quiet connection)
            record = bytearray()
            with self.lock:
                self.sent.append(record)
                self.open += [client, server]
            threading.Thread(target=self._pump, args=(client, server, record),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        try:
            while data := src.recv(65536):
                if record is not None:
                    with self.lock:
                        record += data
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def connections(self) -> int:
        with self.lock:
            return len(self.sent)

    def text(self, i: int) -> str:
        with self.lock:
            return bytes(self.sent[i]).decode("utf-8", "replace")

    def cut(self) -> None:
        with self.lock:
            doomed, self.open = self.open, []
        for s in doomed:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture
def relay():
    made: list[Relay] = []

    def make(upstream: int) -> Relay:
        r = Relay(upstream)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def start_session(sessions, port: int, got: Collector, **kw) -> Session:
    s = Session("127.0.0.1", port, got, backoff_first=0.1, backoff_max=0.5, **kw)
    sessions.append(s.start())
    return s


def make_account(connect, port: int, name: str, password: str = PASSWORD) -> None:
    c = connect(port)
    c.handshake()
    c.send(f"/nick {name}")
    c.expect(f"OK nick {name}")
    c.send(f"/register {password}")
    c.expect(f"OK register {name}")
    c.close()


def holds(obj, secret: str, depth: int = 4, seen: set | None = None) -> list[str]:
    """Where ``secret`` is, among ``obj``'s attributes and what they hold (a few levels)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth < 0:
        return []
    seen.add(id(obj))
    if isinstance(obj, str):
        return [repr(obj)] if secret in obj else []
    if isinstance(obj, (bytes, bytearray)):
        return [repr(obj)] if secret.encode() in obj else []
    if isinstance(obj, dict):
        items = list(obj.values()) + list(obj.keys())
    elif isinstance(obj, (list, tuple, set, frozenset)) or type(obj).__name__ == "deque":
        items = list(obj)
    elif dataclasses.is_dataclass(obj):
        items = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("pychat"):
        items = list(vars(obj).values())
    else:
        return []
    return [hit for item in items for hit in holds(item, secret, depth - 1, seen)]


def logged_in(name: str):
    return lambda ev: isinstance(ev, events.LoggedIn) and ev.name == name


def token_of(s: Session, other_than: str = "", timeout: float = 10.0) -> str:
    """The session's resume token, once its ``TOKEN:`` (which follows ``OK login``) is in."""
    deadline = time.monotonic() + timeout
    while s.token in ("", other_than):
        assert time.monotonic() < deadline, "no token"
        time.sleep(0.02)  # polling an attribute the session's thread sets
    return s.token


# ---- Session against real servers ---------------------------------------------------------------

def test_login_takes_a_token_forgets_the_password_and_a_reconnect_resumes_with_the_token(
        procs, connect, sessions, relay):
    router, endpoint = start_router()
    procs.append(router)
    acceptor, port = start_acceptor(endpoint)
    procs.append(acceptor)
    make_account(connect, port, "alice")
    wire = relay(port)
    got = Collector()
    s = start_session(sessions, wire.port, got, room="#ops",
                      login=Credentials("alice", PASSWORD))
    ev = got.wait(logged_in("alice"))  # (the login is answered before the /join behind it)
    assert not ev.registered and not ev.restored
    got.wait(lambda ev: isinstance(ev, replies.RoomChanged) and ev.room == "#ops")
    assert (s.account, s.name, s.room) == ("alice", "alice", "#ops")
    assert len(token_of(s)) >= 32 and s.token_expires.endswith("Z")
    assert s._login is None and holds(s, PASSWORD) == []
    first = wire.text(0)
    assert f"/login alice {PASSWORD}\n" in first and "/token\n" in first
    assert "/nick" not in first  # the account's name comes with the login
    old_uid, token = s.uid, s.token

    killed_at = time.monotonic()
    acceptor.kill()  # SIGKILL: no goodbye to the client, none to the router
    got.wait(lambda ev: isinstance(ev, events.Status) and ev.state == events.RECONNECTING)
    procs.append(start_acceptor_on(endpoint, port))
    got.wait(is_status("reconnected as alice in #ops"), timeout=30)
    print(f"resume: logged in again, in #ops, {time.monotonic() - killed_at:.2f}s after the kill")
    assert (s.account, s.name, s.room, s.token) == ("alice", "alice", "#ops", token)
    assert s.uid != old_uid
    assert any(logged_in("alice")(ev) and ev.restored for ev in got.all)
    again = wire.text(wire.connections() - 1)
    assert f"/resume alice {token}\n" in again
    assert PASSWORD not in "".join(wire.text(i) for i in range(1, wire.connections()))
    assert holds(s, PASSWORD) == []

    peer = connect(port)  # what the others see: alice, logged in, back in #ops
    peer.handshake()
    peer.send("/join #ops")
    peer.expect_prefix("ROOM:#ops")
    assert peer.expect_prefix("NAMES:") == f"NAMES:{s.uid}=alice"
    peer.send("/nick alice")
    peer.expect("ERROR: name alice is registered")
    s.send("still here")
    peer.expect(f"{s.uid}: still here")


def test_register_makes_the_account_and_logs_in_to_it(serve, connect, sessions, relay):
    wire = relay(serve)
    got = Collector()
    s = start_session(sessions, wire.port, got, login=Credentials("newbie", PASSWORD, True))
    ev = got.wait(logged_in("newbie"))
    assert ev.registered
    assert (s.account, s.name) == ("newbie", "newbie") and token_of(s)
    assert s._login is None and holds(s, PASSWORD) == []
    sent = wire.text(0)
    assert sent.index("/nick newbie\n") < sent.index(f"/register {PASSWORD}\n")
    other = connect(serve)  # the account is real: its name is kept, its password logs in
    other.handshake()
    other.send("/nick newbie")
    other.expect("ERROR: name newbie is registered")
    other.send(f"/login newbie {PASSWORD}")
    other.expect("OK login newbie")


def test_register_of_a_taken_name_is_a_refused_login(serve, connect, sessions):
    make_account(connect, serve, "taken1")
    got = Collector()
    s = start_session(sessions, serve, got, login=Credentials("taken1", PASSWORD, True))
    ev = got.wait(lambda ev: isinstance(ev, events.LoginRefused))
    assert (ev.name, ev.code, ev.reason) == ("taken1", "name-registered",
                                             "name taken1 is registered")
    assert s._login is None and s.account == "" and holds(s, PASSWORD) == []


def test_a_wrong_password_is_refused_to_the_front_and_the_right_one_then_logs_in(
        serve, connect, sessions, relay):
    make_account(connect, serve, "carol")
    wire = relay(serve)
    got = Collector()
    s = start_session(sessions, wire.port, got, login=Credentials("carol", "wrong-password"))
    ev = got.wait(lambda ev: isinstance(ev, events.LoginRefused))
    assert (ev.name, ev.code, ev.reason, ev.restored) == ("carol", "login-failed",
                                                          "login failed", False)
    assert s.account == "" and s._login is None and holds(s, "wrong-password") == []
    assert not any(isinstance(e, replies.Error) for e in got.all)  # told once, as the refusal
    s.login("carol", PASSWORD)
    got.wait(logged_in("carol"))
    assert (s.account, s.name) == ("carol", "carol") and token_of(s)
    assert holds(s, PASSWORD) == []
    assert wire.connections() == 1  # asked again on the same connection


def test_a_guest_name_that_is_an_account_is_refused_as_registered(serve, connect, sessions):
    make_account(connect, serve, "dave")
    got = Collector()
    s = start_session(sessions, serve, got, name="Dave")
    ev = got.wait(lambda ev: isinstance(ev, events.NameRefused))
    assert (ev.name, ev.registered) == ("Dave", True)
    assert ev.reason == "name Dave is registered: log in to use it"
    s.login("dave", PASSWORD)
    got.wait(logged_in("dave"))
    assert s.name == "dave"


def test_a_token_revoked_by_a_new_password_makes_the_reconnect_a_refused_login(
        serve, connect, sessions, relay):
    make_account(connect, serve, "erin")
    wire = relay(serve)
    got = Collector()
    s = start_session(sessions, wire.port, got, room="#night",
                      login=Credentials("erin", PASSWORD))
    got.wait(logged_in("erin"))
    got.wait(lambda ev: isinstance(ev, replies.RoomChanged) and ev.room == "#night")
    token_of(s)
    other = connect(serve)  # erin elsewhere changes the password: every token is revoked
    other.handshake()
    other.send(f"/login erin {PASSWORD}")
    other.expect("OK login erin")
    other.send(f"/password {PASSWORD} brand-new-pass")
    other.expect("OK password")

    wire.cut()
    ev = got.wait(lambda ev: isinstance(ev, events.LoginRefused), timeout=30)
    assert (ev.name, ev.code, ev.restored) == ("erin", "login-failed", True)
    got.wait(is_status("reconnected as"))
    assert (s.account, s.name, s.token, s.room) == ("", "", "", "#night")  # a guest, in its room
    assert "/resume erin " in wire.text(1) and PASSWORD not in wire.text(1)
    s.login("erin", "brand-new-pass")  # the front asked again
    got.wait(logged_in("erin"))
    assert s.account == "erin" and token_of(s) and holds(s, "brand-new-pass") == []


def test_a_typed_login_and_a_typed_password_change_each_take_a_token(serve, connect,
                                                                     sessions, relay):
    make_account(connect, serve, "frank")
    wire = relay(serve)
    got = Collector()
    s = start_session(sessions, wire.port, got)
    got.wait(lambda ev: isinstance(ev, events.Status) and ev.state == events.CONNECTED)
    s.send(f"/login frank {PASSWORD}", show=True)
    ev = got.wait(logged_in("frank"))
    assert not ev.restored and s.account == "frank"
    first = token_of(s)
    s.send(f"/password {PASSWORD} another-pass-1", show=True)
    got.wait(lambda ev: isinstance(ev, replies.Ok) and ev.what == "password")
    got.wait(lambda ev: isinstance(ev, events.Answered) and ev.word == "password")
    token_of(s, other_than=first)  # the new token follows OK password
    assert not any(isinstance(e, replies.TokenIssued) for e in got.all)  # ours, not shown
    token = s.token
    wire.cut()
    got.wait(lambda ev: logged_in("frank")(ev) and ev.restored, timeout=30)
    assert f"/resume frank {token}\n" in wire.text(1)
    s.send("/token", show=True)  # typed: shown to the front, and kept
    typed = got.wait(lambda ev: isinstance(ev, replies.TokenIssued))
    assert s.token == typed.token != token


def test_offline_messages_come_on_login_from_names_and_a_kick_is_told(serve, connect, sessions):
    make_account(connect, serve, "gina")
    make_account(connect, serve, "hank")
    hank = connect(serve)
    hank.handshake()
    hank.send(f"/login hank {PASSWORD}")
    hank.expect("OK login hank")
    hank.send("/msg gina are you there?")
    hank.expect(lambda line: line.endswith("[Private] To gina: are you there?"))
    hank.send("/join #hank")  # hank's own room: he owns it, sets its topic, kicks from it
    hank.expect_prefix("ROOM:#hank")
    hank.send("/topic hank's room")
    hank.expect("TOPIC:#hank hank's room")
    got = Collector()
    s = start_session(sessions, serve, got, room="#hank", login=Credentials("gina", PASSWORD))
    got.wait(lambda ev: isinstance(ev, replies.DelayedStart) and ev.count == 1)
    kept = got.wait(lambda ev: isinstance(ev, replies.Chat))
    assert (kept.uid, kept.text, kept.private, kept.to) == ("hank", "are you there?", True,
                                                            None)
    assert kept.time  # always stamped
    topic = got.wait(lambda ev: isinstance(ev, replies.Topic))
    assert (topic.room, topic.text) == ("#hank", "hank's room")
    hank.send("/kick gina not now")
    kicked = got.wait(lambda ev: isinstance(ev, replies.Kicked))
    assert (kicked.room, kicked.reason) == ("#hank", "not now")
    got.wait(lambda ev: isinstance(ev, replies.RoomChanged) and ev.room == "#lobby")
    assert s.room == "#lobby" and s.account == "gina"
    state = ChatState()
    lines = [line for line in map(state.apply, got.all) if line is not None]
    assert any(ln.kind == PRIVATE and ln.who == "from hank" for ln in lines)
    assert any(ln.text == "you were kicked from #hank: not now" for ln in lines)


def make_operator(connect, port: int, name: str):
    """An operator account (``pychat admin op``, on the test's data folder), logged in."""
    make_account(connect, port, name)
    done = subprocess.run([sys.executable, "-m", "pychat", "admin", "op", name],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    op = connect(port)
    op.handshake()
    op.send(f"/login {name} {PASSWORD}")
    op.expect(f"OK login {name}")
    return op


def closed_for_good(got: Collector, why: str) -> None:
    ev = got.wait(lambda ev: isinstance(ev, events.Status) and ev.state == events.CLOSED)
    assert ev.text == f"disconnected: {why}"
    assert not any(isinstance(e, events.Status) and e.state == events.RECONNECTING
                   for e in got.all)


def test_a_ban_while_logged_in_ends_the_session_without_a_reconnect(serve, connect, sessions):
    op = make_operator(connect, serve, "opr")
    make_account(connect, serve, "pat")
    got = Collector()
    start_session(sessions, serve, got, login=Credentials("pat", PASSWORD))
    got.wait(logged_in("pat"))
    op.send("/ban pat 5 spamming")
    op.expect("OK ban pat")
    bye = got.wait(lambda ev: isinstance(ev, replies.Bye))
    assert bye.reason == "banned: spamming"
    closed_for_good(got, "banned: spamming")


def test_a_banned_account_login_is_refused_as_final(serve, connect, sessions):
    op = make_operator(connect, serve, "opr")
    make_account(connect, serve, "quin")
    op.send("/ban quin 5 spamming")
    op.expect("OK ban quin")
    got = Collector()
    s = start_session(sessions, serve, got, login=Credentials("quin", PASSWORD))
    ev = got.wait(lambda ev: isinstance(ev, events.LoginRefused))
    assert (ev.code, ev.reason, ev.final) == ("banned", "banned: spamming", True)
    assert s._login is None
    closed_for_good(got, "banned: spamming")
