"""Fixtures: real processes (owned by the test, stopped by pid) and clients on real sockets."""

from __future__ import annotations

import os
import uuid

import pytest
import zmq

from pychat.router.sqlite_history import SqliteHistory
from pychat.wire import bus
from support.client import Connection
from support.fake_router import HEARTBEAT, Acceptor, FakeRouter
from support.procs import Proc, python_m, start_acceptor, start_router, start_serve
from support.xvfb import Xvfb


@pytest.fixture(scope="session", autouse=True)
def private_data_dir(tmp_path_factory):
    """Routers started by tests keep their history file in a temporary folder, never in the
    user's data folder (history is on by default): one for the session (module-scoped servers),
    and a fresh one for each test (``fresh_data_dir``), so no test sees another's history.
    Tests that check persistence pass their own ``--data-dir``."""
    os.environ["PYCHAT_DATA_DIR"] = str(tmp_path_factory.mktemp("pychat-data"))


@pytest.fixture(autouse=True)
def fresh_data_dir(private_data_dir, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PYCHAT_DATA_DIR", str(tmp_path_factory.mktemp("pychat-data")))


@pytest.fixture
def procs():
    """Collects every process a test starts; all are stopped when it ends."""
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


@pytest.fixture
def connect():
    """``connect(port)`` opens a client ``Connection``; all are closed when the test ends."""
    opened: list[Connection] = []

    def make(port: int, **kw) -> Connection:
        c = Connection("127.0.0.1", port, **kw)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


@pytest.fixture
def sessions():
    """The clients' reconnecting ``Session``s a test starts (append them); all are closed at
    the end."""
    made: list = []
    yield made
    for s in made:
        s.close()


@pytest.fixture
def opened(tmp_path):
    """``opened(**kw)`` opens a SqliteHistory on tmp_path/data; all are closed at the end."""
    made = []

    def make(**kw) -> SqliteHistory:
        h = SqliteHistory(str(tmp_path / "data"), **kw)
        h.open()
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


@pytest.fixture
def serve(procs):
    """A ``pychat serve`` with two acceptors on a free port; yields the port."""
    p, port = start_serve()
    procs.append(p)
    return port


@pytest.fixture(scope="module")
def shared_serve():
    """One ``pychat serve`` for a module's read-mostly tests (each test uses fresh clients
    and its own room names, so tests do not see each other's traffic)."""
    p, port = start_serve()
    yield port
    p.stop()


@pytest.fixture
def hand_cluster(procs):
    """A router and two acceptors started by hand as separate processes; yields both ports."""
    router, endpoint = start_router()
    procs.append(router)
    ports = []
    for _ in range(2):
        a, port = start_acceptor(endpoint)
        procs.append(a)
        ports.append(port)
    return ports


@pytest.fixture
def xvfb():
    """A private X server on a free display (``support/xvfb.py``), killed by pid at the end."""
    x = Xvfb()
    yield x
    x.stop()


# ---- the acceptor with a fake router (support/fake_router.py) ----------------------------------

@pytest.fixture
def fake():
    ctx = zmq.Context()
    fr = FakeRouter(ctx)
    yield fr
    fr.close()
    ctx.term()


@pytest.fixture
def start(procs, fake):
    """``start(*flags)``: an acceptor process connected to the fake router, which it greeted."""
    def run(*extra: str) -> Acceptor:
        name = f"acc-{uuid.uuid4().hex[:8]}"
        p = Proc(python_m("pychat.acceptor", "--port", "0", "--router", fake.endpoint,
                          "--heartbeat", str(HEARTBEAT), "--name", name, *extra),
                 name=f"acceptor {name}")
        procs.append(p)
        port = int(p.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        hello = fake.expect(lambda m: isinstance(m, bus.Hello))
        acc = Acceptor(p, port, name, hello, fake)
        acc.send(bus.Heartbeat(fake.epoch))
        p.wait_for(rf"router {fake.epoch} is alive")
        return acc
    return run


@pytest.fixture
def clients():
    opened: list = []
    yield opened
    for c in opened:
        c.close()
