"""History over real processes: `pychat serve --data-dir` restarts, a router killed and restarted
by its supervisor, retention, /history against live lines, and files that cannot be used.

Every serve here has its own ``--data-dir`` in tmp_path. To know that the writer thread has
saved a message before the router is killed, the test reads the file (a second reader is fine
in WAL mode) until the rows are there: a condition with a deadline, not a sleep.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid

import pytest

from pychat.router.sqlite_history import FILENAME
from support.procs import ROOT, python_m, start_serve

from .test_serve_e2e import child_pids

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

TAG_RE = re.compile(r"@time=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (.*)\Z")


def new_room() -> str:
    return "#h" + uuid.uuid4().hex[:12]


def saved(data_dir, room: str) -> list[str]:
    path = os.path.join(data_dir, FILENAME)
    if not os.path.exists(path):
        return []
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute(
            "SELECT line FROM messages WHERE room = ? ORDER BY id", (room,))]


def wait_saved(data_dir, room: str, n: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = saved(data_dir, room)
        if len(lines) >= n:
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(lines)} of {n} messages saved in {timeout}s")
        time.sleep(0.02)


def member(connect, port: int, room: str, cap: bool = True):
    c = connect(port)
    c.handshake()
    if cap:
        c.send("/cap time")
        c.expect("OK cap time")
    c.send(f"/join {room}")
    c.expect(f"ROOM:{room}")
    c.send("/ping joined")
    c.expect("PONG joined")
    return c


def say_all(c, texts: list[str]) -> list[str]:
    """Send each text, return the tagged lines c saw for them (its own echoes)."""
    live = []
    for text in texts:
        c.send(text)
        live.append(c.expect(lambda ln, text=text: ln.endswith(f"{c.uid}: {text}")))
    return live


def history(c, n: int = 20) -> list[str]:
    c.send(f"/history {n}")
    header = c.expect_prefix("HISTORY:")
    return [c.read_line() for _ in range(int(header[len("HISTORY:"):]))]


def test_must_show_serve_data_dir_five_messages_stop_start_history_has_original_stamps(
        procs, connect, tmp_path):
    data = str(tmp_path / "data")
    p, port = start_serve("--data-dir", data)
    procs.append(p)
    room = new_room()
    a = member(connect, port, room)
    live = say_all(a, [f"message {i}" for i in range(5)])
    stamps = [TAG_RE.match(line).group(1) for line in live]
    a.close()
    assert p.stop() == 0  # SIGTERM: the router writes what it has before it exits

    p2, port2 = start_serve("--data-dir", data)
    procs.append(p2)
    b = member(connect, port2, room)
    got = history(b)
    assert got == live  # every line exactly as sent, with its original @time= stamp
    assert [TAG_RE.match(line).group(1) for line in got] == stamps


def test_history_survives_a_router_killed_and_restarted_by_serve(procs, connect, tmp_path):
    data = str(tmp_path / "data")
    p, port = start_serve("--data-dir", data)
    procs.append(p)
    room = new_room()
    a = member(connect, port, room)
    before = say_all(a, [f"before {i}" for i in range(4)])
    wait_saved(data, room, 4)  # the writer committed them: SIGKILL cannot lose them now
    victim = child_pids(p)["router"]
    os.kill(victim, signal.SIGKILL)
    p.wait_for(rf"router \(pid {victim}\) died: signal 9")
    p.wait_for(r"history: .*last message id [1-9]")  # the new router opened the file
    p.wait_for(r"resync(ing \d+ sessions|ed)")
    a.send("/ping back")  # a's session was adopted by the new router
    a.expect("PONG back", timeout=15)
    after = say_all(a, ["after 0"])
    assert history(a) == before + after


def test_history_survives_serve_restarts_and_keeps_order_across_rooms(procs, connect, tmp_path):
    data = str(tmp_path / "data")
    rooms = [new_room(), new_room()]
    sent: dict[str, list[str]] = {r: [] for r in rooms}
    for run in range(3):
        p, port = start_serve("--data-dir", data)
        procs.append(p)
        for room in rooms:
            c = member(connect, port, room)
            assert history(c, 200) == sent[room]  # everything before, in order
            sent[room] += say_all(c, [f"run {run} in {room} #{i}" for i in range(3)])
            c.close()
        assert p.stop() == 0
    assert [len(v) for v in sent.values()] == [9, 9]


def test_per_room_retention_across_a_restart(procs, connect, tmp_path):
    data = str(tmp_path / "data")
    p, port = start_serve("--data-dir", data, "--history-per-room", "3")
    procs.append(p)
    room = new_room()
    a = member(connect, port, room)
    live = say_all(a, [f"m{i}" for i in range(6)])
    assert history(a) == live[-3:]  # the cache serves no more than the file keeps
    a.close()
    assert p.stop() == 0
    p2, port2 = start_serve("--data-dir", data, "--history-per-room", "3")
    procs.append(p2)
    b = member(connect, port2, room)
    assert history(b) == live[-3:]
    assert len(saved(data, room)) == 3


def test_history_then_live_lines_neither_lost_nor_repeated(procs, connect, tmp_path):
    """While others talk, a member asks /history: the reply holds exactly the messages the
    router handled before it (the ones the member already saw live, and the ones before it
    joined), and every live line after the reply is newer than all of them."""
    data = str(tmp_path / "data")
    p, port = start_serve("--data-dir", data)
    procs.append(p)
    room = new_room()
    talkers = [member(connect, port, room, cap=False) for _ in range(3)]
    early = say_all(talkers[0], [f"early {i}" for i in range(5)])
    watcher = member(connect, port, room)
    stop = threading.Event()

    def talk(c, k):
        i = 0
        while not stop.is_set() and i < 200:
            c.send(f"t{k} n{i}")
            i += 1
            if i % 20 == 0:  # keep within the flood burst
                c.send("/ping pace")
                c.expect("PONG pace")

    threads = [threading.Thread(target=talk, args=(c, k)) for k, c in enumerate(talkers)]
    for t in threads:
        t.start()
    try:
        # at least 30 lines, and one from each talker, so that each has a sequence to check
        # (under load one talker's thread can start well after the others)
        live_before = []
        heard: set[str] = set()
        while len(live_before) < 30 or len(heard) < len(talkers):
            live_before.append(watcher.expect(lambda ln: ln.startswith("@time=")))
            heard.add(TAG_RE.match(live_before[-1]).group(2).split(": ", 1)[1].split(" ", 1)[0])
        watcher.send("/history 200")
        line = watcher.expect(lambda ln: ln.startswith(("@time=", "HISTORY:")))
        while not line.startswith("HISTORY:"):
            live_before.append(line)
            line = watcher.expect(lambda ln: ln.startswith(("@time=", "HISTORY:")))
        got = [watcher.read_line() for _ in range(int(line[len("HISTORY:"):]))]
        live_after = [watcher.expect(lambda ln: ln.startswith("@time="))
                      for _ in range(10)]
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    bodies = [TAG_RE.match(ln).group(2) for ln in got]
    # the history ends with exactly what the watcher saw live before the reply (its last 200,
    # if waiting for every talker took more)
    n = min(len(live_before), 200)
    assert len(got) >= n
    assert got[-n:] == live_before[-n:]
    assert not set(live_after) & set(got)
    # and, unless it is a full 200, it starts with the messages from before the watcher joined
    if len(got) < 200:
        assert bodies[:len(early)] == early
    # per talker, numbers grow without gaps across history then live lines
    for k in range(3):
        seq = [int(b.rsplit("n", 1)[1]) for b in bodies + [TAG_RE.match(ln).group(2)
               for ln in live_after] if b.split(": ", 1)[1].startswith(f"t{k} ")]
        assert seq, k
        assert seq == list(range(seq[0], seq[0] + len(seq))), (k, seq)


def test_history_of_an_evicted_room_has_its_lines_still_waiting_for_the_writer(
        procs, connect, tmp_path):
    """One client walks through 1,100 rooms, asking /history in each (as clients do on entering
    a room): more than the router holds in memory (1,000), so the first room's tail is evicted.
    Back there it says a line, which the slow writer has not saved when another member asks
    /history: the answer is read from the file and the rows still queued, in order."""
    data = str(tmp_path / "data")
    p, port = start_serve("--data-dir", data, "--flood-burst", "100000", "--flood-rate",
                          "100000", env={"PYCHAT_TEST_HISTORY_WRITE_DELAY": "1"})
    procs.append(p)
    rooms = [new_room() for _ in range(1100)]
    a = member(connect, port, rooms[0])
    first = say_all(a, ["first"])
    for k in range(1, len(rooms), 100):
        chunk = b"".join(f"/join {r}\n/history 20\n{r} line\n".encode()
                         for r in rooms[k:k + 100])
        a.send_raw(chunk + f"/ping chunk{k}\n".encode())
        a.expect(f"PONG chunk{k}", timeout=30)
    b = member(connect, port, rooms[0])
    a.send(f"/join {rooms[0]}")
    a.expect(f"ROOM:{rooms[0]}")
    late = say_all(a, ["late"])
    b.expect(late[0])
    assert history(b) == first + late
    assert len(saved(data, rooms[0])) < 2  # "late" was still queued for the writer
    assert wait_saved(data, rooms[0], 2) == [f"{a.uid}: first", f"{a.uid}: late"]
    assert p.alive()


def test_private_messages_are_stored_only_with_history_private(procs, connect, tmp_path):
    for enabled in (False, True):
        data = str(tmp_path / f"data-{enabled}")
        flag = "--history-private" if enabled else "--no-history-private"
        p, port = start_serve("--data-dir", data, flag)
        procs.append(p)
        room = new_room()
        a = member(connect, port, room)
        b = member(connect, port, room)
        a.send(f"/msg {b.uid} psst")
        b.expect(lambda ln, a=a: ln.endswith(f"[Private] {a.uid}: psst"))
        say_all(a, ["public"])
        assert [TAG_RE.match(ln).group(2) for ln in history(b)] == [f"{a.uid}: public"]
        assert p.stop() == 0
        with sqlite3.connect(os.path.join(data, FILENAME)) as db:
            stored = db.execute("SELECT sender, target, line FROM private_messages").fetchall()
        assert stored == ([(a.uid, b.uid, f"[Private] {a.uid}: psst")] if enabled else [])


def test_memory_history_writes_no_file_and_is_lost_with_the_router(procs, connect, tmp_path):
    data = str(tmp_path / "data")
    p, port = start_serve("--history", "memory", "--accounts", "memory", "--files", "memory",
                          "--data-dir", data)
    procs.append(p)
    room = new_room()
    a = member(connect, port, room)
    say_all(a, ["gone soon"])
    assert len(history(a)) == 1
    a.close()
    assert p.stop() == 0
    assert not os.path.exists(data)
    p2, port2 = start_serve("--history", "memory", "--accounts", "memory", "--data-dir", data)
    procs.append(p2)
    assert history(member(connect, port2, room)) == []


def test_a_locked_file_mid_conversation_is_logged_and_chat_goes_on(procs, connect, tmp_path):
    data = str(tmp_path / "data")
    p, port = start_serve("--data-dir", data)
    procs.append(p)
    room = new_room()
    a = member(connect, port, room)
    first = say_all(a, ["saved"])
    wait_saved(data, room, 1)
    blocker = sqlite3.connect(os.path.join(data, FILENAME), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another program holds the file
    try:
        during = say_all(a, [f"while locked {i}" for i in range(3)])
        p.wait_for(r"history: cannot write to .*chat goes on")
        b = member(connect, port, room)
        assert history(b) == first + during  # /history is served from memory meanwhile
        during += say_all(b, ["still chatting"])
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    p.wait_for(r"history: writing to .* again")
    assert len(wait_saved(data, room, 5)) == 5
    assert p.alive()


def run_to_exit(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(python_m(*argv), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.mark.parametrize("damage", ["not a database", "folder is a file"])
def test_an_unusable_history_file_stops_the_start_with_one_clear_line(tmp_path, damage):
    data = tmp_path / "data"
    if damage == "folder is a file":
        data.write_text("not a folder")
        says = f"cannot create data folder {data}"
    else:
        data.mkdir()
        (data / FILENAME).write_bytes(b"garbage, not SQLite\n" * 100)
        says = f"cannot use history file {data / FILENAME}: file is not a database"
    r = run_to_exit(["pychat.router", "--bind", "tcp://127.0.0.1:0", "--data-dir", str(data)])
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and says in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    r = run_to_exit(["pychat", "serve", "--port", "0", "--web-port", "0", "--data-dir", str(data)])
    assert r.returncode == 1
    assert says in r.stderr
    assert re.search(r"router \(exit code 1\) did not start", r.stderr), r.stderr
    assert "Traceback" not in r.stderr
