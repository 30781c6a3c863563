"""`pychat status` against a running `pychat serve`: the router's view, over its bus."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from pychat.wire import bus
from support.procs import ROOT, free_port, python_m, start_serve

pytestmark = pytest.mark.e2e


def status(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(python_m("pychat", "status", *argv), capture_output=True, text=True,
                          timeout=30, cwd=ROOT)


def test_status_messages_round_trip():
    msgs = [bus.StatusAsk(), bus.Status(json.dumps({"users": 3, "rooms": {"#a": 1}}))]
    assert bus.decode(bus.encode(msgs)) == msgs


def test_status_shows_acceptors_users_rooms_and_rate(procs, connect):
    p, port = start_serve()
    procs.append(p)
    endpoint = re.search(r"bus (ipc://\S+?)[,)]", "\n".join(p.output)).group(1)
    a, b, c = connect(port), connect(port), connect(port)
    for x in (a, b, c):
        x.handshake()
    a.send("/nick alice")
    a.expect("OK nick alice")
    c.send("/join #ops")
    c.expect("ROOM:#ops")
    b.send("one")
    b.send("two")
    b.expect(f"{b.uid}: two")
    r = status("--router", endpoint, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert len(st["acceptors"]) == 2
    assert sum(acc["users"] for acc in st["acceptors"]) == 3
    assert st["users"] == 3 and st["named"] == 1
    assert st["rooms"] == {"#lobby": 2, "#ops": 1}
    assert st["messages_per_s"] > 0
    assert st["clock"]["source"] == "local" and st["history"]["backend"] == "sqlite"
    assert st["curve"] is False  # serve's private ipc:// bus has no keys
    assert st["files"]["files"] == 0 and st["files"]["backend"] == "sqlite"
    text = status("--router", endpoint)
    assert text.returncode == 0
    assert "acceptors: 2" in text.stdout and "rooms: #lobby=2, #ops=1" in text.stdout
    assert "users: 3 (1 named, 0 logged in)" in text.stdout
    assert "logins: 0 done, 0 failed, 0 being checked, 0 refused as busy" in text.stdout
    assert "files: 0 stored (0 bytes, sqlite), 0 uploads waiting, 0 done, 0 downloads" \
        in text.stdout
    # asking is not joining: the router still counts two acceptors, and chat goes on
    assert len(json.loads(status("--router", endpoint, "--json").stdout)["acceptors"]) == 2
    a.send("still here")
    b.expect(f"{a.uid}: still here")


def test_status_without_a_router_fails_in_time():
    r = status("--router", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert r.returncode == 1
    assert "no answer" in r.stderr


def test_status_keys_go_together():
    r = status("--router", f"tcp://127.0.0.1:{free_port()}", "--curve-server", "router.key")
    assert r.returncode == 2 and "--curve-secret and --curve-server go together" in r.stderr


def test_status_says_durable_and_what_the_clock_refused():
    """The text form, from a status as the router makes it (pure: ``render``)."""
    from pychat.status import render
    st = {"epoch": "e", "endpoint": "ipc://x", "uptime_s": 3, "acceptors": [], "users": 0,
          "named": 0, "rooms": {}, "messages_per_s": 0, "durable": True, "held_turns": 2,
          "clock": {"source": "ntp", "offset_ms": 1.5, "server": "a", "slewing": True,
                    "target_ms": 9.0, "rejections": 1, "rejected": "b answered +31 days"},
          "history": {"backend": "sqlite"}}
    text = render(st)
    assert ("clock: ntp, offset +1.5 ms from a, slewing to +9.0 ms; 1 answers refused, the "
            "last: b answered +31 days") in text
    assert "history: backend=sqlite; durable, 2 turns waiting for the disk" in text
