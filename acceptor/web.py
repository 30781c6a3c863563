"""The web door's HTTP side: request heads, the browser client's static files, WebSocket frames.
Pure: no asyncio, no sockets (``WebSession`` in acceptor/web_session.py pumps it).

One port serves the browser client and its WebSocket: ``GET /`` is ``index.html`` and ``GET
/<name>`` any other file of the folder ``acceptor/web/`` (read once, kept in memory: a few tens
of KB), with keep-alive; ``GET /ws`` with an ``Upgrade: websocket`` is the line protocol, one
text frame per line (the handshake itself is websockets' sans-I/O ``ServerProtocol``, fed the
head this module parsed). Anything else gets its HTTP status: 400 for a malformed head, 404, 405
for a method other than GET and HEAD, 403 for an origin not allowed, 431 for a head over
``MAX_HEAD`` bytes.

Origins: a browser sends ``Origin`` with a WebSocket handshake, and any page on any site can
open one to us; so a handshake whose ``Origin`` is neither the page's own (``http://`` or
``https://`` plus the ``Host`` it asked for) nor one of the configured ``--web-origins`` (``*``:
any) is refused with 403. A handshake with no ``Origin`` is not from a browser page (the
console client, a bot, the load generator): allowed.

Server-to-client frames are never masked (RFC 6455 5.1) and no extension is offered, so a frame
is the same bytes for every client: ``frame`` makes it once per line, and a room's line is
framed once for all its web members.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from dataclasses import dataclass, field

MAX_HEAD = 8192  # bytes of a request's line and headers
MAX_HEADERS = 64
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".png": "image/png", ".ico": "image/x-icon",
         ".svg": "image/svg+xml", ".json": "application/json",
         ".webmanifest": "application/manifest+json", ".txt": "text/plain; charset=utf-8"}
# an HTTP date (RFC 9110 5.6.7) as email.utils.formatdate(usegmt=True) writes it, in English
# whatever the locale; and ETags from zlib.crc32: hashlib (libcrypto) and email.utils cost an
# idle acceptor 1.5 MB more than the two lines they were used for (issue 18)
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; "
       "object-src 'none'")
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
)
HSTS = ("Strict-Transport-Security", "max-age=31536000")
REASONS = {200: "OK", 201: "Created", 304: "Not Modified", 400: "Bad Request",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           409: "Conflict", 410: "Gone", 411: "Length Required", 413: "Content Too Large",
           426: "Upgrade Required", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable", 507: "Insufficient Storage"}
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}\Z")  # an upload's token, a file's id
# headers a response gets here whatever a file's own list says
OWN_HEADERS = {"date", "server", "connection", "content-security-policy",
               "x-content-type-options", "referrer-policy", "x-frame-options",
               "cross-origin-opener-policy", "cross-origin-resource-policy",
               "permissions-policy", "strict-transport-security"}
FILE_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


class HttpError(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass
class Head:
    """A parsed request head; header names lowercased (a repeated header: the last one)."""
    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""  # the head's bytes, with its blank line

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        value = self.headers.get("connection", "").lower()
        return "close" not in value if self.version == "HTTP/1.1" else "keep-alive" in value

    @property
    def upgrade(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket"


def take_head(buf: bytearray) -> Head | None:
    """The next request head in ``buf`` (removed from it with its blank line), or None when it
    has not all come. Raises ``HttpError`` for a malformed or over-long head."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise HttpError(431, "request head too long")
        return None
    if end + 4 > MAX_HEAD:
        raise HttpError(431, "request head too long")
    raw = bytes(buf[:end + 4])
    del buf[:end + 4]
    try:
        text = raw[:end].decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(400, "unsupported HTTP version")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, "too many headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
            raise HttpError(400, "malformed header")
        headers[name.lower()] = value.strip()
    return Head(method, target, version, headers, raw)


def origin_allowed(head: Head, allowed: tuple[str, ...]) -> bool:
    """May this WebSocket handshake proceed? No Origin (not a browser page), the page's own
    origin, or one configured (``*``: any)."""
    origin = head.headers.get("origin")
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    host = head.headers.get("host", "")
    return bool(host) and origin in (f"http://{host}", f"https://{host}")


def http_date(when: float | None = None) -> str:
    """``Sun, 06 Dec 2026 23:49:58 GMT``: now, or ``when`` (seconds since the epoch)."""
    t = time.gmtime(when)
    return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (_DAYS[t.tm_wday], t.tm_mday,
                                                    _MONTHS[t.tm_mon - 1], t.tm_year,
                                                    t.tm_hour, t.tm_min, t.tm_sec)


def etag(data: bytes) -> str:
    """A strong validator of a static file's bytes: the same on every acceptor, and changed
    with the file (CRC-32 and size; a cache check, no secret)."""
    return '"%08x-%x"' % (zlib.crc32(data), len(data))


def response(status: int, headers: list[tuple[str, str]], body: bytes = b"", *,
             head_only: bool = False, keep_alive: bool = False, tls: bool = False) -> bytes:
    """An HTTP/1.1 response with the security headers."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
             f"Date: {http_date()}", "Server: pychat"]
    lines += [f"{k}: {v}" for k, v in (*SECURITY_HEADERS, *headers)]
    if tls:
        lines.append("{}: {}".format(*HSTS))
    if status != 304:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return data if head_only or status == 304 else data + body


def file_head(headers: list[tuple[str, str]], *, keep_alive: bool, tls: bool) -> bytes:
    """The head of a stored file's response: its own headers (type, length, disposition) and
    a policy that gives it no script, whatever a browser makes of it."""
    lines = ["HTTP/1.1 200 OK", f"Date: {http_date()}", "Server: pychat",
             f"Content-Security-Policy: {FILE_CSP}", "X-Content-Type-Options: nosniff",
             "Referrer-Policy: no-referrer", "Cross-Origin-Resource-Policy: same-origin",
             "Cache-Control: private, max-age=86400"]
    lines += [f"{k}: {v}" for k, v in headers]
    if tls:
        lines.append("{}: {}".format(*HSTS))
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def error_response(status: int, text: str, tls: bool = False,
                   extra: list[tuple[str, str]] | None = None) -> bytes:
    return response(status, [("Content-Type", "text/plain; charset=utf-8"),
                             ("Cache-Control", "no-store"), *(extra or [])],
                    (text + "\n").encode("utf-8"), tls=tls)


class Static:
    """The browser client's files: name -> (bytes, type, etag), read once."""

    def __init__(self, folder: str = STATIC_DIR):
        self.files: dict[str, tuple[bytes, str, str]] = {}
        if not os.path.isdir(folder):
            return
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            kind = TYPES.get(os.path.splitext(name)[1].lower())
            if kind is None or not os.path.isfile(path) or name.startswith("."):
                continue
            with open(path, "rb") as f:
                data = f.read()
            self.files[name] = (data, kind, etag(data))

    def serve(self, head: Head, tls: bool = False) -> tuple[bytes, bool]:
        """(the response to a plain HTTP request, whether the connection stays open)."""
        if head.method not in ("GET", "HEAD"):
            return error_response(405, "only GET and HEAD here", tls, [("Allow", "GET, HEAD")]), \
                False
        path = head.path
        name = "index.html" if path == "/" else path[1:] if path.startswith("/") else ""
        found = self.files.get(name)
        if found is None:
            if path == "/ws":
                return error_response(426, "this is a WebSocket endpoint", tls,
                                      [("Upgrade", "websocket")]), False
            return error_response(404, "not found", tls), head.keep_alive
        data, kind, etag = found
        keep = head.keep_alive
        headers = [("Content-Type", kind), ("Cache-Control", "no-cache"), ("ETag", etag)]
        if head.headers.get("if-none-match") == etag:
            return response(304, headers, keep_alive=keep, tls=tls), keep
        return response(200, headers, data, head_only=head.method == "HEAD", keep_alive=keep,
                        tls=tls), keep


# ---- WebSocket frames (server to client: unmasked, RFC 6455 5.2) --------------------------------

def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final, unmasked frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def frames(data: bytes) -> bytes:
    """Server lines (``\\n``-ended, one or more) as one text frame each."""
    if data.endswith(b"\n"):
        data = data[:-1]
    if b"\n" not in data:
        return frame(data)
    return b"".join(frame(line) for line in data.split(b"\n"))


def close_frame(code: int = 1000, reason: str = "") -> bytes:
    return frame(code.to_bytes(2, "big") + reason.encode("utf-8")[:120], 0x8)


PING = frame(b"pychat", 0x9)
