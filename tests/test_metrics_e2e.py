"""Prometheus metrics: the text format (pure), and scrapes of a real router and acceptor."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from pychat.metrics import Metrics
from support.procs import Proc, free_port, python_m, start_serve


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
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
    assert "# TYPE x_total counter\nx_total 3\n" in text
    assert "# TYPE y gauge\ny 1.5\n" in text
    assert "broken" not in text.replace("# HELP broken", "")
    assert 't_seconds_bucket{le="0.1"} 1\n' in text
    assert 't_seconds_bucket{le="1"} 3\n' in text
    assert 't_seconds_bucket{le="+Inf"} 4\n' in text and "t_seconds_count 4\n" in text


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
                        "--metrics-port", str(aport)), name="acceptor")
    procs.append(acc)
    acc.wait_for(r"router \w+ is alive")
    a, b = connect(port), connect(port)
    a.handshake()
    b.handshake()
    for i in range(3):
        a.send(f"m{i}")
    b.expect(f"{a.uid}: m2")
    r = scrape(rport)
    assert r["pychat_router_acceptors"] == 1 and r["pychat_router_users"] == 2
    assert r["pychat_router_rooms"] == 1 and r["pychat_router_chat_messages_total"] == 3
    assert r["pychat_router_turn_seconds_count"] > 0
    inf = r['pychat_router_turn_seconds_bucket{le="+Inf"}']
    assert inf == r["pychat_router_turn_seconds_count"]
    s = scrape(aport)
    assert s["pychat_acceptor_connections"] == 2 and s["pychat_acceptor_accepted_total"] == 2
    assert s["pychat_acceptor_router_alive"] == 1
    assert 0 < s["pychat_acceptor_writes_total"] <= s["pychat_acceptor_lines_out_total"]
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
