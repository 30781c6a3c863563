"""The router's ceiling: how many public messages a second one router handles (issue 18).

Run on demand from the repository root, never in CI (about 9 minutes with the defaults):

    python3 -m bench.router_ceiling [--acceptors 1,4,16] [--cases room,rooms,private]
        [--histories memory,sqlite] [--json-out FILE] [--profile CASES] [--quick]

One real router (``python -m pychat.router``, a process of its own, on a loopback tcp:// bus,
``--accounts memory``, a fresh ``--data-dir``) and 1, 4 or 16 **simulated acceptors**, spread over
``--workers`` worker processes (2 by default: the machine has 2 cores). Each simulated acceptor
is a ZeroMQ DEALER with a routing id of its own driven by the real ``AcceptorLink``
(wire/link.py) and speaking the real bus (wire/bus.py): its Hello batch, numbered batches
(``seq``), heartbeats every ``--heartbeat`` seconds, ``open`` and ``/join`` for each of its
members, then ``cmd say`` (or ``cmd msg``) in batches, one batch per acceptor per turn of the
worker's loop, as a real acceptor's turn of reads makes them. The router cannot tell them from
acceptors. What comes back goes through ``AcceptorLink.receive`` (acks, ``from`` marks,
sessions, heartbeats), except the chat lines themselves (``chat``, ``pchat``), which a worker
counts and times straight from the frame bytes instead of decoding them: the router never sees
the difference, and a full decode of 16 copies of every line would take the core the router
needs (``--full-decode`` decodes them too).

``--members`` clients (default 1,000) are dealt over the acceptors in turn; in the cases with
``--rooms`` rooms each member is in a room drawn at random (seeded; every room has members),
so a room's members sit on several acceptors, as SO_REUSEPORT spreads connections. Cases:

- ``room``: everyone in one room; every member may send. A public message becomes one ``chat``
  per acceptor with members in the room (all of them here): the fan-out the router pays.
- ``rooms``: ``--rooms`` rooms (100); a message goes to the acceptors with members in its room.
- ``private``: ``/msg UID text`` to a member on another acceptor (the same one when there is
  one acceptor): one ``pchat`` to the target's acceptor and the echo to the sender's.

each with the history in memory (``--history memory``: nothing on disk; the nearest thing to
"off") and in SQLite (the default store, in the temporary data folder); private messages are
not stored (no ``--history-private``), so they run once.

**One core for the router.** With 2 cores or more the router is started under ``taskset`` on
CPU ``--router-cpu`` (0), every thread of it (its loop, ZeroMQ's I/O thread, the history
writer), and the workers are kept on the other CPUs: the ceiling is one core's worth of router,
and the harness does not steal it (``--router-cpu -1``: no pinning).

**The search.** Per case, a closed-loop run flat out (each acceptor keeps ``--window`` commands
unanswered) gives a first capacity C; then open-loop runs at rising offered rates (0.5, 0.75,
0.9, 1.0 × C, then 15% more each time until one fails; below 0.5 C if that fails): each
acceptor sends its share at a steady pace for ``--seconds``. A rate is **kept up** when every
line expected (sent × the acceptors with members in the room) arrived, the chat latency
(send to arrival at the acceptor, one monotonic clock) has p99 under ``--max-p99-ms`` and the
senders kept their pace (p99 lateness under 20 ms: otherwise the harness, not the router, was
the limit). The table gives the highest rate kept up: messages in a second, chat lines out a
second (room lines; private lines for ``private``), and the router's CPU per message (every
thread of its process: the loop, ZeroMQ's I/O thread, the history writer) and its loop
thread's alone. The router's own turn times come from its ``--metrics-port`` histogram.

Before each run the sitting waits (at most ``--quiet-wait`` s) for half a second with the
machine less busy than ``--quiet-pct`` % of a core, and each run records the machine's CPU
beyond the router's and the workers' (``others_pct``: other work on a shared machine); a rate
not kept up while others took more than ``--noisy-pct`` % is run once more.

**The profile.** ``--profile CASES`` (default ``room:16:sqlite,room:1:memory``;
``--no-profile`` for none) runs each case again at its ceiling (the rate from the table, else
0.9 C) while ``py-spy record --format raw`` samples the router by pid (root, or ptrace
allowed), and prints the functions with the most samples in the router's loop thread: own
time (the leaf of the stack) and inclusive time.

``--quick`` (a smoke test, under 30 s for one case): 100 members, 1 s runs, flat out and then
one open-loop run at half of it, no search, no profile unless asked. ``--router-launcher
FILE`` runs a Python file instead of ``-m pychat.router`` (same arguments): a way to try a
change to the router (monkeypatched in) without editing it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from pychat.wire import bus
from pychat.wire.commands import Join, Private, Say
from pychat.wire.errors import BusError
from pychat.wire.link import AcceptorLink, Answered, ResyncNeeded
from support.procs import ROOT, Proc, free_port, python_m

HEADER = bus.HEADER
CHAT = b"chat\x00"
PCHAT = b"pchat\x00"
OPEN_CHUNK = 100  # members opened (and joined) per batch at setup
MAX_BURST = 5000  # commands one acceptor puts in one batch at most
LADDER = (0.5, 0.75, 0.9, 1.0)  # open-loop rates, as fractions of the flat-out rate
GROW = 1.15  # past 1.0 C: 15% more each run until one fails
MAX_STEPS = 14
LATE_P99 = 0.020  # seconds: senders later than this (p99) mean the harness was the limit
SAMPLE_EVERY = 5  # one chat line in this many is timed (each worker)


# ---- the plan: who is where -------------------------------------------------------------------

@dataclass
class Member:
    acceptor: int
    conn: int
    room: str
    uid: str = ""


@dataclass
class Case:
    kind: str  # room, rooms, private
    acceptors: int
    history: str  # memory, sqlite
    rooms: int

    @property
    def label(self) -> str:
        return {"room": "one room", "rooms": f"{self.rooms} rooms",
                "private": "private"}[self.kind]

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.acceptors}:{self.history}"


def plan(case: Case, members: int, seed: int = 18) -> list[Member]:
    """``members`` clients dealt over the acceptors in turn; each in its room (one room, or a
    room drawn at random, the first ``rooms`` members one in each so that none is empty)."""
    rng = random.Random(seed)
    out = []
    for i in range(max(members, case.acceptors * 2)):
        if case.kind == "rooms":
            room = f"#r{i if i < case.rooms else rng.randrange(case.rooms)}"
        else:
            room = "#bench"
        out.append(Member(i % case.acceptors, 1 + i // case.acceptors, room))
    return out


# ---- a worker process: simulated acceptors ----------------------------------------------------

class SimAcceptor:
    """One simulated acceptor: a DEALER with its routing id, the real ``AcceptorLink``."""

    def __init__(self, index: int, name: str, ctx: zmq.Context, endpoint: str,
                 heartbeat: float, members: list[Member], full_decode: bool, now: float):
        self.index = index
        self.name = name
        self.link = AcceptorLink(name, uuid.uuid4().hex[:12], heartbeat=heartbeat, now=now)
        self.sock = ctx.socket(zmq.DEALER)  # set up as acceptor/link.py's BusPump sets its own
        self.sock.setsockopt(zmq.ROUTING_ID, name.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.MAXMSGSIZE, bus.MAX_FRAME)
        self.sock.connect(endpoint)
        self.members = members
        self.by_conn = {m.conn: m for m in members}
        self.full_decode = full_decode
        self.pending: deque[tuple[int, float, int]] = deque()  # (seq, flushed at, commands)
        self.in_batch = 0  # commands in the batch being collected
        self.outstanding = 0  # commands sent and not yet answered
        self.next_sender = 0
        self.targets: list[tuple[str, int]] = []  # private: (uid, its acceptor), in turn
        self.next_target = 0
        # cumulative counters
        self.sent_room: dict[str, int] = {}
        self.sent_to: dict[int, int] = {}  # private: target acceptor -> messages
        self.sent_private = 0
        self.recv_chat: dict[str, int] = {}
        self.recv_pchat = 0
        self.costs = 0
        self.errors: list[str] = []
        self.resyncs = 0
        self.refused = 0

    def flush(self, now: float) -> None:
        link = self.link
        if not link.collecting:
            return
        self.pending.append((link.ticket, now, self.in_batch))
        self.in_batch = 0
        link.flush(now)
        self.push()

    def push(self) -> None:
        link = self.link
        out = link.out
        while out:
            try:
                self.sock.send_multipart(out[0][0], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            link.sent_one()

    def drain(self, now: float, w: Worker) -> None:
        sock = self.sock
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if self.full_decode or frames[0] != HEADER:
                rest = frames
            else:
                rest = [HEADER]
                for f in frames[1:]:
                    if f.startswith(CHAT):
                        room = f.split(b"\x00", 2)[1].decode()
                        self.recv_chat[room] = self.recv_chat.get(room, 0) + 1
                        w.arrived(f, now)
                    elif f.startswith(PCHAT):
                        self.recv_pchat += 1
                        w.arrived(f, now)
                    else:
                        rest.append(f)
                if len(rest) == 1:
                    continue
            try:
                received = self.link.receive(rest, now)
            except BusError as e:
                self.errors.append(str(e))
                continue
            for msg in received:
                self.handle(msg, now, w)

    def handle(self, msg: object, now: float, w: Worker) -> None:
        if isinstance(msg, Answered):
            pending = self.pending
            while pending and pending[0][0] <= msg.n:
                _, at, commands = pending.popleft()
                if commands:
                    self.outstanding -= commands
                    w.acked(now - at)
        elif isinstance(msg, bus.SessionSet):
            member = self.by_conn.get(msg.conn)
            if member is not None:
                member.uid = msg.uid
                w.rooms_seen[(self.index, msg.conn)] = msg.room
        elif isinstance(msg, bus.ChatRoom):  # --full-decode
            self.recv_chat[msg.room] = self.recv_chat.get(msg.room, 0) + 1
            w.arrived(bus.encode_message(msg), now)
        elif isinstance(msg, bus.ChatConn):
            self.recv_pchat += 1
            w.arrived(bus.encode_message(msg), now)
        elif isinstance(msg, bus.Cost):
            self.costs += 1
        elif isinstance(msg, bus.Err):
            if len(self.errors) < 20:
                self.errors.append(f"{msg.code}: {msg.text}")
        elif isinstance(msg, ResyncNeeded):
            self.resyncs += 1  # a fresh router that restarted: not in this benchmark
            self.link.resync([], now)

    def send_chat(self, n: int, step: int, now: float, kind: str, text: str) -> None:
        """``n`` commands from this acceptor's members in turn, into the batch of this turn."""
        link = self.link
        members = self.members
        stamp = f"~{step}~{int(now * 1e6)}~{text}"
        for _ in range(n):
            m = members[self.next_sender]
            self.next_sender = (self.next_sender + 1) % len(members)
            if kind == "private":
                uid, acc = self.targets[self.next_target]
                self.next_target = (self.next_target + 1) % len(self.targets)
                link.send(bus.Cmd(m.conn, Private(uid, stamp)))
                self.sent_to[acc] = self.sent_to.get(acc, 0) + 1
                self.sent_private += 1
            else:
                link.send(bus.Cmd(m.conn, Say(stamp)))
                self.sent_room[m.room] = self.sent_room.get(m.room, 0) + 1
        self.in_batch += n
        self.outstanding += n

    def counts(self) -> dict[str, Any]:
        self.refused += sum(len(b) for b in self.link.take_refused())
        return {"index": self.index, "sent_room": dict(self.sent_room),
                "sent_to": dict(self.sent_to), "sent_private": self.sent_private,
                "recv_chat": dict(self.recv_chat), "recv_pchat": self.recv_pchat,
                "outstanding": self.outstanding, "unacked": self.link.unacked,
                "costs": self.costs, "errors": self.errors[-5:], "resyncs": self.resyncs,
                "refused": self.refused, "router_alive": self.link.router_alive}


@dataclass
class Step:
    id: int
    mode: str  # open, flat
    rate: float  # this worker's offered commands a second (open)
    window: int  # commands unanswered per acceptor (flat)
    duration: float
    kind: str
    started: float
    sent: dict[int, int] = field(default_factory=dict)  # acceptor -> commands this step
    late: list[float] = field(default_factory=list)


class Worker:
    """The simulated acceptors of one process, and one loop for all of them."""

    def __init__(self, conn: Any, endpoint: str, heartbeat: float, members: list[Member],
                 names: dict[int, str], full_decode: bool, text_len: int):
        self.ctl = conn
        self.ctx = zmq.Context()
        now = time.monotonic()
        by_acc: dict[int, list[Member]] = {}
        for m in members:
            by_acc.setdefault(m.acceptor, []).append(m)
        self.accs = [SimAcceptor(i, names[i], self.ctx, endpoint, heartbeat, ms, full_decode,
                                 now) for i, ms in sorted(by_acc.items())]
        self.poller = zmq.Poller()
        for a in self.accs:
            self.poller.register(a.sock, zmq.POLLIN)
        self.poller.register(conn.fileno(), zmq.POLLIN)
        self.rooms_seen: dict[tuple[int, int], str] = {}
        self.text = " " + "x" * max(0, text_len - 25)
        self.step: Step | None = None
        self.latency: dict[int, list[float]] = {}  # step -> sampled chat latencies (s)
        self.ack_latency: dict[int, list[float]] = {}
        self._arrivals = 0
        self.stopping = False
        for a in self.accs:  # an acceptor's first word is its Hello batch
            a.link.hello([], now)
            a.push()

    # what the acceptors report
    def arrived(self, frame: bytes, now: float) -> None:
        self._arrivals += 1
        if self._arrivals % SAMPLE_EVERY:
            return
        try:
            _, step, sent, _ = frame.split(b"~", 3)
            self.latency.setdefault(int(step), []).append(now - int(sent) / 1e6)
        except ValueError:
            pass

    def acked(self, seconds: float) -> None:
        if self.step is not None:
            self.ack_latency.setdefault(self.step.id, []).append(seconds)

    # the loop
    def turn(self, timeout_ms: int) -> None:
        now = time.monotonic()
        step = self.step
        if step is not None:
            self.generate(step, now)
        for a in self.accs:
            a.link.tick(now)  # heartbeats
            a.flush(now)
            if a.link.out:
                a.push()
        if step is not None:
            timeout_ms = min(timeout_ms, 1)
        events = dict(self.poller.poll(timeout_ms))
        now = time.monotonic()
        for a in self.accs:
            if a.sock in events:
                a.drain(now, self)

    def generate(self, step: Step, now: float) -> None:
        elapsed = now - step.started
        if elapsed >= step.duration:
            self.step = None
            for a in self.accs:
                a.flush(now)
            self.reply("sent", step=step.id, late_p99=pct(step.late, 99), late_max=max(
                step.late, default=0.0), sent=sum(step.sent.values()))
            return
        per_acc = step.rate / len(self.accs)
        for a in self.accs:
            done = step.sent.get(a.index, 0)
            if step.mode == "open":
                due = min(int(elapsed * per_acc) - done, MAX_BURST)
                if due > 0:
                    step.late.append(max(0.0, elapsed - (done + 1) / per_acc))
            else:  # a quarter of the window at a time: several batches in flight
                due = min(step.window - a.outstanding, max(1, step.window // 4))
            if due > 0:
                a.send_chat(due, step.id, now, step.kind, self.text)
                step.sent[a.index] = done + due

    def reply(self, op: str, **kw: Any) -> None:
        self.ctl.send({"op": op, **kw})

    def serve(self) -> None:
        while not self.stopping:
            self.turn(100)
            while self.ctl.poll():
                self.control(self.ctl.recv())
        for a in self.accs:
            a.sock.close(0)
        self.ctx.term()

    def wait(self, done: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker: {what} not done in {timeout}s")
            self.turn(5)

    def setup(self) -> None:
        self.wait(lambda: all(a.link.router_alive for a in self.accs), 30, "hello")
        for a in self.accs:
            for i in range(0, len(a.members), OPEN_CHUNK):
                for m in a.members[i:i + OPEN_CHUNK]:
                    a.link.send(bus.Open(m.conn, f"127.0.0.1:{10000 + m.conn}"))
                    a.link.send(bus.Cmd(m.conn, Join(m.room)))
                a.flush(time.monotonic())
                self.turn(0)
        want = {(a.index, m.conn): m.room for a in self.accs for m in a.members}
        self.wait(lambda: all(self.rooms_seen.get(k) == r for k, r in want.items()), 120,
                  "opens and joins")
        self.wait(lambda: all(not a.link.unacked for a in self.accs), 30, "setup's acks")

    def control(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "setup":
            try:
                self.setup()
            except TimeoutError as e:
                self.reply("error", error=str(e))
                return
            self.reply("ready", uids={f"{a.index}:{m.conn}": m.uid for a in self.accs
                                      for m in a.members})
        elif op == "targets":
            for a in self.accs:
                a.targets = [tuple(t) for t in msg["targets"][str(a.index)]]
            self.reply("ok")
        elif op == "run":
            self.step = Step(msg["step"], msg["mode"], msg["rate"], msg["window"],
                             msg["duration"], msg["kind"], time.monotonic())
        elif op == "counts":
            r = resource.getrusage(resource.RUSAGE_SELF)
            self.reply("counts", accs=[a.counts() for a in self.accs],
                       cpu=r.ru_utime + r.ru_stime)
        elif op == "report":
            sid = msg["step"]
            self.reply("report", latency=self.latency.pop(sid, []),
                       ack=self.ack_latency.pop(sid, []))
        elif op == "stop":
            self.stopping = True
            self.reply("stopped")


def worker_main(conn: Any, endpoint: str, heartbeat: float, members: list[Member],
                names: dict[int, str], full_decode: bool, text_len: int) -> None:
    w = Worker(conn, endpoint, heartbeat, members, names, full_decode, text_len)
    try:
        w.serve()
    except KeyboardInterrupt:
        pass


# ---- measuring the router from outside ----------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def proc_cpu(path: str) -> float:
    """utime + stime from a /proc stat file, seconds."""
    try:
        with open(path) as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def scrape(port: int) -> dict[str, float]:
    """The router's turn-time histogram and counters (its --metrics-port)."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        m = re.match(r'(pychat_router_turn_seconds_(?:bucket|count|sum))(?:\{le="([^"]+)"\})? '
                     r'(\S+)', line)
        if m:
            out[m.group(1) + (f":{m.group(2)}" if m.group(2) else "")] = float(m.group(3))
    return out


def turn_stats(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    count = after.get("pychat_router_turn_seconds_count", 0) - before.get(
        "pychat_router_turn_seconds_count", 0)
    total = after.get("pychat_router_turn_seconds_sum", 0) - before.get(
        "pychat_router_turn_seconds_sum", 0)
    buckets = sorted((float(k.split(":", 1)[1]), v - before.get(k, 0))
                     for k, v in after.items() if k.startswith("pychat_router_turn_seconds_bucket"))
    p99 = None
    for le, cum in buckets:
        if count and cum >= 0.99 * count:
            p99 = le if le != float("inf") else None  # beyond the last bucket (1 s)
            break
    return {"turns": int(count), "turn_mean_ms": round(1000 * total / count, 3) if count else None,
            "turn_p99_le_ms": None if p99 is None else p99 * 1000}


def status(endpoint: str, ctx: zmq.Context) -> dict[str, Any]:
    """The router's view (what ``pychat status`` asks), or {}."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(endpoint)
        s.send_multipart(bus.encode([bus.StatusAsk()]))
        if s.poll(5000):
            msgs = bus.decode(s.recv_multipart())
            if msgs and isinstance(msgs[0], bus.Status):
                return json.loads(msgs[0].json)
    finally:
        s.close(0)
    return {}


def wait_quiet(pct: float, longest: float) -> float | None:
    """Wait until a half second in which the machine is busy less than ``pct`` % of a core
    (others' work: ours is idle between runs), at most ``longest`` seconds. Returns the
    seconds waited, None if it never got quiet."""
    t0 = time.monotonic()
    while True:
        b0 = machine_busy()
        time.sleep(0.5)  # sampling the machine's busy time
        if 100 * (machine_busy() - b0) / 0.5 < pct:
            return round(time.monotonic() - t0, 1)
        if time.monotonic() - t0 > longest:
            return None


def load_average() -> float:
    return os.getloadavg()[0]


# ---- one case ------------------------------------------------------------------------------------

class Bench:
    """The router and the workers of one case."""

    def __init__(self, case: Case, a: argparse.Namespace):
        self.case = case
        self.a = a
        self.tmp = tempfile.mkdtemp(prefix="pychat-ceiling-")
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.metrics_port = free_port()
        self.step_id = 0
        self.workers_cpu = 0.0
        pin = ["taskset", "-c", str(a.router_cpu)] if a.router_cpu >= 0 else []
        router = [sys.executable, a.router_launcher] if a.router_launcher else python_m(
            "pychat.router")
        self.router = Proc(pin + router + [
            "--bind", self.endpoint, "--history", case.history, "--data-dir", self.tmp,
            "--accounts", "memory", "--heartbeat", str(a.heartbeat),
            "--metrics-port", str(self.metrics_port), "--log-level", "info"], name="router")
        self.workers: list[tuple[Any, Any]] = []
        self.ctx = zmq.Context()
        try:
            self.start_rest(case, a)
        except BaseException:
            self.stop()
            raise

    def start_rest(self, case: Case, a: argparse.Namespace) -> None:
        self.router.wait_for(r"router bound to")
        self.pid = self.router.pid
        self.members = plan(case, a.members)
        self.room_accs: dict[str, set[int]] = {}
        for m in self.members:
            self.room_accs.setdefault(m.room, set()).add(m.acceptor)
        run_id = uuid.uuid4().hex[:6]
        names = {i: f"sim{i:02d}-{run_id}" for i in range(case.acceptors)}
        nworkers = min(a.workers, case.acceptors)
        mp = multiprocessing.get_context("spawn")
        for k in range(nworkers):
            mine = [m for m in self.members if m.acceptor % nworkers == k]
            parent, child = mp.Pipe()
            p = mp.Process(target=worker_main, args=(child, self.endpoint, a.heartbeat, mine,
                                                     names, a.full_decode, a.text_len),
                           daemon=True)
            p.start()
            if a.router_cpu >= 0 and p.pid is not None:  # the workers keep off the router's core
                others = set(range(os.cpu_count() or 1)) - {a.router_cpu}
                if others:
                    os.sched_setaffinity(p.pid, others)
            self.workers.append((p, parent))

    def ask(self, msg: dict[str, Any], want: str, timeout: float = 60) -> list[dict[str, Any]]:
        for _, c in self.workers:
            c.send(msg)
        return [self.answer(c, want, timeout) for _, c in self.workers]

    def answer(self, c: Any, want: str, timeout: float) -> dict[str, Any]:
        if not c.poll(timeout):
            raise TimeoutError(f"no {want} from a worker in {timeout}s")
        r = c.recv()
        if r["op"] == "error":
            raise RuntimeError(r["error"])
        if r["op"] != want:
            raise RuntimeError(f"worker said {r['op']}, expected {want}")
        return r

    def setup(self) -> float:
        t = time.monotonic()
        replies = self.ask({"op": "setup"}, "ready", timeout=180)
        uids: dict[str, str] = {}
        for r in replies:
            uids.update(r["uids"])
        for m in self.members:
            m.uid = uids[f"{m.acceptor}:{m.conn}"]
        if self.case.kind == "private":
            self.send_targets()
        return time.monotonic() - t

    def send_targets(self) -> None:
        rng = random.Random(7)
        targets: dict[str, list[tuple[str, int]]] = {}
        for i in range(self.case.acceptors):
            others = [m for m in self.members if m.acceptor != i] or self.members
            targets[str(i)] = [(m.uid, m.acceptor) for m in rng.sample(others,
                                                                       min(256, len(others)))]
        self.ask({"op": "targets", "targets": targets}, "ok")

    def counts(self) -> list[dict[str, Any]]:
        accs = []
        self.workers_cpu = 0.0  # CPU seconds of the worker processes so far
        for r in self.ask({"op": "counts"}, "counts"):
            accs.extend(r["accs"])
            self.workers_cpu += r["cpu"]
        return accs

    def expected(self, accs: list[dict[str, Any]]) -> dict[int, int]:
        """Lines each acceptor should have had by now, from what was sent."""
        want = {a["index"]: 0 for a in accs}
        for a in accs:
            for room, n in a["sent_room"].items():
                for i in self.room_accs[room]:
                    want[i] += n
            for target, n in a["sent_to"].items():
                want[int(target)] += n
            want[a["index"]] += a["sent_private"]  # the echo
        return want

    @staticmethod
    def received(accs: list[dict[str, Any]]) -> dict[int, int]:
        return {a["index"]: sum(a["recv_chat"].values()) + a["recv_pchat"] for a in accs}

    def step(self, mode: str, rate: float, duration: float) -> dict[str, Any]:
        """One run: offered ``rate`` commands a second (open) or flat out (flat)."""
        waited = wait_quiet(self.a.quiet_pct, self.a.quiet_wait)
        self.step_id += 1
        sid = self.step_id
        before = self.counts()
        wcpu0 = self.workers_cpu
        got0 = sum(self.received(before).values())
        sent0 = sum(sum(a["sent_room"].values()) + a["sent_private"] for a in before)
        window = max(16, self.a.window // self.case.acceptors)
        kind = "private" if self.case.kind == "private" else "say"
        m0 = scrape(self.metrics_port)
        cpu0 = proc_cpu(f"/proc/{self.pid}/stat")
        loop0 = proc_cpu(f"/proc/{self.pid}/task/{self.pid}/stat")
        busy0 = machine_busy()
        t0 = time.monotonic()
        per_worker = rate / self.case.acceptors
        for p, c in self.workers:  # each worker's share: its acceptors' share of the rate
            n = len({m.acceptor for m in self.members
                     if m.acceptor % len(self.workers) == self.workers.index((p, c))})
            c.send({"op": "run", "step": sid, "mode": mode, "rate": per_worker * n,
                    "window": window, "duration": duration, "kind": kind})
        sent_replies = [self.answer(c, "sent", duration + 60) for _, c in self.workers]
        t_sent = time.monotonic()
        # then every line expected must arrive (the cumulative counts agree)
        deadline = t_sent + self.a.drain_timeout
        while True:
            accs = self.counts()
            want, got = self.expected(accs), self.received(accs)
            complete = want == got and all(not a["unacked"] for a in accs)
            if complete or time.monotonic() > deadline:
                break
            time.sleep(0.02)  # polling the workers' counters
        t1 = time.monotonic()
        wcpu1 = self.workers_cpu
        cpu1 = proc_cpu(f"/proc/{self.pid}/stat")
        loop1 = proc_cpu(f"/proc/{self.pid}/task/{self.pid}/stat")
        busy1 = machine_busy()
        m1 = scrape(self.metrics_port)
        reports = self.ask({"op": "report", "step": sid}, "report")
        lat = sorted(x for r in reports for x in r["latency"])
        ack = sorted(x for r in reports for x in r["ack"])
        sent = sum(sum(a["sent_room"].values()) + a["sent_private"] for a in accs) - sent0
        lines = sum(got.values()) - got0
        wall = t1 - t0
        res: dict[str, Any] = {
            "step": sid, "mode": mode, "offered": round(rate) if mode == "open" else None,
            "seconds": round(duration, 2), "sent": sent, "lines": lines,
            "msgs_per_s": round(sent / duration, 1),
            "lines_per_s": round(lines / duration, 1),
            "fanout": round(lines / sent, 3) if sent else None,
            "delivered_all": want == got, "missing": sum(want.values()) - sum(got.values()),
            "drain_s": round(t1 - t_sent, 3),
            "latency_ms": {"p50": round(1000 * pct(lat, 50), 2),
                           "p99": round(1000 * pct(lat, 99), 2),
                           "max": round(1000 * (lat[-1] if lat else 0), 2), "n": len(lat)},
            "ack_ms": {"p50": round(1000 * pct(ack, 50), 2),
                       "p99": round(1000 * pct(ack, 99), 2)},
            "sender_late_p99_ms": round(1000 * max(r["late_p99"] for r in sent_replies), 2),
            "router_cpu_pct": round(100 * (cpu1 - cpu0) / wall, 1),
            "router_loop_pct": round(100 * (loop1 - loop0) / wall, 1),
            "router_us_per_msg": round(1e6 * (cpu1 - cpu0) / sent, 2) if sent else None,
            "loop_us_per_msg": round(1e6 * (loop1 - loop0) / sent, 2) if sent else None,
            "machine_pct": round(100 * (busy1 - busy0) / wall, 1),
            "workers_pct": round(100 * (wcpu1 - wcpu0) / wall, 1),
            "quiet_waited_s": waited,
            **turn_stats(m0, m1),
            "errors": sorted({e for a in accs for e in a["errors"]})[:5],
            "refused": sum(a["refused"] for a in accs),
            "unacked": sum(a["unacked"] for a in accs),
            "resyncs": sum(a["resyncs"] for a in accs),
        }
        # the machine's busy time not spent by the router, the workers or the kernel for them
        # (roughly): other work on a shared machine
        res["others_pct"] = round(res["machine_pct"] - res["router_cpu_pct"]
                                  - res["workers_pct"], 1)
        res["kept_up"] = bool(
            res["delivered_all"] and not res["errors"] and not res["refused"]
            and not res["resyncs"] and not res["unacked"]
            and res["latency_ms"]["p99"] <= self.a.max_p99_ms
            and (mode == "flat" or res["sender_late_p99_ms"] <= 1000 * LATE_P99))
        res["harness_limited"] = mode == "open" and res["sender_late_p99_ms"] > 1000 * LATE_P99
        return res

    def settle(self, timeout: float) -> bool:
        """Wait until every line sent so far has arrived and every batch is acknowledged."""
        deadline = time.monotonic() + timeout
        while True:
            accs = self.counts()
            if self.expected(accs) == self.received(accs) and all(
                    not x["unacked"] for x in accs):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)  # polling the workers' counters

    def stop(self) -> dict[str, Any]:
        st = {}
        if self.router.alive():
            try:
                st = status(self.endpoint, self.ctx)
            except (zmq.ZMQError, bus.BusError, ValueError):
                pass
        for _, c in self.workers:
            try:
                c.send({"op": "stop"})
            except OSError:
                pass
        for p, _ in self.workers:
            p.join(10)
            if p.is_alive():
                p.terminate()  # our own worker, by its process object
                p.join(5)
        self.router.stop()
        self.ctx.term()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return st


def search(b: Bench, a: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Flat out, then open-loop runs: up the ladder until one fails (down from half of C
    while none passes), then once between the best kept up and the lowest failed."""
    steps = []
    flat = b.step("flat", 0, a.seconds)
    steps.append(flat)
    log(f"    flat out: {flat['msgs_per_s']:.0f} msg/s, {flat['lines_per_s']:.0f} lines/s, "
        f"workers {flat['workers_pct']}%, p99 {flat['latency_ms']['p99']} ms, router "
        f"{flat['router_cpu_pct']}% (loop {flat['router_loop_pct']}%), "
        f"{flat['router_us_per_msg']} µs/msg")
    capacity = max(flat["msgs_per_s"], 10.0)
    best: dict[str, Any] | None = None
    passed: float | None = None  # the highest factor kept up
    failed: float | None = None  # the lowest factor not kept up
    ladder = list(LADDER)
    f = ladder.pop(0)
    bisected = False
    retried: set[float] = set()
    while len(steps) < MAX_STEPS:
        if not b.settle(a.drain_timeout * 2):
            log("    (a backlog did not drain: search stopped)")
            break
        s = b.step("open", f * capacity, a.seconds)
        s["factor"] = round(f, 3)
        steps.append(s)
        verdict = "kept up" if s["kept_up"] else (
            "NOT kept up (senders late: the harness too)" if s["harness_limited"]
            else "NOT kept up")
        log(f"    {f:.2f} C = {s['offered']} msg/s offered: {s['msgs_per_s']:.0f} in, "
            f"{s['lines_per_s']:.0f} lines/s, p99 {s['latency_ms']['p99']} ms, "
            f"ack p99 {s['ack_ms']['p99']} ms, turn p99 <= {s['turn_p99_le_ms']} ms, router "
            f"{s['router_cpu_pct']}% (loop {s['router_loop_pct']}%), machine "
            f"{s['machine_pct']}% (workers {s['workers_pct']}%, others {s['others_pct']}%), "
            f"{s['router_us_per_msg']} "
            f"µs/msg: {verdict}")
        if not s["kept_up"] and s["others_pct"] > a.noisy_pct and f not in retried:
            retried.add(f)  # other work took the machine: that run says little, again
            log(f"    (others used {s['others_pct']}% of the machine: run again)")
            continue
        if s["kept_up"]:
            passed = f if passed is None else max(passed, f)
            if best is None or s["msgs_per_s"] > best["msgs_per_s"]:
                best = s
        else:
            failed = f if failed is None else min(failed, f)
        if a.quick:
            break
        if failed is None:  # still rising
            f = ladder.pop(0) if ladder else f * GROW
        elif passed is None:  # none kept up yet: lower
            f *= 0.6
            if f < 0.02:
                break
        elif bisected or failed <= passed * 1.08:
            break
        else:
            f = (passed + failed) / 2
            bisected = True
    return {"steps": steps, "flat": flat, "best": best}


def run_case(case: Case, a: argparse.Namespace, log: Any) -> dict[str, Any]:
    load = load_average()
    log(f"  {case.label}, {case.acceptors} acceptors, history {case.history} "
        f"(load average {load:.2f})")
    b = Bench(case, a)
    try:
        setup_s = b.setup()
        log(f"    {len(b.members)} members in {len(b.room_accs)} rooms, set up in "
            f"{setup_s:.1f} s")
        found = search(b, a, log)
    finally:
        st = b.stop()
    return {"case": case.kind, "label": case.label, "acceptors": case.acceptors,
            "rooms": len(b.room_accs), "history": case.history, "members": len(b.members),
            # lines out per message: the acceptors with members in the sender's room (a
            # private message: the target's line and the sender's echo)
            "mean_fanout": 2.0 if case.kind == "private" else round(
                statistics.mean(len(b.room_accs[m.room]) for m in b.members), 2),
            "load_average_before": round(load, 2), "setup_s": round(setup_s, 2),
            "history_status": st.get("history", {}), **found}


# ---- the profile ---------------------------------------------------------------------------------

def profile(case: Case, rate: float | None, a: argparse.Namespace, log: Any,
            out_path: str) -> dict[str, Any]:
    pyspy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which(
        "py-spy")
    if pyspy is None:
        return {"error": "py-spy not found"}
    log(f"  profile: {case.label}, {case.acceptors} acceptors, history {case.history}")
    b = Bench(case, a)
    try:
        b.setup()
        if rate is None:
            flat = b.step("flat", 0, min(a.seconds, 3))
            rate = 0.9 * flat["msgs_per_s"]
        b.step_id += 1
        sid = b.step_id
        duration = a.profile_seconds + 2.0
        kind = "private" if case.kind == "private" else "say"
        cpu0 = proc_cpu(f"/proc/{b.pid}/task/{b.pid}/stat")
        for p, c in b.workers:
            n = len({m.acceptor for m in b.members
                     if m.acceptor % len(b.workers) == b.workers.index((p, c))})
            c.send({"op": "run", "step": sid, "mode": "open",
                    "rate": rate / case.acceptors * n, "window": 0, "duration": duration,
                    "kind": kind})
        time.sleep(1.0)  # the load is on
        t0 = time.monotonic()
        spy = subprocess.run([pyspy, "record", "-p", str(b.pid), "-d", str(a.profile_seconds),
                              "-r", str(a.profile_rate), "--format", "raw", "--threads",
                              "-o", out_path, "--nonblocking"],
                             capture_output=True, text=True, timeout=a.profile_seconds + 60)
        loop_pct = 100 * (proc_cpu(f"/proc/{b.pid}/task/{b.pid}/stat") - cpu0) / (
            time.monotonic() - t0 + 1.0)
        for _, c in b.workers:
            b.answer(c, "sent", duration + 60)
        b.ask({"op": "report", "step": sid}, "report")
        if spy.returncode != 0 or not os.path.exists(out_path):
            return {"error": f"py-spy: {spy.stderr.strip()[-500:]}"}
    finally:
        b.stop()
    top = summarize(out_path, a.profile_top)
    top.update({"case": case.key, "rate": round(rate), "router_loop_pct": round(loop_pct, 1),
                "file": out_path})
    return top


# frames on every stack of the loop thread: their inclusive share says nothing
TRIVIAL = ("_run_module_as_main (", "_run_code (", "<module> (", "main (router/__main__.py)",
           "RouterServer.run (")
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


def frame_name(frame: str) -> str:
    """``function (file.py:line)`` -> ``function (package/file.py)``: lines merged."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", ROOT + os.sep, "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


def summarize(path: str, top: int) -> dict[str, Any]:
    """Own and inclusive samples per function, in the router's main (loop) thread."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count_s = line.rstrip("\n").rpartition(" ")
            if not stack or not count_s.isdigit():
                continue
            count = int(count_s)
            frames = stack.split(";")
            # with --threads: 'process ...' then 'thread (0x..)' (named when known) come first
            thread = next((fr for fr in frames[:2] if fr.startswith("thread")), "?")
            threads[thread] = threads.get(thread, 0) + count
            frames = [fr for fr in frames if not fr.startswith(("process ", "thread "))]
            if not frames or "MainThread" not in thread:
                continue
            total += count
            names = [frame_name(fr) for fr in frames]
            own[names[-1]] = own.get(names[-1], 0) + count
            for n in set(names):
                if not n.startswith(TRIVIAL):
                    incl[n] = incl.get(n, 0) + count

    def rank(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in
                sorted(d.items(), key=lambda kv: -kv[1])[:top]] if total else []
    return {"loop_samples": total, "threads": threads, "own": rank(own),
            "inclusive": rank(incl)}


# ---- the sitting ---------------------------------------------------------------------------------

def cases_of(a: argparse.Namespace) -> list[Case]:
    out = []
    for n in a.acceptors:
        for kind in a.cases:
            histories = ["memory"] if kind == "private" else a.histories
            for h in histories:
                out.append(Case(kind, n, h, a.rooms if kind == "rooms" else 1))
    return out


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| case | acceptors | rooms | history | msgs/s in | room-lines/s out | "
            "router CPU µs per msg | loop µs per msg | chat p99 ms | ack p99 ms | "
            "router core % (loop %) | flat out msgs/s | machine % (others) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        b = r.get("best")
        flat = r["flat"]
        head = f"| {r['label']} | {r['acceptors']} | {r['rooms']} | {r['history']} |"
        if b is None:
            rows.append(f"{head} none kept up | | | | | | | {flat['msgs_per_s']:,.0f} | |")
            continue
        rows.append(
            f"{head} {b['msgs_per_s']:,.0f} | {b['lines_per_s']:,.0f} | "
            f"{b['router_us_per_msg']} | {b['loop_us_per_msg']} | {b['latency_ms']['p99']} | "
            f"{b['ack_ms']['p99']} | {b['router_cpu_pct']} ({b['router_loop_pct']}) | "
            f"{flat['msgs_per_s']:,.0f} | {b['machine_pct']} ({b['others_pct']}) |")
    return "\n".join(rows)


def profile_text(p: dict[str, Any]) -> str:
    if "error" in p:
        return f"profile: {p['error']}"
    lines = [f"Profile of the router's loop thread: {p['case']} at {p['rate']} msg/s "
             f"(loop thread {p['router_loop_pct']}% of a core; {p['loop_samples']} samples; "
             f"py-spy raw in {p['file']})", "",
             "| own % | function |", "| --- | --- |"]
    lines += [f"| {v} | `{k}` |" for k, v in p["own"]]
    lines += ["", "| inclusive % | function |", "| --- | --- |"]
    lines += [f"| {v} | `{k}` |" for k, v in p["inclusive"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--acceptors", default="1,4,16", help="simulated acceptors, comma-separated")
    ap.add_argument("--cases", default="room,rooms,private")
    ap.add_argument("--histories", default="memory,sqlite")
    ap.add_argument("--rooms", type=int, default=100, help="rooms in the 'rooms' case")
    ap.add_argument("--members", type=int, default=1000, help="clients, over all acceptors")
    ap.add_argument("--workers", type=int, default=2, help="processes the acceptors run in")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each run")
    ap.add_argument("--window", type=int, default=1024,
                    help="flat out: commands unanswered, over all acceptors")
    ap.add_argument("--max-p99-ms", type=float, default=50.0,
                    help="chat latency p99 above this: not kept up")
    ap.add_argument("--drain-timeout", type=float, default=15.0)
    ap.add_argument("--quiet-pct", type=float, default=25.0,
                    help="before each run, wait for half a second with the machine busier "
                         "than this (%% of a core) ...")
    ap.add_argument("--quiet-wait", type=float, default=20.0, help="... at most this long")
    ap.add_argument("--noisy-pct", type=float, default=30.0,
                    help="a rate not kept up while others used more than this (%% of a core) "
                         "is run once more")
    ap.add_argument("--heartbeat", type=float, default=1.0)
    ap.add_argument("--router-cpu", type=int, default=0 if (os.cpu_count() or 1) > 1 else -1,
                    help="pin the router (every thread) to this CPU and the workers to the "
                         "others (-1: no pinning)")
    ap.add_argument("--text-len", type=int, default=60, help="characters of each chat text")
    ap.add_argument("--full-decode", action="store_true",
                    help="decode every chat line with the link too (costs the workers CPU)")
    ap.add_argument("--profile", default="room:16:sqlite,room:1:memory",
                    help="KIND:ACCEPTORS:HISTORY cases to profile at their ceiling, "
                         "comma-separated")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--profile-only", action="store_true", help="no table: the profile alone")
    ap.add_argument("--profile-seconds", type=int, default=10)
    ap.add_argument("--profile-rate", type=int, default=250, help="py-spy samples a second")
    ap.add_argument("--profile-top", type=int, default=15)
    ap.add_argument("--profile-out", default="",
                    help="prefix of py-spy's raw output files (default: in the temp folder)")
    ap.add_argument("--router-launcher", default="",
                    help="a Python file run instead of `-m pychat.router`, with the same "
                         "arguments (to try a change to the router without editing it)")
    ap.add_argument("--json-out", default="")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 100 members, 1 s runs, no search, no profile")
    a = ap.parse_args(argv)
    a.acceptors = [int(x) for x in a.acceptors.split(",") if x]
    a.cases = [x for x in a.cases.split(",") if x]
    a.histories = [x for x in a.histories.split(",") if x]
    for k in a.cases:
        if k not in ("room", "rooms", "private"):
            ap.error(f"unknown case {k}")
    if a.quick:
        if "--members" not in (argv if argv is not None else sys.argv):
            a.members = 100
        a.seconds = min(a.seconds, 1.0)
        a.drain_timeout = min(a.drain_timeout, 8.0)
        a.quiet_wait = min(a.quiet_wait, 2.0)
        a.profile_seconds = min(a.profile_seconds, 3)
        if "--profile" not in (argv if argv is not None else sys.argv):
            a.no_profile = True
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    log(f"# router ceiling, {started}, {os.cpu_count()} cores, load average "
        f"{load_average():.2f}")
    results = []
    for case in [] if a.profile_only else cases_of(a):
        results.append(run_case(case, a, log))
    profiles: list[dict[str, Any]] = []
    for spec in [] if a.no_profile else [x for x in a.profile.split(",") if x]:
        kind, n, history = spec.split(":")
        pcase = Case(kind, int(n), history, a.rooms if kind == "rooms" else 1)
        rate = next((r["best"]["msgs_per_s"] for r in results
                     if r["case"] == kind and r["acceptors"] == int(n)
                     and r["history"] == history and r["best"]), None)
        out = (a.profile_out or os.path.join(tempfile.gettempdir(), "router-ceiling")) + (
            f"-{kind}-{n}-{history}.pyspy.txt")
        profiles.append(profile(pcase, rate, a, log, out))
    print(f"Router ceiling, {started}; {os.cpu_count()} cores; {a.members} members; "
          f"runs of {a.seconds:g} s; kept up: every line delivered, chat p99 <= "
          f"{a.max_p99_ms:g} ms\n")
    if results:
        print(table(results))
    for prof in profiles:
        print()
        print(profile_text(prof))
    if a.json_out:
        from bench.run import machine  # (not in the workers: they import this module)
        with open(a.json_out, "w") as f:
            json.dump({"started": started, "argv": sys.argv[1:], "cores": os.cpu_count(),
                       "machine": machine(), "load_average_end": load_average(),
                       "results": results, "profiles": profiles}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
