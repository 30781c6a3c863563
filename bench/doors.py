"""The doors side by side: the same load through PyChat's line door, its IRC door, its web door
(WebSocket) and ngircd.

Each round runs every server kind once, in turn (the order reversed every other round), so the
machine's noise falls on all of them alike; medians over the rounds. Kinds are bench/run.py's:
``pychat-N`` (the line door of ``pychat serve`` with N acceptors), ``pychat-N-irc`` (the same
server, the load through its IRC door: ``--irc-port``), ``pychat-N-ws`` (through its web door's
WebSocket, ``/ws``), ``ngircd``. Run on demand from the
repository root, never in CI:

    python3 -m bench.doors --rounds 5 [--kinds pychat-2,pychat-2-irc,ngircd]
                           [--clients 1000] [--senders 10] [--rate 200] [--duration 8]
                           [--json-out bench/results/doors-DATE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics

from bench import run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kinds", default="pychat-2,pychat-2-irc,ngircd")
    run.scenario_args(ap)
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for n in range(args.rounds):
        for kind in kinds if n % 2 == 0 else kinds[::-1]:
            r = run.measure(kind, args.clients, args.senders, args.rate, args.duration)
            print(run.show(r), flush=True)
            runs[kind].append(r)

    def median(kind: str, pick) -> float:
        values = [pick(r) for r in runs[kind] if "error" not in r]
        return statistics.median(values) if values else float("nan")

    print(f"\n{args.clients} clients, {args.rate:g} msg/s, {args.rounds} rounds, medians:")
    print("| door | p50 | p99 | server CPU s per M deliveries | machine CPU s per M | "
          "peak RSS | runs |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind in kinds:
        ok = sum(1 for r in runs[kind] if "error" not in r)
        print(f"| {kind} | {median(kind, lambda r: r['latency_ms']['p50']):.1f} ms "
              f"| {median(kind, lambda r: r['latency_ms']['p99']):.1f} ms "
              f"| {median(kind, lambda r: r['server_cpu_s_per_million']):.2f} "
              f"| {median(kind, lambda r: r.get('machine_cpu_s_per_million') or 0):.2f} "
              f"| {median(kind, lambda r: r['peak_rss_kb']) / 1024:.0f} MB | {ok} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "runs": runs, "machine": run.machine()}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
