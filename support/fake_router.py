"""The acceptor's component-test harness: a fake router (a real pyzmq ROUTER socket) and helpers.

A test binds a ``FakeRouter`` (ROUTER_MANDATORY, LINGER 0, on a port the OS picks), starts
``python -m pychat.acceptor --port 0 --router <it> --heartbeat 0.2`` (the acceptor logs the TCP
port it got, so parallel workers cannot collide) and drives it with real TCP clients
(``support.client.Connection`` or raw sockets). The fake router answers what a real router
would (SessionSet, ToConn, ChatRoom, Kick, Resync) and records every bus message the acceptor
sends. Waiting is for an expected line or message with a deadline, never a sleep. The fixtures
(``fake``, ``start``, ``clients``) are in tests/conftest.py.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable

import zmq

from pychat.wire import bus, replies
from support.client import Connection, Timeout
from support.procs import Proc

HEARTBEAT = 0.2
WAIT = 10.0


# ---- the fake router -----------------------------------------------------------------------------

class FakeRouter:
    """A ROUTER socket the acceptor connects to; records ``(ident, message)`` as they arrive."""

    def __init__(self, ctx: zmq.Context):
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.epoch = uuid.uuid4().hex[:12]
        self.received: list[tuple[float, bytes, bus.BusMessage]] = []
        self.numbered: list[tuple[int, list[bus.BusMessage]]] = []  # (bus.Seq n, its messages)
        self.auto_ack = True  # acknowledge each numbered batch as it arrives, as a router does
        self.cursor = 0
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)

    def send(self, ident: bytes, *msgs: bus.BusMessage) -> None:
        self.sock.send_multipart([ident, *bus.encode(list(msgs))])

    def pump(self, timeout: float) -> None:
        """Receive every batch that arrives within ``timeout`` seconds (at least one poll)."""
        if not self.poller.poll(max(0, int(timeout * 1000))):
            return
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic()
            msgs = bus.decode(frames[1:])  # the acceptor must only ever send valid batches
            if msgs and isinstance(msgs[0], bus.Seq):  # kept apart: framing, not content
                self.numbered.append((msgs[0].n, msgs[1:]))
                if self.auto_ack:
                    try:
                        self.send(frames[0], bus.Ack(msgs[0].n))
                    except zmq.ZMQError:  # the acceptor has gone (a test stopped it)
                        pass
                msgs = msgs[1:]
            self.received.extend((now, frames[0], m) for m in msgs)

    def expect(self, pred: Callable[[bus.BusMessage], bool], timeout: float = WAIT
               ) -> bus.BusMessage:
        """The first message after the cursor that matches; the cursor moves past it."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self.cursor, len(self.received)):
                msg = self.received[i][2]
                if pred(msg):
                    self.cursor = i + 1
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                tail = [m for _, _, m in self.received[self.cursor:]
                        if not isinstance(m, bus.Heartbeat)]
                raise AssertionError(f"fake router: no expected message in {timeout}s; "
                                     f"got since the cursor: {tail[-20:]!r}")
            self.pump(left)

    def mark(self) -> int:
        return len(self.received)

    def since(self, start: int, heartbeats: bool = False) -> list[bus.BusMessage]:
        return [m for _, _, m in self.received[start:]
                if heartbeats or not isinstance(m, bus.Heartbeat)]

    def close(self) -> None:
        self.sock.close(0)


class Acceptor:
    def __init__(self, proc: Proc, port: int, name: str, hello: bus.Hello, fake: FakeRouter):
        self.proc = proc
        self.port = port
        self.name = name
        self.ident = name.encode()
        self.hello = hello
        self.fake = fake

    def send(self, *msgs: bus.BusMessage) -> None:
        self.fake.send(self.ident, *msgs)


def connect(acc: Acceptor, clients: list, welcome: bool = False) -> tuple[Connection, int]:
    """A client whose Open reached the router; returns it and its conn id. Its Welcome waits
    (up to the acceptor's WELCOME_WAIT) to go out with its ID: ``admit`` reads both; with
    ``welcome`` (a client the test will not admit) it is read here, once the wait is over."""
    c = Connection("127.0.0.1", acc.port, timeout=WAIT)
    clients.append(c)
    conn = expect_open(acc, c.sock)
    if welcome:
        assert c.read_line() == replies.WELCOME
    return c, conn


def expect_open(acc: Acceptor, sock: socket.socket) -> int:
    peer = "127.0.0.1:%d" % sock.getsockname()[1]
    return acc.fake.expect(lambda m: isinstance(m, bus.Open) and m.peer == peer).conn


def admit(acc: Acceptor, c: Connection, conn: int, uid: str, room: str = "#lobby",
          name: str = "") -> None:
    """What the router does for a new session: SessionSet, then its ID; wait for the ID."""
    acc.send(bus.SessionSet(conn, uid, name, room), bus.ToConn(conn, f"ID:{uid}"))
    assert c.read_line() == replies.WELCOME
    assert c.read_line() == f"ID:{uid}"


def members_of(acc: Acceptor, clients: list, n: int, room: str) -> list[Connection]:
    """``n`` admitted clients in ``room``, uids 100000 and up, in the order they joined."""
    members = []
    for i in range(n):
        c, conn = connect(acc, clients)
        admit(acc, c, conn, f"{100000 + i}", room=room)
        members.append(c)
    return members


def local_reply(acc: Acceptor, c: Connection, timeout: float = WAIT) -> str:
    """The next line for a command the acceptor answers itself (PONG, OK cap, ERROR:).

    Such a reply waits until the router has answered every command the client sent before it
    (the acceptor holds it until the router acknowledges their batch); the fake router
    acknowledges each numbered batch as it takes it in, so take in while waiting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return c.read_line(timeout=0.05)
        except Timeout:
            pass
        acc.fake.pump(0.05)
    raise AssertionError("no local reply in time")


def is_cmd(conn: int, cmd) -> Callable[[bus.BusMessage], bool]:
    return lambda m: isinstance(m, bus.Cmd) and m.conn == conn and m.command == cmd


def is_close(conn: int) -> Callable[[bus.BusMessage], bool]:
    return lambda m: isinstance(m, bus.Close) and m.conn == conn


def read_to_eof(sock: socket.socket, timeout: float = WAIT) -> bytes:
    """Everything until the peer closes (EOF or reset); fails on timeout."""
    sock.settimeout(timeout)
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk
