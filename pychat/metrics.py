"""Prometheus metrics over HTTP, for the router and each acceptor (``--metrics-port``).

A ``Metrics`` object holds named samplers (functions read when scraped) and histograms, and
renders the Prometheus text format. ``serve`` answers ``GET /metrics`` from a daemon thread, so
neither the router's loop nor an acceptor's is ever blocked by a scrape. The samplers read
plain counters and sizes of the process's own structures: a scrape may see them a moment
apart, which metrics allow. No dependency: the format is a few lines of text.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("pychat.metrics")


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value


class Metrics:
    def __init__(self) -> None:
        self._samplers: list[tuple[str, str, str, Callable[[], float]]] = []
        self._histograms: list[tuple[str, str, Histogram]] = []

    def counter(self, name: str, help: str, read: Callable[[], float]) -> None:
        self._samplers.append((name, "counter", help, read))

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self._samplers.append((name, "gauge", help, read))

    def histogram(self, name: str, help: str, buckets: tuple[float, ...]) -> Histogram:
        h = Histogram(buckets)
        self._histograms.append((name, help, h))
        return h

    def render(self) -> str:
        out = []
        for name, kind, help, read in self._samplers:
            try:
                value = float(read())
            except Exception:  # a sampler must never break the scrape
                log.exception("metric %s could not be read", name)
                continue
            out += [f"# HELP {name} {help}", f"# TYPE {name} {kind}", f"{name} {value:g}"]
        for name, help, h in self._histograms:
            out += [f"# HELP {name} {help}", f"# TYPE {name} histogram"]
            cumulative = 0
            for bound, n in zip(h.buckets, h.counts, strict=False):  # counts end with +Inf
                cumulative += n
                out.append(f'{name}_bucket{{le="{bound:g}"}} {cumulative}')
            cumulative += h.counts[-1]
            out += [f'{name}_bucket{{le="+Inf"}} {cumulative}', f"{name}_sum {h.total:g}",
                    f"{name}_count {cumulative}"]
        return "\n".join(out) + "\n"

    def serve(self, host: str, port: int) -> ThreadingHTTPServer:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = metrics.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        log.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
        return server

