"""The IRC door end to end: ``pychat serve --irc-port P``, raw IRC sockets, the `irc` library
(jaraco's) and Debian's ``ii``, each talking to PyChat TCP clients in the same rooms."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from support.client import Connection, WsConnection
from support.procs import free_port, start_serve

pytestmark = pytest.mark.e2e
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def irc_serve():
    """One server with its IRC door: (line port, IRC port)."""
    irc_port = free_port()
    p, port = start_serve("--irc-port", str(irc_port), "--history", "memory",
                          "--accounts", "memory")
    yield port, irc_port
    p.stop()


def unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:8]


class Irc:
    """A raw IRC client: lines out with CRLF, lines in read up to the one expected."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""
        self.seen: list[str] = []
        self.nick = ""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def read_line(self, deadline: float) -> str:
        while b"\r\n" not in self.buf:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                raise TimeoutError(f"no line; seen: {self.seen[-10:]}")
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed; seen: {self.seen[-10:]}")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        text = line.decode()
        self.seen.append(text)
        return text

    def expect(self, match: str | Callable[[str], bool]) -> str:
        pred = (lambda line: re.search(match, line) is not None) if isinstance(match, str) \
            else match
        deadline = time.monotonic() + TIMEOUT
        while True:
            line = self.read_line(deadline)
            if pred(line):
                return line

    def register(self, nick: str, caps: str = "") -> list[str]:
        """Registration up to the lobby's 366; returns the lines read."""
        start = len(self.seen)
        if caps:
            self.send("CAP LS 302")
        self.send(f"NICK {nick}")
        self.send(f"USER {nick} 0 * :{nick} the tester")
        if caps:
            self.expect(r" CAP \* LS ")
            self.send(f"CAP REQ :{caps}")
            self.expect(r" CAP \S+ ACK ")
            self.send("CAP END")
        self.expect(rf"^:pychat 366 {nick} #lobby ")
        self.nick = nick
        return self.seen[start:]

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def reactor_running(reactor, conn) -> Iterator[None]:
    """The irc library's reactor turned by a thread while the block runs; then the connection
    says goodbye and the thread ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            reactor.process_once(0.05)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)
        conn.disconnect("bye")


def irc(port: int, clients: list) -> Irc:
    c = Irc(port)
    clients.append(c)
    return c


def pychat(port: int, clients: list, name: str) -> Connection:
    c = Connection("127.0.0.1", port, timeout=TIMEOUT)
    clients.append(c)
    c.handshake()
    c.send(f"/nick {name}")
    c.expect(f"OK nick {name}")
    return c


def test_registration_gets_the_welcome_and_the_lobby(irc_serve, clients):
    _, irc_port = irc_serve
    nick = unique("i")
    a = irc(irc_port, clients)
    lines = a.register(nick, caps="server-time")
    codes = [line.split()[1] for line in lines if line.startswith(":pychat ")]
    for code in ("001", "002", "003", "004", "005", "422", "353", "366"):
        assert code in codes, lines
    assert f":pychat 001 {nick} :Welcome to PyChat, {nick}" in lines
    assert any(re.fullmatch(rf":{nick}!\d{{6}}@pychat JOIN #lobby", line) for line in lines)
    a.send("PING :tok 1")
    assert a.expect(" PONG ") == ":pychat PONG pychat :tok 1"


def test_irc_and_pychat_chat_in_the_lobby_and_in_a_room(irc_serve, clients):
    port, irc_port = irc_serve
    nick, name = unique("i"), unique("p")
    a = irc(irc_port, clients)
    a.register(nick)
    b = pychat(port, clients, name)
    a.expect(rf"^:u{b.uid}!{b.uid}@pychat JOIN #lobby|NICK :{name}$")
    # the PyChat client sees the IRC user's nick as its name, and its lines as `<uid>: text`
    b.send("/users")
    b.expect_prefix("NAMES:")
    irc_uid = next(uid for uid, n in b.names.items() if n == nick)
    a.send("PRIVMSG #lobby :hello from irc")
    b.expect(f"{irc_uid}: hello from irc")
    b.send("hello from pychat")
    assert a.expect("hello from pychat") == \
        f":{name}!{b.uid}@pychat PRIVMSG #lobby :hello from pychat"
    # a room of their own
    room = "#" + unique("r")
    a.send(f"JOIN {room}")
    a.expect(rf"^:{nick}!{irc_uid}@pychat PART #lobby$")
    a.expect(rf"^:{nick}!{irc_uid}@pychat JOIN {room}$")
    a.expect(rf"^:pychat 366 {nick} {room} ")
    b.send(f"/join {room}")
    b.expect(f"ROOM:{room}")
    a.expect(rf"^:{name}!{b.uid}@pychat JOIN {room}$")
    a.send(f"PRIVMSG {room} :in the room")
    b.expect(f"{irc_uid}: in the room")
    b.send("back at you")
    a.expect(rf"^:{name}!{b.uid}@pychat PRIVMSG {room} :back at you$")
    # the IRC client's own lines are not echoed to it: the next line it gets is b's
    a.send(f"PRIVMSG {room} :no echo")
    b.expect(f"{irc_uid}: no echo")
    b.send("marker")
    assert "no echo" not in a.expect("marker|no echo")
    # PART goes back to the lobby, and the PyChat client sees it leave
    a.send(f"PART {room}")
    a.expect(rf"^:{nick}!{irc_uid}@pychat PART {room}$")
    a.expect(rf"^:{nick}!{irc_uid}@pychat JOIN #lobby$")
    b.expect(lambda line: line.startswith(("USERS:", "LEFT:")) and irc_uid not in line)


def test_irc_tcp_and_web_door_clients_share_a_room(irc_serve, clients):
    """Every door in one room: an IRC client, a line-protocol client and a WebSocket client
    of the web door (the browser client's transport; tests/test_web_browser.py drives the page
    itself in Chromium)."""
    port, irc_port = irc_serve
    nick, name, web_name = unique("i"), unique("p"), unique("w")
    room = "#" + unique("r")
    a = irc(irc_port, clients)
    a.register(nick)
    b = pychat(port, clients, name)
    w = WsConnection("127.0.0.1", port, timeout=TIMEOUT)  # the same server's web door
    clients.append(w)
    w.handshake()
    w.send(f"/nick {web_name}")
    w.expect(f"OK nick {web_name}")
    a.send(f"JOIN {room}")
    a.expect(rf"^:pychat 366 {nick} {room} ")
    for c in (b, w):
        c.send(f"/join {room}")
        c.expect(f"ROOM:{room}")
    a.expect(rf"^:{web_name}!{w.uid}@pychat JOIN {room}$")
    w.send("/users")
    w.expect(lambda line: line.startswith("NAMES:") and f"={nick}" in line
             and f"={name}" in line)
    irc_uid = next(uid for uid, n in w.names.items() if n == nick)
    a.send(f"PRIVMSG {room} :from irc")
    b.expect(f"{irc_uid}: from irc")
    w.expect(f"{irc_uid}: from irc")
    w.send("from the web")
    a.expect(rf"^:{web_name}!{w.uid}@pychat PRIVMSG {room} :from the web$")
    b.expect(f"{w.uid}: from the web")
    a.send(f"PRIVMSG {web_name} :irc to web, privately")
    w.expect(f"[Private] {irc_uid}: irc to web, privately")
    w.send(f"/msg {nick} web to irc, privately")
    a.expect(rf"^:{web_name}!{w.uid}@pychat PRIVMSG {nick} :web to irc, privately$")


def test_private_messages_both_ways(irc_serve, clients):
    port, irc_port = irc_serve
    nick, name = unique("i"), unique("p")
    a = irc(irc_port, clients)
    a.register(nick, caps="server-time")
    b = pychat(port, clients, name)
    a.send(f"PRIVMSG {name} :psst pychat")
    line = b.expect(lambda s: s.endswith(": psst pychat"))
    irc_uid = re.fullmatch(r"\[Private\] (\d{6}): psst pychat", line).group(1)
    b.send(f"/msg {nick} psst irc")
    line = a.expect("psst irc")
    assert re.fullmatch(rf"@time=\S+Z :{name}!{b.uid}@pychat PRIVMSG {nick} :psst irc", line)
    # to a user without a name: its stand-in nick
    c = Connection("127.0.0.1", port, timeout=TIMEOUT)
    clients.append(c)
    c.handshake()
    a.send(f"PRIVMSG u{c.uid} :to the nameless")
    c.expect(f"[Private] {irc_uid}: to the nameless")
    a.send("PRIVMSG nobody-here :hello?")
    a.expect(rf"^:pychat 401 {nick} nobody-here ")


def test_a_nick_clash_is_433(irc_serve, clients):
    port, irc_port = irc_serve
    name = unique("p")
    pychat(port, clients, name)
    a = irc(irc_port, clients)
    a.send(f"NICK {name}")
    a.send("USER x 0 * :x")
    assert a.expect(" 433 ") == f":pychat 433 * {name} :Nickname is already in use"
    nick = unique("i")
    a.send(f"NICK {nick}")
    a.expect(rf"^:pychat 001 {nick} ")
    # and once registered
    a.send(f"NICK {name}")
    a.expect(rf"^:pychat 433 {nick} {name} :")
    a.send("NICK u123456")
    a.expect(rf"^:pychat 432 {nick} u123456 :")


def test_quit_is_seen_by_the_others(irc_serve, clients):
    port, irc_port = irc_serve
    nick, name = unique("i"), unique("p")
    room = "#" + unique("q")
    b = pychat(port, clients, name)
    b.send(f"/join {room}")
    b.expect(f"ROOM:{room}")
    a = irc(irc_port, clients)
    a.register(nick)
    a.send(f"JOIN {room}")
    a.expect(rf"^:pychat 366 {nick} {room} ")
    b.expect(lambda line: nick in line and line.startswith(("NAMES:", "NAMED:")))
    irc_uid = next(uid for uid, n in b.names.items() if n == nick)
    a.send("QUIT :gone fishing")
    assert a.expect("^ERROR ").startswith("ERROR :Closing link")
    b.expect(lambda line: line.startswith(("USERS:", "LEFT:")) and irc_uid in line
             if line.startswith("LEFT:") else line.startswith("USERS:") and irc_uid not in line)


def test_the_irc_library_joins_and_talks_to_a_pychat_client(irc_serve, clients):
    irc_client = pytest.importorskip("irc.client")
    port, irc_port = irc_serve
    nick, name = unique("j"), unique("p")
    room = "#" + unique("lib")
    b = pychat(port, clients, name)
    b.send(f"/join {room}")
    b.expect(f"ROOM:{room}")
    reactor = irc_client.Reactor()
    got: list[str] = []
    joined = threading.Event()
    heard = threading.Event()

    def on_welcome(conn, event):
        conn.join(room)

    def on_join(conn, event):
        if event.source.nick == nick:
            joined.set()

    def on_pubmsg(conn, event):
        got.append(f"{event.source.nick}: {event.arguments[0]}")
        conn.privmsg(room, "hello back from the library")
        heard.set()

    conn = reactor.server().connect("127.0.0.1", irc_port, nick)
    conn.add_global_handler("welcome", on_welcome)
    conn.add_global_handler("join", on_join)
    conn.add_global_handler("pubmsg", on_pubmsg)
    with reactor_running(reactor, conn):
        assert joined.wait(TIMEOUT)
        b.expect(lambda line: nick in line and line.startswith(("NAMES:", "NAMED:")))
        irc_uid = next(uid for uid, n in b.names.items() if n == nick)
        b.send("hi library")
        assert heard.wait(TIMEOUT)
        assert got == [f"{name}: hi library"]
        b.expect(f"{irc_uid}: hello back from the library")


@pytest.mark.skipif(shutil.which("ii") is None, reason="Debian's ii is not installed")
def test_ii_from_debian_joins_and_talks(irc_serve, clients, tmp_path):
    port, irc_port = irc_serve
    nick, name = unique("ii"), unique("p")
    room = "#" + unique("ii")
    b = pychat(port, clients, name)
    b.send(f"/join {room}")
    b.expect(f"ROOM:{room}")
    proc = subprocess.Popen(["ii", "-s", "127.0.0.1", "-p", str(irc_port), "-n", nick,
                             "-i", str(tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        server_in = tmp_path / "127.0.0.1" / "in"
        server_out = tmp_path / "127.0.0.1" / "out"
        deadline = time.monotonic() + TIMEOUT
        # ii makes its fifo as soon as it connects, before the welcome: a JOIN written then
        # would come before registration (451), so wait for the welcome in its log
        while not (server_in.exists() and server_out.exists()
                   and "Welcome to PyChat" in server_out.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)  # polling ii's files: it reports nothing else
        with open(server_in, "w") as f:
            f.write(f"/j {room}\n")
        b.expect(lambda line: nick in line and line.startswith(("NAMES:", "NAMED:")))
        irc_uid = next(uid for uid, n in b.names.items() if n == nick)
        room_in = tmp_path / "127.0.0.1" / room / "in"
        while not room_in.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with open(room_in, "w") as f:
            f.write("hello from ii\n")
        b.expect(f"{irc_uid}: hello from ii")
        b.send("hello ii")
        out = tmp_path / "127.0.0.1" / room / "out"
        while not (out.exists() and f"<{name}> hello ii" in out.read_text()):
            assert time.monotonic() < deadline, out.read_text() if out.exists() else "no out"
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(5)


def _registered_account(port: int, clients: list, name: str, password: str) -> None:
    c = pychat(port, clients, name)
    c.send(f"/register {password}")
    c.expect(f"OK register {name}")
    c.send("/quit")
    c.read_until_closed()


def test_sasl_plain_logs_in_to_an_account(irc_serve, clients):
    """An account made by a PyChat client, logged in to from IRC with SASL PLAIN: 900 and
    903, the account's name as nick whatever NICK said, and PyChat users see that name; a wrong
    password is 904 and the client goes on as a guest; a registered nick without SASL is 433."""
    import base64
    port, irc_port = irc_serve
    name, password = unique("acct"), "correct-horse-9"
    _registered_account(port, clients, name, password)
    c = irc(irc_port, clients)
    c.send("CAP LS 302")
    c.send("NICK somebody")
    c.send("USER x 0 * :x")
    c.expect(r" CAP \* LS :.*\bsasl\b")
    c.send("CAP REQ :sasl")
    c.expect(r" CAP \S+ ACK :sasl")
    c.send("AUTHENTICATE PLAIN")
    c.expect(r"^AUTHENTICATE \+$")
    c.send("AUTHENTICATE " + base64.b64encode(f"\0{name}\0{password}".encode()).decode())
    assert re.search(rf" 900 \S+ \S+ {name} :You are now logged in as {name}$",
                     c.expect(r"^:pychat 900 "))
    c.expect(r"^:pychat 903 ")
    c.send("CAP END")
    assert c.expect(r"^:pychat 001 ") == f":pychat 001 {name} :Welcome to PyChat, {name}"
    c.expect(rf"^:pychat 366 {name} #lobby ")
    b = pychat(port, clients, unique("see"))
    b.send("/users")
    assert name in b.expect_prefix("NAMES:")

    wrong = irc(irc_port, clients)
    wrong.send("CAP LS 302")
    wrong.send("NICK " + (guest := unique("g")))
    wrong.send("USER x 0 * :x")
    wrong.send("CAP REQ :sasl")
    wrong.send("AUTHENTICATE PLAIN")
    wrong.expect(r"^AUTHENTICATE \+$")
    wrong.send("AUTHENTICATE " + base64.b64encode(f"\0{name}\0bad-password".encode()).decode())
    wrong.expect(r"^:pychat 904 ")
    wrong.send("CAP END")
    wrong.expect(rf"^:pychat 001 {guest} ")

    taken = irc(irc_port, clients)
    taken.send(f"NICK {name}")
    taken.send("USER x 0 * :x")
    taken.expect(rf"^:pychat 433 \* {name} ")


def test_a_client_registered_by_sasl_gets_its_room_s_lines(irc_serve, clients):
    """Registration that ends at CAP END after a SASL login happens in the door's reading of
    the client's bytes, not in a line from the core: the room's lines reach it from then on."""
    import base64
    port, irc_port = irc_serve
    name = unique("acct")
    _registered_account(port, clients, name, "correct-horse-9")
    talker = unique("talk")
    b = pychat(port, clients, talker)
    c = irc(irc_port, clients)
    c.send("CAP LS 302")
    c.send("NICK somebody")
    c.send("USER x 0 * :x")
    c.send("CAP REQ :sasl")
    c.send("AUTHENTICATE PLAIN")
    c.expect(r"^AUTHENTICATE \+$")
    c.send("AUTHENTICATE " + base64.b64encode(f"\0{name}\0correct-horse-9".encode()).decode())
    c.expect(r"^:pychat 903 ")
    while name not in b.names.values():  # the login's name push has come and gone
        b.expect(lambda line: line.startswith("NAMES:"))
    c.send("CAP END")
    c.expect(rf"^:pychat 366 {name} #lobby ")
    c.send("PING :registered")  # (answered by the door: its welcome has been handled)
    c.expect(r"PONG pychat :registered$")
    b.send("for the account")
    assert c.expect(r"PRIVMSG #lobby :for the account$") == \
        f":{talker}!{b.uid}@pychat PRIVMSG #lobby :for the account"


def test_the_irc_library_logs_in_with_sasl(irc_serve, clients):
    irc_client = pytest.importorskip("irc.client")
    port, irc_port = irc_serve
    name, password = unique("lib"), "correct-horse-9"
    _registered_account(port, clients, name, password)
    reactor = irc_client.Reactor()
    welcomed = threading.Event()
    as_nick: list[str] = []

    def on_welcome(conn, event):
        as_nick.append(event.target)
        welcomed.set()

    conn = reactor.server().connect("127.0.0.1", irc_port, "anything", password=password,
                                    sasl_login=name)
    conn.add_global_handler("welcome", on_welcome)
    with reactor_running(reactor, conn):
        assert welcomed.wait(TIMEOUT)
        assert as_nick == [name]


def test_joining_a_room_with_server_time_plays_back_its_history(irc_serve, clients):
    port, irc_port = irc_serve
    room, name = "#" + unique("h"), unique("said")
    b = pychat(port, clients, name)
    b.send(f"/join {room}")
    b.expect(f"ROOM:{room}")
    b.send("said before the IRC user came")
    b.expect(f"{b.uid}: said before the IRC user came")
    c = irc(irc_port, clients)
    c.register(unique("late"), caps="server-time")
    c.send(f"JOIN {room}")
    line = c.expect(r"PRIVMSG " + re.escape(room) + " :said before")
    assert re.fullmatch(r"@time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
                        + re.escape(f":{name}!{b.uid}@pychat PRIVMSG {room} "
                                    ":said before the IRC user came"), line), line


def test_room_lines_reach_irc_users_once_registered_with_server_time_as_each_asked(
        procs, clients):
    """A room's chat lines reach its IRC members translated once for all of them: an IRC
    client still registering gets none of them, and after its welcome gets those from then
    on; members get ``@time=`` as each asked, whichever of them joined first."""
    irc_port = free_port()
    p, port = start_serve("--irc-port", str(irc_port), "--history", "memory",
                          acceptors=1)  # (one acceptor: what the witness has seen, all have)
    procs.append(p)
    name = unique("p")
    b = pychat(port, clients, name)
    witness = irc(irc_port, clients)
    witness.register(unique("w"))
    late = irc(irc_port, clients)  # in the lobby at the core, not registered (no NICK yet)
    while len(b.users) < 3:  # (b's lists come whole: b, the witness, the one registering)
        b.expect(lambda line: line.startswith("USERS:"))
    b.send("said while it registered")
    witness.expect(r"PRIVMSG #lobby :said while it registered$")  # fanned out by then
    nick = unique("late")
    late.register(nick)
    b.send("said once it was in")
    assert late.expect(r"PRIVMSG #lobby :said") == \
        f":{name}!{b.uid}@pychat PRIVMSG #lobby :said once it was in"
    assert not any("while it registered" in line for line in late.seen)
    # a room where the first IRC member asked for no times and the second did
    room = "#" + unique("t")
    plain, timed = irc(irc_port, clients), irc(irc_port, clients)
    for c, caps in ((plain, ""), (timed, "server-time")):
        n = unique("m")
        c.register(n, caps=caps)
        c.send(f"JOIN {room}")
        c.expect(rf"^:pychat 366 {n} {re.escape(room)} ")
    b.send(f"/join {room}")
    b.expect(f"ROOM:{room}")
    b.send("what time is it")
    said = f":{name}!{b.uid}@pychat PRIVMSG {room} :what time is it"
    assert plain.expect(r"what time is it$") == said
    assert re.fullmatch(r"@time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z " + re.escape(said),
                        timed.expect(r"what time is it$"))


def test_the_irc_door_speaks_tls_with_the_line_door_s_certificate(procs, tmp_path, clients):
    """`--tls-cert`/`--tls-key` put both doors behind TLS: an IRC client verifying the
    certificate registers and talks with a TLS line client; plain IRC on that port gets no
    welcome (the handshake fails and the connection closes)."""
    import ssl

    from tests.test_tls_e2e import TlsClient, make_certificates
    ca, cert, key = make_certificates(tmp_path)
    irc_port = free_port()
    p, port = start_serve("--tls-cert", cert, "--tls-key", key, "--irc-port", str(irc_port),
                          "--history", "memory", "--accounts", "memory")
    procs.append(p)
    line_client = TlsClient(port, ca)
    clients.append(line_client)
    line_client.handshake()
    c = Irc.__new__(Irc)
    ctx = ssl.create_default_context(cafile=ca)
    c.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", irc_port), timeout=TIMEOUT),
                             server_hostname="127.0.0.1")
    c.buf, c.seen, c.nick = b"", [], ""
    clients.append(c)
    nick = unique("tls")
    c.register(nick)
    line_client.send(f"/msg {nick} over tls, both doors")
    assert c.expect(r"PRIVMSG ").endswith(f"PRIVMSG {nick} :over tls, both doors")
    plain = socket.create_connection(("127.0.0.1", irc_port), timeout=TIMEOUT)
    plain.sendall(b"NICK plain\r\nUSER p 0 * :p\r\n")
    got = b""
    try:
        while chunk := plain.recv(4096):
            got += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    plain.close()
    assert b" 001 " not in got


def test_a_refusal_at_connect_is_an_irc_error_line(procs, clients):
    irc_port = free_port()
    p, _ = start_serve("--irc-port", str(irc_port), "--max-per-address", "1",
                       "--per-address-exempt", "none", "--accounts", "memory",
                       acceptors=1)  # (the limit is each acceptor's)
    procs.append(p)
    first = irc(irc_port, clients)
    first.register(unique("one"))
    second = irc(irc_port, clients)
    assert second.expect(r"^ERROR ") == (
        "ERROR :Closing link: too many connections from your address (max 1)")


def test_an_operator_kicks_an_irc_user_out_of_a_room(procs, clients, tmp_path):
    data = str(tmp_path / "data")
    irc_port = free_port()
    p, port = start_serve("--irc-port", str(irc_port), "--data-dir", data)
    procs.append(p)
    op_name = unique("op")
    op = pychat(port, clients, op_name)
    op.send("/register correct-horse-9")
    op.expect(f"OK register {op_name}")
    done = subprocess.run([sys.executable, "-m", "pychat", "admin", "op", op_name,
                           "--data-dir", data], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    room = "#" + unique("k")
    op.send(f"/join {room}")
    op.expect(f"ROOM:{room}")
    c = irc(irc_port, clients)
    nick = unique("kicked")
    c.register(nick)
    c.send(f"JOIN {room}")
    c.expect(rf"^:pychat 366 {nick} {re.escape(room)} ")
    op.expect(lambda line: nick in line and line.startswith("NAMES:"))
    op.send(f"/kick {nick} enough")
    assert c.expect(r" KICK ") == f":pychat KICK {room} {nick} :enough"
    c.expect(r" JOIN #lobby$")  # moved to the lobby, as a PyChat user is


def test_a_quiet_irc_client_is_pinged_and_its_pong_keeps_it(procs, clients):
    irc_port = free_port()
    p, _ = start_serve("--irc-port", str(irc_port), "--ping-after", "1", "--idle-timeout", "3",
                       acceptors=1)
    procs.append(p)
    a = irc(irc_port, clients)
    nick = unique("q")
    a.register(nick)
    started = time.monotonic()
    pings = 0
    # past the idle timeout and three pings, answering every one (pings come 1-2 s apart:
    # after 1 s of silence, at the next sweep; later on a busy machine)
    while time.monotonic() - started < 4 or pings < 3:
        a.expect(r"^PING :pychat$")
        pings += 1
        a.send("PONG :pychat")
    a.send("PING :alive")
    a.expect(r"PONG pychat :alive$")


def test_an_irc_user_sees_a_file_sent_to_its_room_as_a_link(irc_serve, clients):
    import urllib.request
    port, irc_port = irc_serve
    nick, name = unique("i"), unique("p")
    room = "#" + unique("r")
    a = irc(irc_port, clients)
    a.register(nick)
    a.send(f"JOIN {room}")
    a.expect(rf"^:pychat 366 {nick} {room} ")
    b = pychat(port, clients, name)
    b.send(f"/join {room}")
    b.expect(f"ROOM:{room}")
    b.send("/upload 5 hello.txt")
    url = b.expect_prefix("UPLOAD:")[len("UPLOAD:"):]
    req = urllib.request.Request(url, data=b"hello", method="PUT")
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        file_url = r.read().decode().strip()
    line = a.expect("sent a file")
    assert line == f":{name}!{b.uid}@pychat PRIVMSG {room} :sent a file: hello.txt (5 bytes) " \
                   f"{file_url}"
    # and privately: to the IRC user's own nick
    b.send(f"/upload 3 psst.txt {nick}")
    url = b.expect_prefix("UPLOAD:")[len("UPLOAD:"):]
    with urllib.request.urlopen(urllib.request.Request(url, data=b"abc", method="PUT"),
                                timeout=TIMEOUT) as r:
        file_url = r.read().decode().strip()
    line = a.expect("psst.txt")
    assert line == f":{name}!{b.uid}@pychat PRIVMSG {nick} :sent a file: psst.txt (3 bytes) " \
                   f"{file_url}"
