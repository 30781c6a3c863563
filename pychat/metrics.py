"""Prometheus metrics over HTTP, for the router and each acceptor (``--metrics-port``).

A ``Metrics`` object holds named samplers (functions read when scraped) and histograms. At each
scrape they become prometheus_client metric families, beside prometheus_client's own process
and Python metrics (``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
``process_open_fds``, ``python_gc_*``...), and prometheus_client renders the text format: every
value in full (a counter past 10^6 keeps its last digit), names and escaping as Prometheus reads
them. The samplers read plain counters and sizes of the process's own structures from another
thread: a scrape may see them a moment apart, which metrics allow. A sampler that raises is left
out of that scrape (and logged); the others are still served.

``serve`` answers ``GET /metrics`` from one daemon thread with an event loop of its own, so
neither the router's loop nor an acceptor's ever waits for a scrape, and what scrapers can take
is bounded whatever they do:

- one thread, however many connections (never a thread per connection);
- at most ``max_clients`` connections at once: one more closes the oldest, so connections held
  open and silent cannot lock a real scraper out, only make it retry;
- each connection has ``deadline`` seconds in all to send its request (at most
  ``max_request`` bytes of request line and headers) and take the answer; then it is closed,
  however slowly it was sending or reading.

prometheus_client is imported when a ``Metrics`` is first rendered, not when this module is,
and asyncio when a ``MetricsServer`` starts: processes without ``--metrics-port`` never pay for
them (the router uses no asyncio otherwise; issue 18).
"""

from __future__ import annotations

import bisect
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("pychat.metrics")

# The classic text format, which every Prometheus server reads (prometheus_client renders it).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_CLIENTS = 16
DEADLINE = 10.0  # seconds, below Prometheus' default scrape_timeout of 10 s plus its retry
MAX_REQUEST = 8192  # bytes of request line and headers; a scrape sends a few hundred
MAX_HEADERS = 100


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
        self._registry: Any = None  # made at the first render

    def counter(self, name: str, help: str, read: Callable[[], float]) -> None:
        self._samplers.append((name, "counter", help, read))

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self._samplers.append((name, "gauge", help, read))

    def histogram(self, name: str, help: str, buckets: tuple[float, ...]) -> Histogram:
        h = Histogram(buckets)
        self._histograms.append((name, help, h))
        return h

    def collect(self) -> Iterator[Any]:
        """Our samplers and histograms as prometheus_client metric families (a collector)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.utils import floatToGoString
        for name, kind, help, read in self._samplers:
            try:
                value = float(read())
            except Exception:  # a sampler must never break the scrape
                log.exception("metric %s could not be read", name)
                continue
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, help, value=value)
        for name, help, h in self._histograms:
            counts, total = list(h.counts), h.total  # one read: the buckets agree with _count
            buckets, cumulative = [], 0
            for bound, n in zip(h.buckets, counts, strict=False):  # counts end with +Inf
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            buckets.append(("+Inf", cumulative + counts[-1]))
            yield HistogramMetricFamily(name, help, buckets=buckets, sum_value=total)

    def registry(self) -> Any:
        if self._registry is None:
            from prometheus_client import (
                CollectorRegistry,
                GCCollector,
                PlatformCollector,
                ProcessCollector,
            )
            registry = CollectorRegistry(auto_describe=False)
            registry.register(self)
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
            self._registry = registry
        return self._registry

    def render(self) -> str:
        from prometheus_client import generate_latest
        return generate_latest(self.registry()).decode()

    def serve(self, host: str, port: int, *, max_clients: int = MAX_CLIENTS,
              deadline: float = DEADLINE, max_request: int = MAX_REQUEST) -> MetricsServer:
        """Answer scrapes at http://host:port/metrics from now on; ``OSError`` when the port
        cannot be had (raised here, before the thread starts)."""
        server = MetricsServer(self, host, port, max_clients=max_clients, deadline=deadline,
                               max_request=max_request)
        log.info("metrics on http://%s:%d/metrics", host, server.port)
        return server


class MetricsServer:
    """The scrape endpoint: one thread, one event loop, bounded (see the module's docstring)."""

    def __init__(self, metrics: Metrics, host: str, port: int, *, max_clients: int,
                 deadline: float, max_request: int):
        self.metrics = metrics
        self.max_clients = max_clients
        self.deadline = deadline
        self.max_request = max_request
        import asyncio
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family)
        self.port: int = self._sock.getsockname()[1]
        self._open: dict[asyncio.StreamWriter, None] = {}  # oldest first
        # its own selector loop: the acceptor's uvloop policy is for the acceptor's thread
        self._loop = asyncio.SelectorEventLoop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()
        self._ready.wait()

    @property
    def clients(self) -> int:
        return len(self._open)

    def _run(self) -> None:
        import asyncio
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        import asyncio
        self._stop = asyncio.Event()
        try:
            server = await asyncio.start_server(self._client, sock=self._sock,
                                                limit=self.max_request)
        finally:
            self._ready.set()  # serve() waits for this, up or not
        async with server:
            await self._stop.wait()
        for writer in list(self._open):
            writer.transport.abort()

    def close(self) -> None:
        """Stop answering (tests; a process simply exits)."""
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import asyncio
        self._open[writer] = None
        if len(self._open) > self.max_clients:  # make room: the oldest goes
            oldest = next(iter(self._open))
            del self._open[oldest]
            oldest.transport.abort()
        try:
            await asyncio.wait_for(self._answer(reader, writer), self.deadline)
        except (asyncio.TimeoutError, OSError, ValueError, asyncio.IncompleteReadError):
            pass  # too slow, too long, or gone: it is closed below and nobody else waited
        except Exception:
            log.exception("metrics: a scrape failed")
        finally:
            self._open.pop(writer, None)
            writer.transport.abort()  # a no-op after a clean close

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import asyncio
        request = (await reader.readline()).decode("latin-1").split()
        size = 0
        for _ in range(MAX_HEADERS):  # the headers say nothing we need: read past them
            line = await reader.readline()
            size += len(line)
            if size > self.max_request:
                raise ValueError("request too long")
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise asyncio.IncompleteReadError(b"", None)
        else:
            raise ValueError("too many headers")
        body = b""
        if len(request) != 3 or not request[2].startswith("HTTP/"):
            status = "400 Bad Request"
        elif request[0] not in ("GET", "HEAD"):
            status = "405 Method Not Allowed"
        elif request[1].split("?")[0] != "/metrics":
            status = "404 Not Found"
        else:
            status = "200 OK"
            body = self.metrics.render().encode()
        head = (f"HTTP/1.0 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        writer.write(head if request[:1] == ["HEAD"] else head + body)
        writer.close()  # after what is buffered has gone
        await writer.wait_closed()
