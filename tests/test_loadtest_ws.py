"""`pychat loadtest --proto ws`: the load generator's own WebSocket (clients/loadtest.py: the
upgrade, ``ws_frame``, ``WsReader``), checked against the ``websockets`` library's sans-I/O
protocols as the reference: frames a server writes (any length: 7-bit, 16-bit and 64-bit,
fragmented, with pings between the fragments), read whatever the reads' sizes, by the general
path and by the counting clients' fast path; frames we write, which a server takes (masked);
the upgrade both ways; a ping answered with its pong. Then a short run against
`pychat serve --web-port 0`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from pychat.clients.loadstats import Latencies
from pychat.clients.loadtest import (
    WS_BINARY,
    WS_PING,
    WS_PONG,
    WS_TEXT,
    Client,
    WsError,
    WsReader,
    ws_check_answer,
    ws_frame,
    ws_key,
    ws_mask,
    ws_request,
)
from support.procs import ROOT, python_m, start_serve, web_port

from .test_tls_e2e import make_certificates

MARKER = b": LT "
BIG = 1 << 20  # the reference protocols' frame size limit, raised for the 64-bit lengths


def server() -> ServerProtocol:
    return ServerProtocol(state=State.OPEN, max_size=8 * BIG)


def reference_client() -> ClientProtocol:
    return ClientProtocol(parse_uri("ws://127.0.0.1:1/ws"), state=State.OPEN, max_size=8 * BIG)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at these places (reads of any size, a frame across several)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# a chat line as the server writes it, or a payload of a given length class
line = st.builds(lambda uid, seq, pad: f"{uid}: LT 3 {seq} 123456789 {pad}".encode(),
                 st.integers(100000, 999999), st.integers(0, 10**6),
                 st.text(alphabet="xyz é", max_size=200))
lengths = st.one_of(st.integers(0, 125), st.integers(126, 65535), st.integers(65536, 70000))
payload = st.one_of(line, lengths.map(lambda n: (b"ab: LT c" * (n // 8 + 1))[:n]))


@st.composite
def server_stream(draw):
    """What a server writes: text messages (some fragmented, pings between fragments), pings,
    binary; and the messages a reader must give back, in order."""
    srv = server()
    want: list[tuple[int, bytes]] = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["text", "text", "text", "fragmented", "ping", "binary"]))
        data = draw(payload)
        if kind == "text":
            srv.send_text(data)
            want.append((WS_TEXT, data))
        elif kind == "binary":
            srv.send_binary(data)
            want.append((WS_BINARY, data))
        elif kind == "ping":
            srv.send_ping(data[:125])
            want.append((WS_PING, data[:125]))
        else:
            cuts = sorted(draw(st.lists(st.integers(0, len(data)), min_size=1, max_size=3)))
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
            srv.send_text(pieces[0], fin=False)
            for piece in pieces[1:-1]:
                srv.send_continuation(piece, fin=False)
                if draw(st.booleans()):  # a control frame between the fragments
                    srv.send_ping(b"between")
                    want.append((WS_PING, b"between"))
            srv.send_continuation(pieces[-1], fin=True)
            want.append((WS_TEXT, data))
    return b"".join(srv.data_to_send()), want


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(server_stream(), st.lists(st.integers(0, 1 << 20), max_size=12))
def test_the_reader_gives_back_what_a_server_wrote_whatever_the_reads(stream, cuts):
    wire, want = stream
    reader, got = WsReader(), []
    for piece in split(wire, cuts):
        got += reader.feed(piece)
    assert got == want
    assert reader.buf == b"" and reader.parts is None
    # the reference client reads the same bytes the same way
    ref = reference_client()
    ref.receive_data(wire)
    frames = [ev for ev in ref.events_received() if isinstance(ev, Frame)]
    assert b"".join(f.data for f in frames if f.opcode in (Opcode.TEXT, Opcode.CONT)) \
        == b"".join(p for op, p in want if op == WS_TEXT)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(server_stream(), st.lists(st.integers(0, 1 << 20), max_size=12))
def test_the_counting_path_counts_what_the_general_path_reads(stream, cuts):
    wire, want = stream
    reader, found, others = WsReader(), 0, []
    for piece in split(wire, cuts):
        n, msgs = reader.count(piece, MARKER)
        found += n
        for op, data in msgs:
            if op == WS_TEXT:
                found += data.count(MARKER)
            else:
                others.append((op, data))
    assert found == sum(data.count(MARKER) for op, data in want if op == WS_TEXT)
    assert others == [(op, data) for op, data in want if op != WS_TEXT]


def test_the_counting_path_walks_only_headers_of_plain_text_frames():
    srv = server()
    for i in range(1000):
        srv.send_text(f"123456: LT 1 {i} 99 {'x' * (i % 300)}".encode())
    wire = b"".join(srv.data_to_send())
    reader = WsReader()
    n, msgs = reader.count(wire, MARKER)
    assert (n, msgs, reader.buf) == (1000, [], b"")
    n, msgs = reader.count(wire[:-3], MARKER)  # the last frame incomplete: kept for the next
    assert n == 999 and msgs == []
    assert reader.buf[0] == 0x81 and wire[:-3].endswith(reader.buf) and len(reader.buf) < 400


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([WS_TEXT, WS_BINARY, WS_PING, WS_PONG]), payload),
                min_size=1, max_size=6))
def test_frames_we_write_are_masked_and_a_server_reads_them(messages):
    srv = server()
    wire = b""
    for op, data in messages:
        data = data[:125] if op in (WS_PING, WS_PONG) else data
        frame = ws_frame(data, op)
        assert frame[1] & 0x80  # masked, as a client's frame must be (RFC 6455 5.3)
        wire += frame
    srv.receive_data(wire)  # (an unmasked frame would fail the connection: 1002)
    frames = [ev for ev in srv.events_received() if isinstance(ev, Frame)]
    assert srv.state is State.OPEN
    assert [(f.opcode.value, f.data) for f in frames] == [
        (op, data[:125] if op in (WS_PING, WS_PONG) else data) for op, data in messages]


def test_masks_differ_frame_to_frame_and_the_xor_is_its_own_inverse():
    masks = {ws_frame(b"same line")[2:6] for _ in range(50)}
    assert len(masks) > 45  # random, per frame
    for n in (0, 1, 3, 4, 5, 1000, 70001):
        data = os.urandom(n)
        assert ws_mask(ws_mask(data, b"\x01\x02\x03\x04"), b"\x01\x02\x03\x04") == data
    assert ws_mask(b"\x00\x00\x00\x00\x00", b"abcd") == b"abcda"


def test_the_upgrade_is_one_a_server_accepts_and_its_answer_is_checked():
    key = ws_key()
    srv = ServerProtocol()
    srv.receive_data(ws_request("127.0.0.1", 8080, key))
    request, = srv.events_received()
    assert isinstance(request, Request) and request.path == "/ws"
    assert request.headers["Origin"] == "http://127.0.0.1:8080"
    assert b"Origin: https://h:1\r\n" in ws_request("h", 1, key, tls=True)
    response = srv.accept(request)
    srv.send_response(response)
    assert srv.state is State.OPEN
    head = b"".join(srv.data_to_send())
    ws_check_answer(head.split(b"\r\n\r\n")[0], key)
    with pytest.raises(WsError, match="Accept"):
        ws_check_answer(head.split(b"\r\n\r\n")[0], ws_key())
    with pytest.raises(WsError, match=re.escape("refused the WebSocket upgrade: 'HTTP/1.1 404")):
        ws_check_answer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0", key)


def test_bad_frames_are_errors():
    for wire in (b"\x81\x7f" + (1 << 40).to_bytes(8, "big"),  # far too long
                 b"\xc1\x01a",  # RSV1 (compression) never agreed
                 b"\x80\x01a",  # a continuation of nothing
                 b"\x09\x01a",  # a fragmented ping
                 b"\x83\x00"):  # opcode 3
        with pytest.raises(WsError):
            WsReader().feed(wire)


class Transport:
    def __init__(self):
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


@pytest.mark.parametrize("sampled", [True, False])
def test_a_client_answers_a_ping_with_its_pong_and_reads_lines(sampled):
    asyncio.run(answers_a_ping(sampled))  # (a Client belongs to a running loop)


async def answers_a_ping(sampled: bool) -> None:
    run = SimpleNamespace(proto="ws", marker=MARKER, args=SimpleNamespace(host="h", port=1),
                          tls=None,
                          latencies=Latencies(), delays=Latencies(), t0=0.0, duplicated=0,
                          order_violations=0)
    c = Client(run, 0, sampled=sampled)  # type: ignore[arg-type]
    t = Transport()
    c.connection_made(t)
    srv = ServerProtocol()
    srv.receive_data(t.written)
    request, = srv.events_received()
    srv.send_response(srv.accept(request))
    srv.send_text(b"Welcome to PyChat Server!")
    srv.send_text(b"ID:123456")
    srv.send_text(b"USERS:123456")
    c.data_received(b"".join(srv.data_to_send()))
    assert c.ready.done()  # USERS: read through the frames
    c.counting = True
    t.written = b""
    srv.send_text(b"123456: LT 0 0 5 x")
    srv.send_ping(b"are you there")
    srv.send_text(b"123456: LT 0 1 5 x")
    data = b"".join(srv.data_to_send())
    for i in range(len(data)):  # a byte at a time
        c.data_received(data[i:i + 1])
    srv.receive_data(t.written)
    pong, = srv.events_received()
    assert (pong.opcode, pong.data) == (Opcode.PONG, b"are you there")
    assert c.count == 2


@pytest.mark.e2e
def test_loadtest_over_websocket_against_serve(procs):
    p, _ = start_serve("--web-port", "0")
    procs.append(p)
    r = subprocess.run(
        python_m("pychat", "loadtest", "--proto", "ws", "--port", str(web_port(p)),
                 "--clients", "30", "--senders", "5", "--rate", "200", "--count", "200",
                 "--sample", "5", "--json"),
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["proto"] == "ws" and out["connected"] == 30 and out["sent"] == 200
    assert out["expected"] == 200 * 30  # the line protocol's echo: every member gets it
    assert out["delivered"] == out["expected"] and out["lost"] == 0
    assert out["duplicated"] == 0 and out["order_violations"] == 0
    assert out["latency_ms"]["count"] == 5 * 200
    assert out["stamp"] == "kernel" and out["loadgen_cpu_s_per_million"] > 0
    assert out["late_pushes"] == 0 and not any("settle" in n for n in out["notes"]), out["notes"]
    assert "\r" not in r.stderr and "loadtest: t=" in r.stderr  # a log: a line per second


@pytest.mark.e2e
def test_loadtest_ws_on_a_port_that_is_no_web_door_says_so(serve):
    r = subprocess.run(
        python_m("pychat", "loadtest", "--proto", "ws", "--port", str(serve), "--clients", "2",
                 "--count", "2", "--quiet", "--timeout", "5"),
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "did not answer the WebSocket upgrade in HTTP: 'Welcome to PyChat Server!'" \
        in r.stderr


@pytest.mark.e2e
def test_loadtest_over_websocket_with_tls(procs, tmp_path):
    """wss: the web door behind `--tls-cert`, the clients verifying it with ``--ca``."""
    ca, cert, key = make_certificates(tmp_path)
    p, _ = start_serve("--web-port", "0", "--tls-cert", cert, "--tls-key", key)
    procs.append(p)
    r = subprocess.run(
        python_m("pychat", "loadtest", "--proto", "ws", "--port", str(web_port(p)), "--ca", ca,
                 "--clients", "10", "--senders", "2", "--rate", "100", "--count", "50",
                 "--sample", "2", "--json", "--quiet"),
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["delivered"] == out["expected"] == 50 * 10 and out["lost"] == 0
    assert out["latency_ms"]["count"] == 2 * 50
