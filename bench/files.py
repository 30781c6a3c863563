"""Files through one acceptor: upload and download MB/s, the acceptor's and the router's RSS
during a large transfer, and chat p99 while it moves against a quiet run (issue 17's figures).

Each round starts ``pychat serve`` with one acceptor, runs the load generator once quiet and
once while a file of ``--size-mb`` is uploaded (``/upload``, then one streamed ``PUT``) and
downloaded again through the same acceptor's web door, and samples both processes' RSS every
0.2 s. Run on demand from the repository root, never in CI:

    python3 -m bench.files [--size-mb 1024] [--clients 200] [--rate 100] [--duration 30]
                           [--rounds 3] [--json-out bench/results/files-DATE.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse

from bench.run import ENV, PY, LoggedServe, machine, rss_kb
from support.client import Connection

CHUNK = 1 << 20


def make_file(path: str, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(CHUNK * 16, left)
            f.write(os.urandom(n))
            left -= n


class Server(LoggedServe):
    def __init__(self, size: int, tmp: str):
        super().__init__(["--port", "0", "--web-port", "0", "--acceptors", "1", "--data-dir", tmp,
                          "--history", "memory", "--accounts", "memory",
                          "--files-max-mb", str(size // CHUNK + 1), "--files-quota-mb", "0",
                          "--files-total-gb", "0"], tmp, env=ENV)
        self.port = int(re.search(r"serving on 127\.0\.0\.1:(\d+)", self.ready).group(1))
        self.web = int(re.search(r"web http://127\.0\.0\.1:(\d+)/", self.ready).group(1))
        self.router, self.acceptor = self.children["router"], self.children["acceptor 1"]


def loadtest(port: int, clients: int, rate: float, duration: float, pid: int) -> dict:
    r = subprocess.run([PY, "-m", "pychat", "loadtest", "--port", str(port), "--clients",
                        str(clients), "--senders", "10", "--rate", str(rate), "--duration",
                        str(duration), "--json", "--quiet", "--server-pid", str(pid),
                        "--timeout", "120"], capture_output=True, text=True, env=ENV,
                       timeout=600)
    return json.loads(r.stdout) if r.stdout.strip().startswith("{") else {"error": r.stderr}


def transfer(server: Server, path: str, size: int, out: dict) -> None:
    """Upload the file (streamed), then download it (discarded), timing each."""
    c = Connection("127.0.0.1", server.port, timeout=60)
    c.handshake()
    c.send(f"/upload {size} big.bin")
    url = urllib.parse.urlsplit(c.expect_prefix("UPLOAD:")[len("UPLOAD:"):])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120, blocksize=CHUNK)
    began = time.monotonic()
    with open(path, "rb") as f:
        conn.request("PUT", url.path, body=f, headers={"Content-Length": str(size)})
        answer = conn.getresponse()
        file_url = answer.read().decode().strip()
    out["upload_s"] = time.monotonic() - began
    out["upload_status"] = answer.status
    conn.close()
    got = urllib.parse.urlsplit(file_url)
    conn = http.client.HTTPConnection(got.hostname, got.port, timeout=120)
    began = time.monotonic()
    conn.request("GET", got.path)
    answer = conn.getresponse()
    n = 0
    while chunk := answer.read(CHUNK):
        n += len(chunk)
    out["download_s"] = time.monotonic() - began
    out["download_bytes"] = n
    conn.close()
    c.close()


def one_round(args: argparse.Namespace, path: str, size: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="pychat-bench-files-")
    server = Server(size, tmp)
    try:
        quiet = loadtest(server.port, args.clients, args.rate, args.duration, server.proc.pid)
        peaks = {"router": 0, "acceptor": 0}
        base = {"router": rss_kb(server.router), "acceptor": rss_kb(server.acceptor)}
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                for role, pid in (("router", server.router), ("acceptor", server.acceptor)):
                    peaks[role] = max(peaks[role], rss_kb(pid))

        moved: dict = {}
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        mover = threading.Thread(target=transfer, args=(server, path, size, moved))
        result: dict = {}

        def busy_load() -> None:
            result.update(loadtest(server.port, args.clients, args.rate, args.duration,
                                   server.proc.pid))

        loader = threading.Thread(target=busy_load)
        loader.start()
        time.sleep(args.lead)  # the load's clients connect first (not a synchronisation)
        mover.start()
        mover.join()
        loader.join()
        stop.set()
        sampler.join()
        mb = size / 1e6
        return {
            "quiet_p99_ms": quiet.get("latency_ms", {}).get("p99"),
            "busy_p99_ms": result.get("latency_ms", {}).get("p99"),
            "quiet_p50_ms": quiet.get("latency_ms", {}).get("p50"),
            "busy_p50_ms": result.get("latency_ms", {}).get("p50"),
            "lost": (quiet.get("lost"), result.get("lost")),
            "upload_mb_s": mb / moved["upload_s"], "download_mb_s": mb / moved["download_s"],
            "upload_status": moved["upload_status"],
            "download_ok": moved["download_bytes"] == size,
            "transfer_inside_load": moved["upload_s"] + moved["download_s"] + args.lead
            < args.duration,
            "rss_base_mb": {k: v / 1024 for k, v in base.items()},
            "rss_peak_mb": {k: v / 1024 for k, v in peaks.items()},
        }
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", tmp], check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--lead", type=float, default=2.0, help="seconds of load before the file")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()
    size = args.size_mb * CHUNK
    src = os.path.join(tempfile.gettempdir(), f"pychat-bench-{args.size_mb}mb.bin")
    if not os.path.exists(src) or os.path.getsize(src) != size:
        make_file(src, size)
    rounds = []
    for i in range(args.rounds):
        r = one_round(args, src, size)
        rounds.append(r)
        print(f"round {i + 1}: {json.dumps(r)}", flush=True)

    def med(key: str, sub: str | None = None) -> float:
        values = [(r[key][sub] if sub else r[key]) for r in rounds
                  if (r[key][sub] if sub else r[key]) is not None]
        return statistics.median(values) if values else float("nan")

    print(f"\n{args.size_mb} MiB file, {args.clients} clients x {args.rate:g} msg/s, "
          f"{args.rounds} rounds, medians:")
    print("| upload | download | chat p99 quiet | chat p99 during | ratio | acceptor RSS "
          "(base / peak) | router RSS (base / peak) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {med('upload_mb_s'):.0f} MB/s | {med('download_mb_s'):.0f} MB/s "
          f"| {med('quiet_p99_ms'):.1f} ms | {med('busy_p99_ms'):.1f} ms "
          f"| {med('busy_p99_ms') / med('quiet_p99_ms'):.2f}x "
          f"| {med('rss_base_mb', 'acceptor'):.0f} / {med('rss_peak_mb', 'acceptor'):.0f} MB "
          f"| {med('rss_base_mb', 'router'):.0f} / {med('rss_peak_mb', 'router'):.0f} MB |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "rounds": rounds, "machine": machine()}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
