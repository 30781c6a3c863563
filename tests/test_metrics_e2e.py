"""Prometheus metrics: the text format (prometheus_client's), scrapes of a real router and
acceptor, and a scrape endpoint that slow, silent or many clients cannot hold."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from pychat.metrics import Metrics
from support.procs import Proc, free_port, python_m, start_serve, web_port


def scrape(port: int, timeout: float = 5) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                  timeout=timeout).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_text_format_with_counters_gauges_and_a_cumulative_histogram():
    m = Metrics()
    m.counter("x_total", "a counter", lambda: 3)
    m.gauge("y", "a gauge", lambda: 1.5)
    m.gauge("broken", "raises", lambda: 1 / 0)  # left out, the scrape goes on
    h = m.histogram("t_seconds", "a histogram", (0.1, 1.0))
    for v in (0.05, 0.5, 0.7, 5.0):
        h.observe(v)
    text = m.render()
    assert "# TYPE x_total counter\nx_total 3.0\n" in text
    assert "# TYPE y gauge\ny 1.5\n" in text
    assert "broken" not in text.replace("# HELP broken", "")
    assert 't_seconds_bucket{le="0.1"} 1.0\n' in text
    assert 't_seconds_bucket{le="1.0"} 3.0\n' in text
    assert 't_seconds_bucket{le="+Inf"} 4.0\n' in text and "t_seconds_count 4.0\n" in text
    assert "t_seconds_sum 6.25\n" in text


def test_counters_keep_every_digit_past_a_million():
    """`{:g}` printed 1234567 as 1.23457e+06: a counter that stood still for 30 increments."""
    big = [1_234_567, 12_345_679, 2**40 + 1]
    m = Metrics()
    for i, value in enumerate(big):
        m.counter(f"c{i}_total", "big", lambda v=value: v)
    server = m.serve("127.0.0.1", 0)
    try:
        got = scrape(server.port)
    finally:
        server.close()
    assert [got[f"c{i}_total"] for i in range(len(big))] == big
    # prometheus_client's process metrics come with ours
    assert got["process_cpu_seconds_total"] > 0 and got["process_resident_memory_bytes"] > 0


def silent(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def closed_within(s: socket.socket, seconds: float, drip: bytes = b"") -> float | None:
    """Seconds until the server closes ``s`` (sending ``drip`` each 0.1 s meanwhile, a
    slowloris), or None if it is still open after ``seconds``."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        if drip:
            try:
                s.sendall(drip)
            except OSError:
                return time.monotonic() - began
        s.settimeout(0.1)  # the pace of the drip, and how soon a close is seen
        try:
            data = s.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - began
        if not data:
            return time.monotonic() - began
    return None


def test_a_silent_or_slow_client_is_closed_at_its_deadline():
    server = Metrics().serve("127.0.0.1", 0, deadline=0.5)
    opened = []
    try:
        quiet = silent(server.port)
        opened.append(quiet)
        assert closed_within(quiet, 5) is not None
        slow = silent(server.port)
        opened.append(slow)
        slow.sendall(b"GET /metrics HTTP/1.0\r\n")
        took = closed_within(slow, 5, drip=b"X")  # a header that never ends, a byte at a time
        assert took is not None and took < 3  # the deadline is for the whole request
        assert scrape(server.port)["process_open_fds"] > 0  # and the server still answers
    finally:
        for s in opened:
            s.close()
        server.close()


def test_many_clients_start_no_threads_and_cannot_lock_a_scraper_out():
    """50 connections held open and silent against a cap of 4, with a deadline far away: no
    thread per connection, the oldest are closed to make room, and a scrape is answered at
    once."""
    server = Metrics().serve("127.0.0.1", 0, max_clients=4, deadline=60)
    threads = threading.active_count()
    opened = [silent(server.port) for _ in range(50)]
    try:
        began = time.monotonic()
        assert "process_open_fds" in scrape(server.port, timeout=10)
        assert time.monotonic() - began < 5  # not the 60 s deadline
        assert threading.active_count() == threads
        assert server.clients <= 4
        assert closed_within(opened[0], 5) is not None  # the oldest made room
    finally:
        for s in opened:
            s.close()
        server.close()


def test_only_get_metrics_is_answered():
    server = Metrics().serve("127.0.0.1", 0)
    try:
        for request, status in ((b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
                                (b"HEAD /metrics HTTP/1.0\r\n\r\n", b"200"),
                                (b"POST /metrics HTTP/1.0\r\n\r\n", b"405"),
                                (b"GET /other HTTP/1.0\r\n\r\n", b"404"),
                                (b"nonsense\r\n\r\n", b"400")):
            with silent(server.port) as s:
                s.sendall(request)
                reply = b""
                while chunk := s.recv(65536):
                    reply += chunk
            assert reply.split(b" ", 2)[1] == status, (request, reply[:80])
            if request.startswith(b"HEAD"):
                assert reply.endswith(b"\r\n\r\n")  # headers only
        # a request line past the limit is not read on and on
        with silent(server.port) as s:
            s.sendall(b"GET /" + b"x" * 20_000)
            assert closed_within(s, 5) is not None
    finally:
        server.close()


@pytest.mark.e2e
def test_router_and_acceptor_metrics_follow_the_chat(procs, connect):
    rport, aport = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    router = Proc(python_m("pychat.router", "--bind", endpoint, "--metrics-port", str(rport)),
                  name="router")
    procs.append(router)
    router.wait_for(r"router bound to")
    port = free_port()
    acc = Proc(python_m("pychat.acceptor", "--port", str(port), "--router", endpoint,
                        "--metrics-port", str(aport), "--web", "--web-port", "0"),
               name="acceptor")
    procs.append(acc)
    acc.wait_for(r"router \w+ is alive")
    web = web_port(acc)
    urllib.request.urlopen(f"http://127.0.0.1:{web}/", timeout=5).read()
    with pytest.raises(urllib.error.HTTPError):  # a WebSocket from another site's page
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{web}/ws", headers={
                "Upgrade": "websocket", "Connection": "Upgrade", "Origin": "http://evil.example",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}),
            timeout=5)
    a, b = connect(port), connect(port)
    a.handshake()
    b.handshake()
    for i in range(3):
        a.send(f"m{i}")
    b.expect(f"{a.uid}: m2")
    r = scrape(rport)
    assert r["pychat_router_acceptors"] == 1 and r["pychat_router_users"] == 2
    assert r["pychat_router_rooms"] == 1 and r["pychat_router_chat_messages_total"] == 3
    assert r["pychat_router_logins_total"] == r["pychat_router_logins_failed_total"] == 0
    assert r["pychat_router_turn_seconds_count"] > 0
    inf = r['pychat_router_turn_seconds_bucket{le="+Inf"}']
    assert inf == r["pychat_router_turn_seconds_count"]
    assert r["process_resident_memory_bytes"] > 0  # the process metrics, from the router
    s = scrape(aport)
    assert s["pychat_acceptor_connections"] == 2 and s["pychat_acceptor_accepted_total"] == 2
    assert s["pychat_acceptor_router_alive"] == 1
    assert 0 < s["pychat_acceptor_writes_total"] <= s["pychat_acceptor_lines_out_total"]
    assert s["pychat_acceptor_web_requests_total"] == 1
    assert s["pychat_acceptor_web_origin_refusals_total"] == 1
    assert s["pychat_acceptor_web_sockets_total"] == 0
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{aport}/other", timeout=5)


def _free_block(n: int) -> int:
    """A port P such that P..P+n-1 are free now (as good as free_port: checked, not held)."""
    for _ in range(50):
        base = free_port()
        try:
            socks = []
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of ports")


@pytest.mark.e2e
def test_serve_gives_the_router_port_p_and_acceptor_i_port_p_plus_i(procs):
    base = _free_block(3)
    p, _ = start_serve("--metrics-port", str(base))
    procs.append(p)
    assert scrape(base)["pychat_router_acceptors"] >= 0
    for i in (1, 2):
        assert "pychat_acceptor_connections" in scrape(base + i)
