"""An idle ``pychat serve``'s memory: RSS, PSS and private bytes of each of its processes.

Starts ``pychat serve`` with its defaults (on free ports, its data in a temporary folder), waits
for its ready line and then ``--settle`` seconds, and reads each process's
/proc/PID/smaps_rollup: the supervisor, the router and every acceptor. RSS counts every page a
process has mapped, shared ones (the interpreter, libraries) in full in each process; PSS divides
each shared page among the processes that map it (the sum of PSS is what the server costs the
machine); private (USS) is what the process alone holds, given back if it exits. With
``--imports`` it also says which heavy shared objects each process has mapped (from
/proc/PID/maps: libssl, libcrypto, argon2's and cffi's, libsqlite3...), and which extension
modules of Python's own. Issue 18's goal: under 60 MB RSS in all, under 20 MB a process. Linux
only. Run on demand from the repository root, never in CI:

    python3 -m bench.footprint [--imports] [--settle 2] [--json-out bench/results/footprint.json]
                               [-- EXTRA SERVE FLAGS]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from bench.run import LoggedServe, machine

# what a mapped file's name says was loaded: (label, pattern on the path)
HEAVY = [
    ("libssl", r"/libssl\.so"),
    ("libcrypto", r"/libcrypto\.so"),
    ("_ssl", r"/_ssl\.cpython"),
    ("_hashlib", r"/_hashlib\.cpython"),
    ("argon2", r"/_argon2|argon2/_ffi|/_ffi\.abi3\.so"),
    ("_cffi_backend", r"/_cffi_backend"),
    ("libsqlite3", r"/libsqlite3\.so"),
    ("_sqlite3", r"/_sqlite3\.cpython"),
    ("zmq", r"/zmq/backend/cython/|/libzmq"),
    ("libsodium", r"/libsodium\.so"),
    ("uvloop", r"/uvloop/loop\.cpython"),
    ("websockets", r"/websockets/speedups"),
    ("_decimal", r"/_decimal\.cpython|/libmpdec\.so"),
    ("_bz2", r"/_bz2\.cpython|/libbz2\.so"),
    ("_lzma", r"/_lzma\.cpython|/liblzma\.so"),
    ("_uuid", r"/_uuid\.cpython|/libuuid\.so"),
    ("libffi", r"/libffi\.so|/libffi-"),
]


def smaps_rollup(pid: int) -> dict[str, int]:
    """Rss, Pss and Private_* of ``pid`` in kB; {} when it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                m = re.match(r"(\w+):\s+(\d+) kB", line)
                if m:
                    out[m.group(1)] = int(m.group(2))
    except OSError:
        return {}
    return {"rss": out.get("Rss", 0), "pss": out.get("Pss", 0),
            "uss": out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)}


def mapped_files(pid: int) -> set[str]:
    """The paths of every file ``pid`` has mapped (/proc/PID/maps)."""
    paths = set()
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    paths.add(parts[5].strip())
    except OSError:
        pass
    return paths


def heavy_modules(pid: int) -> list[str]:
    """Which of HEAVY ``pid`` has mapped, and the other extension modules of the interpreter's
    own lib-dynload (one name each)."""
    files = mapped_files(pid)
    found = [label for label, rx in HEAVY if any(re.search(rx, p) for p in files)]
    others = sorted({os.path.basename(p).split(".")[0] for p in files
                     if "/lib-dynload/" in p} - set(found))
    return found + [f"({', '.join(others)})"] if others else found


class Serve(LoggedServe):
    """``pychat serve`` with its defaults on free ports, stopped by its own pid."""

    def __init__(self, extra: list[str], tmp: str):
        super().__init__(["--port", "0", "--web-port", "0", "--data-dir", tmp, *extra], tmp)

    def processes(self) -> list[tuple[str, int]]:
        return [("supervisor", self.proc.pid), *self.children.items()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds between the ready line and the reading")
    ap.add_argument("--imports", action="store_true",
                    help="also name the heavy shared objects each process has mapped")
    ap.add_argument("--json-out", default="")
    ap.add_argument("extra", nargs="*", help="more flags for pychat serve (after --)")
    args = ap.parse_args()
    if not os.path.exists("/proc/self/smaps_rollup"):
        print("bench.footprint: needs Linux's /proc/PID/smaps_rollup", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="pychat-bench-footprint-")
    serve = Serve(args.extra, tmp)
    try:
        time.sleep(args.settle)
        rows = []
        for role, pid in serve.processes():
            row = {"process": role, "pid": pid, **smaps_rollup(pid)}
            if args.imports:
                row["heavy"] = heavy_modules(pid)
            rows.append(row)
    finally:
        serve.stop()
        subprocess.run(["rm", "-rf", tmp], check=False)
    total = {k: sum(r.get(k, 0) for r in rows) for k in ("rss", "pss", "uss")}
    print(f"idle pychat serve {' '.join(args.extra)}".rstrip() + f", after {args.settle:g} s "
          f"({machine()}):")
    print(f"{'process':<12} {'pid':>8} {'RSS MB':>8} {'PSS MB':>8} {'USS MB':>8}")
    for r in rows:
        print(f"{r['process']:<12} {r['pid']:>8} {r.get('rss', 0) / 1024:>8.1f} "
              f"{r.get('pss', 0) / 1024:>8.1f} {r.get('uss', 0) / 1024:>8.1f}")
    print(f"{'total':<12} {'':>8} {total['rss'] / 1024:>8.1f} {total['pss'] / 1024:>8.1f} "
          f"{total['uss'] / 1024:>8.1f}")
    if args.imports:
        print()
        for r in rows:
            print(f"{r['process']}: {', '.join(r['heavy']) or '-'}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "processes": rows, "total_kb": total,
                       "machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S")},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
