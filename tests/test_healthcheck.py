"""The container healthcheck: which port it checks, and that it sees a real listening socket
(and not a connected one) without opening a connection."""

from __future__ import annotations

import socket

import pytest

from pychat.healthcheck import listening_ports, main, wanted_port

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


@pytest.mark.parametrize("role, env, port", [
    ("clients", {}, 65432),
    ("clients", {"PYCHAT_PORT": "7000"}, 7000),
    ("router", {}, 65431),
    ("router", {"PYCHAT_ROUTER_BIND": "tcp://0.0.0.0:6000"}, 6000),
    ("router", {"PYCHAT_ROUTER_BIND": "tcp://[::]:6001"}, 6001),
])
def test_the_port_comes_from_the_service_environment(role, env, port):
    assert wanted_port(role, env) == port


def test_an_ipc_router_cannot_be_checked():
    with pytest.raises(ValueError, match="only a tcp:// endpoint"):
        wanted_port("router", {"PYCHAT_ROUTER_BIND": "ipc:///tmp/x"})


def test_healthy_only_while_something_listens(monkeypatch, capsys):
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
