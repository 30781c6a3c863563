"""Hostile clients, measured: acceptor memory with stalled clients, and latency under a flood.

Two figures, each from a fresh ``pychat serve --history memory`` on loopback:

1. **Stalled clients and memory.** One acceptor (``--acceptors 1``, so it holds every client).
   ``pychat loadtest`` runs 100 active clients (``--senders`` of them sending ``--rate`` messages/s
   of ``--size`` bytes, all in ``#lobby``) with and without 100 *stalled* clients beside them:
   sockets with a 4 KiB receive buffer that connect and never read a byte. The acceptor's RSS is
   sampled every 50 ms (``/proc/PID/status``); the figure is its peak, and what the stalled
   clients add to it. A stalled client is dropped once its send queue stays over ``--send-queue``
   (default 256 KiB) for a stall check (1 s), so what it can cost is bounded.
2. **Flood latency ratio.** The default two acceptors. ``pychat loadtest`` (100 clients) measures
   message latency alone ("quiet"), then with one more client in the same room sending lines
   flat out and reading what comes back ("flood"). The flood limit (burst 100, then 50 lines/s)
   pauses reading from the flooder, so it is slowed, and the others' latency should stay within
   2x of quiet. Quiet and flood alternate ``--rounds`` times; medians are reported.
3. **Abuse** (``--only abuse``): the same quiet rounds against rounds with three clients
   repeating ``/history 200`` in a room of 4 KB lines: the others' latency, and what each
   abuser gets through (``--server-python`` serves another installation, for a before/after).
4. **Durability** (``--only durable``): latency with and without ``--durable`` (SQLite history
   in a fresh folder each run), in pairs whose order alternates, at the load given and at a
   light one (one sender, 20 lines/s: a commit per line).
5. **Router restart** (``--only restart``): the router SIGKILLed under load; how long until it
   is bound and settled, the longest silence a client sees, and whether every line arrived once.

Run on demand, not in CI (about 2 minutes):

    python3 -m bench.faults [--rate 500] [--size 200] [--duration 15] [--rounds 3]

Only 127.0.0.1 is used. The load generator runs on the same machine as the server.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

from support.procs import ROOT, start_serve


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.05):
        super().__init__(daemon=True)
        self.pid = pid
        self.every = every
        self.peak = 0
        self.samples: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                kib = rss_kib(self.pid)
            except OSError:
                return
            self.samples.append(kib)
            self.peak = max(self.peak, kib)
            self.done.wait(self.every)


def child_pid(serve, role: str) -> int:
    for line in serve.output:  # printed before "serving on", which start_serve waited for
        if m := re.search(rf"started {role} \(pid (\d+)\)", line):
            return int(m.group(1))
    raise RuntimeError(f"no pid for {role}")


def loadtest(port: int, args, pids: list[int], extra: list[str] = ()) -> dict:
    argv = [sys.executable, "-m", "pychat", "loadtest", "--port", str(port),
            "--clients", str(args.clients), "--senders", str(args.senders),
            "--rate", str(args.rate), "--size", str(args.size),
            "--duration", str(args.duration), "--json", "--quiet", *extra]
    for pid in pids:
        argv += ["--server-pid", str(pid)]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ), timeout=args.duration + 120)
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"loadtest failed ({r.returncode}): {r.stderr[-2000:]}") from None


# ---- 1. stalled clients --------------------------------------------------------------------------

def stalled_run(args, stalled: int) -> dict:
    serve, port = start_serve("--history", "memory", *args.serve_arg, acceptors=1)
    try:
        acc = child_pid(serve, "acceptor 1")
        base = rss_kib(acc)
        socks = []
        for _ in range(stalled):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))  # and never read
            socks.append(s)
        sampler = RssSampler(acc)
        sampler.start()
        summary = loadtest(port, args, [acc])
        sampler.done.set()
        sampler.join()
        reasons = [re.sub(r".*disconnected: ", "", line) for line in serve.output
                   if "disconnected: send queue over" in line]
        dropped = len(reasons)
        for s in socks:
            s.close()
        return {"stalled": stalled, "active": args.clients, "rss_start_mib": base / 1024,
                "rss_peak_mib": sampler.peak / 1024,
                "rss_end_mib": (sampler.samples[-1] if sampler.samples else 0) / 1024,
                "stalled_dropped": dropped, "lost": summary["lost"],
                "drop_reasons": {r: reasons.count(r) for r in set(reasons)},
                "delivered": summary["delivered"],
                "p50_ms": summary["latency_ms"].get("p50"),
                "p99_ms": summary["latency_ms"].get("p99")}
    finally:
        serve.stop()


# ---- 2. flood ------------------------------------------------------------------------------------

class Flooder:
    """One client sending lines flat out, reading (and counting) its own echoes."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.stop = threading.Event()
        self.sent = 0
        self.echoed = 0
        self.uid = b""
        self.began = 0.0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.writer = threading.Thread(target=self._write, daemon=True)

    def start(self) -> None:
        self.began = time.monotonic()
        self.reader.start()
        self.writer.start()

    def _read(self) -> None:
        buf = b""
        try:
            while chunk := self.sock.recv(1 << 16):
                buf += chunk
                if not self.uid and (m := re.search(rb"ID:(\d{6})\n", buf)):
                    self.uid = m.group(1)
                if self.uid:
                    self.echoed += buf.count(self.uid + b": flood ")
                buf = buf[buf.rfind(b"\n") + 1:]
        except OSError:
            pass

    def _write(self) -> None:
        batch = b"".join(b"flood %06d %s\n" % (i, b"f" * 100) for i in range(1000))
        try:
            while not self.stop.is_set():
                self.sock.sendall(batch)  # blocks while the server is not reading from us
                self.sent += 1000
        except OSError:
            pass

    def finish(self) -> dict:
        took = time.monotonic() - self.began
        self.stop.set()
        self.sock.close()
        return {"echoed": self.echoed, "echo_rate_per_s": self.echoed / took}


class HistoryAbuser:
    """One client in a room of long lines asking ``/history 200`` again and again, as fast as
    the server lets it (the next as soon as the last reply is in), counting what it receives."""

    def __init__(self, port: int, room: str):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(f"/join {room}\n/history 200\n".encode())
        self.stop = threading.Event()
        self.received = 0
        self.replies = 0
        self.began = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.began = time.monotonic()
        self.thread.start()

    def _run(self) -> None:
        tail = b""
        try:
            while not self.stop.is_set():
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return
                self.received += len(chunk)
                replies = (tail + chunk).count(b"\nHISTORY:")
                tail = chunk[-16:]
                for _ in range(replies):  # one more the moment one arrives: a pipeline of 1
                    self.sock.sendall(b"/history 200\n")
                self.replies += replies
        except OSError:
            pass

    def finish(self) -> dict:
        took = time.monotonic() - self.began
        self.stop.set()
        self.sock.close()
        return {"mb_per_s": self.received / took / 1e6, "replies_per_s": self.replies / took}


def abuse_rounds(args) -> dict:
    """Others' latency while three clients repeat the heaviest command (``/history 200`` in a
    room of 200 lines of 4 KB), against quiet rounds in between, on the same server."""
    serve, port = start_serve("--history", "memory", *args.serve_arg, python=args.server_python)
    try:
        pids = [child_pid(serve, r) for r in ("router", "acceptor 1", "acceptor 2")]
        writer = socket.create_connection(("127.0.0.1", port))
        writer.sendall(b"/join #heavy\n" + b"".join(b"%03d %s\n" % (i, b"z" * 4000)
                                                     for i in range(200)) + b"/ping filled\n")
        buf = b""
        while b"PONG filled" not in buf:  # the writer itself is paced: wait for its last line
            buf = buf[-64:] + writer.recv(1 << 20)
        quiet, abused, abusers = [], [], []
        for _ in range(args.rounds):
            quiet.append(loadtest(port, args, pids))
            three = [HistoryAbuser(port, "#heavy") for _ in range(3)]
            for a in three:
                a.start()
            abused.append(loadtest(port, args, pids))
            abusers += [a.finish() for a in three]
        writer.close()
        med = statistics.median
        q50 = med(r["latency_ms"]["p50"] for r in quiet)
        q99 = med(r["latency_ms"]["p99"] for r in quiet)
        a50 = med(r["latency_ms"]["p50"] for r in abused)
        a99 = med(r["latency_ms"]["p99"] for r in abused)
        return {"server": args.server_python or "this checkout",
                "quiet_p50_ms": q50, "quiet_p99_ms": q99, "abused_p50_ms": a50,
                "abused_p99_ms": a99, "ratio_p50": a50 / q50, "ratio_p99": a99 / q99,
                "abuser_mb_per_s": med(a["mb_per_s"] for a in abusers),
                "abuser_replies_per_s": med(a["replies_per_s"] for a in abusers),
                "lost": sum(r["lost"] for r in quiet + abused),
                "rounds": [{"quiet": (q["latency_ms"]["p50"], q["latency_ms"]["p99"]),
                            "abused": (f["latency_ms"]["p50"], f["latency_ms"]["p99"])}
                           for q, f in zip(quiet, abused, strict=True)]}
    finally:
        serve.stop()


def flood_rounds(args) -> dict:
    serve, port = start_serve("--history", "memory", *args.serve_arg)
    try:
        pids = [child_pid(serve, r) for r in ("router", "acceptor 1", "acceptor 2")]
        quiet, flood, flooders = [], [], []
        for _ in range(args.rounds):
            quiet.append(loadtest(port, args, pids))
            f = Flooder(port)
            f.start()
            flood.append(loadtest(port, args, pids))
            flooders.append(f.finish())
        med = statistics.median
        q50 = med(r["latency_ms"]["p50"] for r in quiet)
        q99 = med(r["latency_ms"]["p99"] for r in quiet)
        f50 = med(r["latency_ms"]["p50"] for r in flood)
        f99 = med(r["latency_ms"]["p99"] for r in flood)
        return {"quiet_p50_ms": q50, "quiet_p99_ms": q99, "flood_p50_ms": f50,
                "flood_p99_ms": f99, "ratio_p50": f50 / q50, "ratio_p99": f99 / q99,
                "flooder_echo_rate_per_s": med(f["echo_rate_per_s"] for f in flooders),
                "lost": sum(r["lost"] for r in quiet + flood),
                "rounds": [{"quiet": (q["latency_ms"]["p50"], q["latency_ms"]["p99"]),
                            "flood": (f["latency_ms"]["p50"], f["latency_ms"]["p99"])}
                           for q, f in zip(quiet, flood, strict=True)]}
    finally:
        serve.stop()


def durable_rounds(args) -> dict:
    """Latency with and without --durable, in interleaved pairs (the order alternating), each
    run on a fresh serve with an SQLite history in a new folder: at the load given, and with a
    light load (one sender, 20 lines/s), where each line is a commit of its own."""
    import tempfile
    med = statistics.median
    light = argparse.Namespace(**{**vars(args), "senders": 1, "rate": 20.0})
    runs: dict[str, list[dict]] = {f"{mode}-{load}": [] for mode in ("default", "durable")
                                   for load in ("load", "light")}
    for i in range(args.rounds):
        for mode in (("default", "durable") if i % 2 == 0 else ("durable", "default")):
            with tempfile.TemporaryDirectory(prefix="pychat-durable-") as data:
                extra = ["--durable"] if mode == "durable" else []
                serve, port = start_serve("--history", "sqlite", "--data-dir", data, *extra,
                                          *args.serve_arg)
                try:
                    pids = [child_pid(serve, r) for r in ("router", "acceptor 1", "acceptor 2")]
                    runs[f"{mode}-load"].append(loadtest(port, args, pids))
                    runs[f"{mode}-light"].append(loadtest(port, light, pids))
                finally:
                    serve.stop()
    out: dict = {"lost": sum(r["lost"] for rs in runs.values() for r in rs)}
    for key, rs in runs.items():
        out[key] = {"p50_ms": med(r["latency_ms"]["p50"] for r in rs),
                    "p99_ms": med(r["latency_ms"]["p99"] for r in rs),
                    "rounds": [(r["latency_ms"]["p50"], r["latency_ms"]["p99"]) for r in rs]}
    return out


def restart_rounds(args) -> dict:
    """The router SIGKILLed while a crowd chats (the same as tests/test_restart_e2e.py, bigger):
    each round a fresh `pychat serve` (2 acceptors, heartbeat 1 s), ``--restart-clients`` plain
    clients in #lobby, 5 senders at ``--restart-rate`` lines/s in all; the router is killed a
    third of the way through. Counts what every client got, and times the pause."""
    from support.crowd import Crowd
    rounds = []
    senders, count = 5, int(args.restart_seconds * args.restart_rate / 5)
    for _ in range(args.restart_rounds):
        serve, port = start_serve("--history", "memory", *args.serve_arg)
        crowd = None
        try:
            crowd = Crowd(port, args.restart_clients)
            crowd.wait_registered()
            victim = child_pid(serve, "router")
            killed_at: list[float] = []

            def kill(k: int, victim: int = victim, killed_at: list[float] = killed_at) -> None:
                if k == count // 3 and not killed_at:
                    os.kill(victim, 9)
                    killed_at.append(time.monotonic())

            th = crowd.run_senders(senders, count, args.restart_rate, on_line=kill)
            serve.wait_for(rf"router \(pid {victim}\) died", timeout=30)
            serve.wait_for(r"pychat\.router\[\d+\] INFO router bound", timeout=30)
            bound_at = time.monotonic()
            settled = serve.wait_for(r"INFO settled (\d+) ms after start: (.*); handling (\d+)",
                                     timeout=30)
            settled_at = time.monotonic()
            th.join(120)
            crowd.wait(lambda crowd=crowd: crowd.all_ended(senders), 120, "every end")
            result = crowd.check(senders, count)
            rounds.append({
                "lost_or_duplicated": len(result["problems"]), "refused": result["refused"],
                "delivered": result["delivered"],
                "expected": args.restart_clients * senders * count,
                "bound_after_kill_ms": round((bound_at - killed_at[0]) * 1000),
                "settled_after_kill_ms": round((settled_at - killed_at[0]) * 1000),
                "settled_how": settled.group(2), "waiting_batches": int(settled.group(3)),
                "longest_silence_ms": round(crowd.max_gap(killed_at[0] - 1.0) * 1000),
                "problems": result["problems"][:5]})
        finally:
            if crowd is not None:
                crowd.close()
            serve.stop()
    return {"clients": args.restart_clients, "rate": args.restart_rate, "rounds": rounds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=100, help="active loadtest clients")
    p.add_argument("--senders", type=int, default=10)
    p.add_argument("--rate", type=float, default=500.0, help="messages/s, all senders together")
    p.add_argument("--size", type=int, default=200, help="bytes per message")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per loadtest run")
    p.add_argument("--stalled", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="quiet/flood pairs")
    p.add_argument("--only", choices=["stalled", "flood", "restart", "abuse", "durable"],
                   default=None)
    p.add_argument("--server-python", default="",
                   help="abuse only: the interpreter of another installation to serve (before)")
    p.add_argument("--restart-clients", type=int, default=200)
    p.add_argument("--restart-rate", type=float, default=100.0, help="lines/s, 5 senders")
    p.add_argument("--restart-seconds", type=float, default=6.0)
    p.add_argument("--restart-rounds", type=int, default=5)
    p.add_argument("--serve-arg", action="append", default=[],
                   help="an extra argument for pychat serve (repeat: --serve-arg=--send-queue "
                        "--serve-arg=65536)")
    p.add_argument("--json-out", default="", help="also write the results to this file")
    args = p.parse_args()
    out: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                            f"Python {platform.python_version()}",
                 "load": f"{args.clients} clients, {args.senders} senders, {args.rate:g} msg/s "
                         f"of {args.size} B, {args.duration:g} s",
                 "serve_args": args.serve_arg}
    if args.only in (None, "stalled"):
        out["active_only"] = stalled_run(args, 0)
        out["with_stalled"] = stalled_run(args, args.stalled)
        a, s = out["active_only"], out["with_stalled"]
        print(f"acceptor RSS peak: {a['rss_peak_mib']:.1f} MiB with {args.clients} active; "
              f"{s['rss_peak_mib']:.1f} MiB with {args.stalled} stalled as well "
              f"({s['stalled_dropped']} of them dropped for their send queue); "
              f"p99 {a['p99_ms']:.1f} vs {s['p99_ms']:.1f} ms; lost {a['lost']}+{s['lost']}",
              flush=True)
    if args.only in (None, "flood"):
        f = out["flood"] = flood_rounds(args)
        print(f"latency p50 {f['quiet_p50_ms']:.1f} -> {f['flood_p50_ms']:.1f} ms "
              f"(x{f['ratio_p50']:.2f}), p99 {f['quiet_p99_ms']:.1f} -> {f['flood_p99_ms']:.1f} ms "
              f"(x{f['ratio_p99']:.2f}); the flooder got {f['flooder_echo_rate_per_s']:.1f} "
              f"lines/s through; lost {f['lost']}", flush=True)
    if args.only in (None, "abuse"):
        a = out["abuse"] = abuse_rounds(args)
        print(f"three /history abusers: others' p50 {a['quiet_p50_ms']:.1f} -> "
              f"{a['abused_p50_ms']:.1f} ms (x{a['ratio_p50']:.2f}), p99 {a['quiet_p99_ms']:.1f} "
              f"-> {a['abused_p99_ms']:.1f} ms (x{a['ratio_p99']:.2f}); each abuser got "
              f"{a['abuser_mb_per_s']:.2f} MB/s ({a['abuser_replies_per_s']:.1f} replies/s); "
              f"lost {a['lost']}", flush=True)
    if args.only in (None, "durable"):
        d = out["durable"] = durable_rounds(args)
        for load in ("load", "light"):
            a, b = d[f"default-{load}"], d[f"durable-{load}"]
            print(f"durable ({load}): p50 {a['p50_ms']:.1f} -> {b['p50_ms']:.1f} ms, p99 "
                  f"{a['p99_ms']:.1f} -> {b['p99_ms']:.1f} ms", flush=True)
        print(f"lost {d['lost']}", flush=True)
    if args.only in (None, "restart"):
        r = out["restart"] = restart_rounds(args)
        for x in r["rounds"]:
            print(f"router restart: bound {x['bound_after_kill_ms']} ms, settled "
                  f"{x['settled_after_kill_ms']} ms after the kill ({x['settled_how']}); longest "
                  f"silence at a client {x['longest_silence_ms']} ms; delivered "
                  f"{x['delivered']} of {x['expected']}, refused {x['refused']}, lost or "
                  f"duplicated at {x['lost_or_duplicated']} client/sender pairs", flush=True)
    print(json.dumps(out, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
