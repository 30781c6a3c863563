"""Several hosts on one machine: the router and two acceptors each in a network namespace of
its own, with its own address on a private LAN, and a client on each acceptor's host.

Topology, made by the test as root and removed when it ends (processes stopped by pid, then
``ip netns del``); names carry the pid and a random suffix so parallel runs never collide.
The addresses exist only inside these namespaces; nothing leaves this machine.

    netns ...-r   router   10.77.0.1 on bridge br0   binds tcp://10.77.0.1:65431
    netns ...-a1  acceptor 10.77.0.2 (veth to br0)   listens 10.77.0.2:65432, client there
    netns ...-a2  acceptor 10.77.0.3 (veth to br0)   listens 10.77.0.3:65432, client there

Each namespace has its own ports, so everything runs on the default ports. Run twice: with a
plain bus, and with CurveZMQ on (keys from ``pychat keys``, one pair per acceptor host). Skipped,
saying why, only where a namespace cannot be made (not root, no ``ip``, no permission).
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest

from support.procs import ROOT, Proc

pytestmark = pytest.mark.e2e

ROUTER_ADDR = "10.77.0.1"
ACCEPTOR_ADDRS = ("10.77.0.2", "10.77.0.3")
PREFIX = 24
BUS_PORT = 65431
CLIENT_PORT = 65432
WEB_PORT = 65433

# A line client like `nc`, run inside a namespace: stdin lines go to the server, server lines
# come out on stdout; it exits when the server closes or stdin ends.
CLIENT = r"""
import socket, sys, threading
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.settimeout(None)
print("connected", flush=True)
def pump():
    for line in s.makefile("r", encoding="utf-8", newline="\n"):
        print(line.rstrip("\n"), flush=True)
    print("closed", flush=True)
threading.Thread(target=pump, daemon=True).start()
for line in sys.stdin:
    s.sendall(line.encode())
s.close()
"""


# A sniffer on the router host's bridge: every frame between the hosts passes br0. It reports
# whether a marker crossed the wire in clear text once its stdin closes.
SNIFFER = r"""
import select, socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
s.bind(("br0", 0))
marker = sys.argv[1].encode()
seen = 0
print("capturing", flush=True)
while True:
    ready = select.select([s, sys.stdin], [], [])[0]
    if s in ready:
        seen += marker in s.recv(65535)
    if sys.stdin in ready and not sys.stdin.readline():
        s.setblocking(False)
        try:
            while True:
                seen += marker in s.recv(65535)
        except BlockingIOError:
            pass
        break
print(f"marker frames: {seen}", flush=True)
"""


def ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


class Hosts:
    """Three namespaces on one bridge; ``remove()`` undoes everything that was made."""

    def __init__(self):
        tag = f"pychat-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.router = f"{tag}-r"
        self.acceptors = [f"{tag}-a1", f"{tag}-a2"]
        self.made: list[str] = []

    def add(self, ns: str) -> None:
        ip("netns", "add", ns)
        self.made.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def build(self) -> None:
        self.add(self.router)
        r = self.router
        ip("-n", r, "link", "add", "br0", "type", "bridge")
        ip("-n", r, "addr", "add", f"{ROUTER_ADDR}/{PREFIX}", "dev", "br0")
        ip("-n", r, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(zip(self.acceptors, ACCEPTOR_ADDRS, strict=True), 1):
            self.add(ns)
            # both ends made inside the namespaces: no interface ever appears on the host
            ip("link", "add", f"port{i}", "netns", r, "type", "veth",
               "peer", "name", "eth0", "netns", ns)
            ip("-n", r, "link", "set", f"port{i}", "master", "br0")
            ip("-n", r, "link", "set", f"port{i}", "up")
            ip("-n", ns, "addr", "add", f"{addr}/{PREFIX}", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")

    def remove(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made.clear()


def can_make_namespaces() -> str:
    """'' when `ip netns add` works here, else why not."""
    if shutil.which("ip") is None:
        return "no `ip` command (Debian package iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"pychat-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return ""


@pytest.fixture
def hosts():
    why = can_make_namespaces()
    if why:
        pytest.skip(f"cannot make network namespaces here: {why}")
    h = Hosts()
    try:
        h.build()
        yield h
    finally:
        h.remove()


class Piped:
    """A script in a namespace, driven through its stdin and stdout; stopped by pid."""

    def __init__(self, ns: str, script: str, *args: str, ready: str, name: str):
        self.name = name
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", script,
                                      *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.expect(lambda line: line == ready)

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, match, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: nothing matched in {timeout}s; saw "
                                   f"{self.seen[-20:]}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.name} ended; saw {self.seen[-20:]}")
            self.seen.append(line)
            if match(line):
                return line

    def expect_prefix(self, prefix: str) -> str:
        return self.expect(lambda line: line.startswith(prefix))

    def finish(self, timeout: float = 15.0) -> str:
        """Close stdin; return the last line it prints before it exits."""
        self.proc.stdin.close()
        last = ""
        deadline = time.monotonic() + timeout
        while (line := self.lines.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            self.seen.append(line)
            last = line
        self.proc.wait(timeout)
        return last

    def handshake(self) -> str:
        self.expect(lambda line: line == "Welcome to PyChat Server!")
        self.uid = self.expect_prefix("ID:")[3:]
        return self.uid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class LineClient(Piped):
    """CLIENT in a namespace."""

    def __init__(self, ns: str, host: str, port: int):
        super().__init__(ns, CLIENT, host, str(port), ready="connected", name=f"client in {ns}")


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", *argv]


def bus_peers(ns: str) -> set[str]:
    """Addresses with an established TCP connection to the router's bus port, seen in ns."""
    r = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htn", "state", "established",
                        f"( sport = :{BUS_PORT} )"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return {line.split()[-1].rsplit(":", 1)[0] for line in r.stdout.splitlines() if line}


def make_keys(folder) -> str:
    r = subprocess.run([sys.executable, "-m", "pychat", "keys", str(folder), "--acceptors",
                        str(len(ACCEPTOR_ADDRS))], capture_output=True, text=True, timeout=30,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return str(folder)


@pytest.mark.parametrize("curve", [False, True], ids=["plain-bus", "curvezmq"])
def test_router_and_acceptors_on_three_hosts_chat(hosts, tmp_path, curve):
    # without keys, a router on an address other hosts reach must be told the network is trusted
    router_keys: list[str] = ["--insecure-bus"]
    acceptor_keys: list[list[str]] = [[] for _ in ACCEPTOR_ADDRS]
    if curve:
        keys = make_keys(tmp_path / "keys")
        router_keys = ["--curve-secret", f"{keys}/router.key_secret",
                       "--curve-clients", f"{keys}/authorized"]
        acceptor_keys = [["--curve-secret", f"{keys}/acceptor-{i}.key_secret",
                          "--curve-server", f"{keys}/router.key"]
                         for i in range(1, len(ACCEPTOR_ADDRS) + 1)]
    started: list[Proc | LineClient] = []
    try:
        router = Proc(in_ns(hosts.router, "pychat.router", "--bind", f"tcp://{ROUTER_ADDR}:{BUS_PORT}",
                            "--data-dir", str(tmp_path / "data"), *router_keys),
                      name="router host")
        started.append(router)
        router.wait_for(rf"router bound to tcp://{ROUTER_ADDR}:{BUS_PORT}")
        if curve:
            assert any("bus: CurveZMQ on; 2 authorised acceptor keys" in line
                       for line in router.output)
        acceptors = []
        for ns, addr, keyflags in zip(hosts.acceptors, ACCEPTOR_ADDRS, acceptor_keys, strict=True):
            a = Proc(in_ns(ns, "pychat.acceptor", "--host", addr, "--port", str(CLIENT_PORT),
                           "--router", f"tcp://{ROUTER_ADDR}:{BUS_PORT}", "--web",
                           "--web-port", str(WEB_PORT), *keyflags),
                     name=f"acceptor {addr}")
            started.append(a)
            a.wait_for(rf"listening on {addr}:{CLIENT_PORT}")
            a.wait_for(r"router \w+ is alive")
            acceptors.append(a)
        for _ in acceptors:
            router.wait_for(r"acceptor \S+ joined")

        # the bus crosses the links: the router's host sees one connection from each acceptor's
        # own address
        assert bus_peers(hosts.router) == set(ACCEPTOR_ADDRS)

        marker = f"marker-{uuid.uuid4().hex}"
        sniffer = Piped(hosts.router, SNIFFER, marker, ready="capturing", name="sniffer")
        started.append(sniffer)
        c1 = LineClient(hosts.acceptors[0], ACCEPTOR_ADDRS[0], CLIENT_PORT)
        started.append(c1)
        c2 = LineClient(hosts.acceptors[1], ACCEPTOR_ADDRS[1], CLIENT_PORT)
        started.append(c2)
        u1, u2 = c1.handshake(), c2.handshake()
        c1.expect(lambda line: line.startswith("USERS:") and set(line[6:].split(",")) == {u1, u2})
        c1.send("/nick alice")
        c1.expect(lambda line: line == "OK nick alice")
        c2.expect(lambda line: line == f"NAMES:{u1}=alice")
        c1.send("hello from host a1")
        assert c2.expect_prefix(f"{u1}:") == f"{u1}: hello from host a1"
        c2.send("/msg alice psst from a2")
        assert c1.expect_prefix("[Private]") == f"[Private] {u2}: psst from a2"
        c2.send("/join #ops")
        c2.expect(lambda line: line == "ROOM:#ops")
        c1.send("/join #ops")
        c1.expect(lambda line: line == "ROOM:#ops")
        c2.send("in ops now")
        assert c1.expect_prefix(f"{u2}:") == f"{u2}: in ops now"
        # what the bus carries between the hosts: the line in clear text, or not with CurveZMQ
        c1.send(marker)
        assert c2.expect_prefix(f"{u1}:") == f"{u1}: {marker}"
        crossed = int(sniffer.finish().rsplit(" ", 1)[1])
        if curve:
            assert crossed == 0
        else:
            assert crossed >= 2  # a1 -> router (the command), router -> a2 (the chat line)

        # a file across the hosts: PUT to a1's web door, its bytes over the bus to the router's
        # store; the FILE: line to a2's client, which GETs the file from a2's own web door
        data = os.urandom(200_000)
        src = tmp_path / "across.bin"
        src.write_bytes(data)
        c1.send(f"/upload {len(data)} across.bin")
        url = c1.expect_prefix("UPLOAD:")[len("UPLOAD:"):]
        assert url.startswith(f"http://{ACCEPTOR_ADDRS[0]}:{WEB_PORT}/upload/"), url
        put = subprocess.run(["ip", "netns", "exec", hosts.acceptors[0], "curl", "-sS", "--fail",
                              "-T", str(src), url], capture_output=True, text=True, timeout=60)
        assert put.returncode == 0, put.stderr
        file_url = put.stdout.strip()
        assert c2.expect_prefix("FILE:") == f"FILE:{u1} {len(data)} {file_url} across.bin"
        there = file_url.replace(ACCEPTOR_ADDRS[0], ACCEPTOR_ADDRS[1])
        got = subprocess.run(["ip", "netns", "exec", hosts.acceptors[1], "curl", "-sS", "--fail",
                              there], capture_output=True, timeout=60)
        assert got.returncode == 0, got.stderr
        assert got.stdout == data
    finally:
        for p in reversed(started):
            p.stop()
