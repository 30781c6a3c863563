"""`pychat console` with stdin not a terminal: lines from stdin, received lines printed plainly,
and its exit status (clients/console.py): 0 for a normal run, 1 name refused, 2 bad usage, 3 no
connection within its bound (no server, a server that never answers, a connection lost for
good), 4 a line the server did not pass on (``not-sent`` from an acceptor whose router is gone,
``line-too-long``).

Tests that wait for the bound run the console with ``GIVE_UP`` set short in its own process
(``console_argv``): the bound is a module constant, not an option (the option table is
pychat/options.py's)."""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from support.procs import ROOT, free_port, python_m, start_acceptor, start_router

from .test_client_core import start_acceptor_on

pytestmark = pytest.mark.e2e

STAMP = r"\[\d\d:\d\d:\d\d\] "


def console_argv(port: int, *args: str, give_up: float | None = None) -> list[str]:
    """``pychat console``; with ``give_up``, its ``GIVE_UP`` bound set to that in its process."""
    if give_up is None:
        return python_m("pychat", "console", "--port", str(port), *args)
    code = ("import sys; from pychat.clients import console; "
            "console.GIVE_UP = float(sys.argv[1]); sys.exit(console.main(sys.argv[2:]))")
    return [sys.executable, "-c", code, str(give_up), "--port", str(port), *args]


def run_console(port: int, stdin: str, *args: str, timeout: float = 30,
                give_up: float | None = None, cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(console_argv(port, *args, give_up=give_up), input=stdin,
                          capture_output=True, text=True, timeout=timeout, cwd=str(cwd))


class Piped:
    """A console in pipe mode whose stdin stays open until the test closes it; its output is
    read as it comes (stderr line by line, for ``wait_err``; stdout's lines without their ends
    in ``out_lines``); run in the folder ``cwd``."""

    def __init__(self, port: int, *args: str, give_up: float | None = None, cwd: str = ROOT):
        self.p = subprocess.Popen(console_argv(port, *args, give_up=give_up),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=str(cwd),
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.err_lines: queue.Queue[str] = queue.Queue()
        self.out_lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._pumps = [threading.Thread(target=self._pump, args=(self.p.stdout, self.stdout),
                                        daemon=True),
                       threading.Thread(target=self._pump, args=(self.p.stderr, self.stderr),
                                        daemon=True)]
        for t in self._pumps:
            t.start()

    def _pump(self, stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)
            if into is self.stderr:
                self.err_lines.put(line)
            else:
                self.out_lines.put(line.rstrip("\n"))

    def wait_err(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.err_lines.get(timeout=left)
            except queue.Empty:
                break
            if text in line:
                return line
        raise TimeoutError(f"no {text!r} on stderr in {timeout} s: {self.stderr}")

    def write(self, text: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(text)
        self.p.stdin.flush()

    def end_input(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.close()

    def wait(self, timeout: float) -> int:
        """The exit status, once out; killed (and TimeoutExpired) if not out in ``timeout``."""
        try:
            code = self.p.wait(timeout)
        finally:
            self.kill()
        for t in self._pumps:  # the pipes are at their end: all read soon
            t.join(5)
        return code

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


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


# ---- exit statuses ------------------------------------------------------------------------------

def test_pipe_mode_with_no_server_listening_gives_up_with_status_3():
    port = free_port()  # nothing listens there
    began = time.monotonic()
    done = run_console(port, "hello\n", give_up=2, timeout=60)
    assert done.returncode == 3, done.stderr
    assert f"could not connect to 127.0.0.1:{port} within 2 s; giving up" in done.stderr
    assert "reconnecting in" in done.stderr  # it tried again before giving up ...
    assert time.monotonic() - began >= 2  # ... for its whole bound


def test_pipe_mode_gives_up_on_a_server_that_never_answers_though_stdin_stays_open():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nothing is said
        port = silent.getsockname()[1]
        con = Piped(port, give_up=2)
        try:
            status = con.wait(timeout=60)  # stdin is never closed: a bot that keeps it open
        finally:
            con.kill()
    assert status == 3, con.stderr
    assert any(f"could not connect to 127.0.0.1:{port} within 2 s" in line
               for line in con.stderr), con.stderr


def test_pipe_mode_gives_up_on_a_connection_lost_for_good(procs):
    router, endpoint = start_router()
    procs.append(router)
    acceptor, port = start_acceptor(endpoint)
    procs.append(acceptor)
    con = Piped(port, "--history", "0", give_up=3)
    try:
        con.wait_err("connected to")
        acceptor.kill()  # and no acceptor comes back on that port
        con.wait_err("reconnecting in")
        status = con.wait(timeout=60)
    finally:
        con.kill()
    assert status == 3, con.stderr
    assert any(f"lost the connection to 127.0.0.1:{port} and could not reconnect within 3 s"
               in line for line in con.stderr), con.stderr


def test_pipe_mode_exits_4_when_the_router_is_gone_and_a_line_is_not_sent(procs):
    router, endpoint = start_router()
    procs.append(router)
    acceptor, port = start_acceptor(endpoint)
    procs.append(acceptor)
    con = Piped(port, "--history", "0")
    try:
        con.wait_err("connected to")
        router.kill()  # the acceptor refuses what waited 5 s for it (ROUTER_WAIT)
        con.write("anyone there?\n")
        con.end_input()
        status = con.wait(timeout=90)
    finally:
        con.kill()
    out, err = "".join(con.stdout), "".join(con.stderr)
    assert status == 4, err
    assert "! not sent, the router is unavailable: anyone there?" in out
    assert ("a line was not sent (not-sent): not sent, the router is unavailable: anyone there?"
            in err)


def test_pipe_mode_exits_4_for_a_line_too_long_and_sends_the_rest(serve):
    done = run_console(serve, "x" * 5000 + "\nstill here\n")
    assert done.returncode == 4, done.stderr
    assert "a line was not sent (line-too-long): line too long (max 4096 bytes)" in done.stderr
    assert re.search(rf"{STAMP}\d{{6}}: still here$", done.stdout, re.M), done.stdout


def test_pipe_mode_other_errors_do_not_change_the_status(serve):
    done = run_console(serve, "/msg nobody-here hi\n/nope\n")
    assert done.returncode == 0, done.stderr
    assert "! unknown command /nope" in done.stdout


def test_pipe_mode_skips_a_line_that_is_not_utf8_and_exits_2(serve):
    done = subprocess.run(console_argv(serve), input=b"\xff\xfe bad\nfine\n",
                          capture_output=True, timeout=30, cwd=ROOT)
    err, out = done.stderr.decode(), done.stdout.decode()
    assert done.returncode == 2, err
    assert "line 1 is not UTF-8; not sent" in err
    assert re.search(rf"{STAMP}\d{{6}}: fine$", out, re.M), out
