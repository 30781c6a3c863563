"""The client core: ``ChatState`` (pure) and the reconnecting ``Session`` against real servers.

The reconnect test uses a hand-started cluster: the session is pointed at one acceptor's port,
that acceptor is SIGKILLed, a new acceptor is started on the same port, and the session must be
back with its name and room (a new uid). Every wait is for an event, with a timeout.
"""

from __future__ import annotations

import queue
import time

from pychat.clients import events
from pychat.clients.session import Session
from pychat.clients.state import ERROR, OWN, PRIVATE, PUBLIC, ChatState
from pychat.wire import replies
from support.procs import Proc, python_m, start_acceptor, start_router


def feed(state: ChatState, *lines: str):
    return [state.apply(replies.parse_server_line(line)) for line in lines]


# ---- ChatState (pure) ----------------------------------------------------------------------------

def test_state_names_kinds_and_mentions():
    st = ChatState()
    feed(st, "Welcome to PyChat Server!", "ID:111111", "USERS:222222,111111",
         "NAMES:222222=bob", "OK nick alice", "NAMES:222222=bob,111111=alice")
    assert st.uid == "111111" and st.name == "alice"
    assert st.user_rows() == [("222222", "bob (222222)"), ("111111", "alice (111111)  (you)")]
    assert st.title() == "PyChat - alice - ID 111111 - #lobby"
    own, other, mention, priv_in, priv_out = feed(
        st, "@time=2026-11-26T11:34:42.123Z 111111: hi",
        "@time=2026-11-26T11:34:43.000Z 222222: hello there",
        "@time=2026-11-26T11:34:44.000Z 222222: hey Alice, look",
        "@time=2026-11-26T11:34:45.000Z [Private] 222222: psst",
        "@time=2026-11-26T11:34:46.000Z [Private] To 222222: ok")
    assert (own.kind, own.who, own.text) == (OWN, "alice", "hi")
    assert (other.kind, other.who, other.mention) == (PUBLIC, "bob", False)
    assert mention.mention  # "Alice" matches ignoring case, as a word
    assert (priv_in.kind, priv_in.who) == (PRIVATE, "from bob")
    assert (priv_out.kind, priv_out.who) == (PRIVATE, "to bob")
    assert len(own.clock) == 8 and own.clock.count(":") == 2
    assert not feed(st, "@time=2026-11-26T11:34:47.000Z 222222: malice")[0].mention
    err, = feed(st, "ERROR: no such user zed")
    assert (err.kind, err.text) == (ERROR, "no such user zed")


def test_state_history_fills_the_gap_after_a_reconnect_and_shows_again_on_reentry():
    st = ChatState()
    feed(st, "ID:111111", "USERS:111111", "ROOM:#dev", "USERS:111111",
         "@time=2026-11-26T11:00:00.000Z 222222: before")
    st.known["222222"] = "bob"  # a name seen earlier, bob has left the room since
    # the connection dropped: new uid, room restored, history asked for
    out = feed(st, "ID:333333", "USERS:333333", "ROOM:#dev", "USERS:333333", "HISTORY:2",
               "@time=2026-11-26T11:00:00.000Z 222222: before",
               "@time=2026-11-26T11:00:01.000Z 222222: during", "444444: after")
    *_, dup, during, after = out
    assert dup is None  # already shown
    assert during.history and during.who == "bob"
    assert not after.history and st.room == "#dev"
    room, *_, again = feed(st, "ROOM:#ops", "ROOM:#dev", "HISTORY:1",
                           "@time=2026-11-26T11:00:01.000Z 222222: during")
    assert room.text == "you are in #ops"
    assert again.history and again.text == "during"  # entering a room shows its history
    assert [ln.text for ln in st.recent] == ["during"]  # the room's lines, since entering it


def test_state_room_counts_follow_the_user_list():
    st = ChatState()
    feed(st, "ID:111111", "USERS:111111", "ROOMS:#a=3,#lobby=1", "USERS:111111,222222")
    assert st.rooms == (("#a", 3), ("#lobby", 2))
    feed(st, "ROOM:#b", "USERS:111111")
    assert st.rooms == (("#a", 3), ("#b", 1), ("#lobby", 2))


# ---- Session against real processes --------------------------------------------------------------

class Collector:
    """Events from a Session's thread, and waiting for one that matches."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue()
        self.all: list = []

    def __call__(self, ev) -> None:
        self.q.put(ev)

    def wait(self, pred, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching event; got {self.all[-30:]}")
            try:
                ev = self.q.get(timeout=left)
            except queue.Empty:
                continue
            self.all.append(ev)
            if pred(ev):
                return ev


def is_status(text: str):
    return lambda ev: isinstance(ev, events.Status) and text in ev.text


def test_session_connects_names_itself_and_chats_with_timestamps(serve, connect, sessions):
    got = Collector()
    s = Session("127.0.0.1", serve, got, name="alice")
    sessions.append(s.start())
    got.wait(lambda ev: isinstance(ev, replies.Ok) and ev.what == "nick alice")
    peer = connect(serve)
    peer.handshake()
    peer.send("hello alice")
    chat = got.wait(lambda ev: isinstance(ev, replies.Chat) and ev.text == "hello alice")
    assert chat.time and chat.time.endswith("Z") and chat.uid == peer.uid
    s.send("/join #dev")
    got.wait(lambda ev: isinstance(ev, replies.RoomChanged) and ev.room == "#dev")
    got.wait(lambda ev: isinstance(ev, replies.HistoryStart))  # history asked on entry
    assert (s.name, s.room) == ("alice", "#dev")
    s.close()
    got.wait(lambda ev: isinstance(ev, events.Status) and ev.state == events.CLOSED)
    assert not s.alive()


def test_session_taken_name_is_refused_then_another_is_taken(serve, connect, sessions):
    peer = connect(serve)
    peer.handshake()
    peer.send("/nick bob")
    peer.expect("OK nick bob")
    got = Collector()
    s = Session("127.0.0.1", serve, got, name="BOB")
    sessions.append(s.start())
    refused = got.wait(lambda ev: isinstance(ev, events.NameRefused))
    assert refused.name == "BOB" and "taken" in refused.reason
    s.set_name("bob2")
    got.wait(lambda ev: isinstance(ev, replies.Ok) and ev.what == "nick bob2")
    assert s.name == "bob2"


def start_acceptor_on(endpoint: str, port: int) -> Proc:
    p = Proc(python_m("pychat.acceptor", "--port", str(port), "--router", endpoint),
             name=f"acceptor :{port}")
    p.wait_for(r"router \w+ is alive")
    return p


def test_session_reconnects_to_a_restarted_acceptor_with_name_and_room(procs, connect, sessions):
    router, endpoint = start_router()
    procs.append(router)
    acceptor, port = start_acceptor(endpoint)
    procs.append(acceptor)
    got = Collector()
    s = Session("127.0.0.1", port, got, name="alice", backoff_first=0.1)
    sessions.append(s.start())
    got.wait(lambda ev: isinstance(ev, replies.Ok) and ev.what == "nick alice")
    s.send("/join #ops")
    got.wait(lambda ev: isinstance(ev, replies.RoomChanged) and ev.room == "#ops")
    old_uid = s.uid

    killed_at = time.monotonic()
    acceptor.kill()  # SIGKILL: no goodbye to the client, no goodbye to the router
    got.wait(lambda ev: isinstance(ev, events.Status) and ev.state == events.RECONNECTING)
    procs.append(start_acceptor_on(endpoint, port))
    got.wait(is_status("reconnected as alice in #ops"), timeout=30)
    took = time.monotonic() - killed_at
    assert (s.name, s.room) == ("alice", "#ops") and s.uid != old_uid
    print(f"reconnect: back with name and room {took:.2f}s after the kill")

    peer = connect(port)  # what the others see: alice, by name, in #ops
    peer.handshake()
    peer.send("/join #ops")
    peer.expect_prefix("ROOM:#ops")
    assert peer.expect_prefix("NAMES:") == f"NAMES:{s.uid}=alice"
    s.send("still here")
    peer.expect(f"{s.uid}: still here")


def test_session_keeps_trying_while_nobody_listens(procs, sessions):
    from support.procs import free_port
    port = free_port()
    got = Collector()
    s = Session("127.0.0.1", port, got, backoff_first=0.05, backoff_max=0.2)
    sessions.append(s.start())
    ev = got.wait(lambda ev: isinstance(ev, events.Status) and ev.attempt >= 3
                  and ev.state == events.RECONNECTING)
    assert "reconnecting in" in ev.text
    s.close()
    got.wait(lambda ev: isinstance(ev, events.Status) and ev.state == events.CLOSED)


def test_session_drops_a_server_that_stops_answering_and_comes_back(procs, sessions):
    """SIGSTOP the acceptor: the TCP connection stays open but nothing answers the keepalive
    ping, so the session drops it and retries; after SIGCONT it is back with name and room."""
    import signal
    router, endpoint = start_router()
    procs.append(router)
    acceptor, port = start_acceptor(endpoint)
    procs.append(acceptor)
    got = Collector()
    s = Session("127.0.0.1", port, got, name="quiet", room="#calm", keepalive=0.5,
                backoff_first=0.1, backoff_max=0.5)
    sessions.append(s.start())
    got.wait(lambda ev: isinstance(ev, replies.RoomChanged) and ev.room == "#calm")
    acceptor.signal(signal.SIGSTOP)
    try:
        got.wait(is_status("no answer to keepalive"))
    finally:
        acceptor.signal(signal.SIGCONT)
    got.wait(is_status("reconnected as quiet in #calm"), timeout=30)
    assert (s.name, s.room) == ("quiet", "#calm")
