"""`pychat console` and files (PROTOCOL Part 5): ``/send <path> [target]``, ``/files`` and
``/get <n> [path]`` in pipe mode (a final line per transfer, exit status 8 when one fails, the
goodbye waiting for the transfers) and on a terminal (tmux: the progress bar in the bottom bar,
the upload slowed down in the console's own process so that the bar can be seen moving).
Against ``pychat serve``; every wait is for a line, with a timeout.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from support.procs import start_serve

from .test_console_pipe import STAMP, Piped, run_console
from .test_console_tmux import Tmux

pytestmark = pytest.mark.e2e
FILE_LINE = re.compile(STAMP + r"(\S+) sent (\S+) \(([\d.]+ [KMG]?B)\) #(\d+) (http://\S+)$")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    p, port = start_serve("--history", "memory", "--accounts", "memory", "--data-dir",
                          str(tmp_path_factory.mktemp("files")), "--files-max-mb", "2",
                          acceptors=1)
    yield port
    p.stop()


class Console(Piped):
    """A pipe-mode console whose stdout lines can be waited for; run in folder ``cwd``."""

    def __init__(self, port: int, cwd, *args: str):
        super().__init__(port, *args, cwd=cwd)

    def wait_out(self, pattern: str, timeout: float = 20) -> re.Match:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.out_lines.get(timeout=left)
            except queue.Empty:
                break
            if (m := rx.search(line)):
                return m
        raise TimeoutError(f"no {pattern!r} on stdout in {timeout} s: {self.stdout[-20:]}")

    def saw(self, pattern: str, timeout: float = 20) -> None:
        """A line matching came, before or after the ones ``wait_out`` passed (transfers end
        in any order)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while not any(rx.search(line) for line in self.stdout):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern!r} on stdout: {self.stdout[-20:]}")
            time.sleep(0.05)  # polling the lines the pump thread appends


@pytest.fixture
def consoles():
    made: list[Console] = []
    yield made
    for c in made:
        c.kill()


def run(port: int, cwd, stdin: str, *args: str) -> subprocess.CompletedProcess:
    return run_console(port, stdin, *args, timeout=60, cwd=cwd)


def test_pipe_send_then_files_and_get_never_overwriting(server, consoles, tmp_path):
    room = f"#cf-{uuid.uuid4().hex[:4]}"
    home = tmp_path / "bob"
    home.mkdir()
    (home / "pic_1.png").write_bytes(b"bob's own, older file")
    bob = Console(server, home, "--name", "bob", "--room", room)
    consoles.append(bob)
    bob.wait_out(rf"\* you are in {room}")
    src = tmp_path / "pic 1.png"
    data = b"\x89PNG\r\n\x1a\n" + os.urandom(300_000)
    src.write_bytes(data)
    done = run(server, tmp_path, f"/send {src}\n", "--name", "alice",
               "--room", room)
    assert done.returncode == 0, (done.stdout, done.stderr)
    out = done.stdout.splitlines()
    assert any(re.fullmatch(STAMP + r"\* pic_1\.png sent \(300\.0 KB\)", ln) for ln in out), out
    mine = [FILE_LINE.match(ln) for ln in out if FILE_LINE.match(ln)]
    assert len(mine) == 1 and mine[0].group(1, 2, 3, 4) == ("alice", "pic_1.png", "300.0 KB", "1")
    url = mine[0].group(5)

    m = bob.wait_out(FILE_LINE.pattern)
    assert m.group(1, 2, 4, 5) == ("alice", "pic_1.png", "1", url)
    bob.write("/files\n")
    bob.wait_out(rf"\* #1 pic_1\.png \(300\.0 KB\) from alice {re.escape(url)}$")
    bob.write("/get 1\n")
    bob.wait_out(rf"\* saved pic_1\.png \(300\.0 KB\) to .*{os.sep}pic_1-1\.png$")
    bob.write("/get 1 nowhere/x.png\n")  # in a folder that does not exist: refused
    bob.wait_out(r"! could not save pic_1\.png: cannot write .*nowhere/x\.png: No such file")
    (home / "sub").mkdir()
    bob.write("/get 1 sub\n/get 1 renamed.bin\n/get 7\n/get x\n")
    for pattern in (r"\* saved pic_1\.png .* to .*sub/pic_1\.png$",
                    r"\* saved pic_1\.png .* to .*renamed\.bin$",
                    r"! no file #7 \(/files lists them\)$", r"! usage: /get <n> \[path\]$"):
        bob.saw(pattern)
    bob.end_input()
    assert bob.wait(20) == 8  # a /get failed
    assert (home / "pic_1.png").read_bytes() == b"bob's own, older file"  # never overwritten
    for name in ("pic_1-1.png", "sub/pic_1.png", "renamed.bin"):
        assert (home / name).read_bytes() == data, name
    assert sorted(os.listdir(home)) == ["pic_1-1.png", "pic_1.png", "renamed.bin", "sub"]


def test_pipe_refusals_and_a_private_file(server, consoles, tmp_path):
    room = f"#cr-{uuid.uuid4().hex[:4]}"
    carol = Console(server, tmp_path, "--name", "carol", "--room", room)
    consoles.append(carol)
    carol.wait_out(rf"\* you are in {room}")
    big = tmp_path / "big.iso"
    with open(big, "wb") as f:
        f.truncate(3 * 1024 * 1024)  # over --files-max-mb 2
    note = tmp_path / "note.txt"
    note.write_text("for carol only\n")
    done = run(server, tmp_path, f"/send {big}\n/send {tmp_path}/nothing.txt\n/send\n"
               f"/send {note} carol\n", "--name", "dave", "--room", room)
    assert done.returncode == 8, (done.stdout, done.stderr)
    out = done.stdout
    assert re.search(r"! could not send big\.iso: .*(large|MiB)", out), out
    assert "! could not send nothing.txt: No such file or directory" in out
    assert "! usage: /send <path> [target]" in out
    assert re.search(r"\* note\.txt sent \(15 B\)", out), out
    m = carol.wait_out(FILE_LINE.pattern)
    assert m.group(1, 2, 3) == ("dave", "note.txt", "15 B")
    carol.end_input()
    assert carol.wait(20) == 0


# ---- on a terminal -------------------------------------------------------------------------------

SLOW_CONSOLE = """
import http.client, sys, time
from pychat.clients import console, transfer
transfer.CHUNK = 16384
send = http.client.HTTPConnection.send
def slow_send(self, data):  # a slow link: 16 KiB every 20 ms (about 0.8 MB/s)
    if len(data) == transfer.CHUNK:
        time.sleep(0.02)
    return send(self, data)
http.client.HTTPConnection.send = slow_send
sys.exit(console.main(sys.argv[1:]))
"""


@pytest.mark.skipif(shutil.which("tmux") is None, reason="missing tmux (Debian: tmux)")
def test_terminal_send_shows_a_progress_bar_then_the_file_line(server, tmp_path):
    room = f"#ct-{uuid.uuid4().hex[:4]}"
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(2 * 1000 * 1000))
    t = Tmux([sys.executable, "-c", SLOW_CONSOLE, "--port", str(server), "--name", "erin",
              "--room", room])
    try:
        t.wait(rf"^\[{room}\] erin>")
        t.type(f"/send {src}")
        t.keys("Enter")
        screen = t.wait(r"\^ big\.bin \[=*>? *\] +\d+% [\d.]+ [KM]?B/2\.0 MB")
        first = int(re.search(r"\] +(\d+)%", screen).group(1))
        assert first < 100
        screen = t.wait(r"erin sent big\.bin \(2\.0 MB\) #1 http://", timeout=40)
        t.wait(r"\* big\.bin sent \(2\.0 MB\)")
        deadline = time.monotonic() + 10
        while "^ big.bin" in t.screen():  # the bar goes once the upload is done
            assert time.monotonic() < deadline, t.screen()
            time.sleep(0.05)  # polling the pane
        t.type("/files")
        t.keys("Enter")
        t.wait(r"\* #1 big\.bin \(2\.0 MB\) from you http://")
        t.type("/quit")
        t.keys("Enter")
    finally:
        t.kill()
