"""The router killed while a crowd chats: nobody is disconnected and no line is lost.

`pychat serve` (two acceptors) with 200 plain TCP clients in #lobby, 5 of them sending numbered
lines at a steady rate. The router is SIGKILLed (by its pid) part way through; `pychat serve`
starts a new one, the acceptors resync into it and send again every batch it had not
acknowledged, and the new router waits until both acceptors are back before it serves chat.
Every client must then hold every sender's lines exactly once and in order, except lines whose
sender was told ``ERROR: not sent`` (none are expected with a restart this quick, but a slow
machine may legitimately refuse lines that waited over 5 s, so that is counted, not failed).
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from support.crowd import Crowd
from support.procs import start_serve

from .test_serve_e2e import child_pids

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CLIENTS = 200
SENDERS = 5
COUNT = 60  # lines per sender
RATE = 50.0  # lines/s from all senders together: 10,000 deliveries/s


@pytest.mark.parametrize("heartbeat", ["1.0", "0.2"])
def test_router_killed_mid_conversation_loses_no_line(procs, heartbeat):
    p, port = start_serve("--heartbeat", heartbeat, "--history", "memory")
    procs.append(p)
    crowd = Crowd(port, CLIENTS)
    try:
        crowd.wait_registered()

        victim = child_pids(p)["router"]
        killed = threading.Event()

        def kill_once(k: int) -> None:
            if k == COUNT // 3 and not killed.is_set():
                os.kill(victim, signal.SIGKILL)  # by its pid: ours, started by our serve
                killed.set()

        senders = crowd.run_senders(SENDERS, COUNT, RATE, on_line=kill_once)
        p.wait_for(rf"router \(pid {victim}\) died", timeout=30)
        p.wait_for(r"pychat\.router\[\d+\] INFO settled \d+ ms after start", timeout=30)
        senders.join(60)
        assert not senders.is_alive()
        crowd.wait(lambda: crowd.all_ended(SENDERS), 60, "every sender's end at every client")
        result = crowd.check(SENDERS, COUNT)
        assert not result["problems"], (result["problems"][:20], p.output[-60:])
        assert result["delivered"] == CLIENTS * (SENDERS * COUNT - result["refused"])
        assert killed.is_set()
    finally:
        crowd.close()
