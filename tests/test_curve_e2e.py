"""A trusted bus: CurveZMQ between router and acceptors over tcp://, end to end.

`pychat keys` makes the files (secret ones owner-only from the moment they exist); the router
takes its secret key and a folder of authorised acceptor public keys, each acceptor its own
secret key and the router's public key. An acceptor with a key the router does not know, with
the wrong router key, or with no keys at all gets nothing in: it never hears a heartbeat, the
router logs nothing from it, and what its clients say reaches nobody. A right one works
alongside. `pychat serve --bus tcp://... --curve-keys DIR` gives its own router and acceptors
their keys; under `pychat serve` (ipc://) keys in the environment are ignored. `pychat status`
reaches a protected router with its own key pair. A bus other hosts can reach is not bound
without keys unless --insecure-bus says so, and a secret key others can read is not loaded.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess

import pytest
import zmq.auth

from pychat.keys import make_keys as make_keys_here
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


def run(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(python_m(*argv), capture_output=True, text=True, timeout=30, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_keys_makes_a_router_pair_one_pair_per_acceptor_and_a_status_pair(keys):
    files = sorted(os.path.relpath(os.path.join(d, f), keys)
                   for d, _, fs in os.walk(keys) for f in fs)
    assert files == ["acceptor-1.key_secret", "acceptor-2.key_secret",
                     "authorized/acceptor-1.key", "authorized/acceptor-2.key",
                     "authorized/status.key", "router.key", "router.key_secret",
                     "status.key_secret"]
    for name in ("router", "acceptor-1", "acceptor-2", "status"):
        assert mode(f"{keys}/{name}.key_secret") == 0o600
        public, secret = zmq.auth.load_certificate(f"{keys}/{name}.key_secret")
        assert secret and public  # zmq.auth's format
    assert mode(keys) == mode(f"{keys}/authorized") == 0o700
    assert zmq.auth.load_certificate(f"{keys}/router.key")[0] == \
        zmq.auth.load_certificate(f"{keys}/router.key_secret")[0]
    r = run("pychat", "keys", keys)
    assert r.returncode == 1 and "would overwrite" in r.stderr
    # --if-missing (the compose file's keys service, on every `up`): the whole layout is
    # there, so nothing is made and nothing changes
    def contents() -> dict[str, bytes]:
        out = {}
        for f in files:
            with open(os.path.join(keys, f), "rb") as fh:
                out[f] = fh.read()
        return out
    before = contents()
    r = run("pychat", "keys", keys, "--acceptors", "2", "--if-missing")
    assert r.returncode == 0 and "nothing made" in r.stdout
    assert before == contents()
    # part of a layout is still refused (here: a third acceptor's files are missing)
    r = run("pychat", "keys", keys, "--acceptors", "3", "--if-missing")
    assert r.returncode == 1 and "would overwrite" in r.stderr


def test_secret_files_are_owner_only_from_the_start(tmp_path, monkeypatch):
    """With the widest umask and no chmod that works, the files still come out 0600 and the
    folders 0700: the mode is the one they were created with, never narrowed afterwards (a
    file made 0644 then changed could be opened by anyone in between)."""
    def no_chmod(*_args, **_kw):
        return None
    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    old = os.umask(0)
    try:
        made = make_keys_here(str(tmp_path / "keys"), 1)
    finally:
        os.umask(old)
    secrets = [f for f in made if f.endswith(".key_secret")]
    assert len(secrets) == 3
    for f in secrets:
        assert mode(f) == 0o600, f
    assert mode(tmp_path / "keys") == 0o700


def test_a_folder_others_may_write_to_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    r = run("pychat", "keys", str(shared))
    assert r.returncode == 1
    assert f"chmod go-w {shared}" in r.stderr
    assert os.listdir(shared) == []


def test_a_secret_key_others_can_read_is_refused_by_every_program(keys, tmp_path):
    """The router, an acceptor, serve (both ways) and status: a usage error naming the file and
    the chmod to run, before anything starts."""
    os.chmod(f"{keys}/router.key_secret", 0o644)
    os.chmod(f"{keys}/acceptor-1.key_secret", 0o640)
    os.chmod(f"{keys}/status.key_secret", 0o604)
    port = free_port()
    acceptor_keys = ["--curve-secret", f"{keys}/acceptor-1.key_secret",
                     "--curve-server", f"{keys}/router.key"]
    cases = [
        (["pychat.router", "--bind", f"tcp://127.0.0.1:{port}",
          "--curve-secret", f"{keys}/router.key_secret", "--curve-clients", f"{keys}/authorized"],
         "router.key_secret"),
        (["pychat.acceptor", "--router", f"tcp://127.0.0.1:{port}", *acceptor_keys],
         "acceptor-1.key_secret"),
        (["pychat", "serve", "--router", f"tcp://127.0.0.1:{port}", *acceptor_keys],
         "acceptor-1.key_secret"),
        (["pychat", "serve", "--bus", f"tcp://127.0.0.1:{port}", "--curve-keys", keys],
         "acceptor-1.key_secret"),
        (["pychat", "status", "--router", f"tcp://127.0.0.1:{port}",
          "--curve-secret", f"{keys}/status.key_secret", "--curve-server", f"{keys}/router.key"],
         "status.key_secret"),
    ]
    for argv, name in cases:
        r = run(*argv)
        path = f"{keys}/{name}"
        assert r.returncode == 2, (argv, r.stderr)
        assert f"{path} can be read or written by others" in r.stderr, (argv, r.stderr)
        assert f"chmod 600 {path}" in r.stderr, (argv, r.stderr)
        assert "started" not in r.stderr  # serve started no child


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
    p.seen(r"CurveZMQ keys ignored")  # (a stderr line: see p.seen)
    assert "(CurveZMQ)" not in "\n".join(p.output)


def test_serve_on_its_own_tcp_bus_gives_its_router_and_acceptors_the_keys(procs, connect, keys):
    """`pychat serve --bus tcp://... --curve-keys DIR`: the router it starts has CurveZMQ on,
    its acceptors get in with acceptor-1's key, an outsider without keys does not, and
    `pychat status` needs its own key pair to be answered."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    p, port = start_serve("--bus", endpoint, "--curve-keys", keys, "--heartbeat", HEARTBEAT)
    procs.append(p)
    # (log lines come on stderr, "serving on" on stdout: read by two threads, in either order)
    p.seen(r"bus: CurveZMQ on; 2 authorised acceptor keys and a status key")
    assert len(p.seen(rf"router {re.escape(endpoint)} \(CurveZMQ\)", count=2)) == 2
    a, b = connect(port), connect(port)
    a.handshake()
    b.handshake()
    a.send("over serve's own curve bus")
    assert b.expect_prefix(f"{a.uid}:") == f"{a.uid}: over serve's own curve bus"
    intruder, _ = outsider(procs, endpoint, "bad-no-keys", "--heartbeat", HEARTBEAT)
    with pytest.raises(TimeoutError):
        intruder.wait_for(r"router \w+ is alive", timeout=2)

    st = run("pychat", "status", "--router", endpoint, "--json",
             "--curve-secret", f"{keys}/status.key_secret", "--curve-server", f"{keys}/router.key")
    assert st.returncode == 0, st.stderr
    view = json.loads(st.stdout)
    assert view["curve"] is True and len(view["acceptors"]) == 2 and view["users"] == 2
    plain = run("pychat", "status", "--router", endpoint, "--timeout", "1")
    assert plain.returncode == 1
    assert "no answer" in plain.stderr and "--curve-secret/--curve-server" in plain.stderr
    # the same keys given by the variable
    st = run("pychat", "status", "--router", endpoint,
             env={"PYCHAT_STATUS_CURVE_SECRET": f"{keys}/status.key_secret",
                  "PYCHAT_STATUS_CURVE_SERVER": f"{keys}/router.key"})
    assert st.returncode == 0 and "(CurveZMQ)" in st.stdout.splitlines()[0], st.stderr


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def test_a_bus_other_hosts_can_reach_is_not_bound_without_keys(procs):
    port = free_port()
    for argv in (["pychat.router", "--bind", f"tcp://0.0.0.0:{port}"],
                 ["pychat", "serve", "--port", "0", "--bus", f"tcp://0.0.0.0:{port}"]):
        r = run(*argv)
        assert r.returncode == 2, r.stderr
        assert f"refusing to bind tcp://0.0.0.0:{port} without CurveZMQ keys" in r.stderr
        assert "pychat keys" in r.stderr and "--insecure-bus" in r.stderr
        assert "started" not in r.stderr and "bound" not in r.stderr
        assert port_is_free(port)
    # said in so many words, it is bound, with a warning
    router = Proc(python_m("pychat.router", "--bind", f"tcp://0.0.0.0:{port}"),
                  env={"PYCHAT_INSECURE_BUS": "1"}, name="insecure router")
    procs.append(router)
    router.wait_for(rf"router bound to tcp://0.0.0.0:{port}")
    assert any("is neither encrypted nor authenticated (--insecure-bus)" in line
               for line in router.output)
    # loopback needs no keys and says nothing about them
    quiet, _ = start_router()
    procs.append(quiet)
    assert not [line for line in quiet.output if "insecure" in line or "refusing" in line]
