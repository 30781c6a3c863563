"""The web door end to end: its HTTP side (the browser client's files, statuses, headers, limits)
and what its WebSocket adds to the line protocol (frames, origins, pings, closes, TLS). The
protocol itself over ``/ws`` is tested by tests/test_protocol_e2e.py, which runs every case on
both transports; the browser client in Chromium by tests/test_web_browser.py.

Clients here are raw sockets (to see the server's bytes) and the ``websockets`` library's own
client (a reference implementation of RFC 6455, not ours).
"""

from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request
import uuid

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from support.client import Connection, WsConnection
from support.procs import WEB_PORTS, start_serve, web_port

pytestmark = pytest.mark.e2e
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def web_serve():
    """One server: (line port, web port)."""
    p, port = start_serve("--history", "memory", "--accounts", "memory")
    yield port, web_port(p)
    p.stop()


def unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:8]


def http(port: int, path: str = "/", method: str = "GET",
         headers: dict[str, str] | None = None, tls: ssl.SSLContext | None = None):
    """(status, headers, body) of one request."""
    scheme = "https" if tls else "http"
    req = urllib.request.Request(f"{scheme}://127.0.0.1:{port}{path}", method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT, context=tls) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def raw_exchange(port: int, data: bytes, until_closed: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(data)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got
            got += chunk
            if not until_closed and b"\r\n\r\n" in got:
                return got


def web_client(web: int, clients: list, **kw) -> WsConnection:
    c = WsConnection("127.0.0.1", 0, web_port=web, timeout=TIMEOUT, **kw)
    clients.append(c)
    c.handshake()
    return c


# ---- HTTP: the browser client's files ------------------------------------------------------------

def test_the_browser_client_is_served_with_security_headers(web_serve):
    _, web = web_serve
    status, headers, body = http(web, "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"<html" in body.lower()
    csp = headers["Content-Security-Policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'",
                      "object-src 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    # every file the page names is served, with its type
    status, headers, _ = http(web, "/app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")


def test_statuses_for_what_is_not_there(web_serve):
    _, web = web_serve
    assert http(web, "/nosuch.html")[0] == 404
    assert http(web, "/../acceptor/web.py")[0] in (400, 404)
    assert http(web, "/%2e%2e/server.py")[0] == 404
    status, headers, _ = http(web, "/", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, headers, _ = http(web, "/ws")  # no upgrade asked
    assert status == 426 and headers["Upgrade"] == "websocket"
    status, headers, body = http(web, "/", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_etag_gives_304_and_keep_alive_serves_several_requests(web_serve):
    _, web = web_serve
    _, headers, _ = http(web, "/")
    assert http(web, "/", headers={"If-None-Match": headers["ETag"]})[0] == 304
    # two requests on one connection, the second closing it
    got = raw_exchange(web, b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n"
                            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.count(b"HTTP/1.1 200 OK") == 2
    assert b"Connection: keep-alive" in got and b"Connection: close" in got


def test_pipelined_requests_wait_for_a_slow_reader_and_all_are_answered(web_serve):
    """A client that sends many requests and reads nothing: the door stops reading while its
    answers wait (no memory grows with the requests), and answers every one once it reads."""
    _, web = web_serve
    n = 400  # about 1.5 MB of answers: far more than the socket buffers hold
    with socket.create_connection(("127.0.0.1", web), timeout=TIMEOUT) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * (n - 1)
                  + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = bytearray()
        while chunk := s.recv(1 << 16):
            got += chunk
    assert got.count(b"HTTP/1.1 200 OK\r\n") == n


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET / HTTP/2.0\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", b"431"),
    (b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 70 + b"\r\n", b"431"),
    (b"GET /\xff HTTP/1.1\r\n\r\n", b"400"),
])
def test_a_bad_request_gets_its_status_and_the_door_goes_on(web_serve, clients,
                                                            request_bytes, status):
    _, web = web_serve
    got = raw_exchange(web, request_bytes)
    assert got.startswith(b"HTTP/1.1 " + status), got[:200]
    web_client(web, clients)  # the door still works


def test_a_request_that_never_ends_is_closed_at_the_deadline(procs):
    p, _ = start_serve("--tls-handshake-timeout", "1", acceptors=1)
    procs.append(p)
    web = web_port(p)
    with socket.create_connection(("127.0.0.1", web), timeout=TIMEOUT) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        assert s.recv(100) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - started < TIMEOUT


# ---- WebSocket ----------------------------------------------------------------------------------

def test_a_web_user_a_tcp_user_chat_and_see_each_other(web_serve, clients):
    port, web = web_serve
    room = "#" + unique("w")
    w = web_client(web, clients)
    t = Connection("127.0.0.1", port, timeout=TIMEOUT)
    clients.append(t)
    t.handshake()
    name = unique("web")
    w.send(f"/nick {name}")
    w.expect(f"OK nick {name}")
    for c in (w, t):
        c.send(f"/join {room}")
        c.expect(f"ROOM:{room}")
    t.expect(lambda line: line.startswith("USERS:") and w.uid in line)
    w.send("hello from the browser door")
    t.expect(f"{w.uid}: hello from the browser door")
    t.send("and back over TCP")
    w.expect(f"{t.uid}: and back over TCP")
    t.send(f"/msg {name} a private one")
    w.expect(f"[Private] {t.uid}: a private one")


def test_a_frame_of_several_lines_is_several_lines_and_a_fragmented_one_is_one(web_serve):
    _, web = web_serve
    room = "#" + unique("f")
    with ws_connect(f"ws://127.0.0.1:{web}/ws", open_timeout=TIMEOUT) as ws:
        for _ in range(3):
            ws.recv(TIMEOUT)
        ws.send(f"/join {room}\none\r\ntwo\n")
        got = [ws.recv(TIMEOUT) for _ in range(5)]
        assert got[0] == f"ROOM:{room}"
        assert [line.split(": ", 1)[1] for line in got[3:]] == ["one", "two"]
        ws.send(iter(["frag", "mented ", "line"]))  # one message in three frames
        assert ws.recv(TIMEOUT).endswith(": fragmented line")


def test_a_frame_over_the_limit_closes_with_1009_and_others_go_on(web_serve, clients):
    _, web = web_serve
    other = web_client(web, clients)
    with ws_connect(f"ws://127.0.0.1:{web}/ws", open_timeout=TIMEOUT, max_size=None) as ws:
        ws.recv(TIMEOUT)
        ws.send("x" * 70_000)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    other.send("/ping after")
    other.expect("PONG after")


def test_a_line_too_long_for_the_core_is_an_error_and_the_connection_goes_on(web_serve, clients):
    _, web = web_serve
    w = web_client(web, clients)
    w.send("y" * 5000)
    w.expect("ERROR: line too long (max 4096 bytes)")
    w.send("/ping still")
    w.expect("PONG still")


def test_origins_a_foreign_page_is_refused_its_own_and_configured_ones_pass(procs):
    p, _ = start_serve("--web-origins", "https://chat.example.org")
    procs.append(p)
    web = web_port(p)
    url = f"ws://127.0.0.1:{web}/ws"
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(url, origin="http://evil.example", open_timeout=TIMEOUT)  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    for origin in (f"http://127.0.0.1:{web}", "https://chat.example.org", None):
        with ws_connect(url, origin=origin, open_timeout=TIMEOUT) as ws:  # type: ignore[arg-type]
            assert ws.recv(TIMEOUT) == "Welcome to PyChat Server!"


def test_a_quiet_client_is_pinged_and_its_pong_keeps_it(procs):
    p, _ = start_serve("--ping-after", "1", "--idle-timeout", "3", acceptors=1)
    procs.append(p)
    web = web_port(p)
    pings = []
    # a raw client, to see the ping frame (the library would answer it unseen)
    with socket.create_connection(("127.0.0.1", web), timeout=TIMEOUT) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        data = b""
        deadline = time.monotonic() + TIMEOUT
        while len(pings) < 4 and time.monotonic() < deadline:  # 4 s > the idle timeout
            chunk = s.recv(65536)
            assert chunk, f"closed: {data!r}"
            data += chunk
            while b"\x89\x06pychat" in data:
                pings.append(time.monotonic())
                data = data.replace(b"\x89\x06pychat", b"", 1)
                # pong, masked with a zero mask (RFC 6455 5.3: any mask)
                s.sendall(b"\x8a\x86\x00\x00\x00\x00pychat")
        assert b"HTTP/1.1 101" in data
        assert len(pings) >= 4, "no pings"
        assert b"idle timeout" not in data  # its pongs kept it alive past --idle-timeout 3


def test_closing_the_websocket_is_leaving_the_others_get_users(web_serve, clients):
    port, web = web_serve
    room = "#" + unique("c")
    t = Connection("127.0.0.1", port, timeout=TIMEOUT)
    clients.append(t)
    t.handshake()
    t.send(f"/join {room}")
    t.expect(f"ROOM:{room}")
    with ws_connect(f"ws://127.0.0.1:{web}/ws", open_timeout=TIMEOUT) as ws:
        ws.recv(TIMEOUT)
        uid = ws.recv(TIMEOUT)[3:]
        ws.send(f"/join {room}")
        t.expect(f"USERS:{t.uid},{uid}")
    t.expect(f"USERS:{t.uid}")  # the close handshake ended its session


def test_quit_says_bye_then_a_normal_close_frame(web_serve):
    _, web = web_serve
    with ws_connect(f"ws://127.0.0.1:{web}/ws", open_timeout=TIMEOUT) as ws:
        for _ in range(3):
            ws.recv(TIMEOUT)
        ws.send("/quit")
        assert ws.recv(TIMEOUT) == "BYE"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_sigterm_tells_web_clients_and_closes_them(procs):
    p, _ = start_serve(acceptors=1)
    procs.append(p)
    web = web_port(p)
    with ws_connect(f"ws://127.0.0.1:{web}/ws", open_timeout=TIMEOUT) as ws:
        ws.recv(TIMEOUT)
        p.proc.terminate()
        lines = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                lines.append(ws.recv(TIMEOUT))
        assert lines[-1] == "ERROR: server shutting down"
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_the_per_address_limit_counts_web_connections(procs, clients):
    p, _ = start_serve("--max-per-address", "2", "--per-address-exempt", "none",
                       acceptors=1)
    procs.append(p)
    web = web_port(p)
    web_client(web, clients)
    web_client(web, clients)
    got = raw_exchange(web, b"")  # (refused at its accept: the answer comes unasked)
    assert got.startswith(b"HTTP/1.1 503"), got[:100]
    assert b"too many connections from your address" in got


def test_the_web_door_speaks_tls_with_the_line_door_s_certificate(procs, tmp_path):
    from tests.test_tls_e2e import make_certificates
    ca, cert, key = make_certificates(str(tmp_path))
    p, _ = start_serve("--tls-cert", cert, "--tls-key", key, acceptors=1)
    procs.append(p)
    assert any("web https://127.0.0.1:" in line for line in p.output)
    web = web_port(p)
    ctx = ssl.create_default_context(cafile=ca)
    status, headers, _ = http(web, "/", tls=ctx)
    assert status == 200 and headers["Strict-Transport-Security"].startswith("max-age=")
    with ws_connect(f"wss://127.0.0.1:{web}/ws", ssl=ctx, open_timeout=TIMEOUT) as ws:
        assert ws.recv(TIMEOUT) == "Welcome to PyChat Server!"
        assert ws.recv(TIMEOUT).startswith("ID:")
    # plain HTTP on the TLS port is not served
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{web}/", timeout=TIMEOUT).read()


def test_serve_without_the_web_door(procs):
    p, port = start_serve("--no-web")
    procs.append(p)
    assert port not in WEB_PORTS
    assert not any("web http" in line for line in p.output)
