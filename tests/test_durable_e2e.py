"""Durable mode (`--durable`) over real processes: a line anyone has seen is in the history file,
even when the router is killed the moment it was seen.

The router is SIGKILLed as soon as the sender reads the echo of its 60th line of a burst of 100;
then the file is read directly (a second reader is fine in WAL mode). Every line the sender or an
onlooker had read by then must be in it. The history writer is slowed (the router's test hook
sleeps 0.3 s per batch, a slow disk) so that the default's window is wide and certain: without
`--durable` the kill loses echoed lines, every time (the first test), and with it none (the
second), however slow the disk.
"""

from __future__ import annotations

import os
import signal
import sqlite3

import pytest

from pychat.router.__main__ import WRITE_DELAY_ENV
from pychat.router.sqlite_history import FILENAME
from support.procs import start_serve

from .test_history_e2e import member, new_room
from .test_serve_e2e import child_pids

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

LINES = 100
KILL_AT = 60


class Killed:
    """A serve whose router was SIGKILLed at the sender's KILL_AT-th echo of a burst."""

    def __init__(self, procs, connect, tmp_path, *extra: str):
        self.data = str(tmp_path / "data")
        self.serve, port = start_serve("--data-dir", self.data, *extra, acceptors=1,
                                       env={WRITE_DELAY_ENV: "0.3"})
        procs.append(self.serve)
        room = new_room()
        self.a = a = member(connect, port, room, cap=False)
        self.b = b = member(connect, port, room, cap=False)
        victim = child_pids(self.serve)["router"]
        a.send_raw("".join(f"durable {i}\n" for i in range(LINES)).encode())
        self.seen_a = self._read(a, lambda seen: len(seen) == KILL_AT)
        os.kill(victim, signal.SIGKILL)
        # what the onlooker had been sent when the router died (its acceptor lives on)
        self.seen_b = self._read(b, lambda seen: seen[-1:] == self.seen_a[-1:])
        self.serve.wait_for(rf"router \(pid {victim}\) died: signal 9")

    def _read(self, c, done) -> list[str]:
        seen: list[str] = []
        while not done(seen):
            line = c.read_line(timeout=30)
            if line.startswith(f"{self.a.uid}: durable "):
                seen.append(line)
        return seen

    def on_disk(self) -> set[str]:
        with sqlite3.connect(os.path.join(self.data, FILENAME)) as db:
            return {r[0] for r in db.execute("SELECT line FROM messages")}


def test_without_durable_a_kill_after_the_echo_loses_lines(procs, connect, tmp_path):
    """The window the default leaves (docs/OPERATIONS.md): lines echoed, not yet on disk."""
    k = Killed(procs, connect, tmp_path)
    on_disk = k.on_disk()
    assert [line for line in k.seen_a if line not in on_disk] != []


def test_durable_every_line_seen_is_on_disk_when_the_router_is_killed(procs, connect, tmp_path):
    k = Killed(procs, connect, tmp_path, "--durable")
    on_disk = k.on_disk()
    assert len(k.seen_a) == KILL_AT
    assert [line for line in k.seen_a if line not in on_disk] == []
    assert [line for line in k.seen_b if line not in on_disk] == []


def test_durable_the_rest_of_the_burst_arrives_after_the_restart(procs, connect, tmp_path):
    """What the dead router had not committed it had not acknowledged either: the acceptor sends
    it again to the new router, so every line arrives, in order, and is in /history."""
    k = Killed(procs, connect, tmp_path, "--durable")
    last = f"{k.a.uid}: durable {LINES - 1}"
    rest = k._read(k.b, lambda seen: seen[-1:] == [last])
    heard = k.seen_b + rest
    want = [f"{k.a.uid}: durable {i}" for i in range(LINES)]
    assert sorted(set(heard), key=heard.index) == want  # each line, in order
    k.b.send("/history 200")
    header = k.b.expect_prefix("HISTORY:")
    n = int(header.split(":")[1])
    kept = [k.b.read_line(timeout=10).split(" ", 1)[1] for _ in range(n)]
    assert sorted(set(kept), key=kept.index) == want
