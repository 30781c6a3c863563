"""Real PyChat processes for tests: start, wait for a line, stop by pid.

Every process a test starts is tracked by its ``Proc`` and killed by its own pid when the test
ends (never by name). Waiting is for an expected output line with a timeout, never a sleep.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# a server's line-protocol port -> its web door's port, for the servers this process started (so
# that a test written for TCP ports can reach the same server over WebSocket: support/client.py)
WEB_PORTS: dict[int, int] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process whose stdout and stderr are read line by line into one queue."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, name: str = "",
                 cwd: str = ROOT):
        self.name = name or " ".join(argv[:3])
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=full_env, cwd=cwd)
        self.pid = self.proc.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._lock = threading.Lock()
        self._grew = threading.Condition(self._lock)  # notified at each line read
        self._open = 2
        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.output.append(line)
                self._grew.notify_all()
            self.lines.put(line)
        with self._lock:
            self._open -= 1
            if self._open == 0:
                self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match:
        """Wait for an output line matching ``pattern`` (regex search); return the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no line matching {pattern!r} in {timeout}s; "
                                   f"output so far:\n" + "\n".join(self.output[-40:]))
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.name} exited ({self.proc.poll()}) before "
                                   f"{pattern!r}; output:\n" + "\n".join(self.output[-40:]))
            m = rx.search(line)
            if m:
                return m

    def seen(self, pattern: str, count: int = 1, timeout: float = 20.0) -> list[str]:
        """Wait until at least ``count`` lines of all the output so far (whether or not
        ``wait_for`` passed them: stdout and stderr are read by two threads, so a line printed
        before another may be read after it) match ``pattern``; return the matching lines."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._grew:
            while True:
                found = [line for line in self.output if rx.search(line)]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0 or self._open == 0:
                    break
                self._grew.wait(left)
        if len(found) < count:
            raise TimeoutError(f"{self.name}: {len(found)} of {count} lines matching "
                               f"{pattern!r} in {timeout}s; output so far:\n"
                               + "\n".join(self.output[-40:]))
        return found

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # shown with the failure: what it was doing when it did not stop
                print(f"{self.name} (pid {self.pid}) ignored SIGTERM for {timeout}s; killed. "
                      "Its last output:\n" + "\n".join(self.output[-40:]), file=sys.stderr)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()


def python_m(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def start_serve(*extra: str, acceptors: int = 2, env: dict | None = None,
                python: str = "") -> tuple[Proc, int]:
    """``pychat serve --port 0``; returns the process and the port it serves on. ``python``:
    another interpreter whose installed pychat serves (a benchmark's "before"), run from a
    folder of its own so that this checkout's ``pychat`` is not found first."""
    argv = ["pychat", "serve", "--port", "0", "--acceptors", str(acceptors), *extra]
    if not python and not any(a.startswith(("--web-port", "--no-web")) for a in extra):
        argv += ["--web-port", "0"]  # the web door is on by default: on a free port of its own
    if python:
        p = Proc([python, "-m", *argv], env=env, name="pychat serve", cwd=tempfile.gettempdir())
    else:
        p = Proc(python_m(*argv), env=env, name="pychat serve")
    m = p.wait_for(r"serving on 127\.0\.0\.1:(\d+)")
    port = int(m.group(1))
    web = re.search(r"web https?://[^\s:]+:(\d+)/", m.string)
    if web:
        WEB_PORTS[port] = int(web.group(1))
    return p, port


def web_port(p: Proc) -> int:
    """The web door's port, from what ``pychat serve`` (or an acceptor) said when ready."""
    for line in p.output:
        m = re.search(r"web https?://[^\s:]+:(\d+)/", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"{p.name} named no web port: {p.output[-5:]}")


def start_router(*extra: str, env: dict | None = None) -> tuple[Proc, str]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    p = Proc(python_m("pychat.router", "--bind", endpoint, *extra), env=env, name="router")
    p.wait_for(r"router bound to")
    return p, endpoint


def start_acceptor(endpoint: str, *extra: str, env: dict | None = None) -> tuple[Proc, int]:
    """``pychat acceptor`` on a free port, its web door on another (``WEB_PORTS``)."""
    port = free_port()
    web = () if any(a.startswith(("--web", "--no-web")) for a in extra) else (
        "--web", "--web-port", "0")
    p = Proc(python_m("pychat.acceptor", "--port", str(port), "--router", endpoint, *web,
                      *extra),
             env=env,
             name=f"acceptor :{port}")
    p.wait_for(r"router \w+ is alive")
    if web:
        WEB_PORTS[port] = web_port(p)
    return p, port


def child_pids(p: Proc) -> dict[str, int]:
    """role -> pid of the children `pychat serve` reported starting (the latest of each)."""
    pids = {}
    for line in p.output:
        m = re.search(r"started (router|acceptor \d+) \(pid (\d+)\)", line)
        if m:
            pids[m.group(1)] = int(m.group(2))
    return pids


def kill_router(p: Proc, acceptors: int = 2) -> int:
    """SIGKILL the router of `pychat serve` ``p``; return once its successor has taken every
    acceptor's Hello (and with it, in the same batch, their sessions). Returns the new pid."""
    victim = child_pids(p)["router"]
    os.kill(victim, signal.SIGKILL)
    p.wait_for(rf"router \(pid {victim}\) died")
    new_pid = int(p.wait_for(r"pychat\.router\[(\d+)\] INFO router bound to").group(1))
    joined: set[str] = set()
    while len(joined) < acceptors:
        joined.add(p.wait_for(rf"pychat\.router\[{new_pid}\] INFO acceptor (\S+) joined"
                              ).group(1))
    return new_pid

