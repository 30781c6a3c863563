"""An idle server loads only what it uses (issue 18, "Footprint"), read from /proc/PID/maps.

The heavy shared objects come when first needed, not at start: the router maps neither libssl nor
libcrypto (no asyncio, hashlib or hmac until a login or a file needs them) nor argon2's and
cffi's objects until the first password; an acceptor without a certificate maps no libssl or
libcrypto (asyncio imported without ssl: pychat.config.import_asyncio). The acceptors here run
asyncio's own loop: uvloop imports ssl itself, whatever the acceptor needs. A register and a
login then load argon2 in the router (so the check means something), and an acceptor with a
certificate still serves TLS, its web door too. RSS figures vary from machine to machine: they
are bench/footprint.py's, not asserted here.
"""

from __future__ import annotations

import http.client
import os
import re
import ssl

import pytest

from support.client import Connection, WsConnection
from support.procs import child_pids, start_serve, web_port
from tests.test_tls_e2e import TlsClient, make_certificates

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90),
              pytest.mark.skipif(not os.path.exists("/proc/self/maps"),
                                 reason="reads /proc/PID/maps (Linux)")]

ASYNCIO = {"PYCHAT_LOOP": "asyncio"}
TLS_LIBS = (r"/libssl\.so", r"/libcrypto\.so", r"/_ssl\.cpython", r"/_hashlib\.cpython")
ARGON2 = (r"/_cffi_backend\.", r"/argon2/_ffi\.|/_argon2")


def mapped(pid: int, patterns: tuple[str, ...]) -> list[str]:
    """The files ``pid`` has mapped that match any of ``patterns``."""
    with open(f"/proc/{pid}/maps") as f:
        paths = {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}
    return sorted(p for p in paths if any(re.search(rx, p) for rx in patterns))


def acceptor_pids(p) -> list[int]:
    return [pid for role, pid in child_pids(p).items() if role.startswith("acceptor")]


def test_an_idle_server_maps_no_tls_and_no_argon2_until_a_login(procs):
    p, port = start_serve(env=ASYNCIO)
    procs.append(p)
    router = child_pids(p)["router"]
    acceptors = acceptor_pids(p)
    assert len(acceptors) >= 1
    assert mapped(router, TLS_LIBS) == []
    assert mapped(router, ARGON2) == []
    for pid in acceptors:
        assert mapped(pid, TLS_LIBS) == [], f"acceptor {pid}"
    assert mapped(p.pid, TLS_LIBS) == []  # the supervisor: no certificate to check
    # the doors work without ssl: a line client, the web door's page and its WebSocket
    web = http.client.HTTPConnection("127.0.0.1", web_port(p), timeout=10)
    web.request("GET", "/")
    answer = web.getresponse()
    assert answer.status == 200 and answer.getheader("ETag") and answer.getheader("Date")
    answer.read()
    web.request("GET", "/", headers={"If-None-Match": answer.getheader("ETag")})
    assert web.getresponse().status == 304
    web.close()
    ws = WsConnection("127.0.0.1", port)
    ws.handshake()
    c = Connection("127.0.0.1", port)
    try:
        uid = c.handshake()
        c.send("/cap end")
        c.expect("END cap")
        name = "fp" + uid
        assert c.ask(f"/nick {name}")[0] == f"OK nick {name}"
        assert c.ask("/register correct-horse-9") == [f"OK register {name}"]
        assert c.ask(f"/login {name} correct-horse-9")[0] == f"OK login {name}"
    finally:
        c.close()
        ws.close()
    assert mapped(router, ARGON2) != []  # the first password brought argon2 and cffi
    for pid in acceptors:  # a WebSocket's handshake takes a SHA-1 (hashlib), never ssl
        assert mapped(pid, (r"/libssl\.so", r"/_ssl\.cpython")) == [], f"acceptor {pid}"


def test_an_acceptor_with_a_certificate_still_serves_tls(procs, tmp_path):
    ca, cert, key = make_certificates(tmp_path)
    p, port = start_serve("--tls-cert", cert, "--tls-key", key, env=ASYNCIO)
    procs.append(p)
    a, b = TlsClient(port, ca), TlsClient(port, ca)
    try:
        a.handshake()
        b.handshake()
        assert a.sock.version() in ("TLSv1.2", "TLSv1.3")
        a.send("over tls, lazily")
        assert b.expect(f"{a.uid}:") == f"{a.uid}: over tls, lazily"
    finally:
        a.close()
        b.close()
    web = http.client.HTTPSConnection("127.0.0.1", web_port(p), timeout=10,
                                      context=ssl.create_default_context(cafile=ca))
    web.request("GET", "/")
    assert web.getresponse().status == 200
    web.close()
    for pid in acceptor_pids(p):
        assert mapped(pid, (r"/libssl\.so",)) != []
    assert mapped(child_pids(p)["router"], TLS_LIBS) == []  # TLS is the acceptors' alone
