"""Logins, measured: how many the server sustains, and what they cost everyone else's chat.

Run on demand from the repository root, never in CI (about 8 minutes with the defaults):

    python3 -m bench.logins [--rounds 5] [--login-seconds 10] [--chat-seconds 8]
    python3 -m bench.logins --skip-rates --chat-workers 2 --kinds alone,logins-100,brute-N

Every run is a fresh ``pychat serve`` (2 acceptors, the default) on loopback with a fresh
``--data-dir``: the failed-login throttle lives in the router's memory, so no run inherits
another's. **Setup** (not timed): one server registers the accounts (``/nick``, ``/register``)
and takes a resume token for each (``/token``); its ``accounts.sqlite3`` is then copied into
every later server's folder, so every run starts with the same accounts and tokens.

1. **Logins per second** (``--login-workers`` 1 and 2): ``--login-conns`` connections, each
   to its own account, do ``/login NAME PASSWORD`` (timed, from the send to its ``END
   login``), then ``/logout``, then again, as fast as the server answers, for
   ``--login-seconds``. Then the same with ``/resume NAME TOKEN`` from ``--resume-conns``
   connections (no hash: a SHA-256 and a lookup; a connection resumes again without a
   ``/logout``, which would revoke the token), and one connection logging in alone (a login's
   own latency). The flood limit is raised for these runs (it would hold a connection to 50
   commands a second). Reported: logins done a second, their latency p50/p99, refusals
   (``busy``: the 64-job queue was full), and CPU over the run: the router (its hashing
   threads included), the acceptors, this process (the drivers) and the whole machine, in %
   of one core (200% is both cores of a 2-core machine).
2. **Chat under logins**: ``pychat loadtest`` (1,000 clients in ``#lobby``, 10 senders, 200
   msg/s together, ``--chat-seconds``) measures the others' latency while one of these runs
   (``--kinds``):

   - ``alone``: nothing else;
   - ``logins-R``: R password logins a second, paced (one every 10 ms at 100/s, whether or
     not the last was answered) from a pool of ``--pool`` connections, each to its own
     account with the right password, ``/logout`` after each success; a login due while every
     connection of the pool waits for an answer is counted as skipped;
   - ``brute-1``: a brute force from one address (127.0.20.1): ``--brute-conns`` connections
     sending wrong passwords as fast as the server answers, half of them to one account
     (``victim``), half each time to a new made-up name;
   - ``brute-N``: the same from N addresses (127.0.20.1, 127.0.20.2..., one connection each, N =
     ``--brute-conns``): a distributed attacker, whom the per-address limits do not stop.

   During the brute forces a probe (127.0.30.x) logs in with the right password once a
   second to an ordinary account and once a second to the victim: can a user still get in?
   The kinds run interleaved (the order reversed every other round), ``--rounds`` times; the
   figures are medians over the rounds.

The login drivers are asyncio connections in this process (uvloop when installed), each in a
room of its own (``#lg<i>``): a login renames its user, and the NAMES push that follows would
otherwise go to the 1,000 chat clients (that is the cost of a rename, not of a login). Each
connection of a legitimate user has a source address of its own (127.0.10.x, 127.0.11.x), as
users on the Internet have: the router's limits per address (the failed-login throttle, and
the hashes one address may have in the pool at once) would otherwise judge the benchmark's
users as one client. Every client is on 127.0.0.0/8, which the acceptor's per-address
connection limits exempt by default (``--per-address-exempt loopback``); they are also raised
for every run (``--max-per-address``, ``--connect-burst``, ``--connect-rate``) so that no
connection of the benchmark is refused. In part 2 the flood limits stay at their defaults (a
brute-forcer gets what any client gets: 100 commands at once, then 50 a second), and so do
the login throttles (5 failures per account, 20 per address, then doubling waits).

The machine may be shared. Before each run the sitting waits (up to ``--quiet-wait`` s) for a
second in which the machine is busy less than ``--quiet-pct`` % of a core; each run records the
rest of the machine's CPU (its busy time less the processes measured: others' work, the serve
parent, kernel work charged to no process; within about 10% of a core), and the tables'
medians leave out the runs whose rest passed ``--max-rest`` % (they say how many they kept;
the JSON keeps every run). Each run also records a digest of the code under test (the server's
folders and the load generator's files): other work may change the tree during a sitting (the
sitting warns when it did). ``--table FILE`` prints the tables of a saved sitting again.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import hashlib
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.faults import child_pid
from bench.run import machine
from pychat.clients.loadtest import machine_busy_seconds
from support.procs import ROOT, Proc, start_serve

PASSWORD = "correct-horse-battery"
VICTIM = "victim"
ACCOUNT = "lb%03d"  # the benchmark's accounts: lb000, lb001, ...
# no connection of the benchmark may be refused by the acceptor's per-address limits
SERVE_ARGS = ("--max-per-address", "1000000", "--connect-burst", "1000000",
              "--connect-rate", "1000000", "--log-level", "info")
# part 1 measures the server, not the flood limit (a connection's commands: 100 at once, then
# 50 a second), which would cap a connection that logs in again and again
FLOOD_RAISED = ("--flood-burst", "1000000", "--flood-rate", "1000000")
LEGIT, BRUTE, PROBE = 10, 20, 30  # the drivers' addresses: 127.0.10.x, 127.0.20.x, 127.0.30.x
TICK = 0.005  # the paced driver's clock
KINDS = ("alone", "logins-100", "logins-25", "brute-1", "brute-N")
OUTCOMES = ("ok", "login-failed", "login-throttled", "busy")
# the code under test: the server's folders, and the load generator's files
RUNTIME = ("router", "acceptor", "wire", "pychat")
LOADGEN = ("clients/loadtest.py", "clients/loadstats.py")


def address(block: int, i: int) -> str:
    """The ``i``-th source address of a block of 127.0.0.0/8 (250 to a /24)."""
    return f"127.0.{block + i // 250}.{1 + i % 250}"


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of ``values``; None when there are none."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def source_digest() -> str:
    """A digest of the code under test (the runtime folders' Python files): other work may
    change the tree during a sitting, and each run records what it ran."""
    h = hashlib.sha256()
    files = [os.path.join(folder, name) for folder in RUNTIME
             for name in sorted(os.listdir(os.path.join(ROOT, folder))) if name.endswith(".py")]
    for path in files + list(LOADGEN):
        h.update(path.encode())
        with open(os.path.join(ROOT, path), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def git_state() -> dict:
    """The commit, and the runtime files that differ from it (read-only git)."""
    def git(*argv: str) -> str:
        r = subprocess.run(["git", "--no-optional-locks", *argv], cwd=ROOT,
                           capture_output=True, text=True)
        return r.stdout.strip()
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "runtime_changed": git("diff", "--name-only", "HEAD", "--", *RUNTIME,
                                   *LOADGEN).split()}


# ---- CPU -----------------------------------------------------------------------------------------

def pid_cpu(pid: int) -> float:
    """utime + stime of a process, every thread (the router's hashing threads too), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CpuWindow:
    """CPU between two moments, in % of one core: the router, the acceptors, this process (the
    drivers), its finished children (the load generator), the whole machine, and what is left
    of the machine's: others' work (the machine is shared), the serve parent and the kernel's
    work not charged to a process."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.t0 = time.monotonic()
        self.c0 = {role: pid_cpu(pid) for role, pid in pids.items()}
        self.self0 = self_cpu()
        self.children0 = children_cpu()
        self.m0 = machine_busy_seconds()

    def close(self) -> dict:
        wall = max(time.monotonic() - self.t0, 1e-9)
        used = {role: pid_cpu(pid) - self.c0[role] for role, pid in self.pids.items()}
        m1 = machine_busy_seconds()

        def share(seconds: float) -> float:
            return round(100 * seconds / wall, 1)
        out = {"seconds": round(wall, 2), "router_pct": share(used["router"]),
               "acceptors_pct": share(sum(v for k, v in used.items()
                                          if k.startswith("acceptor"))),
               "drivers_pct": share(self_cpu() - self.self0),
               "loadgen_pct": share(children_cpu() - self.children0),
               "machine_pct": None, "rest_pct": None}
        if m1 is not None and self.m0 is not None:
            out["machine_pct"] = share(m1 - self.m0)
            out["rest_pct"] = round(out["machine_pct"] - sum(
                out[k] for k in ("router_pct", "acceptors_pct", "drivers_pct", "loadgen_pct")),
                1)
        return out


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_quiet(most_pct: float, longest: float) -> float:
    """Wait (up to ``longest`` seconds) for a second in which the machine is busy less than
    ``most_pct`` % of one core: other work on a shared machine comes in bursts. Returns the
    seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < longest:
        m0 = machine_busy_seconds()
        time.sleep(1.0)  # one second of the machine, measured
        m1 = machine_busy_seconds()
        if m0 is None or m1 is None or 100 * (m1 - m0) < most_pct:
            break
    return round(time.monotonic() - began, 1)


# ---- servers -------------------------------------------------------------------------------------

@dataclass
class Server:
    proc: Proc
    port: int
    folder: str
    pids: dict[str, int]
    source: str  # source_digest() when it started

    def stop(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def serve(workers: int, template: str = "", extra: tuple[str, ...] = ()) -> Server:
    """A fresh ``pychat serve`` with a folder of its own, holding a copy of ``template``'s
    accounts file (and its WAL, if any) when one is given."""
    folder = tempfile.mkdtemp(prefix="pychat-logins-")
    if template:
        for name in os.listdir(template):
            if name.startswith("accounts.sqlite3"):
                shutil.copy(os.path.join(template, name), folder)
    digest = source_digest()
    proc, port = start_serve("--data-dir", folder, "--login-workers", str(workers), *SERVE_ARGS,
                             *extra)
    pids = {role: child_pid(proc, role) for role in ("router", "acceptor 1", "acceptor 2")}
    return Server(proc, port, folder, pids, digest)


# ---- a login driver's connection -----------------------------------------------------------------

class Client:
    """One connection: ``/cap codes end``, a room of its own, then commands one at a time, each
    read up to its ``END <word>`` line. ``command`` returns the outcome: ``ok`` (an ``OK``
    line), the error's code (``login-failed``, ``login-throttled``, ``busy``...), or ``none``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.lines: list[str] = []  # the last command's lines (END excluded)

    @classmethod
    async def open(cls, port: int, room: str, source: str = "") -> Client:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0) if source else None, limit=1 << 20)
        client = cls(reader, writer)
        writer.write(b"/cap codes end\n")
        await client.command(f"/join {room}", "join")
        return client

    async def command(self, line: str, word: str) -> str:
        self.writer.write(line.encode() + b"\n")
        end = b"END " + word.encode()
        outcome = "none"
        self.lines = []
        while True:
            raw = await self.reader.readline()
            if not raw:
                raise ConnectionError(f"the server closed the connection (after {line!r})")
            raw = raw.rstrip(b"\r\n")
            if raw == end:
                return outcome
            self.lines.append(raw.decode("utf-8", "replace"))
            if raw.startswith(b"OK "):
                outcome = "ok"
            elif raw.startswith(b"@code="):
                outcome = raw[6:raw.index(b" ")].decode()

    def close(self) -> None:
        self.writer.close()


@dataclass
class Tally:
    """Attempts by outcome and their latencies (send to END), counted while ``open``."""
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    ms: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    skipped: int = 0  # paced: due while every connection of the pool waited
    open: bool = True

    def add(self, outcome: str, seconds: float) -> None:
        if self.open:
            self.outcomes[outcome] += 1
            self.ms[outcome].append(seconds * 1000)

    def summary(self, seconds: float) -> dict:
        ok = self.ms.get("ok", [])
        failed = self.ms.get("login-failed", [])
        return {"attempts": sum(self.outcomes.values()),
                "outcomes": dict(self.outcomes),
                "ok_per_s": round(self.outcomes["ok"] / seconds, 1),
                "hashed_per_s": round((self.outcomes["ok"] + self.outcomes["login-failed"])
                                      / seconds, 1),
                "attempts_per_s": round(sum(self.outcomes.values()) / seconds, 1),
                "ok_p50_ms": _r(pct(ok, 50)), "ok_p99_ms": _r(pct(ok, 99)),
                "failed_p50_ms": _r(pct(failed, 50)), "failed_p99_ms": _r(pct(failed, 99)),
                "skipped": self.skipped}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


async def login_once(c: Client, name: str, password: str, tally: Tally) -> str:
    """One timed ``/login``; a success is undone with ``/logout`` (not timed)."""
    began = time.perf_counter()
    outcome = await c.command(f"/login {name} {password}", "login")
    tally.add(outcome, time.perf_counter() - began)
    if outcome == "ok":
        await c.command("/logout", "logout")
    return outcome


async def hammer(c: Client, name: str, password: str, tally: Tally,
                 stop: asyncio.Event) -> None:
    """Log in, log out, again, as fast as the server answers."""
    while not stop.is_set():
        await login_once(c, name, password, tally)


async def resumer(c: Client, name: str, token: str, tally: Tally, stop: asyncio.Event) -> None:
    """``/resume`` again and again on a logged-in connection (a ``/logout`` would revoke the
    token; a resume while logged in logs out and in again)."""
    while not stop.is_set():
        began = time.perf_counter()
        outcome = await c.command(f"/resume {name} {token}", "resume")
        tally.add(outcome, time.perf_counter() - began)


async def brute(c: Client, target: str, tally: Tally, stop: asyncio.Event) -> None:
    """Wrong passwords as fast as the server answers: to ``target``, or ("") to a new
    made-up name each time."""
    while not stop.is_set():
        name = target or "bf" + secrets.token_hex(6)
        began = time.perf_counter()
        outcome = await c.command(f"/login {name} {secrets.token_hex(8)}", "login")
        tally.add(outcome, time.perf_counter() - began)


async def paced(pool: list[tuple[Client, str]], rate: float, tally: Tally,
                stop: asyncio.Event) -> None:
    """``rate`` logins a second with the right password, open loop: each one due goes to an
    idle connection of the pool (its own account), or is skipped when none is idle."""
    idle = collections.deque(range(len(pool)))
    running: set[asyncio.Task] = set()

    async def one(i: int) -> None:
        client, name = pool[i]
        try:
            await login_once(client, name, PASSWORD, tally)
        finally:
            idle.append(i)

    began = time.monotonic()
    offered = 0
    while not stop.is_set():
        due = int((time.monotonic() - began) * rate) - offered
        for _ in range(max(0, due)):
            offered += 1
            if not idle:
                if tally.open:
                    tally.skipped += 1
                continue
            task = asyncio.create_task(one(idle.popleft()))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.sleep(TICK)
    if running:
        await asyncio.wait(running, timeout=10)


async def open_many(port: int, rooms: list[str], sources: list[str]) -> list[Client]:
    return list(await asyncio.gather(*(Client.open(port, room, src)
                                       for room, src in zip(rooms, sources, strict=True))))


async def finish(tasks: list[asyncio.Task], clients: list[Client]) -> None:
    """Let the attempts in flight end (they are no longer counted), then close."""
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=15)
        for t in late:
            t.cancel()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                print(f"bench.logins: a driver failed: {t.exception()!r}", file=sys.stderr)
    for c in clients:
        c.close()


# ---- setup ---------------------------------------------------------------------------------------

async def register_all(port: int, names: list[str], conns: int = 16) -> dict[str, str]:
    """Register every name (``/nick``, ``/register``) and take a token for each; name ->
    token."""
    todo = collections.deque(names)
    tokens: dict[str, str] = {}

    async def worker(i: int) -> None:
        c = await Client.open(port, f"#setup{i}", address(LEGIT, i))
        while todo:
            name = todo.popleft()
            for line, word in ((f"/nick {name}", "nick"), (f"/register {PASSWORD}", "register"),
                               ("/token", "token")):
                if await c.command(line, word) != "ok" and word != "token":
                    raise RuntimeError(f"setup: {line!r} got {c.lines}")
            token_line = next(ln for ln in c.lines if ln.startswith("TOKEN: "))
            tokens[name] = token_line.split()[2]
            c.close()  # a fresh guest for the next name (a /logout would revoke the token)
            c = await Client.open(port, f"#setup{i}", address(LEGIT, i))
        c.close()

    await asyncio.gather(*(worker(i) for i in range(conns)))
    return tokens


def setup(accounts: int) -> tuple[str, dict[str, str]]:
    """A folder holding an accounts file with ``accounts`` accounts and the victim; their
    tokens."""
    server = serve(workers=2)
    try:
        names = [ACCOUNT % i for i in range(accounts)] + [VICTIM]
        began = time.monotonic()
        tokens = asyncio.run(register_all(server.port, names))
        print(f"setup: {len(tokens)} accounts registered in {time.monotonic() - began:.1f} s",
              flush=True)
    except BaseException:
        server.stop()  # (and its folder)
        raise
    server.proc.stop()  # (SIGTERM: the accounts file is closed cleanly; the folder stays)
    return server.folder, tokens


# ---- part 1: logins per second -------------------------------------------------------------------

async def login_rate(port: int, pids: dict[str, int], mode: str, conns: int, seconds: float,
                     tokens: dict[str, str]) -> dict:
    names = [ACCOUNT % i for i in range(conns)]
    clients = await open_many(port, [f"#lg{i}" for i in range(conns)],
                              [address(LEGIT, i) for i in range(conns)])
    tally, stop = Tally(), asyncio.Event()
    if mode == "resume":  # each connection logged in once, then resumes
        for c, name in zip(clients, names, strict=True):
            await c.command(f"/login {name} {PASSWORD}", "login")
    cpu = CpuWindow(pids)
    if mode == "resume":
        tasks = [asyncio.create_task(resumer(c, n, tokens[n], tally, stop))
                 for c, n in zip(clients, names, strict=True)]
    else:
        tasks = [asyncio.create_task(hammer(c, n, PASSWORD, tally, stop))
                 for c, n in zip(clients, names, strict=True)]
    await asyncio.sleep(seconds)  # the measured window: the drivers run meanwhile
    stop.set()
    tally.open = False
    window = cpu.close()
    await finish(tasks, clients)
    return {**tally.summary(window["seconds"]), "cpu": window}


def part1(args, template: str, tokens: dict[str, str]) -> list[dict]:
    plan = [("login", 1, args.login_conns), ("login", 2, args.login_conns),
            ("resume", 1, args.resume_conns), ("login", 1, 1)]
    rows = []
    for rnd in range(args.login_rounds):
        for mode, workers, conns in plan:
            waited = wait_quiet(args.quiet_pct, args.quiet_wait)
            server = serve(workers, template, FLOOD_RAISED)
            try:
                r = asyncio.run(login_rate(server.port, server.pids, mode, conns,
                                           args.login_seconds, tokens))
            finally:
                server.stop()
            r.update(mode=mode, workers=workers, conns=conns, round=rnd + 1,
                     source=server.source, waited_s=waited)
            rows.append(r)
            print(show_rate(r), flush=True)
    return rows


def show_rate(r: dict) -> str:
    c = r["cpu"]
    return (f"{r['mode']:6} workers={r['workers']} conns={r['conns']:<3} "
            f"ok/s={r['ok_per_s']:7.1f} p50={r['ok_p50_ms']} p99={r['ok_p99_ms']} ms "
            f"outcomes={r['outcomes']} router={c['router_pct']}% "
            f"acceptors={c['acceptors_pct']}% drivers={c['drivers_pct']}% "
            f"machine={c['machine_pct']}% rest={c['rest_pct']}% waited={r['waited_s']}s")


# ---- part 2: chat under logins -------------------------------------------------------------------

async def chat_run(kind: str, args, server: Server) -> dict:
    port = server.port
    stop = asyncio.Event()
    tallies: dict[str, Tally] = {}
    tasks: list[asyncio.Task] = []
    clients: list[Client] = []
    starters: list[Callable[[], Awaitable[None]]] = []
    if kind.startswith("logins-"):  # logins-R: R logins a second
        pool = await open_many(port, [f"#lg{i}" for i in range(args.pool)],
                               [address(LEGIT, i) for i in range(args.pool)])
        clients += pool
        tallies["logins"] = Tally()
        starters.append(lambda: paced(list(zip(pool, [ACCOUNT % i for i in range(args.pool)],
                                               strict=True)),
                                      float(kind.split("-")[1]), tallies["logins"], stop))
    elif kind.startswith("brute"):
        n = args.brute_conns
        sources = ([address(BRUTE, 0)] * n if kind == "brute-1"
                   else [address(BRUTE, i) for i in range(n)])
        attackers = await open_many(port, [f"#bf{i}" for i in range(n)], sources)
        clients += attackers
        tallies["victim"], tallies["made-up"] = Tally(), Tally()
        for i, c in enumerate(attackers):
            if i % 2 == 0:
                starters.append(lambda c=c: brute(c, VICTIM, tallies["victim"], stop))
            else:
                starters.append(lambda c=c: brute(c, "", tallies["made-up"], stop))
        # the probe: a user of an ordinary account and the victim's own user, once a second
        for k, (who, name) in enumerate((("probe", ACCOUNT % (args.pool + 1)),
                                         ("probe victim", VICTIM))):
            probes = await open_many(port, [f"#pr{k}{i}" for i in range(4)],
                                     [address(PROBE, k)] * 4)
            clients += probes
            tallies[who] = Tally()
            starters.append(lambda probes=probes, name=name, who=who: paced(
                [(p, name) for p in probes], 1.0, tallies[who], stop))
    cpu = CpuWindow(server.pids)
    tasks = [asyncio.create_task(start()) for start in starters]
    argv = [sys.executable, "-m", "pychat", "loadtest", "--port", str(port),
            "--clients", str(args.clients), "--senders", str(args.senders),
            "--rate", str(args.rate), "--duration", str(args.chat_seconds),
            "--json", "--quiet"]
    for pid in server.pids.values():
        argv += ["--server-pid", str(pid)]
    proc = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    stop.set()
    for t in tallies.values():
        t.open = False
    window = cpu.close()
    await finish(tasks, clients)
    try:
        chat = json.loads(out)
    except json.JSONDecodeError:
        raise RuntimeError(f"loadtest failed ({proc.returncode}): {err.decode()[-2000:]}") \
            from None
    lat = chat["latency_ms"]
    return {"kind": kind, "chat_p50_ms": lat.get("p50"), "chat_p99_ms": lat.get("p99"),
            "chat_max_ms": lat.get("max"), "delivered": chat["delivered"],
            "lost": chat["lost"], "disconnected": chat["disconnected"],
            "loadgen_cpu_pct": round(chat["loadgen_cpu_pct"], 1),
            "server_cpu_s_per_million": chat.get("server_cpu_s_per_million"),
            "machine_cpu_s_per_million": chat.get("machine_cpu_s_per_million"),
            "cpu": window,
            "drivers": {who: t.summary(window["seconds"]) for who, t in tallies.items()}}


def part2(args) -> list[dict]:
    rows = []
    kinds = args.kinds.split(",")
    for rnd in range(args.rounds):
        order = kinds if rnd % 2 == 0 else kinds[::-1]  # interleaved, the order alternating
        for kind in order:
            waited = wait_quiet(args.quiet_pct, args.quiet_wait)
            server = serve(args.chat_workers, args.template)
            try:
                r = asyncio.run(chat_run(kind, args, server))
            finally:
                server.stop()
            r.update(round=rnd + 1, source=server.source, waited_s=waited)
            rows.append(r)
            print(show_chat(r), flush=True)
    return rows


def show_chat(r: dict) -> str:
    c = r["cpu"]
    parts = [f"{r['kind']:8} chat p50={r['chat_p50_ms']} p99={r['chat_p99_ms']} ms "
             f"lost={r['lost']} router={c['router_pct']}% acceptors={c['acceptors_pct']}% "
             f"drivers={c['drivers_pct']}% loadgen={c['loadgen_pct']}% "
             f"machine={c['machine_pct']}% rest={c['rest_pct']}% waited={r['waited_s']}s"]
    for who, d in r["drivers"].items():
        parts.append(f"    {who}: {d['attempts_per_s']}/s attempted, {d['outcomes']}, "
                     f"skipped {d['skipped']}, ok p50/p99 {d['ok_p50_ms']}/{d['ok_p99_ms']} ms")
    return "\n".join(parts)


# ---- the tables ----------------------------------------------------------------------------------

def quiet_runs(rows: list[dict], max_rest: float) -> list[dict]:
    """The runs in which others' work (the rest of the machine's CPU) stayed under
    ``max_rest`` % of a core: medians are taken over these."""
    return [r for r in rows if r["cpu"]["rest_pct"] is None or r["cpu"]["rest_pct"] <= max_rest]


def rate_table(rows: list[dict], max_rest: float) -> str:
    out = ["| run | runs | logins/s (done) | login p50 | p99 | busy/s | router CPU | "
           "acceptors CPU | drivers CPU | machine CPU | of which others |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key in dict.fromkeys((r["mode"], r["workers"], r["conns"]) for r in rows):
        every = [r for r in rows if (r["mode"], r["workers"], r["conns"]) == key]
        rs = quiet_runs(every, max_rest)
        mode, workers, conns = key
        label = (f"`/{mode}`, {conns} connection{'s' if conns > 1 else ''}, "
                 f"--login-workers {workers}")

        def m(f: Callable[[dict], float | None], rs: list[dict] = rs) -> str:
            v = med([f(r) for r in rs])
            return "–" if v is None else f"{v:,.1f}"
        out.append(f"| {label} | {len(rs)} of {len(every)} | {m(lambda r: r['ok_per_s'])} | "
                   f"{m(lambda r: r['ok_p50_ms'])} ms | {m(lambda r: r['ok_p99_ms'])} ms | "
                   f"{m(lambda r: r['outcomes'].get('busy', 0) / r['cpu']['seconds'])} | "
                   f"{m(lambda r: r['cpu']['router_pct'])}% | "
                   f"{m(lambda r: r['cpu']['acceptors_pct'])}% | "
                   f"{m(lambda r: r['cpu']['drivers_pct'])}% | "
                   f"{m(lambda r: r['cpu']['machine_pct'])}% | "
                   f"{m(lambda r: r['cpu']['rest_pct'])}% |")
    return "\n".join(out)


def chat_table(rows: list[dict], max_rest: float) -> str:
    out = ["| run | runs | others' chat p50 | p99 | logins ok/s | login p50 / p99 | wrong "
           "passwords hashed/s | throttled/s | busy/s | router CPU | acceptors CPU | machine CPU "
           "| of which others | probe: ordinary, victim (ok of tries) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        every = [r for r in rows if r["kind"] == kind]
        rs = quiet_runs(every, max_rest)

        def m(f: Callable[[dict], float | None], rs: list[dict] = rs, digits: int = 1) -> str:
            v = med([f(r) for r in rs])
            return "–" if v is None else f"{v:,.{digits}f}"

        def attackers(r: dict) -> list[dict]:
            return [d for who, d in r["drivers"].items() if not who.startswith("probe")]

        def per_s(outcome: str, r: dict) -> float:
            return sum(d["outcomes"].get(outcome, 0) for d in attackers(r)) / r["cpu"]["seconds"]

        def ok_ms(key: str, r: dict) -> float | None:
            return next((d[key] for d in attackers(r) if d[key] is not None), None)

        def probe(who: str, rs: list[dict] = rs) -> str:
            ds = [r["drivers"][who] for r in rs if who in r["drivers"]]
            return f"{sum(d['outcomes'].get('ok', 0) for d in ds)} of " \
                   f"{sum(d['attempts'] for d in ds)}"

        probes = (f"{probe('probe')}, {probe('probe victim')}"
                  if any("probe" in r["drivers"] for r in rs) else "")
        out.append(f"| {kind} | {len(rs)} of {len(every)} | {m(lambda r: r['chat_p50_ms'])} ms | "
                   f"{m(lambda r: r['chat_p99_ms'])} ms | "
                   f"{m(lambda r: per_s('ok', r))} | "
                   f"{m(lambda r: ok_ms('ok_p50_ms', r), digits=0)} / "
                   f"{m(lambda r: ok_ms('ok_p99_ms', r), digits=0)} ms | "
                   f"{m(lambda r: per_s('login-failed', r))} | "
                   f"{m(lambda r: per_s('login-throttled', r))} | "
                   f"{m(lambda r: per_s('busy', r))} | "
                   f"{m(lambda r: r['cpu']['router_pct'], digits=0)}% | "
                   f"{m(lambda r: r['cpu']['acceptors_pct'], digits=0)}% | "
                   f"{m(lambda r: r['cpu']['machine_pct'], digits=0)}% | "
                   f"{m(lambda r: r['cpu']['rest_pct'], digits=0)}% | {probes} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accounts", type=int, default=256, help="accounts registered in setup")
    ap.add_argument("--login-seconds", type=float, default=10.0)
    ap.add_argument("--login-conns", type=int, default=16)
    ap.add_argument("--login-rounds", type=int, default=2)
    ap.add_argument("--resume-conns", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the chat runs")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--senders", type=int, default=10)
    ap.add_argument("--rate", type=float, default=200.0, help="chat messages/s, all senders")
    ap.add_argument("--chat-seconds", type=float, default=8.0)
    ap.add_argument("--chat-workers", type=int, default=1, help="--login-workers of the chat runs")
    ap.add_argument("--pool", type=int, default=200, help="connections of the paced logins")
    ap.add_argument("--brute-conns", type=int, default=64)
    ap.add_argument("--quiet-pct", type=float, default=30.0,
                    help="before each run, wait until the machine is busy less than this (%% "
                         "of one core) for a second: others' work on a shared machine...")
    ap.add_argument("--quiet-wait", type=float, default=30.0, help="... for at most this long")
    ap.add_argument("--skip-rates", action="store_true", help="the chat runs only")
    ap.add_argument("--skip-chat", action="store_true", help="the logins per second only")
    ap.add_argument("--max-rest", type=float, default=15.0,
                    help="the tables' medians leave out runs in which the rest of the machine's "
                         "CPU (others' work) passed this %% of a core")
    ap.add_argument("--table", default="", help="print the tables of a saved JSON file, and exit")
    ap.add_argument("--out", default="", help="the JSON file (default "
                    "bench/results/logins-<date>.json)")
    args = ap.parse_args()
    if args.table:
        with open(args.table) as f:
            saved = json.load(f)
        for title, rows, table in (("logins per second", saved["login_rates"], rate_table),
                                   ("chat under logins", saved["chat"], chat_table)):
            if rows:
                print(f"{title}:\n{table(rows, args.max_rest)}\n")
        return 0
    if args.accounts < max(args.pool + 2, args.login_conns, args.resume_conns):
        ap.error("--accounts must be at least --pool + 2 (the probe's account), --login-conns "
                 "and --resume-conns")
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    began = time.monotonic()
    args.template, tokens = setup(args.accounts)
    try:
        rates = [] if args.skip_rates else part1(args, args.template, tokens)
        chats = [] if args.skip_chat else part2(args)
    finally:
        shutil.rmtree(args.template, ignore_errors=True)
    stamp = datetime.datetime.now(datetime.timezone.utc)
    settings = {k: v for k, v in vars(args).items() if k not in ("template", "out")}
    sources = sorted({r["source"] for r in rates + chats})
    if len(sources) > 1:
        print(f"bench.logins: the runtime code changed during the sitting ({sources}): "
              "compare runs of one source only", file=sys.stderr)
    out = {"date": stamp.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
           "git": git_state(), "sources": sources,
           "minutes": round((time.monotonic() - began) / 60, 1), "settings": settings,
           "serve_args": list(SERVE_ARGS), "login_rates": rates, "chat": chats}
    if rates:
        print("\n" + rate_table(rates, args.max_rest))
    if chats:
        print("\n" + chat_table(chats, args.max_rest))
    path = args.out or os.path.join(ROOT, "bench", "results",
                                    f"logins-{stamp.strftime('%Y-%m-%d')}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nwrote {os.path.relpath(path, ROOT)} ({out['minutes']} minutes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
