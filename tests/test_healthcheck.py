"""The container healthcheck: the client port's check sees a real listening socket (and not a
connected one) without opening a connection; the router's check is answered by the router's
loop itself, over the bus, with pychat status's keys where the bus has them, so a router that
listens but does not turn fails it."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import zmq

from pychat.healthcheck import check_router, listening_ports, main, router_endpoint, wanted_port
from support.procs import ROOT, start_router

TCP_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:FFF8 00000000:0000 0A 00000000:00000000 00:00000000 00000000 10001        0 1 1
   1: 0100007F:FFF7 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000 10001        0 2 1
"""
TCP6_TABLE = """\
  sl  local_address                         remote_address                        st tx_queue
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000
"""


def test_reads_listening_ports_from_both_tables(tmp_path):
    tcp, tcp6 = tmp_path / "tcp", tmp_path / "tcp6"
    tcp.write_text(TCP_TABLE)
    tcp6.write_text(TCP6_TABLE)
    # 0xFFF8 = 65528 listens; 0xFFF7 = 65527 is an established connection, not a listener
    assert listening_ports((str(tcp), str(tcp6), str(tmp_path / "absent"))) == {65528, 8080}


@pytest.mark.parametrize("env, port", [({}, 65432), ({"PYCHAT_PORT": "7000"}, 7000)])
def test_the_client_port_comes_from_the_service_environment(env, port):
    assert wanted_port(env) == port


@pytest.mark.parametrize("bind, asked", [
    (None, "tcp://127.0.0.1:65431"),
    ("tcp://0.0.0.0:6000", "tcp://127.0.0.1:6000"),
    ("tcp://*:6000", "tcp://127.0.0.1:6000"),
    ("tcp://[::]:6001", "tcp://[::1]:6001"),
    ("tcp://10.0.0.5:6002", "tcp://10.0.0.5:6002"),
    ("ipc:///run/pychat/bus", "ipc:///run/pychat/bus"),
])
def test_the_router_is_asked_where_it_binds(bind, asked):
    assert router_endpoint({} if bind is None else {"PYCHAT_ROUTER_BIND": bind}) == asked


def test_clients_healthy_only_while_something_listens(monkeypatch, capsys):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    monkeypatch.setenv("PYCHAT_PORT", str(port))
    assert main(["clients"]) == 1  # bound, not listening
    s.listen()
    assert main(["clients"]) == 0
    s.close()
    assert main(["clients"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"unhealthy: nothing listens on clients port {port}",
                   f"healthy: listening on clients port {port}",
                   f"unhealthy: nothing listens on clients port {port}"]
    assert main([]) == 2


def router_check(endpoint: str, **env: str) -> subprocess.CompletedProcess:
    """The check as the container runs it: its own process, the service's environment."""
    return subprocess.run([sys.executable, "-m", "pychat.healthcheck", "router"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30,
                          env={"PYCHAT_ROUTER_BIND": endpoint, "PYCHAT_STATUS_TIMEOUT": "1",
                               "PATH": "/usr/bin:/bin", **env})


@pytest.mark.e2e
def test_the_router_is_healthy_only_while_its_loop_answers(procs):
    router, endpoint = start_router()
    procs.append(router)
    r = router_check(endpoint)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("healthy: router ") and f"answered on {endpoint}" in r.stdout
    # stopped: the kernel still accepts on its port (a listen check would pass), nobody answers
    port = int(endpoint.rsplit(":", 1)[1])
    router.signal(signal.SIGSTOP)
    try:
        assert port in listening_ports()
        r = router_check(endpoint)
        assert r.returncode == 1 and "unhealthy: router on" in r.stdout and "no answer" in r.stdout
    finally:
        router.signal(signal.SIGCONT)
    assert router_check(endpoint).returncode == 0
    router.stop()
    r = router_check(endpoint)
    assert r.returncode == 1 and "no answer" in r.stdout


def test_a_socket_that_listens_but_is_no_router_is_unhealthy():
    """A ZeroMQ ROUTER that completes every handshake and answers nothing: what a wedged
    router looks like from outside."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        assert port in listening_ports()
        ok, what = check_router({"PYCHAT_ROUTER_BIND": f"tcp://127.0.0.1:{port}",
                                 "PYCHAT_STATUS_TIMEOUT": "0.5"})
        assert not ok and "no answer" in what
        assert sock.poll(1000)  # it was asked
    finally:
        sock.close()
        ctx.term()


@pytest.mark.e2e
def test_a_router_with_keys_is_asked_with_the_status_keys(procs, tmp_path):
    keys = tmp_path / "keys"
    r = subprocess.run([sys.executable, "-m", "pychat", "keys", str(keys)], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    router, endpoint = start_router("--curve-secret", f"{keys}/router.key_secret",
                                    "--curve-clients", f"{keys}/authorized")
    procs.append(router)
    with_keys = {"PYCHAT_STATUS_CURVE_SECRET": f"{keys}/status.key_secret",
                 "PYCHAT_STATUS_CURVE_SERVER": f"{keys}/router.key"}
    r = router_check(endpoint, **with_keys)
    assert r.returncode == 0, r.stdout + r.stderr
    assert router_check(endpoint).returncode == 1  # no keys: the router does not answer
    # a key it does not authorise: no answer either
    other = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "pychat", "keys", str(other)], cwd=ROOT, check=True,
                   capture_output=True, timeout=30)
    r = router_check(endpoint, PYCHAT_STATUS_CURVE_SECRET=f"{other}/status.key_secret",
                     PYCHAT_STATUS_CURVE_SERVER=f"{keys}/router.key")
    assert r.returncode == 1 and "refused this key" in r.stdout
    # a file that cannot be used says so
    r = router_check(endpoint, PYCHAT_STATUS_CURVE_SECRET=f"{keys}/status.key_secret")
    assert r.returncode == 1 and "go together" in r.stdout
