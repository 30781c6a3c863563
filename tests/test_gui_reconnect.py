"""The GUI through a dropped connection: its acceptor is SIGKILLed and a new one starts on the
same port; the status bar counts the reconnect attempts and the window comes back with the same
name and room (a new uid), on a hand-started router + acceptor cluster."""

from __future__ import annotations

import re
import time

import pytest

from support.gui import GuiProc
from support.procs import start_acceptor, start_router
from support.xvfb import needs_x

from .test_client_core import start_acceptor_on

pytestmark = [pytest.mark.e2e, needs_x]


def test_gui_reconnects_with_name_and_room_and_says_so(xvfb, procs, connect,
                                                       tmp_path):
    router, endpoint = start_router()
    procs.append(router)
    acceptor, port = start_acceptor(endpoint)
    procs.append(acceptor)
    g = GuiProc(xvfb, port, tmp_path, "--name", "alice", "--room", "#ops")
    procs.append(g.proc)
    st = g.wait(lambda st: re.fullmatch(r"PyChat - alice - ID \d{6} - #ops", st["title"]),
                "alice in #ops")
    old_uid = re.search(r"ID (\d{6})", st["title"]).group(1)

    killed = time.monotonic()
    acceptor.kill()
    st = g.wait(lambda st: "reconnect attempts: 2" in st["status"], "the attempts counted")
    assert "reconnecting in" in st["status"]
    procs.append(start_acceptor_on(endpoint, port))
    st = g.wait(lambda st: "reconnected as alice in #ops" in st["status"], "the restore", 30)
    print(f"gui back as alice in #ops {time.monotonic() - killed:.2f}s after the kill")
    assert st["title"].startswith("PyChat - alice - ID ") and st["title"].endswith("#ops")
    assert old_uid not in st["title"]
    uid = re.search(r"ID (\d{6})", st["title"]).group(1)
    assert [r["text"] for r in st["users"]] == [f"alice ({uid})  (you)"]
    bob = connect(port)
    bob.handshake()
    bob.send("/join #ops")
    bob.send("welcome back")
    g.log_has(f"{bob.uid}: welcome back")
