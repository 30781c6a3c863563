"""A trusted bus: CurveZMQ between router and acceptors over tcp://, end to end.

`pychat keys` makes the files; the router takes its secret key and a folder of authorised
acceptor public keys, each acceptor its own secret key and the router's public key. An acceptor
with a key the router does not know, with the wrong router key, or with no keys at all gets
nothing in: it never hears a heartbeat, the router logs nothing from it, and what its clients
say reaches nobody. A right one works alongside. Under `pychat serve` (ipc://) keys in the
environment are ignored.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from support.procs import ROOT, Proc, free_port, python_m, start_acceptor, start_router, start_serve

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

HEARTBEAT = "0.2"


def make_keys(folder, acceptors: int = 1) -> str:
    r = subprocess.run(python_m("pychat", "keys", str(folder), "--acceptors", str(acceptors)),
                       capture_output=True, text=True, timeout=30, cwd=ROOT,
                       env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    return str(folder)


@pytest.fixture
def keys(tmp_path):
    return make_keys(tmp_path / "keys", acceptors=2)


def curve_router(procs, keys: str) -> tuple[Proc, str]:
    router, endpoint = start_router("--heartbeat", HEARTBEAT,
                                    "--curve-secret", f"{keys}/router.key_secret",
                                    "--curve-clients", f"{keys}/authorized")
    procs.append(router)
    return router, endpoint


def outsider(procs, endpoint: str, name: str, *flags: str) -> tuple[Proc, int]:
    """An acceptor that should never get in: wait only until it listens."""
    port = free_port()
    p = Proc(python_m("pychat.acceptor", "--port", str(port), "--router", endpoint, "--name", name,
                      "--heartbeat", HEARTBEAT, *flags), name=name)
    procs.append(p)
    p.wait_for(r"listening on")
    return p, port


def test_keys_makes_a_router_pair_and_one_pair_per_acceptor(keys):
    files = sorted(os.path.relpath(os.path.join(d, f), keys)
                   for d, _, fs in os.walk(keys) for f in fs)
    assert files == ["acceptor-1.key_secret", "acceptor-2.key_secret",
                     "authorized/acceptor-1.key", "authorized/acceptor-2.key",
                     "router.key", "router.key_secret"]
    assert os.stat(f"{keys}/router.key_secret").st_mode & 0o077 == 0
    r = subprocess.run(python_m("pychat", "keys", keys), capture_output=True, text=True,
                       timeout=30, cwd=ROOT)
    assert r.returncode == 1 and "would overwrite" in r.stderr


def test_right_keys_chat_and_wrong_keys_get_nothing_in(procs, connect, keys, tmp_path):
    router, endpoint = curve_router(procs, keys)
    # two acceptors with their own authorised keys (one by flags, one by environment)
    good1, port1 = start_acceptor(endpoint, "--heartbeat", HEARTBEAT, "--name", "good-1",
                                  "--curve-secret", f"{keys}/acceptor-1.key_secret",
                                  "--curve-server", f"{keys}/router.key")
    procs.append(good1)
    good2, port2 = start_acceptor(endpoint, "--heartbeat", HEARTBEAT, "--name", "good-2",
                                  env={"PYCHAT_CURVE_SECRET": f"{keys}/acceptor-2.key_secret",
                                       "PYCHAT_CURVE_SERVER": f"{keys}/router.key"})
    procs.append(good2)
    # three that must not get in: a key pair the router never authorised, the wrong router
    # key, and no keys at all (plain ZeroMQ against a CurveZMQ router)
    other = make_keys(tmp_path / "other")
    bad = [
        outsider(procs, endpoint, "bad-unknown-key",
                 "--curve-secret", f"{other}/acceptor-1.key_secret",
                 "--curve-server", f"{keys}/router.key"),
        outsider(procs, endpoint, "bad-router-key",
                 "--curve-secret", f"{keys}/acceptor-1.key_secret",
                 "--curve-server", f"{other}/router.key"),
        outsider(procs, endpoint, "bad-no-keys"),
    ]
    for p, _ in bad:
        assert "CurveZMQ" in "\n".join(p.output) or p.name == "bad-no-keys"

    a = connect(port1)
    a.handshake()
    b = connect(port2)
    b.handshake()
    intruders = []
    for _, port in bad:
        c = connect(port)
        assert c.read_line() == "Welcome to PyChat Server!"  # the acceptor itself answers
        c.send("intruder here")
        intruders.append(c)
    a.send("across the encrypted bus")
    assert b.expect_prefix(f"{a.uid}:") == f"{a.uid}: across the encrypted bus"
    # 5 s = 25 router heartbeats: none reached an outsider, nothing of theirs reached anyone
    for p, _ in bad:
        with pytest.raises(TimeoutError):
            p.wait_for(r"router \w+ is alive", timeout=5.0 / len(bad))
    b.send("/ping fence")
    b.expect("PONG fence")
    seen = a.seen + b.seen
    assert not [line for line in seen if "intruder" in line], seen
    for c in intruders:
        assert not [line for line in c.seen if line.startswith("ID:")]
    log = "\n".join(router.output)
    for p, _ in bad:
        assert p.name not in log, log
    assert "good-1 joined" in log and "good-2 joined" in log
    # the operator is told a key was refused (the router's ZAP handler)
    router.wait_for(r"bus: refused a peer whose key is not authorised")


def test_curve_options_are_checked_before_anything_starts(keys):
    cases = [
        (["pychat.router", "--curve-secret", f"{keys}/router.key_secret"], "go together"),
        (["pychat.router", "--curve-secret", f"{keys}/router.key", "--curve-clients",
          f"{keys}/authorized"], "no secret key"),
        (["pychat.router", "--curve-secret", f"{keys}/router.key_secret",
          "--curve-clients", keys + "/x"],
         "not a folder"),
        (["pychat.acceptor", "--curve-server", f"{keys}/router.key"], "go together"),
        (["pychat.acceptor", "--curve-secret", "/nonexistent",
          "--curve-server", f"{keys}/router.key"],
         "cannot read CurveZMQ secret key"),
    ]
    for argv, says in cases:
        r = subprocess.run(python_m(*argv), capture_output=True, text=True, timeout=30, cwd=ROOT,
                           env=dict(os.environ))
        assert r.returncode == 2 and says in r.stderr, (argv, r.stderr)


def test_serve_with_a_router_elsewhere_passes_the_keys_to_its_acceptors(procs, connect, keys,
                                                                       tmp_path):
    _router, endpoint = curve_router(procs, keys)
    p, port = start_serve("--router", endpoint, "--heartbeat", HEARTBEAT,
                          "--curve-secret", f"{keys}/acceptor-1.key_secret",
                          "--curve-server", f"{keys}/router.key", acceptors=1)
    procs.append(p)
    a = connect(port)
    a.handshake()
    a.send("through serve")
    assert a.expect_prefix(f"{a.uid}:") == f"{a.uid}: through serve"
    assert re.search(r"router tcp://\S+ \(CurveZMQ\)", "\n".join(p.output))
    # the same serve with a key the router does not know: its acceptor never gets in
    other = make_keys(tmp_path / "other")
    q, _qport = start_serve("--router", endpoint, "--heartbeat", HEARTBEAT,
                           "--curve-secret", f"{other}/acceptor-1.key_secret",
                           "--curve-server", f"{keys}/router.key", acceptors=1)
    procs.append(q)
    with pytest.raises(TimeoutError):
        q.wait_for(r"router \w+ is alive", timeout=3)


def test_serve_on_ipc_ignores_curve_keys_in_the_environment(procs, connect, keys):
    p, port = start_serve(env={"PYCHAT_CURVE_SECRET": f"{keys}/acceptor-1.key_secret",
                               "PYCHAT_CURVE_SERVER": f"{keys}/router.key"})
    procs.append(p)
    a = connect(port)
    a.handshake()
    a.send("plain ipc bus")
    assert a.expect_prefix(f"{a.uid}:") == f"{a.uid}: plain ipc bus"
    log = "\n".join(p.output)
    assert "CurveZMQ keys ignored" in log and "(CurveZMQ)" not in log
