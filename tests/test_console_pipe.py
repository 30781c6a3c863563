"""`pychat console` with stdin not a terminal: lines from stdin, received lines printed plainly."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
import time
import uuid

import pytest

from support.procs import ROOT, python_m, start_acceptor, start_router

from .test_client_core import start_acceptor_on

pytestmark = pytest.mark.e2e

STAMP = r"\[\d\d:\d\d:\d\d\] "


def run_console(port: int, stdin: str, *args: str,
                timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(python_m("pychat", "console", "--port", str(port), *args),
                          input=stdin, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_pipe_mode_sends_stdin_and_prints_what_comes_back(serve, connect):
    bob = connect(serve)
    bob.handshake()
    room = f"#pipe-{uuid.uuid4().hex[:4]}"  # no history from earlier runs
    for line in ("/nick bob", f"/join {room}"):
        bob.send(line)
    bob.expect_prefix(f"ROOM:{room}")
    done = run_console(serve, f"/join {room}\nhello bob\n/msg bob psst\n/users\n/rooms\n/nope\n",
                       "--name", "carol")
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert all(re.match(STAMP, line) for line in out), out
    text = [line[11:] for line in out]  # without the time
    assert "* you are now carol" in text
    assert f"* you are in {room}" in text
    assert "carol: hello bob" in text
    assert "to bob: psst" in text
    assert any(re.fullmatch(rf"\* in {room}: bob \(\d{{6}}\), carol \(\d{{6}}\)  \(you\)", t)
               for t in text), text
    assert any(t.startswith("* rooms: ") and f"{room} (2)" in t for t in text), text
    assert "! unknown command /nope" in text
    assert text[-1] == "* the server said goodbye"
    assert "connected to" in done.stderr  # states go to stderr, not among the lines
    carol = re.search(r"as (\d{6})", done.stderr).group(1)
    bob.expect(f"{carol}: hello bob")
    bob.expect(f"[Private] {carol}: psst")


def test_pipe_mode_shows_history_of_the_room_on_entry(serve, connect):
    bob = connect(serve)
    bob.handshake()
    room = f"#hist-{uuid.uuid4().hex[:4]}"
    bob.send(f"/join {room}")
    bob.send("said before carol came")
    bob.expect(f"{bob.uid}: said before carol came")
    done = run_console(serve, f"/join {room}\n")
    assert done.returncode == 0, done.stderr
    lines = [line[11:] for line in done.stdout.splitlines()]
    entered = lines.index(f"* you are in {room}")
    assert lines.index(f"{bob.uid}: said before carol came") > entered


def test_pipe_mode_taken_name_is_a_clear_error(serve, connect):
    dave = connect(serve)
    dave.handshake()
    dave.send("/nick dave")
    dave.expect("OK nick dave")
    done = run_console(serve, "hello\n", "--name", "Dave")
    assert done.returncode == 1
    assert "name Dave is taken: choose another" in done.stderr


def test_pipe_mode_refuses_an_invalid_name_before_connecting(serve):
    done = run_console(serve, "", "--name", "123456")
    assert done.returncode == 2
    assert "six digits would read as a user ID" in done.stderr


def test_pipe_mode_reconnects_to_a_restarted_acceptor_as_the_same_name_and_room(procs, connect):
    router, endpoint = start_router()
    procs.append(router)
    acceptor, port = start_acceptor(endpoint)
    procs.append(acceptor)
    p = subprocess.Popen(python_m("pychat", "console", "--port", str(port), "--name", "gus",
                                  "--room", "#night", "--history", "0"),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    err: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [err.put(line) for line in p.stderr], daemon=True).start()

    def wait_err(text: str) -> str:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                line = err.get(timeout=0.2)
            except queue.Empty:
                continue
            if text in line:
                return line
        raise TimeoutError(text)

    try:
        wait_err("connected to")
        acceptor.kill()
        wait_err("reconnecting in")
        procs.append(start_acceptor_on(endpoint, port))
        wait_err("reconnected as gus in #night")
        watcher = connect(port)
        watcher.handshake()
        watcher.send("/join #night")
        assert re.fullmatch(r"NAMES:\d{6}=gus", watcher.expect_prefix("NAMES:"))
        p.stdin.write("back again\n")
        p.stdin.close()  # end of input: the client says /quit and exits after the answers
        out = p.stdout.read()
        p.wait(20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert "gus: back again" in out
    assert p.returncode == 0
