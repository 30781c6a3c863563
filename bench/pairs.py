"""Interleaved pairs: PyChat and ngircd alternately, the same scenario, N pairs.

One sitting's single run per server is at the mercy of the machine's noise (ngircd's own p99
moved between 11.6 and 29.6 ms in one afternoon here). Alternating the two servers run by run,
and comparing medians and pair by pair, is fairer. Run on demand, never in CI:

    python3 -m bench.pairs --pairs 7 [--env PYCHAT_COALESCE_MS=4] [--server pychat-1]
                           [--clients 1000] [--senders 10] [--rate 200] [--duration 8]

``--env`` sets a PYCHAT_* variable for PyChat's processes (repeat it). Uses bench/run.py's
``measure`` (the same servers, ngircd configuration and load generator).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from bench import run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--server", default="pychat-1", help="pychat-1 or pychat-2")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for PyChat")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--senders", type=int, default=10)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()
    base = dict(run.ENV)
    pychat_env = dict(base, **dict(kv.split("=", 1) for kv in args.env))
    rows = []
    for _ in range(args.pairs):
        pair = {}
        for kind in (args.server, "ngircd"):
            run.ENV.clear()
            run.ENV.update(pychat_env if kind != "ngircd" else base)
            r = run.measure(kind, args.clients, args.senders, args.rate, args.duration)
            print(run.show(r), flush=True)
            pair[kind] = r
        rows.append(pair)

    def col(kind: str, key: str) -> list[float]:
        out = []
        for pair in rows:
            r = pair[kind]
            if "error" not in r:
                out.append({"p99": r["latency_ms"]["p99"],
                            "cpu": r["server_cpu_s_per_million"],
                            "machine": r.get("machine_cpu_s_per_million") or float("nan")}[key])
        return out

    for kind in (args.server, "ngircd"):
        p99, cpu, machine = col(kind, "p99"), col(kind, "cpu"), col(kind, "machine")
        if p99:
            print(f"{kind}: median p99 {statistics.median(p99):.1f} ms, median CPU "
                  f"{statistics.median(cpu):.2f} s per million deliveries (server), "
                  f"{statistics.median(machine):.2f} (machine) ({len(p99)} runs)")
    both = sum(1 for p in rows if "error" not in p[args.server] and "error" not in p["ngircd"]
               and p[args.server]["latency_ms"]["p99"] <= p["ngircd"]["latency_ms"]["p99"]
               and p[args.server]["server_cpu_s_per_million"]
               <= p["ngircd"]["server_cpu_s_per_million"])
    print(f"pairs where {args.server} had p99 and CPU both at most ngircd's: {both} of {len(rows)}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"env": args.env, "pairs": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
