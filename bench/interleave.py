"""Several server configurations in turn, round after round, the same scenario: medians.

bench/pairs.py alternates two servers; this takes any number, each written
``KIND[#PYTHON][@NAME=VALUE[+NAME=VALUE...]]``: a bench/run.py kind (pychat, pychat-2, ngircd,
oneproc, oneproc-direct...), optionally the interpreter whose installed pychat serves (another
commit's venv) and PYCHAT_* settings for it. Run on demand from the repository root, never in CI:

    python3 -m bench.interleave --rounds 7 pychat pychat@PYCHAT_COALESCE_FACTOR=0 ngircd \
        oneproc-direct "pychat#../before/.venv/bin/python" [--clients 1000] [--senders 10]
        [--rate 200] [--duration 8] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from bench import run


def parse(spec: str) -> tuple[str, str, dict[str, str]]:
    kind, _, env = spec.partition("@")
    kind, _, python = kind.partition("#")
    return kind, python or run.PY, dict(kv.split("=", 1) for kv in env.split("+") if kv)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("servers", nargs="+")
    ap.add_argument("--rounds", type=int, default=5)
    run.scenario_args(ap)
    args = ap.parse_args()
    base = dict(run.ENV)
    results: dict[str, list[dict]] = {spec: [] for spec in args.servers}
    for _ in range(args.rounds):
        for spec in args.servers:
            kind, python, env = parse(spec)
            run.ENV.clear()
            run.ENV.update(base, **env)
            r = run.measure(kind, args.clients, args.senders, args.rate, args.duration,
                            python=python)
            print(f"{spec}: {run.show(r)}", flush=True)
            results[spec].append(r)
    for spec, rs in results.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            print(f"{spec}: no run finished")
            continue

        def med(key: str, sub: str = "", rs: list[dict] = ok) -> float:
            return statistics.median((r[key][sub] if sub else r.get(key) or float("nan"))
                                     for r in rs)
        print(f"{spec}: median p50 {med('latency_ms', 'p50'):.2f} ms, p99 "
              f"{med('latency_ms', 'p99'):.2f} ms, CPU per million deliveries "
              f"{med('server_cpu_s_per_million'):.2f} s (server), "
              f"{med('machine_cpu_s_per_million'):.2f} (machine) ({len(ok)} runs)")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
