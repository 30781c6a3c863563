"""The benchmark sitting: PyChat (1 and 2 acceptors), ngircd and a one-process baseline.

Run on demand, never in CI:  python3 -m bench.run [--quick] [--write]

For each server configuration and each scenario it starts the server, runs `pychat loadtest`
against it (which measures latency, deliveries and the server's CPU by pid tree), samples the
server's memory, and stops the server by its pid. ngircd comes from Debian's package
(`apt-get install ngircd`), configured for the load: no per-IP or join limits, flood penalties
off (MaxPenaltyTime = 0), long ping timeouts. `oneproc` is bench/oneproc.py, the plain
one-process asyncio server the issue measured PyChat against; `oneproc-direct` is the same with
`--direct` (os.write per delivery, no bus: a floor). Everything listens on 127.0.0.1.

--write puts the table and a plot (server CPU per million deliveries against N) into
docs/BENCHMARKS.md and docs/img/, between markers, with the date, the machine and the commands.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from pychat.clients.loadtest import process_tree  # the same /proc walk
from support.procs import ROOT

PY = sys.executable
# configured for the load, like ngircd below: every load client comes from 127.0.0.1 (no
# per-address cap) and senders may exceed the default flood limit (burst 100, then 50/s)
ENV = dict(os.environ, PYCHAT_MAX_PER_ADDRESS="1000000",
           PYCHAT_FLOOD_BURST="100000", PYCHAT_FLOOD_RATE="100000")
BEGIN, END = "<!-- bench/run.py begin -->", "<!-- bench/run.py end -->"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Server:
    def __init__(self, kind: str, python: str = PY):
        self.kind = kind
        self.python = python  # the interpreter whose installed pychat serves (pychat-N only)
        self.tmp = tempfile.mkdtemp(prefix="pychat-bench-")
        self.proc: subprocess.Popen | None = None
        self.port = 0
        # pychat[-N]-irc: pychat serve (with N acceptors), the load through its IRC door;
        # pychat[-N]-ws: through its web door's WebSocket
        self.proto = ("irc" if kind == "ngircd" or kind.endswith("-irc")
                      else "ws" if kind.endswith("-ws") else "pychat")

    def start(self) -> None:
        if self.kind == "ngircd":
            self.port = free_port()
            conf = os.path.join(self.tmp, "ngircd.conf")
            with open(conf, "w") as f:
                f.write(NGIRCD_CONF.format(port=self.port, tmp=self.tmp))
            self.proc = subprocess.Popen(["ngircd", "-n", "-f", conf], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.05)  # waiting for ngircd to listen
            raise RuntimeError("ngircd did not start")
        if self.kind.startswith("oneproc"):  # the one-process baseline (bench/oneproc.py)
            direct = ["--direct"] if self.kind == "oneproc-direct" else []
            self.proc = subprocess.Popen([PY, os.path.join(ROOT, "bench", "oneproc.py"), *direct],
                                         stdout=subprocess.PIPE, env=ENV, text=True)
            line = self.proc.stdout.readline()
            if "serving on" not in line:
                raise RuntimeError(f"bench/oneproc.py did not start: {line!r}")
            self.port = int(line.rsplit(":", 1)[1])
            return
        # pychat: serve's defaults (--acceptors auto); pychat-N: N acceptors
        parts = self.kind.split("-")
        acceptors = ["--acceptors", parts[1]] if len(parts) > 1 and parts[1].isdigit() else []
        irc = ["--irc-port", str(free_port())] if self.kind.endswith("-irc") else []
        # the web door (on by default since it exists) on a free port, never a fixed one: said
        # in the environment, which another commit's pychat from before the web door ignores
        self.log = open(os.path.join(self.tmp, "serve.log"), "w+")  # noqa: SIM115 (kept open for the server's life)
        self.proc = subprocess.Popen(
            [self.python, "-m", "pychat", "serve", "--port", "0", *acceptors,
             "--data-dir", self.tmp, "--log-level", "warning", *irc],
            stdout=subprocess.PIPE, stderr=self.log, env=dict(ENV, PYCHAT_WEB_PORT="0"),
            text=True, cwd=self.tmp)
        line = self.proc.stdout.readline()
        if "serving on" not in line:
            self.log.seek(0)
            raise RuntimeError(f"pychat serve did not start: {line!r}\n{self.log.read()[-2000:]}")
        self.port = int(irc[1]) if irc else int(line.split("127.0.0.1:")[1].split()[0])
        if self.proto == "ws":
            self.port = int(line.split("web http://127.0.0.1:")[1].split("/")[0])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ngircd's listen backlog is short, so the load generator connects 8 clients at a time, and
# every JOIN is announced to the whole channel: 5,000 clients took 215 s to register here, and
# 10,000 did not finish within the 900 s a run may take. It is measured up to this many.
NGIRCD_MAX_CLIENTS = 5000
# The one-process baseline is saturated at 1,000 clients and 200 msg/s already; at 5,000 a run
# would be minutes of backlog, not a measurement.
MAX_CLIENTS = {"ngircd": NGIRCD_MAX_CLIENTS, "oneproc": 1000}
RATES = (400, 800, 1600, 2400, 3200, 4800, 6400, 8000, 9600, 12800)
LOW_RATES = {"oneproc": (50, 100, 150, 200, 300)}  # where its search must begin

NGIRCD_CONF = """[Global]
Name = bench.pychat.test
Info = PyChat benchmark peer
Listen = 127.0.0.1
Ports = {port}
MotdPhrase = bench
PidFile = {tmp}/ngircd.pid
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 30
MaxPenaltyTime = 0
PingTimeout = 600
PongTimeout = 600
[Options]
DNS = no
Ident = no
PAM = no
[Channel]
Name = #load
Modes = +P
"""


def measure(kind: str, clients: int, senders: int, rate: float, duration: float,
            linger: float = 0.0, python: str = PY) -> dict:
    server = Server(kind, python)
    server.start()
    peak = [0]
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            kb = rss_kb(server.proc.pid)
            peak[0] = max(peak[0], kb)
            samples.append(kb)

    sampler = threading.Thread(target=sample, daemon=True)
    base_kb = rss_kb(server.proc.pid)
    sampler.start()
    try:
        argv = [PY, "-m", "pychat", "loadtest", "--port", str(server.port), "--proto",
                server.proto, "--clients", str(clients), "--senders", str(senders),
                "--rate", str(rate), "--duration", str(duration), "--json", "--quiet",
                "--server-pid", str(server.proc.pid), "--timeout", "120"]
        if linger:
            argv += ["--linger", str(linger)]
        if kind == "ngircd":  # its listen backlog is short: 256 connects at once overflow it
            argv += ["--connect-concurrency", "8"]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=900)
            result = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {
                "error": r.stderr[-500:]}
        except subprocess.TimeoutExpired:
            result = {"error": "the run did not finish in 900 s"}
    finally:
        stop.set()
        sampler.join()
        server.stop()
    result.update(server=kind, base_rss_kb=base_kb, peak_rss_kb=peak[0], clients=clients,
                  rate=rate)
    if linger and samples:
        idle = sorted(samples[-max(1, int(linger / 0.2) - 2):])
        result["idle_rss_kb"] = idle[len(idle) // 2]
        result["idle_kb_per_client"] = round((result["idle_rss_kb"] - base_kb) / clients, 2)
    return result


def show(r: dict) -> str:
    if "error" in r:
        return f"{r['server']} N={r.get('clients')}: ERROR {r['error']}"
    lat = r.get("latency_ms", {})
    cost = r.get("server_cpu_s_per_million")
    return (f"{r['server']:9} N={r['clients']:<6} rate={r['rate'] or 'flat':<6} "
            f"p50={lat.get('p50', float('nan')):7.2f} p99={lat.get('p99', float('nan')):7.2f} "
            f"deliv/s={r['deliveries_per_s']:>9,.0f} lost={r['lost']} "
            f"cpu/M={cost if cost is None else round(cost, 2)} "
            f"machine/M={r.get('machine_cpu_s_per_million') or float('nan'):.2f} "
            f"loadgen={r['loadgen_cpu_pct']:.0f}% peakRSS={r['peak_rss_kb'] / 1024:.0f}MB"
            + (f" idle={r['idle_kb_per_client']}KB/client" if "idle_kb_per_client" in r else "")
            + f" connect={r['connect_s']:.2f}s")


def scenario_args(ap: argparse.ArgumentParser) -> None:
    """The one scenario that bench/pairs.py, bench/interleave.py and bench/doors.py run each
    server through (1,000 clients x 200 msg/s, 10 senders, 8 s by default), and --json-out."""
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--senders", type=int, default=10)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--json-out", default="")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short sitting (fewer scenarios)")
    ap.add_argument("--write", action="store_true", help="write docs/BENCHMARKS.md and the plot")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--servers", default="pychat-1,pychat-2,ngircd,oneproc",
                    help="pychat-N (N acceptors), ngircd, oneproc (bench/oneproc.py)")
    args = ap.parse_args()
    servers = args.servers.split(",")
    if "ngircd" in servers and not shutil.which("ngircd"):
        print("ngircd is not installed (apt-get install ngircd); leaving it out", file=sys.stderr)
        servers.remove("ngircd")
    scenarios = [(50, 5, 50.0), (1000, 10, 200.0), (1000, 10, 0.0), (5000, 10, 200.0)]
    if not args.quick:
        scenarios.append((10000, 10, 100.0))
    results = []
    for clients, senders, rate in scenarios:
        for kind in servers:
            if clients > MAX_CLIENTS.get(kind, clients):
                print(f"{kind} N={clients}: left out (see MAX_CLIENTS)", flush=True)
                continue
            linger = 3.0 if clients >= 5000 else 0.0
            r = measure(kind, clients, senders, rate, args.duration, linger)
            results.append(r)
            print(show(r), flush=True)
    # the highest rate with p99 under 100 ms at 1,000 clients
    max_rates, stopped_by = {}, {}
    for kind in servers:
        best, why = 0.0, "the search's ceiling"
        for rate in LOW_RATES.get(kind, ()) + RATES:
            r = measure(kind, 1000, 20, float(rate), min(args.duration, 6.0))
            results.append(r)
            print(show(r), flush=True)
            if "error" in r:
                why = f"an error at {rate}"
            elif r["lost"]:
                why = f"{r['lost']} lost at {rate}"
            elif r["latency_ms"].get("p99", 1e9) > 100:
                why = f"p99 {r['latency_ms']['p99']:.0f} ms at {rate}"
            elif r["deliveries_per_s"] < 0.95 * rate * 1000:  # could not even be offered
                why = (f"only {r['deliveries_per_s'] / 1000:,.0f} msg/s delivered at {rate}"
                       + (" (the load generator was the bottleneck)"
                          if r.get("loadgen_bound") else ""))
            else:
                best = rate
                continue
            break
        max_rates[kind], stopped_by[kind] = best, why
        print(f"{kind}: highest rate with p99 < 100 ms at 1,000 clients: {best} msg/s "
              f"(stopped by {why})", flush=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = {"date": stamp, "machine": machine(), "results": results, "max_rates": max_rates,
           "stopped_by": stopped_by}
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    path = os.path.join(ROOT, "bench", "results", stamp[:10] + ".json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}")
    if args.write:
        write_docs(out)
    return 0


class LoggedServe:
    """``pychat serve`` with ``args`` (free ports: pass ``--port 0 --web-port 0``) at info
    level, its output read until its ready line (``lines``, ``ready``) and drained after;
    ``children``: role ("router", "acceptor 1"...) -> pid, from its log. Stopped by its own pid
    (bench/files.py, bench/footprint.py)."""

    def __init__(self, args: list[str], tmp: str, env: dict | None = None):
        self.proc = subprocess.Popen([PY, "-m", "pychat", "serve", "--log-level", "info", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, cwd=tmp)
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("pychat serve did not start:\n" + "".join(self.lines[-20:]))
            self.lines.append(line)
            if "serving on" in line:
                break
        self.ready = line
        self.children = {role: int(pid) for role, pid in re.findall(
            r"started (router|acceptor \d+) \(pid (\d+)\)", "".join(self.lines))}
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    return (f"{os.cpu_count()} cores ({cpu}), {gib} GiB, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def write_docs(out: dict) -> None:
    rows = ["| server | clients | rate (msg/s) | p50 ms | p99 ms | deliveries/s | lost | "
            "server CPU s per million deliveries | machine CPU s per million | load generator "
            "CPU | peak RSS MB | idle KB/client | connect s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in out["results"]:
        if "error" in r:
            rows.append(f"| {r['server']} | {r['clients']} | {r['rate'] or 'flat out'} | "
                        f"error: {r['error'][:60]} | | | | | | | | | |")
            continue
        lat = r["latency_ms"]
        cost = r.get("server_cpu_s_per_million")
        rows.append(f"| {r['server']} | {r['clients']} | {r['rate'] or 'flat out'} | "
                    f"{lat.get('p50', '')} | {lat.get('p99', '')} | "
                    f"{r['deliveries_per_s']:,.0f} | {r['lost']} | "
                    f"{'' if cost is None else round(cost, 2)} | "
                    f"{round(r.get('machine_cpu_s_per_million') or 0, 2) or ''} | "
                    f"{r['loadgen_cpu_pct']:.0f}% | {r['peak_rss_kb'] / 1024:.0f} | "
                    f"{r.get('idle_kb_per_client', '')} | {r['connect_s']:.2f} |")
    rates = ", ".join(f"{k}: {v} msg/s (then {out.get('stopped_by', {}).get(k, '?')})"
                      for k, v in out["max_rates"].items())
    best = out["max_rates"]
    ratios = [f"{k} / oneproc = {best[k] / best['oneproc']:.0f}x" for k in best
              if k.startswith("pychat") and best.get("oneproc")]
    if ratios:
        rates += ". Against the one-process baseline: " + ", ".join(ratios)
    plot_path = plot_cost(out)
    text = "\n".join([
        BEGIN, f"### Sitting of {out['date']}", "", f"Machine: {out['machine']}.", "",
        "Command: `python3 -m bench.run --write` (ngircd from Debian's package, configured in "
        "bench/run.py; oneproc is bench/oneproc.py). Each row is one run of `pychat loadtest` "
        "against a fresh server; the load generator runs on the same two cores. Latency ends at "
        "the kernel's receive stamp on 20 receivers spread over the room. Server CPU is the "
        "server's processes; machine CPU is every core's busy time during the run (the server, "
        "the load generator and the kernel's work for both).", "", *rows, "",
        f"Highest rate with p99 under 100 ms at 1,000 clients (20 senders): {rates}.", "",
        f"![server and machine CPU per million deliveries against N]({plot_path})", "", END])
    doc = os.path.join(ROOT, "docs", "BENCHMARKS.md")
    current = "# Benchmarks\n"
    if os.path.exists(doc):
        with open(doc) as f:
            current = f.read()
    if BEGIN in current:
        current = current.split(BEGIN)[0] + text + current.split(END, 1)[1]
    else:
        current = (current.rstrip() + "\n\n## Chat core against ngircd (bench/run.py)\n\n"
                   + text + "\n")
    with open(doc, "w") as f:
        f.write(current)
    print(f"wrote {doc}")


def plot_cost(out: dict) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    # the fixed-rate scenarios only (the rate search uses 20 senders), N >= 1,000: at 50
    # clients a run is a few thousand deliveries and the machine's background dominates
    runs = [r for r in out["results"] if "error" not in r and r.get("senders") != 20
            and r.get("rate") in (100.0, 200.0) and r["clients"] >= 1000]
    for i, kind in enumerate(sorted({r["server"] for r in runs})):
        mine = sorted((r["clients"], r.get("server_cpu_s_per_million"),
                       r.get("machine_cpu_s_per_million")) for r in runs if r["server"] == kind)
        colour = f"C{i}"
        ax.plot([p[0] for p in mine if p[1]], [p[1] for p in mine if p[1]], marker="o",
                color=colour, label=f"{kind}: server")
        ax.plot([p[0] for p in mine if p[2]], [p[2] for p in mine if p[2]], marker="x",
                color=colour, linestyle="--", label=f"{kind}: machine")
    ax.set_xscale("log")
    ax.set_xlabel("clients in one room")
    ax.set_ylabel("CPU s per million deliveries")
    ax.set_title("Cost of fan-out against N (200 msg/s; 100 at 10,000)")
    ax.legend()
    fig.tight_layout()
    rel = "img/bench-cost.png"
    os.makedirs(os.path.join(ROOT, "docs", "img"), exist_ok=True)
    fig.savefig(os.path.join(ROOT, "docs", rel), dpi=90)
    plt.close(fig)
    return rel


if __name__ == "__main__":
    sys.exit(main())
