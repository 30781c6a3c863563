"""Files end to end (PROTOCOL Part 5): ``/upload`` from a chat client, the bytes by HTTP ``PUT``
to the web door (urllib, http.client and curl), the ``FILE:`` line to the room or to a private
target and the sender, the download byte-identical, and every bad input the issue lists: a
file too large, past the quota, a declared size that does not match, a PUT that stalls, one
that is cut, two to one URL, an expired URL, names with path parts or bidi controls, a
misleading extension, script in a file. Real processes: ``pychat serve`` with its router's
store, its acceptors' web doors and the file channel between them.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request
import uuid

import pytest

from support.client import Connection, WsConnection
from support.procs import kill_router, start_serve, web_port

pytestmark = pytest.mark.e2e
TIMEOUT = 10.0
FILE_RE = re.compile(r"(?:@time=\S+ )?FILE:(\d{6}) (\d+) (https?://\S+) (.+)\Z")


@pytest.fixture(scope="module")
def files_serve(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    p, port = start_serve("--history", "memory", "--accounts", "memory", "--data-dir",
                          str(data), "--files-max-mb", "8")
    yield port, web_port(p)
    p.stop()


def unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:8]


def client(port: int, clients: list, room: str = "", cls=Connection) -> Connection:
    c = cls("127.0.0.1", port, timeout=TIMEOUT)
    clients.append(c)
    c.handshake()
    if room:
        c.send(f"/join {room}")
        c.expect(f"ROOM:{room}")
    return c


def ask_upload(c: Connection, size: int, name: str, target: str = "") -> str:
    c.send(f"/upload {size} {name} {target}".rstrip())
    line = c.expect(lambda ln: ln.startswith(("UPLOAD:", "ERROR:")))
    assert line.startswith("UPLOAD:"), line
    url = line[len("UPLOAD:"):]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/upload/[A-Za-z0-9_-]{22}", url), url
    return url


def put(url: str, data: bytes, headers: dict | None = None) -> tuple[int, str, dict]:
    req = urllib.request.Request(url, data=data, method="PUT", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def get(url: str, method: str = "GET") -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def file_line(c: Connection) -> re.Match:
    line = c.expect(lambda ln: FILE_RE.match(ln) is not None)
    m = FILE_RE.match(line)
    assert m is not None
    return m


def marker(c: Connection, *observers: Connection) -> None:
    """Nothing else reached the observers before c's next line (a marker they all get)."""
    text = unique("marker-")
    c.send(text)
    for o in (c, *observers):
        got = o.expect(lambda ln: ln.endswith(text) or ln.startswith(("FILE:", "@time=")))
        assert got.endswith(text), f"{o.uid} got {got!r} before the marker"


# ---- the flow ------------------------------------------------------------------------------------

def test_a_file_put_to_its_url_reaches_the_room_and_comes_back_identical(files_serve, clients):
    port, _ = files_serve
    room = "#" + unique("f")
    a, b = client(port, clients, room), client(port, clients, room)
    b.send("/cap time")
    b.expect("OK cap time")
    data = os.urandom(300_000)
    url = ask_upload(a, len(data), "holiday.bin")
    status, body, headers = put(url, data)
    assert status == 201, body
    file_url = body.strip()
    assert headers["Location"] == file_url
    m = file_line(a)
    assert (m.group(1), int(m.group(2)), m.group(3), m.group(4)) == (
        a.uid, len(data), file_url, "holiday.bin")
    line = b.expect(lambda ln: "FILE:" in ln)
    assert re.match(r"@time=\S+Z FILE:", line), line  # a chat line: tagged for /cap time
    status, got, headers = get(file_url)
    assert status == 200 and got == data
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"].startswith("attachment")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in headers["Content-Security-Policy"]
    status, got, headers = get(file_url, "HEAD")
    assert status == 200 and got == b"" and headers["Content-Length"] == str(len(data))
    # in the room's history like any chat line
    b.send("/history 5")
    b.expect(lambda ln: ln.endswith(f"FILE:{a.uid} {len(data)} {file_url} holiday.bin"))
    # the URL was for one upload
    assert put(url, data)[0] == 404


def test_curl_uploads_with_expect_100_continue_and_downloads(files_serve, clients, tmp_path):
    port, _ = files_serve
    a = client(port, clients, "#" + unique("c"))
    data = os.urandom(3 * 1024 * 1024 + 17)  # curl asks Expect: 100-continue above 1 MiB
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    url = ask_upload(a, len(data), "big.bin")
    r = subprocess.run(["curl", "-sS", "--fail-with-body", "-T", str(src), url, "-w",
                        "\n%{http_code}"], capture_output=True, text=True, timeout=60)
    body, code = r.stdout.rsplit("\n", 1)
    assert code == "201", (r.stdout, r.stderr)
    m = file_line(a)
    assert m.group(3) == body.strip()
    out = tmp_path / "back.bin"
    r = subprocess.run(["curl", "-sS", "--fail", "-o", str(out), m.group(3)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data


def test_a_private_file_reaches_the_target_and_the_sender_only(files_serve, clients):
    port, _ = files_serve
    room = "#" + unique("p")
    a, b, c = (client(port, clients, room) for _ in range(3))
    url = ask_upload(a, 5, "note.txt", b.uid)
    assert put(url, b"psst\n")[0] == 201
    ma, mb = file_line(a), file_line(b)
    assert ma.group(0) == mb.group(0) and mb.group(1) == a.uid
    marker(a, c)  # c, in the same room, got nothing before the marker
    _, got, headers = get(mb.group(3))
    assert got == b"psst\n" and headers["Content-Type"] == "text/plain; charset=utf-8"


def test_every_door_shows_the_file(files_serve, clients):
    """A web-door (WebSocket) client gets the FILE: line as any line; an IRC user sees the URL
    (tests/test_irc_e2e.py has the IRC client; here the web one)."""
    port, _ = files_serve
    room = "#" + unique("d")
    a = client(port, clients, room)
    w = client(port, clients, room, cls=WsConnection)
    url = ask_upload(a, 3, "abc.txt")
    assert put(url, b"abc")[0] == 201
    assert file_line(w).group(4) == "abc.txt"


# ---- refusals and failures -----------------------------------------------------------------------

def test_refusals_at_upload_time(procs, clients):
    p, port = start_serve("--history", "memory", "--accounts", "memory", "--files", "memory",
                          "--files-max-mb", "1", "--files-quota-mb", "1.5", acceptors=1)
    procs.append(p)
    a = client(port, clients)
    a.send("/cap codes")
    a.expect("OK cap codes")
    a.send(f"/upload {2 * 1024 * 1024} big.iso")
    assert a.expect_prefix("@code=too-large ERROR:")
    a.send("/upload 12 x.txt nobody-like-this")
    assert a.expect_prefix("@code=no-such-user ERROR:")
    a.send("/upload lots x.txt")
    assert a.expect_prefix("@code=usage ERROR:")
    # the quota counts uploads in progress: 1 MiB + 1 MiB > 1.5 MiB
    ask_upload(a, 1024 * 1024, "one.bin")
    a.send(f"/upload {1024 * 1024} two.bin")
    assert a.expect_prefix("@code=quota ERROR:")


def test_put_statuses_for_bad_requests(files_serve, clients):
    port, web = files_serve
    a = client(port, clients, "#" + unique("s"))
    base = f"http://127.0.0.1:{web}"
    assert put(f"{base}/upload/AAAAAAAAAAAAAAAAAAAAAA", b"x")[0] == 404  # no such upload
    assert put(f"{base}/upload/..%2f..%2fetc", b"x")[0] == 404
    url = ask_upload(a, 10, "ten.txt")
    status, body, _ = put(url, b"123456789")  # 9 bytes, 10 declared
    assert status == 400 and "10 bytes" in body
    # no Content-Length / chunked
    path = url.split(str(web), 1)[1]
    for headers in ({}, {"Transfer-Encoding": "chunked"}):
        conn = http.client.HTTPConnection("127.0.0.1", web, timeout=TIMEOUT)
        conn.putrequest("PUT", path, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        assert conn.getresponse().status == 411
        conn.close()
    # the slot is still there for a right PUT
    assert put(url, b"0123456789")[0] == 201
    file_line(a)


def test_two_puts_to_one_url_the_second_is_refused(files_serve, clients):
    port, web = files_serve
    a = client(port, clients, "#" + unique("t"))
    url = ask_upload(a, 100_000, "twice.bin")
    path = url.split(str(web), 1)[1]
    first = socket.create_connection(("127.0.0.1", web), timeout=TIMEOUT)
    first.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                  f"Expect: 100-continue\r\n\r\n".encode())
    # 100 Continue: the router has taken this PUT for the upload (its credit came)
    assert first.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    first.sendall(b"a" * 50_000)  # half the body: it is being sent
    status, body, _ = put(url, b"b" * 100_000)
    assert status == 409, body
    first.sendall(b"a" * 50_000)
    assert first.recv(100).startswith(b"HTTP/1.1 201")
    first.close()
    assert file_line(a).group(2) == "100000"


def test_a_stalled_put_is_given_up_and_nothing_is_announced(procs, clients):
    p, port = start_serve("--history", "memory", "--accounts", "memory", "--files", "memory",
                          "--transfer-stall", "1", acceptors=1)
    procs.append(p)
    web = web_port(p)
    room = "#" + unique("st")
    a, b = client(port, clients, room), client(port, clients, room)
    url = ask_upload(a, 10_000, "slow.bin")
    path = url.split(str(web), 1)[1]
    with socket.create_connection(("127.0.0.1", web), timeout=TIMEOUT) as s:
        s.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n".encode()
                  + b"x" * 100)  # and then nothing
        answer = s.recv(1000)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    line = a.expect_prefix("ERROR: upload of slow.bin failed")
    assert "stalled" in line
    marker(a, b)  # no FILE: line came first
    assert put(url, b"x" * 10_000)[0] == 404  # and the URL is spent


def test_a_put_cut_off_announces_nothing_and_tells_the_sender(files_serve, clients):
    port, web = files_serve
    room = "#" + unique("cut")
    a, b = client(port, clients, room), client(port, clients, room)
    url = ask_upload(a, 200_000, "cut.bin")
    path = url.split(str(web), 1)[1]
    s = socket.create_connection(("127.0.0.1", web), timeout=TIMEOUT)
    s.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n".encode()
              + b"x" * 70_000)
    s.close()
    line = a.expect_prefix("ERROR: upload of cut.bin failed")
    assert "went away" in line
    marker(a, b)
    assert put(url, b"x" * 200_000)[0] == 404


def test_an_unused_url_expires_and_its_sender_is_told(procs, clients):
    p, port = start_serve("--history", "memory", "--accounts", "memory", "--files", "memory",
                          "--upload-ttl", "1", acceptors=1)
    procs.append(p)
    a = client(port, clients)
    url = ask_upload(a, 3, "late.txt")
    line = a.expect_prefix("ERROR: upload of late.txt failed")  # the router's tick, ~1 s on
    assert "expired" in line
    assert put(url, b"abc")[0] == 404


@pytest.mark.parametrize("name, content, shown, kind, disposition", [
    ("../../etc/passwd", b"root:x:0:0\n", "passwd", "text/plain; charset=utf-8", "inline"),
    ("evil\u202egnp.exe", b"MZ\x90\x00" + bytes(60), "evilgnp.exe", "application/octet-stream",
     "attachment"),
    ("cute.png", b"<script>alert(1)</script>", "cute.png.txt", "text/plain; charset=utf-8",
     "inline"),
    ("page.html", b"<html><body onload=alert(1)>hi</body></html>", "page.html.txt",
     "text/plain; charset=utf-8", "inline"),
    ("pic.svg", b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>", "pic.svg.txt",
     "text/plain; charset=utf-8", "inline"),
    ("real.png", b"\x89PNG\r\n\x1a\n" + bytes(40), "real.png", "image/png", "inline"),
])
def test_names_are_made_safe_and_types_sniffed_never_believed(files_serve, clients, name,
                                                              content, shown, kind,
                                                              disposition):
    port, _ = files_serve
    a = client(port, clients, "#" + unique("n"))
    url = ask_upload(a, len(content), name)
    assert put(url, content)[0] == 201
    m = file_line(a)
    assert m.group(4) == shown
    assert "/" not in m.group(4) and "\u202e" not in m.group(4)
    _, got, headers = get(m.group(3))
    assert got == content
    assert headers["Content-Type"] == kind
    assert headers["Content-Disposition"].startswith(disposition)
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in headers["Content-Security-Policy"]


def test_unknown_files_are_404(files_serve):
    _, web = files_serve
    assert get(f"http://127.0.0.1:{web}/files/AAAAAAAAAAAAAAAAAAAAAA/x.png")[0] == 404
    assert get(f"http://127.0.0.1:{web}/files/short/x.png")[0] == 404


def test_stored_files_survive_a_router_sigkill(procs, clients, tmp_path):
    p, port = start_serve("--history", "memory", "--accounts", "memory", "--data-dir",
                          str(tmp_path))
    procs.append(p)
    a = client(port, clients)
    data = os.urandom(70_000)
    url = ask_upload(a, len(data), "kept.bin")
    assert put(url, data)[0] == 201
    file_url = file_line(a).group(3)
    kill_router(p)
    status, got, _ = get(file_url)
    assert status == 200 and got == data


def test_transfers_keep_to_their_pace(procs, clients):
    """--transfer-mbps holds an acceptor's file transfers to a pace (chat goes first): 4 MiB
    at 4 MB/s cannot be done in less than about a second, up or down (a lower bound: a slow
    machine only takes longer), and arrives whole."""
    import time
    p, port = start_serve("--history", "memory", "--accounts", "memory", "--files", "memory",
                          "--transfer-mbps", "4", acceptors=1)
    procs.append(p)
    a = client(port, clients)
    data = os.urandom(4 * 1024 * 1024)
    url = ask_upload(a, len(data), "paced.bin")
    began = time.monotonic()
    status, body, _ = put(url, data)
    took_up = time.monotonic() - began
    assert status == 201, body
    began = time.monotonic()
    status, got, _ = get(body.strip())
    took_down = time.monotonic() - began
    assert got == data
    assert took_up > 0.8 and took_down > 0.8, (took_up, took_down)


def test_uploads_begun_past_the_rate_are_refused(procs, clients):
    """--files-per-hour: 20 uploads at once (the burst), then the rate: the 21st is refused
    (counted when begun: these are never sent)."""
    p, port = start_serve("--history", "memory", "--accounts", "memory", "--files", "memory",
                          "--files-per-hour", "1", acceptors=1)
    procs.append(p)
    a = client(port, clients)
    assert a.ask("/cap codes end") == ["OK cap codes end"]
    for i in range(20):
        assert a.ask(f"/upload 10 n{i}.txt")[0].startswith("UPLOAD:")
    refused = a.ask("/upload 10 one-more.txt")
    assert refused[0].startswith("@code=rate ERROR:"), refused


def test_a_private_file_to_an_account_reaches_each_of_its_sessions(files_serve, clients):
    """As /msg: a file sent to a logged-in name reaches every session of that account."""
    port, _ = files_serve
    name, password = unique("acct"), "a-good-password"
    a1 = client(port, clients)
    a1.send(f"/nick {name}")
    a1.expect(f"OK nick {name}")
    a1.send(f"/register {password}")
    a1.expect(f"OK register {name}")
    a2 = client(port, clients)
    a2.send(f"/login {name} {password}")
    a2.expect(f"OK login {name}")
    sender = client(port, clients)
    url = ask_upload(sender, 4, "both.txt", name)
    assert put(url, b"two!")[0] == 201
    lines = {file_line(c).group(0) for c in (a1, a2, sender)}
    assert len(lines) == 1
