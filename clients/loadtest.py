"""``pychat loadtest``: N simulated clients, S senders at an aggregate rate, and what it measured.

Lean on purpose (on two cores the generator must not measure itself): one asyncio process
(uvloop when installed), Protocol objects, no per-line Python work on most clients. Every client
counts chat lines with ``bytes.count``; only ``--sample`` receivers parse each line for latency
(the send time rides inside the message), duplicates and per-sender order. They are spread over
the join order (``--sample-at``), and a line counts as received when the kernel queued it on
their socket (``--stamp kernel``, ``SO_TIMESTAMPNS``), not when this busy process read it.
Senders are the first S clients; a 2 ms tick sends what the aggregate rate has made due, round
robin.

It speaks PyChat (public messages echo to the sender) or IRC (``--proto irc``: NICK/USER, JOIN,
PRIVMSG; no echo), so the same figures can be taken from an IRC server. It reports its own CPU,
the whole machine's (``/proc/stat``), and says when it, not the server, was the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import struct
import sys
import time

from pychat.options import LOADTEST, add_options
from pychat.wire.framing import LineBuffer

from .loadstats import Latencies, Summary, plot, table

TICK = 0.002  # the sender tick: fine enough that arrivals are not lumped together
FLAT_OUT_IN_FLIGHT = 20  # flat out: messages per sender not yet seen by every sampled receiver
LOADGEN_BOUND_PCT = 90.0
# Linux's SO_TIMESTAMPNS (= SCM_TIMESTAMPNS; Python does not name it): the kernel stamps each
# received segment with CLOCK_REALTIME, and recvmsg hands the stamp back
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("@ll")
ANCILLARY = socket.CMSG_SPACE(TIMESPEC.size)


class KernelStamped:
    """A sampled receiver's socket, read with ``recvmsg`` for the kernel's receive time.

    Latency is the time from the send stamp in the message to the moment the line reached this
    client's socket, not to the moment this process got round to reading it: on two cores the
    load generator is busy, and its own queueing would be counted as the server's. The stamp is
    the kernel's, of the newest data a read takes in: segments that wait unread are merged in
    the receive queue and keep the newest one's time, so a line is never stamped early, and is
    stamped late only when this process was late to read and more data came meanwhile (reading
    line by line does not help: the merge has happened). How late the reads came is reported
    apart (``loadgen_delay_ms``). Writes are small (pings, handshakes, the senders' lines): sent
    at once, the rest buffered until the socket is writable."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, client: Client):
        self.loop, self.sock, self.client = loop, sock, client
        self.fd = sock.fileno()
        self.pending = b""
        self.closed = False
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data, anc, _, _ = self.sock.recvmsg(1 << 18, ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, anc = b"", []
        if not data:
            self.close()
            self.client.connection_lost(None)
            return
        stamp = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = TIMESPEC.unpack_from(payload)
                # to the monotonic clock the send stamps use, at this moment's offset
                stamp = sec * 1_000_000_000 + nsec - (time.time_ns() - time.monotonic_ns())
        self.client.rx_ns = stamp
        self.client.data_received(data)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.pending:
            self.pending += data
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            return  # reset: the read side sees it
        if n < len(data):
            self.pending = data[n:]
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        try:
            n = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = len(self.pending)
        self.pending = self.pending[n:]
        if not self.pending:
            self.loop.remove_writer(self.fd)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.sock.close()


class Client(asyncio.Protocol):
    """One simulated user. ``sampled`` clients parse every line; the others only count."""

    def __init__(self, run: Run, idx: int, sampled: bool):
        self.run = run
        self.idx = idx
        self.sampled = sampled
        self.transport: asyncio.Transport | None = None
        self.lines = LineBuffer(1 << 20)
        self.ready = asyncio.get_running_loop().create_future()
        self.settled = False  # past the arrival pushes: counting mode
        self.counting = False
        self.count = 0
        self.tail = b""
        self.last_seq: dict[int, int] = {}
        self.paused = False
        self.closed = False
        self.rx_ns: int | None = None  # the kernel's receive time of the line being read

    # ---- asyncio ---------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.run.proto == "irc":
            nick = f"lt{self.idx}"
            transport.write(f"NICK {nick}\r\nUSER {nick} 0 * :loadtest\r\n".encode())

    def data_received(self, data: bytes) -> None:
        if self.counting and not self.sampled:
            chunk = self.tail + data
            self.count += chunk.count(self.run.marker)
            self.tail = data[-(len(self.run.marker) - 1):]
            if self.run.proto == "irc" and b"PING" in data:
                self._lines(data)
            return
        self._lines(data)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"client {self.idx} closed early"))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # ---- lines -----------------------------------------------------------------------------------

    def _lines(self, data: bytes) -> None:
        for item in self.lines.feed(data):
            if isinstance(item, bytes):
                self._line(item)

    def _line(self, line: bytes) -> None:
        run = self.run
        if run.proto == "irc":
            transport = self.transport
            assert transport is not None  # lines come only once connection_made has run
            if line.startswith(b"PING"):
                transport.write(b"PONG" + line[4:] + b"\r\n")
                return
            if not self.ready.done():
                if b" 001 " in line:
                    transport.write(f"JOIN {run.room}\r\n".encode())
                elif b" 366 " in line or (b"PONG" in line and b"settle" in line):
                    self.ready.set_result(None)  # joined (end of NAMES), or settled
                return
        elif not self.ready.done():
            if line.startswith(b"USERS:") or line == b"PONG settle":
                self.ready.set_result(None)
            return
        if not self.counting:
            return
        i = line.find(run.marker)
        if i < 0:
            return
        fields = line[i + len(run.marker):].split(b" ", 3)
        sender, seq, sent_ns = int(fields[0]), int(fields[1]), int(fields[2])
        last = self.last_seq.get(sender, -1)
        if seq == last:
            run.duplicated += 1
            return
        if seq < last:  # an older message after a newer one
            run.order_violations += 1
        else:
            self.last_seq[sender] = seq
        self.count += 1
        now = time.monotonic_ns()
        if self.rx_ns is not None:  # kernel-stamped: how late this process read it, apart
            run.delays.add(0, (now - self.rx_ns) / 1e6)
            now = self.rx_ns
        run.latencies.add(int(now / 1e9 - run.t0), (now - sent_ns) / 1e6)

    def send(self, text: str) -> None:
        transport = self.transport
        assert transport is not None  # only connected clients are in Run.clients
        if self.run.proto == "irc":
            transport.write(f"PRIVMSG {self.run.room} :{text}\r\n".encode())
        else:
            transport.write(f"{text}\n".encode())


class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.proto = args.proto
        self.room = args.room
        self.marker = b":LT " if self.proto == "irc" else b": LT "
        self.clients: list[Client] = []
        self.latencies = Latencies()
        self.delays = Latencies()  # kernel receive time to this process reading the line
        self.duplicated = 0
        self.order_violations = 0
        self.sent = 0
        self.t0 = 0.0
        self.pad = "x" * max(0, args.size - 40)

    async def connect_all(self) -> float:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(self.args.connect_concurrency)
        sampled = sampled_indices(self.args.clients, self.args.sample, self.args.sample_at)
        began = time.monotonic()

        async def one(i: int) -> None:
            async with sem:
                client = Client(self, i, sampled=i in sampled)
                if client.sampled and self.args.stamp == "kernel":
                    await self.connect_stamped(client)
                else:
                    await loop.create_connection(lambda: client, self.args.host,
                                                 self.args.port)
                self.clients.append(client)
                await asyncio.wait_for(client.ready, self.args.timeout)

        results = await asyncio.gather(*(one(i) for i in range(self.args.clients)),
                                       return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            print(f"loadtest: {len(failures)} clients failed to connect: {failures[0]!r}",
                  file=sys.stderr)
        self.clients.sort(key=lambda c: c.idx)
        return time.monotonic() - began

    async def connect_stamped(self, client: Client) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:  # not Linux: no stamps come, and the latency is read time
                pass
            await loop.sock_connect(sock, (self.args.host, self.args.port))
        except BaseException:
            sock.close()
            raise
        client.connection_made(KernelStamped(loop, sock, client))

    async def settle(self) -> None:
        """Let the arrival pushes (USERS/JOIN lines) of the connect storm drain: a ping round
        trip on every client (PyChat replies keep command order), then count from zero."""
        ping = b"/ping settle\n" if self.proto == "pychat" else b"PING :settle\r\n"
        waiters = []
        for c in self.clients:
            if c.closed or c.transport is None:
                continue
            c.ready = asyncio.get_running_loop().create_future()
            c.transport.write(ping)
            waiters.append(c.ready)
        await asyncio.wait_for(asyncio.gather(*waiters), self.args.timeout)
        for c in self.clients:
            c.counting = True
            c.count = 0
            c.tail = b""

    async def send_phase(self) -> float:
        args = self.args
        senders = [c for c in self.clients[:args.senders] if not c.closed]
        if not senders:
            raise SystemExit("loadtest: no sender connected")
        count = args.count or 0
        deadline = None if count else time.monotonic() + args.duration
        self.t0 = time.monotonic()
        seqs = [0] * len(senders)
        sampled = [c for c in self.clients if c.sampled and not c.closed]
        window = FLAT_OUT_IN_FLIGHT * len(senders)
        k = 0
        next_progress = self.t0 + 1
        while True:
            now = time.monotonic()
            if (count and self.sent >= count) or (deadline and now >= deadline):
                break
            if args.rate:
                due = int((now - self.t0) * args.rate) - self.sent
            else:  # flat out: as fast as the server takes them, a bounded number in flight
                due = window - (self.sent - min((c.count for c in sampled), default=0))
            if count:
                due = min(due, count - self.sent)
            for _ in range(max(0, due)):
                s = senders[k % len(senders)]
                k += 1
                if s.closed:
                    continue
                s.send(f"LT {s.idx} {seqs[s.idx]} {time.monotonic_ns()} {self.pad}")
                seqs[s.idx] += 1
                self.sent += 1
                if count and self.sent >= count:
                    break
            if now >= next_progress:
                next_progress += 1
                self.progress(now)
            await asyncio.sleep(TICK if args.rate or due <= 0 else 0)
        return time.monotonic() - self.t0

    def delivered(self) -> int:
        return sum(c.count for c in self.clients)

    def expected(self) -> int:
        members = len(self.clients) - (1 if self.proto == "irc" else 0)
        return self.sent * members

    def progress(self, now: float) -> None:
        if self.args.quiet:
            return
        lat = self.latencies.all
        recent = sorted(lat[-2000:]) if lat else []
        p99 = recent[int(len(recent) * 0.99) - 1] if recent else float("nan")
        sys.stderr.write(f"\rt={now - self.t0:5.1f}s sent={self.sent} "
                         f"delivered={self.delivered()} p99~{p99:.1f}ms   ")
        sys.stderr.flush()

    async def drain(self) -> None:
        """Wait for the deliveries still on their way: until all arrived or 2 s without any."""
        want = self.expected()
        last, still = -1, time.monotonic()
        while time.monotonic() - still < 2.0:
            got = self.delivered()
            if got >= want:
                return
            if got != last:
                last, still = got, time.monotonic()
            await asyncio.sleep(0.05)  # polling our own counters while the deliveries arrive


def sampled_indices(clients: int, n: int, at: str) -> set[int]:
    """Which clients parse every line. A server writes a room's members in some order (PyChat
    oldest member first, ngircd newest first), so the clients written last in each round see
    the most latency: ``spread`` (the default) samples every k-th client, evenly over the join
    order, so the figure stands for the whole room on any server; ``last`` and ``first`` sample
    the clients that join last or first (``last`` was the only choice before)."""
    n = min(n, clients)
    if at == "last":
        return set(range(clients - n, clients))
    if at == "first":
        return set(range(n))
    return {(k * clients) // n + (clients // n) // 2 for k in range(n)}


def process_tree(pid: int) -> dict[int, float]:
    """A process and its descendants (Linux /proc): pid -> utime+stime in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(rest[1]), []).append(int(entry))
        times[int(entry)] = (int(rest[11]) + int(rest[12])) / tick
    tree, todo = {}, [pid]
    while todo:
        p = todo.pop()
        tree[p] = times.get(p, 0.0)
        todo.extend(children.get(p, ()))
    return tree


def cpu_seconds_of_tree(pid: int) -> float:
    """utime+stime of a process and its descendants, in seconds."""
    return sum(process_tree(pid).values())


def machine_busy_seconds() -> float | None:
    """CPU seconds every core of the machine spent not idle (``/proc/stat``), or None.

    The fair cost on loopback: the kernel sends a socket's queued data in whatever process
    handles the acknowledgement, so with Nagle's algorithm on much of a server's sending is
    counted to the load generator's reads, not to the server's pid."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


async def run_load(args: argparse.Namespace) -> Summary:
    run = Run(args)
    summary = Summary(proto=args.proto, clients=args.clients, senders=args.senders,
                      rate=args.rate)
    summary.connect_s = await run.connect_all()
    summary.connected = len([c for c in run.clients if not c.closed])
    await run.settle()
    server0 = sum(cpu_seconds_of_tree(p) for p in args.server_pid)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    machine0 = machine_busy_seconds()
    wall0 = time.monotonic()
    summary.duration_s = await run.send_phase()
    await run.drain()
    wall = time.monotonic() - wall0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    machine1 = machine_busy_seconds()
    if not args.quiet:
        sys.stderr.write("\n")
    summary.sent = run.sent
    summary.expected = run.expected()
    summary.delivered = run.delivered()
    summary.lost = max(0, summary.expected - summary.delivered)
    summary.duplicated = run.duplicated
    summary.order_violations = run.order_violations
    summary.disconnected = sum(1 for c in run.clients if c.closed)
    summary.deliveries_per_s = summary.delivered / max(summary.duration_s, 1e-9)
    summary.latency_ms = run.latencies.stats()
    if args.stamp == "kernel" and len(run.delays.all):  # (no stamps: the kernel gave none)
        summary.stamp = "kernel"
        summary.loadgen_delay_ms = run.delays.stats()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    summary.loadgen_cpu_pct = 100.0 * cpu / max(wall, 1e-9)
    if args.server_pid:
        summary.server_cpu_s = sum(cpu_seconds_of_tree(p) for p in args.server_pid) - server0
        if summary.delivered:
            summary.server_cpu_s_per_million = summary.server_cpu_s / summary.delivered * 1e6
    if machine0 is not None and machine1 is not None and summary.delivered:
        summary.machine_cpu_s = machine1 - machine0
        summary.machine_cpu_s_per_million = summary.machine_cpu_s / summary.delivered * 1e6
    if summary.loadgen_cpu_pct >= LOADGEN_BOUND_PCT:
        summary.loadgen_bound = True
        summary.notes.append("the load generator used a whole core: it, not the server, may "
                             "have been the bottleneck")
    if args.rate and summary.duration_s and run.sent < 0.95 * args.rate * summary.duration_s:
        summary.notes.append("the asked rate was not reached")
    if args.plot:
        plot(run.latencies, args.plot,
             f"{args.proto} {args.clients} clients, {args.senders} senders, "
             f"{'flat out' if not args.rate else f'{args.rate:g} msg/s'}")
    if args.linger:
        if not args.quiet:
            print(f"loadtest: {summary.connected} clients idle for {args.linger:g} s",
                  file=sys.stderr, flush=True)
        await asyncio.sleep(args.linger)  # holding the connections open, idle, on purpose
    for c in run.clients:
        if c.transport is not None:
            c.transport.close()
    return summary


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted), hard))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pychat loadtest",
                                description="Simulate many chat users and measure the server.")
    add_options(p, LOADTEST)  # pychat/options.py declares them
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.senders > args.clients:
        args.senders = args.clients
    raise_fd_limit(args.clients + 256)
    if args.loop in ("auto", "uvloop"):
        try:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            if args.loop == "uvloop":
                print("loadtest: uvloop is not installed (pip install 'pychat[speed]')",
                      file=sys.stderr)
                return 2
    summary = asyncio.run(run_load(args))
    print(summary.to_json() if args.json else table(summary))
    return 0 if summary.lost == 0 and summary.disconnected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
