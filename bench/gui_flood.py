"""How responsive the Tk client stays while its room is flooded (on demand, not in CI).

    python3 -m bench.gui_flood [--seconds 10] [--rates 1000,2000,5000]

For each rate: a fresh ``pychat serve`` (flood limit raised), a private Xvfb, ``pychat gui`` in
the flooded room, and a sender at that many lines a second. The GUI's own ``after()`` probe says
how late Tk's timer fired (the time Tk's thread was busy); the GUI's state file says how many
lines it showed and how many the log kept. Prints one Markdown table row per rate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

from support.gui import GuiProc, flood
from support.procs import start_serve
from support.xvfb import Xvfb

SAMPLE_MS = 50  # the GUI's probe interval


def run(rate: int, seconds: float, tmp: Path) -> str:
    serve, port = start_serve("--flood-burst", "1000000", "--flood-rate", "1000000")
    x = Xvfb()
    g = None
    try:
        g = GuiProc(x, port, tmp, "--name", "watcher", "--room", "#flood")
        g.wait(lambda st: st["title"].endswith("#flood") and st["lag"]["samples"] > 10, "room")
        before = g.state()["lines_received"]
        sent: list[int] = []
        start = time.perf_counter()
        t = threading.Thread(target=lambda: sent.append(
            flood(port, "#flood", rate, seconds, threading.Event())))
        t.start()
        t.join()
        lag = sorted(g.state()["lag"]["recent_ms"][-int(seconds * 1000 / SAMPLE_MS):])
        last = f"flood {sent[0] - 1} "
        st = g.wait(lambda st: any(last in line for line in st["log"][-3:]), "the last line", 60)
        took = time.perf_counter() - start
        shown = st["lines_received"] - before
        p50, p99 = lag[len(lag) // 2], lag[min(len(lag) - 1, int(len(lag) * 0.99))]
        return (f"| {rate:,} | {seconds:g} s | {shown:,} in {took:.1f} s | {p50} ms | {p99} ms "
                f"| {lag[-1]} ms | {st['log_lines']:,} (limit {st['log_limit']:,}) |")
    finally:
        if g is not None:
            g.proc.kill()
        x.stop()
        serve.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rates", default="1000,2000,5000")
    args = p.parse_args()
    print("| lines/s sent | for | lines shown | Tk lag median | p99 | max | log kept |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for rate in (int(r) for r in args.rates.split(",")):
            print(run(rate, args.seconds, Path(tmp)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
