"""Router component tests: the real router process, with the test playing the acceptors.

Each test starts ``python -m router --heartbeat 0.2`` on its own port (``tcp://127.0.0.1:0``:
the OS picks a free port and the router logs it, so parallel workers cannot collide) and
connects one or more ``FakeAcceptor``s: a real pyzmq DEALER socket with a routing id, speaking
``wire.bus``. Each fake acceptor's socket lives in its own thread, which heartbeats on time
while the test waits (a 0.2 s router declares a silent acceptor dead after 0.6 s), so a slow
test machine cannot make the router drop a fake acceptor by accident. The test thread talks to
it through queues and waits for expected messages with deadlines, never with sleeps.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from itertools import pairwise

import pytest
import zmq

from pychat.wire import bus
from pychat.wire.commands import Nick, Say, Users
from support.procs import Proc, python_m

pytestmark = pytest.mark.timeout(60)

HEARTBEAT = 0.2  # the router's --heartbeat in every test here
FAKE_BEAT = 0.05  # how often a fake acceptor heartbeats (well inside the router's 0.6 s)
WAIT = 5.0  # default deadline for an expected message
UID = re.compile(r"\d{6}\Z")


# ---- the router process --------------------------------------------------------------------------

class Router:
    def __init__(self, proc: Proc, endpoint: str, epoch: str):
        self.proc = proc
        self.endpoint = endpoint
        self.epoch = epoch


@pytest.fixture
def router(procs) -> Router:
    p = Proc(python_m("pychat.router", "--bind", "tcp://127.0.0.1:0",
                      "--heartbeat", str(HEARTBEAT)),
             name="router")
    procs.append(p)
    m = p.wait_for(r"router bound to (tcp://\S+) \(epoch (\w+)\)")
    return Router(p, m.group(1), m.group(2))


@pytest.fixture
def fakes(router):
    """``fakes(name, hello=True)`` connects a fake acceptor; all are closed at the end."""
    made: list[FakeAcceptor] = []
    ctx = zmq.Context()

    def make(name: str | None = None, hello: bool = True) -> FakeAcceptor:
        fa = FakeAcceptor(ctx, router.endpoint, name or f"fake-{uuid.uuid4().hex[:8]}")
        made.append(fa)
        if hello:
            fa.hello()
            fa.expect(lambda m: isinstance(m, bus.Heartbeat))
        return fa

    yield make
    for fa in made:
        fa.close()
    ctx.term()


# ---- a fake acceptor -----------------------------------------------------------------------------

class FakeAcceptor:
    """A DEALER with a fixed routing id, owned by one thread (zmq sockets are not thread safe).

    ``send``/``send_raw`` queue frames for that thread; every batch it receives is decoded and
    appended to ``received`` as ``(arrival time, message)``. ``expect`` waits for a message.
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, name: str, ident: bytes | None = None):
        self.name = name
        self.ident = ident if ident is not None else name.encode()
        self.epoch = uuid.uuid4().hex[:12]
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, self.ident)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.connect(endpoint)
        self.received: list[tuple[float, bus.BusMessage]] = []
        self.batches = 0
        self.cursor = 0  # ``expect`` looks at messages from here on
        self.last_sent = 0.0  # monotonic time of the last batch handed to zmq
        self.beating = False
        self._beat_ack = threading.Event()
        self._out: queue.Queue[list[bytes]] = queue.Queue()
        self._cond = threading.Condition()
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=f"fake {name}", daemon=True)
        self._thread.start()

    # ---- test side ------------------------------------------------------------------------------

    def send(self, *msgs: bus.BusMessage) -> None:
        self.send_raw(bus.encode(list(msgs)))

    def send_raw(self, frames: list[bytes]) -> None:
        self._out.put(frames)
        self._wake_w.send(b"x")

    def hello(self, peers: str = "[]") -> None:
        """Say Hello and start heartbeating (a Heartbeat before Hello would ask for a Resync)."""
        self.send(bus.Hello(self.name, self.epoch, peers, round(HEARTBEAT * 1000)))
        self.beating = True

    def stop_beating(self) -> float:
        """Stop heartbeating; returns the time of the last batch this acceptor sent."""
        self._beat_ack.clear()
        self.beating = False
        self._wake_w.send(b"x")
        assert self._beat_ack.wait(5), "fake acceptor thread did not stop beating"
        return self.last_sent

    def expect(self, pred: Callable[[bus.BusMessage], bool], timeout: float = WAIT
               ) -> bus.BusMessage:
        """The first message after the cursor that matches; the cursor moves past it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(self.cursor, len(self.received)):
                    msg = self.received[i][1]
                    if pred(msg):
                        self.cursor = i + 1
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = [m for _, m in self.received[self.cursor:]
                            if not isinstance(m, bus.Heartbeat)]
                    raise AssertionError(f"{self.name}: no expected message in {timeout}s; "
                                         f"got since the cursor: {tail[-20:]!r}")
                self._cond.wait(left)

    def since(self, start: int) -> list[bus.BusMessage]:
        with self._cond:
            return [m for _, m in self.received[start:]]

    def mark(self) -> int:
        with self._cond:
            return len(self.received)

    def close(self) -> None:
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(5)
        self._wake_r.close()
        self._wake_w.close()

    # ---- the socket's thread --------------------------------------------------------------------

    def _run(self) -> None:
        sock = self.sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        next_beat = time.monotonic()
        try:
            while not self._stop:
                now = time.monotonic()
                if self.beating and now >= next_beat:
                    self._send(bus.encode([bus.Heartbeat(self.epoch, round(HEARTBEAT * 1000))]))
                    next_beat = now + FAKE_BEAT
                elif not self.beating:
                    self._beat_ack.set()
                timeout = max(1, int((next_beat - now) * 1000)) if self.beating else 50
                events = dict(poller.poll(timeout))
                if self._wake_r.fileno() in events:
                    try:
                        while self._wake_r.recv(512):
                            pass
                    except BlockingIOError:
                        pass
                while True:
                    try:
                        frames = self._out.get_nowait()
                    except queue.Empty:
                        break
                    self._send(frames)
                if sock in events:
                    self._drain()
        finally:
            while True:  # what was queued before close still goes out
                try:
                    self._send(self._out.get_nowait())
                except queue.Empty:
                    break
            sock.close(0)

    def _send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)
        self.last_sent = time.monotonic()

    def _drain(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic()
            msgs = bus.decode(frames)  # the router must only ever send valid batches
            with self._cond:
                self.batches += 1
                self.received.extend((now, m) for m in msgs)
                self._cond.notify_all()


# ---- helpers -------------------------------------------------------------------------------------

def is_users(room: str, pred: Callable[[list[str]], bool] = lambda uids: True):
    def check(m: bus.BusMessage) -> bool:
        if not (isinstance(m, bus.ToRoom) and m.room == room):
            return False
        first = m.text.split("\n", 1)[0]
        if not first.startswith("USERS:"):
            return False
        uids = [u for u in first[len("USERS:"):].split(",") if u]
        return pred(uids)
    return check


def open_sessions(fa: FakeAcceptor, conns: list[int]) -> dict[int, str]:
    """Open sessions (one batch); wait for each one's ID; return conn -> uid."""
    fa.send(*(bus.Open(c, f"127.0.0.1:{40000 + c}") for c in conns))
    uids = {}
    for c in conns:
        m = fa.expect(lambda m, c=c: isinstance(m, bus.ToConn) and m.conn == c
                      and m.text.startswith("ID:"))
        uids[c] = m.text[3:]
    return uids


def chat_lines(msgs: list[bus.BusMessage], text: str) -> list[bus.BusMessage]:
    """Every message carrying ``text`` (whatever its kind)."""
    return [m for m in msgs if text in getattr(m, "text", "")]


# ---- tests ---------------------------------------------------------------------------------------

def test_hello_is_answered_with_a_heartbeat_carrying_the_router_epoch(router, fakes):
    fa = fakes(hello=False)
    fa.hello()
    hb = fa.expect(lambda m: isinstance(m, bus.Heartbeat), timeout=WAIT)
    assert hb.epoch == router.epoch
    assert re.fullmatch(r"[0-9a-f]{12}", hb.epoch)
    router.proc.wait_for(rf"acceptor {re.escape(fa.name)} joined \(epoch {fa.epoch}\)")


def test_heartbeats_keep_coming_about_every_heartbeat(router, fakes):
    fa = fakes()
    start = fa.mark()
    for _ in range(8):
        fa.expect(lambda m: isinstance(m, bus.Heartbeat), timeout=2.0)
    with fa._cond:
        beats = [(t, m) for t, m in fa.received[start:] if isinstance(m, bus.Heartbeat)]
    assert {m.epoch for _, m in beats} == {router.epoch}
    times = [t for t, _ in beats[1:]]  # the first may follow the Hello answer closely
    gaps = [b - a for a, b in pairwise(times)]
    mean = sum(gaps) / len(gaps)
    # about 0.2 s apart: loose bounds, only to catch "never" or "flooding"
    assert 0.1 <= mean <= 0.5, gaps
    assert min(gaps) >= 0.05, gaps


def test_open_gets_session_id_and_users_push(router, fakes):
    fa = fakes()
    fa.send(bus.Open(1, "127.0.0.1:50001"))
    sess = fa.expect(lambda m: isinstance(m, bus.SessionSet))
    assert sess.conn == 1 and sess.room == "#lobby" and sess.name == ""
    assert re.fullmatch(r"\d{6}", sess.uid)
    ident = fa.expect(lambda m: isinstance(m, bus.ToConn))
    assert ident == bus.ToConn(1, f"ID:{sess.uid}")
    # the USERS push comes after the ID and includes the newcomer
    users = fa.expect(is_users("#lobby"))
    assert users.text.split("\n")[0] == f"USERS:{sess.uid}"


def test_public_say_crosses_the_bus_once_per_acceptor_not_once_per_user(router, fakes):
    a = fakes("acc-a")
    b = fakes("acc-b")
    a_uids = open_sessions(a, list(range(1, 51)))  # 50 sessions on A
    b_uids = open_sessions(b, [1, 2])
    everyone = set(a_uids.values()) | set(b_uids.values())
    assert len(everyone) == 52
    for fa in (a, b):
        fa.expect(is_users("#lobby", lambda uids: set(uids) == everyone))
    a_mark, b_mark = a.mark(), b.mark()

    b.send(bus.Cmd(1, Say("hello all")))
    b.send(bus.Cmd(2, Say("fence")))  # same pipe, so it arrives after every "hello all" copy
    speaker = b_uids[1]
    for fa in (a, b):
        fa.expect(lambda m: isinstance(m, bus.ChatRoom) and m.text == f"{b_uids[2]}: fence")

    for fa, mark in ((a, a_mark), (b, b_mark)):
        carried = chat_lines(fa.since(mark), "hello all")
        assert len(carried) == 1, (fa.name, carried)
        chat = carried[0]
        assert isinstance(chat, bus.ChatRoom)
        assert chat.room == "#lobby" and chat.text == f"{speaker}: hello all"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", chat.stamp)


def test_unknown_acceptor_gets_resync_and_its_sync_is_adopted(router, fakes):
    fa = fakes("stranger", hello=False)
    fa.send(bus.Seq(1), bus.Open(1, "127.0.0.1:50001"))  # never said Hello
    fa.expect(lambda m: isinstance(m, bus.Resync))

    fa.hello()
    fa.send(bus.Sync(7, "424242", "carol", "#lobby"))
    hb = fa.expect(lambda m: isinstance(m, bus.Heartbeat))
    assert hb.epoch == router.epoch
    sess = fa.expect(lambda m: isinstance(m, bus.SessionSet) and m.conn == 7)
    assert sess == bus.SessionSet(7, "424242", "carol", "#lobby")  # the uid is kept
    # the numbered batch sent before Hello was dropped: it is served when sent again after it
    mark = fa.mark()
    fa.send(bus.Seq(1), bus.Open(1, "127.0.0.1:50001"))
    opened = fa.expect(lambda m: isinstance(m, bus.SessionSet) and m.conn == 1)
    assert UID.match(opened.uid) and opened.room == "#lobby"
    assert fa.expect(lambda m: isinstance(m, bus.Ack)) == bus.Ack(1)
    assert sum(isinstance(m, bus.SessionSet) and m.conn == 1 for m in fa.since(0)) == 1
    assert bus.From(fa.epoch, 1) in fa.since(mark)

    fa.send(bus.Cmd(7, Say("after resync")))
    chat = fa.expect(lambda m: isinstance(m, bus.ChatRoom))
    assert chat.room == "#lobby" and chat.text == "424242: after resync"
    # the adopted name is known to the router: taking it from elsewhere is refused
    other = fakes("other")
    open_sessions(other, [1])
    other.send(bus.Cmd(1, Nick("carol")))
    refused = other.expect(lambda m: isinstance(m, bus.Err))
    assert refused == bus.Err(1, "name-taken", "name carol is taken")


def test_numbered_batches_are_acknowledged_handled_once_and_their_results_marked(router, fakes):
    a = fakes("numbered")
    b = fakes("watcher")
    b_uid = open_sessions(b, [1])[1]
    a.send(bus.Seq(1), bus.Open(1, "127.0.0.1:50001"))
    uid = a.expect(lambda m: isinstance(m, bus.SessionSet) and m.conn == 1).uid
    assert a.expect(lambda m: isinstance(m, bus.Ack)) == bus.Ack(1)
    b.expect(is_users("#lobby", lambda uids: set(uids) == {uid, b_uid}))
    a_mark, b_mark = a.mark(), b.mark()
    a.send(bus.Seq(2), bus.Cmd(1, Say("once")))
    a.send(bus.Seq(2), bus.Cmd(1, Say("once")))  # the same number again: not handled again
    a.send(bus.Seq(3), bus.Cmd(1, Say("fence")))
    for fa, mark in ((a, a_mark), (b, b_mark)):
        fa.expect(lambda m: isinstance(m, bus.ChatRoom) and m.text == f"{uid}: fence")
        got = fa.since(mark)
        assert len(chat_lines(got, "once")) == 1, (fa.name, got)
        # each result follows the From naming the batch that caused it
        once = next(i for i, m in enumerate(got) if m in chat_lines(got, "once"))
        fence = next(i for i, m in enumerate(got) if m in chat_lines(got, "fence"))
        assert got[once - 1] == bus.From(a.epoch, 2), got
        assert got[fence - 1] == bus.From(a.epoch, 3), got
    a.expect(lambda m: m == bus.Ack(3))
    assert all(not isinstance(m, bus.Ack) for m in b.since(b_mark))  # b sent no numbers


def test_a_started_router_waits_for_the_acceptors_the_hello_names(router, fakes):
    a = fakes("first", hello=False)
    a.hello(peers='["first", "second"]')  # the previous router knew both
    a.expect(lambda m: isinstance(m, bus.Heartbeat))
    a.send(bus.Seq(1), bus.Open(1, "127.0.0.1:50001"))
    a.send(bus.StatusAsk())  # answered at once, behind the batch on the same pipe
    status = a.expect(lambda m: isinstance(m, bus.Status))
    assert json.loads(status.json)["settled"] is False
    assert not any(isinstance(m, bus.SessionSet) for m in a.since(0)), "served before settling"

    mark = a.mark()
    b = fakes("second", hello=False)
    b.hello(peers='["first", "second"]')
    a.expect(lambda m: isinstance(m, bus.SessionSet) and m.conn == 1)
    router.proc.wait_for(r"settled \d+ ms after start: every acceptor has resynced; "
                         r"handling 1 waiting batches")
    peers = [m for m in a.since(mark) if isinstance(m, bus.Peers)]
    assert json.loads(peers[-1].names) == ["first", "second"]


def test_a_started_router_asks_the_acceptors_it_waits_for_to_resync(router, fakes):
    """An acceptor with no client talking sends only heartbeats; a starting router that waits
    for it does not wait for the next one: it sends Resync to the name it was given."""
    quiet = fakes("quiet", hello=False)  # connected, but it has sent nothing at all
    a = fakes("talker", hello=False)
    a.hello(peers='["talker", "quiet"]')
    quiet.expect(lambda m: isinstance(m, bus.Resync))
    quiet.hello(peers='["talker", "quiet"]')
    router.proc.wait_for(r"settled \d+ ms after start: every acceptor has resynced")


def test_a_started_router_stops_waiting_for_an_acceptor_that_never_comes(router, fakes):
    a = fakes("lonely", hello=False)
    a.hello(peers='["lonely", "ghost"]')
    began = time.monotonic()
    a.send(bus.Seq(1), bus.Open(1, "127.0.0.1:50001"))
    a.expect(lambda m: isinstance(m, bus.SessionSet) and m.conn == 1)
    assert time.monotonic() - began >= 2 * HEARTBEAT - 0.1  # the settling time, then served
    router.proc.wait_for(r"settled \d+ ms after start: \['ghost'\] did not resync in time")


def test_silent_acceptor_is_declared_dead_and_its_users_leave(router, fakes):
    a = fakes("alive")
    b = fakes("silent")
    a_uid = open_sessions(a, [1])[1]
    b_uids = set(open_sessions(b, [1, 2]).values())
    a.expect(is_users("#lobby", lambda uids: set(uids) == b_uids | {a_uid}))

    last = b.stop_beating()
    users = a.expect(is_users("#lobby", lambda uids: uids == [a_uid]), timeout=5.0)
    gone_after = time.monotonic() - last
    assert users.text.split("\n")[0] == f"USERS:{a_uid}"
    # never before 3 missed heartbeats; "about 3" with generous slack for a loaded machine
    assert gone_after >= 3 * HEARTBEAT - 0.1, gone_after
    assert gone_after < 3 * HEARTBEAT + 2.0, gone_after
    router.proc.wait_for(r"acceptor silent lost: no heartbeat")
    # the alive acceptor is still served
    a.send(bus.Cmd(1, Say("still here")))
    a.expect(lambda m: isinstance(m, bus.ChatRoom) and m.text == f"{a_uid}: still here")


GARBAGE = [
    [b"pychat-bus/0", bus.encode_message(bus.Cmd(1, Say("old version")))],  # wrong header
    [b"not a header at all"],
    [os.urandom(64)],
    [os.urandom(7), os.urandom(300), os.urandom(1)],
    [bus.HEADER, b"\xff\xfe\xfd not utf-8"],
    [bus.HEADER, b"no-such-kind\x00x"],
    [bus.HEADER, b"cmd\x00notanint\x00say\x00x"],
    [bus.HEADER, b"cmd\x001\x00bogus\x00x"],
    [bus.HEADER, b"open\x001"],  # too few fields
    [b""],
]


def test_garbage_batches_are_dropped_and_the_router_keeps_serving(router, fakes):
    fa = fakes("messy")
    uid = open_sessions(fa, [1])[1]
    fa.expect(is_users("#lobby"))
    mark = fa.mark()
    for frames in GARBAGE:
        fa.send_raw(frames)
    for _ in GARBAGE:  # each batch was dropped, and said so
        router.proc.wait_for(r"dropped a bad batch from b'messy'")
    # a routing id that is not UTF-8, from another socket
    ctx = zmq.Context()
    try:
        odd = FakeAcceptor(ctx, router.endpoint, "odd", ident=b"\xff\xfe-odd")
        try:
            odd.send(bus.Hello("odd", odd.epoch, "[]", round(HEARTBEAT * 1000)))
            router.proc.wait_for(r"dropped a bad batch from b'\\xff\\xfe-odd'")
        finally:
            odd.close()
    finally:
        ctx.term()

    fa.send(bus.Cmd(1, Users()))
    reply = fa.expect(lambda m: isinstance(m, bus.ToConn) and m.conn == 1)
    assert reply.text.split("\n")[0] == f"USERS:{uid}"
    fa.send(bus.Cmd(1, Say("after garbage")))
    fa.expect(lambda m: isinstance(m, bus.ChatRoom) and m.text == f"{uid}: after garbage")
    # nothing the garbage could have caused came back (the Say inside the old-version batch)
    assert not chat_lines(fa.since(mark), "old version")
    assert router.proc.alive()


def test_a_forged_resync_and_forged_commands_from_a_peer_are_dropped_not_shown(router, fakes):
    """A fake acceptor (a real DEALER) resyncs a session whose name holds a newline and the
    text of a forged line, and sends commands no client could (an escape sequence, a name
    that reads as a uid): the router drops each such message, logs it, and serves the rest of
    the batch. The victim, on an honest acceptor, sees nothing forged."""
    honest = fakes("honest")
    victim = open_sessions(honest, [1])[1]
    evil = fakes("evil", hello=False)
    evil.hello()
    evil.expect(lambda m: isinstance(m, bus.Heartbeat))
    forged_name = f"eve\n{victim}: your password, please"
    evil.send_raw(bus.encode([
        bus.Seq(1),
        bus.Sync(1, "654321", forged_name, "#lobby"),        # forged: dropped
        bus.Sync(2, "765432", "mallory", "#lobby"),           # a valid session: adopted
        bus.Cmd(2, Say("\x1b[2Jscreen wiped")),              # forged: dropped
        bus.Cmd(2, Nick("123456")),                           # forged: dropped
        bus.Cmd(2, Say("hello from mallory")),                # valid: served
    ]))
    honest.expect(lambda m: isinstance(m, bus.ChatRoom) and m.text == "765432: hello from mallory")
    router.proc.wait_for(r"dropped a bad message from evil: sync: not a name")
    seen = [getattr(m, "text", "") for m in honest.since(0)]
    assert not [t for t in seen if "password" in t or "\x1b" in t or "wiped" in t], seen
    names = [m for m in honest.since(0) if isinstance(m, bus.ToRoom) and "NAMES:" in m.text]
    assert names and all("eve" not in m.text for m in names)
    assert "765432=mallory" in names[-1].text


def test_a_resync_claiming_an_account_without_its_seal_is_a_guest(router, fakes):
    """A peer resyncs a session as logged in to an account, with a made-up seal (it cannot
    know the router's key): the router adopts the session as a guest with no name, tells the
    client, and logs the claim. The account cannot be taken by a bus message."""
    evil = fakes("evil2", hello=False)
    evil.hello()
    evil.expect(lambda m: isinstance(m, bus.Heartbeat))
    evil.send_raw(bus.encode([
        bus.Seq(1), bus.Sync(1, "654322", "root", "#lobby", "10.9.9.9:1", "root", "a" * 64)]))
    sess = evil.expect(lambda m: isinstance(m, bus.SessionSet) and m.conn == 1)
    assert (sess.account, sess.name, sess.seal) == ("", "", "")
    err = evil.expect(lambda m: isinstance(m, bus.Err) and m.conn == 1)
    assert err.text == "your login could not be restored: log in again"
