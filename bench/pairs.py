"""Interleaved pairs: two servers alternately, the same scenario, N pairs.

One sitting's single run per server is at the mercy of the machine's noise (ngircd's own p99
moved between 11.6 and 29.6 ms in one afternoon here). Alternating the two servers run by run,
and comparing medians and pair by pair, is fairer. By default the pair is PyChat and ngircd;
with ``--against PYTHON`` it is this checkout's PyChat and the PyChat installed for another
interpreter (a checkout of another commit in its own venv: before and after a change). Run on
demand from the repository root, never in CI:

    python3 -m bench.pairs --pairs 7 [--env PYCHAT_COALESCE_MS=4] [--server pychat-1]
                           [--clients 1000] [--senders 10] [--rate 200] [--duration 8]
    python3 -m bench.pairs --pairs 5 --server pychat-2 --against ../before/.venv/bin/python

``--env`` sets a PYCHAT_* variable for PyChat's processes (repeat it). Uses bench/run.py's
``measure`` (the same servers, ngircd configuration and load generator: this checkout's).
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
    ap.add_argument("--server", default="pychat",
                    help="pychat (serve's defaults), pychat-1, pychat-2...")
    ap.add_argument("--against", default="",
                    help="an interpreter whose installed pychat is the other server of each pair "
                         "(default: ngircd)")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for PyChat")
    run.scenario_args(ap)
    args = ap.parse_args()
    base = dict(run.ENV)
    pychat_env = dict(base, **dict(kv.split("=", 1) for kv in args.env))
    # (label, server kind, interpreter, environment) of the two members of a pair
    other = (("before", args.server, args.against, pychat_env) if args.against
             else ("ngircd", "ngircd", run.PY, base))
    members = (("this", args.server, run.PY, pychat_env), other)
    rows = []
    for _ in range(args.pairs):
        pair = {}
        for label, kind, python, env in members:
            run.ENV.clear()
            run.ENV.update(env)
            r = run.measure(kind, args.clients, args.senders, args.rate, args.duration,
                            python=python)
            print(f"{label}: {run.show(r)}", flush=True)
            pair[label] = r
        rows.append(pair)

    def col(label: str, key: str) -> list[float]:
        out = []
        for pair in rows:
            r = pair[label]
            if "error" not in r:
                out.append({"p99": r["latency_ms"]["p99"],
                            "p50": r["latency_ms"]["p50"],
                            "cpu": r["server_cpu_s_per_million"],
                            "machine": r.get("machine_cpu_s_per_million") or float("nan")}[key])
        return out

    first, second = members[0][0], members[1][0]
    for label in (first, second):
        p50, p99 = col(label, "p50"), col(label, "p99")
        cpu, machine = col(label, "cpu"), col(label, "machine")
        if p99:
            print(f"{label}: median p50 {statistics.median(p50):.1f} ms, p99 "
                  f"{statistics.median(p99):.1f} ms, median CPU {statistics.median(cpu):.2f} s "
                  f"per million deliveries (server), {statistics.median(machine):.2f} (machine) "
                  f"({len(p99)} runs)")
    both = sum(1 for p in rows if "error" not in p[first] and "error" not in p[second]
               and p[first]["latency_ms"]["p99"] <= p[second]["latency_ms"]["p99"]
               and p[first]["server_cpu_s_per_million"] <= p[second]["server_cpu_s_per_million"])
    print(f"pairs where {first} had p99 and CPU both at most {second}'s: {both} of {len(rows)}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"env": args.env, "against": args.against, "pairs": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
