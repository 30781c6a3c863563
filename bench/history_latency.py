"""Does persistent history slow the chat down? Public-message round trip, history on vs off.

Runs ``pychat serve`` once per mode, on loopback, with a fresh data folder:

- ``memory``: history in memory only (no file: "history off" as far as the disk goes)
- ``sqlite``: the default, the SQLite file written by the router's writer thread
- ``sqlite-slow``: the same, with the writer sleeping ``--slow-delay`` seconds per batch (the test
  hook ``PYCHAT_TEST_HISTORY_WRITE_DELAY``): a disk far slower than any real one. The router's
  loop never waits for the writer, so the latency must not move.

In each run ``--clients`` clients join one room; each sends its share of ``--messages`` public
messages one at a time and times the round trip to its own echo (which comes after the router
has stored the message in history and fanned it out). Run on demand, not in CI:

    python3 -m bench.history_latency [--messages 2000] [--clients 4]

Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sqlite3
import statistics
import sys
import tempfile
import threading
import time

from support.client import Connection
from support.procs import start_serve

MODES = ("memory", "sqlite", "sqlite-slow")


def count_rows(data: str) -> int | None:
    path = os.path.join(data, "history.sqlite3")
    if not os.path.exists(path):
        return None
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]


def run(mode: str, messages: int, clients: int, slow_delay: float) -> dict:
    data = tempfile.mkdtemp(prefix="pychat-bench-")
    env = {}
    history = "memory" if mode == "memory" else "sqlite"
    if mode == "sqlite-slow":
        env["PYCHAT_TEST_HISTORY_WRITE_DELAY"] = str(slow_delay)
    p, port = start_serve("--history", history, "--data-dir", data, "--flood-burst", "1000000",
                          "--flood-rate", "1000000", "--log-level", "warning", env=env)
    try:
        conns = []
        for _ in range(clients):
            c = Connection("127.0.0.1", port, timeout=30)
            c.handshake()
            c.send("/join #bench")
            c.expect("ROOM:#bench")
            conns.append(c)
        for c in conns:  # everyone is in: no more USERS pushes during the measurement
            c.send("/ping ready")
            c.expect("PONG ready")
        per = messages // clients
        latencies: list[list[float]] = [[] for _ in conns]
        start = threading.Barrier(len(conns))

        def client(i: int, c: Connection) -> None:
            start.wait()
            mine = f"{c.uid}: "
            for j in range(per):
                text = f"bench {i} {j} " + "x" * 60
                t = time.perf_counter()
                c.send(text)
                c.expect(lambda ln, text=text: ln.startswith(mine) and ln.endswith(text))
                latencies[i].append(time.perf_counter() - t)

        threads = [threading.Thread(target=client, args=(i, c)) for i, c in enumerate(conns)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        at_end = count_rows(data)  # how far the writer was when the last echo came
        for c in conns:
            c.close()
    finally:
        p.stop(timeout=60)
    saved = count_rows(data)
    behind = [ln for ln in p.output if re.search(r"history: (closed|writer still busy)", ln)]
    all_lat = sorted(x for xs in latencies for x in xs)
    q = statistics.quantiles(all_lat, n=100)
    return {"mode": mode, "n": len(all_lat), "p50": q[49] * 1000, "p99": q[98] * 1000,
            "max": all_lat[-1] * 1000, "rate": len(all_lat) / wall, "saved": saved,
            "at_end": at_end,
            "log": behind}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--slow-delay", type=float, default=0.2,
                    help="seconds the writer sleeps per batch in sqlite-slow")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode (interleaved)")
    a = ap.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{a.messages} messages from {a.clients} clients in one room")
    print("| mode | messages | p50 ms | p99 ms | max ms | msg/s | rows in file at last echo "
          "| rows in file at stop |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for _ in range(a.repeat):
        for mode in a.modes.split(","):
            r = run(mode, a.messages, a.clients, a.slow_delay)
            print(f"| {r['mode']} | {r['n']} | {r['p50']:.2f} | {r['p99']:.2f} | "
                  f"{r['max']:.1f} | {r['rate']:.0f} | "
                  f"{'-' if r['at_end'] is None else r['at_end']} | "
                  f"{'-' if r['saved'] is None else r['saved']} |", flush=True)
            for line in r["log"]:
                print(f"    {line.split(' INFO ')[-1]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
