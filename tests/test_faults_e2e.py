"""The fault limits through `pychat serve`: its flags and environment reach the acceptors."""

from __future__ import annotations

import pytest

from support.client import Connection
from support.procs import start_serve

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def test_serve_passes_idle_unfinished_line_and_per_address_limits_on(procs, connect):
    p, port = start_serve("--partial-line-timeout", "1", "--max-per-address", "3",
                          "--per-address-exempt", "none", acceptors=1,
                          env={"PYCHAT_IDLE_TIMEOUT": "2"})
    procs.append(p)
    idle = connect(port)
    idle.handshake()
    loris = connect(port)
    loris.handshake()
    # a line client (it has ended a line: before that, an idle piece is the original client's
    # message, PROTOCOL.md Transport) that then holds a line open
    loris.send_raw(b"hi\nnever ends")
    third = connect(port)
    third.handshake()
    fourth = Connection("127.0.0.1", port)
    assert fourth.read_until_closed() == ["ERROR: too many connections from your address (max 3)"]
    fourth.close()
    assert loris.read_until_closed()[-1] == "ERROR: line not finished in 1 s"
    assert idle.read_until_closed()[-1] == "ERROR: idle timeout (nothing received in 2 s)"
    # their places are free again
    fifth = connect(port)
    fifth.handshake()
    fifth.send("/ping here")
    assert fifth.expect_prefix("PONG") == "PONG here"
