"""Files over HTTP for the clients (PROTOCOL Part 5): an upload's ``PUT``, a download's ``GET``
and a bounded fetch (for image previews), all streamed: a file is never whole in memory.

These are blocking calls for a thread of their own (``Session.send_file`` and
``Session.download`` start one per transfer): the session's socket thread and the fronts'
threads never wait on them. ``https`` URLs are checked with the session's TLS context (``--tls``,
``--ca``), or the system's CAs when the session has none; the certificate must name the URL's
host, as for the chat connection. Every failure is a ``TransferError`` whose text is one line
for a person.
"""

from __future__ import annotations

import http.client
import os
import ssl
import threading
import time
from collections.abc import Callable
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

CHUNK = 64 * 1024        # bytes read from disk (or the network) and written at a time
TIMEOUT = 30.0           # seconds a connect, or a read or write that moves nothing, may take
PROGRESS_EVERY = 0.1     # seconds between two progress reports (the first and last always go)
NAME_MAX = 255           # the longest name /upload takes (PROTOCOL Part 5)

Report = Callable[[int], None]


class TransferError(Exception):
    """A transfer failed; ``str()`` says why in one line."""


def upload_name(path: str) -> str:
    """The name an ``/upload`` sends for the file at ``path``: its base name, whitespace as
    ``_`` (the name is one word), at most ``NAME_MAX`` characters with its extension kept."""
    name = "_".join(os.path.basename(path).split()) or "file"
    if len(name) > NAME_MAX:
        stem, ext = os.path.splitext(name)
        ext = ext[:16]
        name = stem[:NAME_MAX - len(ext)] + ext
    return name


def human_size(n: int) -> str:
    """``34.2 KB``, ``2.0 MB``, ``512 B`` (decimal units, as file managers show them)."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1000
        if value < 999.95 or unit == "TB":
            return f"{value:.1f} {unit}"
    return f"{n} B"  # (not reached)


class Progress:
    """Calls ``report(done)`` at 0, then at most every ``PROGRESS_EVERY`` seconds, and at the
    end (``final``); never twice with the same count, never a smaller one."""

    def __init__(self, report: Report, every: float = PROGRESS_EVERY):
        self.report = report
        self.every = every
        self.last = -1
        self.at = 0.0

    def __call__(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if done <= self.last or (not final and self.last >= 0 and now - self.at < self.every):
            return
        self.last, self.at = done, now
        self.report(done)


def _connect(url: str, tls: ssl.SSLContext | None,
             timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TransferError(f"not an http(s) URL: {url}")
    try:
        port = parts.port
    except ValueError:
        raise TransferError(f"a bad port in {url}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, port, timeout=timeout,
                                           context=tls or ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
    return conn, target


def _why(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"the server's certificate was refused: {e.verify_message or e.reason}"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e}"
    if isinstance(e, TimeoutError):
        return "the server stopped answering"
    if isinstance(e, OSError):
        return e.strerror or str(e) or type(e).__name__
    return str(e) or type(e).__name__


def _answer(resp: http.client.HTTPResponse) -> str:
    """An HTTP error in one line: status, reason and the body's first line."""
    try:
        body = resp.read(2000).decode("utf-8", "replace").strip().splitlines()
    except (OSError, http.client.HTTPException):
        body = []
    said = f": {body[0][:200]}" if body else ""
    return f"the server answered {resp.status} {resp.reason}{said}"


def put_file(url: str, path: str, size: int, tls: ssl.SSLContext | None, report: Report,
             cancelled: threading.Event | None = None, timeout: float = TIMEOUT) -> str:
    """``PUT`` the ``size`` bytes of the file at ``path`` to an upload ``url``, streaming them
    from disk; ``report(bytes sent)`` as they go (not at 0: the caller said that when it
    announced the file). Returns the file's URL (the 201's body)."""
    progress = Progress(report)
    progress.last = 0
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed in the finally, after the response)
    except OSError as e:
        raise TransferError(f"cannot read {path}: {_why(e)}") from None
    conn, target = _connect(url, tls, timeout)
    try:
        if os.fstat(f.fileno()).st_size < size:
            raise TransferError(f"{path} got shorter since it was announced")
        try:
            conn.putrequest("PUT", target, skip_accept_encoding=True)
            conn.putheader("Content-Length", str(size))
            conn.putheader("Content-Type", "application/octet-stream")
            conn.endheaders()
        except (OSError, http.client.HTTPException) as e:
            raise TransferError(f"cannot reach {url}: {_why(e)}") from None
        sent = 0
        try:
            while sent < size:
                if cancelled is not None and cancelled.is_set():
                    raise TransferError("cancelled")
                chunk = f.read(min(CHUNK, size - sent))
                if not chunk:
                    raise TransferError(f"{path} got shorter while it was sent")
                conn.send(chunk)
                sent += len(chunk)
                progress(sent, final=sent == size)
        except (OSError, http.client.HTTPException) as e:
            # the server may have answered (and closed) before taking it all: say its answer
            try:
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException):
                raise TransferError(f"the upload broke off after {sent} of {size} bytes: "
                                    f"{_why(e)}") from None
            raise TransferError(_answer(resp)) from None
        try:
            resp = conn.getresponse()
            if resp.status != 201:
                raise TransferError(_answer(resp))
            body = resp.read(4096).decode("utf-8", "replace").strip()
        except (OSError, http.client.HTTPException) as e:
            raise TransferError(f"no answer to the upload: {_why(e)}") from None
        return body.splitlines()[0] if body else resp.getheader("Location", "")
    finally:
        f.close()
        conn.close()


def get_to(url: str, out: BinaryIO, tls: ssl.SSLContext | None,
           report: Callable[[int, int], None] | None = None,
           cancelled: threading.Event | None = None, limit: int = 0,
           timeout: float = TIMEOUT) -> int:
    """``GET url`` into ``out``, streamed; ``report(bytes so far, total)`` as they come (total 0
    when the server does not say). ``limit``: refuse a body larger than that many bytes
    (0: none). Returns the number of bytes written."""
    conn, target = _connect(url, tls, timeout)
    try:
        try:
            conn.request("GET", target)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            raise TransferError(f"cannot fetch {url}: {_why(e)}") from None
        if resp.status != 200:
            raise TransferError(_answer(resp))
        length = resp.getheader("Content-Length", "")
        total = int(length) if length.isdigit() else 0
        if limit and total > limit:
            raise TransferError(f"larger than {limit} bytes")
        progress = Progress(lambda done: report(done, total)) if report else None
        if progress:
            progress(0)
        got = 0
        try:
            while True:
                if cancelled is not None and cancelled.is_set():
                    raise TransferError("cancelled")
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                got += len(chunk)
                if limit and got > limit:
                    raise TransferError(f"larger than {limit} bytes")
                out.write(chunk)
                if progress:
                    progress(got)
        except (OSError, http.client.HTTPException) as e:
            raise TransferError(f"the download broke off after {got} bytes: {_why(e)}") from None
        if total and got != total:
            raise TransferError(f"the download broke off after {got} of {total} bytes")
        if progress:
            progress(got, final=True)
        return got
    finally:
        conn.close()


def safe_file_name(name: str) -> str:
    """A name to save a file under: its base name only, no control characters, not hidden
    and not empty (the server made it safe already; this does not trust that)."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip().lstrip(".")
    return name[:NAME_MAX] or "file"


def reserve_path(dest: str, name: str) -> tuple[str, int]:
    """A new file to save ``name`` into, never one that exists: ``dest`` itself when it is a
    path that does not exist yet, else ``name`` in the folder ``dest`` (or, for an existing
    file, in its folder), with ``-1``, ``-2``... before the extension while that name is taken.
    Returns the path and a descriptor open for writing (made with ``O_EXCL``: no race)."""
    dest = os.path.expanduser(dest or ".")
    if os.path.isdir(dest):
        folder, base = dest, safe_file_name(name)
    elif os.path.exists(dest) or dest.endswith(os.sep):
        folder = os.path.dirname(dest.rstrip(os.sep)) if os.path.exists(dest) else dest
        base = os.path.basename(dest.rstrip(os.sep)) if os.path.exists(dest) else ""
        folder, base = folder or ".", base or safe_file_name(name)
    else:
        folder, base = os.path.dirname(dest) or ".", os.path.basename(dest)
    stem, ext = os.path.splitext(base)
    if stem.endswith(".tar"):  # archive.tar.gz -> archive-1.tar.gz
        stem, ext = stem[:-4], ".tar" + ext
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for n in range(10000):
        path = os.path.join(folder, base if n == 0 else f"{stem}-{n}{ext}")
        try:
            return path, os.open(path, flags, 0o644)
        except FileExistsError:
            continue
        except OSError as e:
            raise TransferError(f"cannot write {path}: {_why(e)}") from None
    raise TransferError(f"no free name for {base} in {folder}")


def download(url: str, dest: str, name: str, tls: ssl.SSLContext | None,
             report: Callable[[int, int], None] | None = None,
             cancelled: threading.Event | None = None,
             on_path: Callable[[str], None] | None = None) -> tuple[str, int]:
    """Save the file at ``url`` (called ``name``) to ``dest`` (a path, or a folder; never over
    an existing file: ``reserve_path``). Returns the path and the size; a failed download
    leaves no file behind."""
    path, fd = reserve_path(dest, name)
    if on_path is not None:
        on_path(path)
    try:
        with os.fdopen(fd, "wb") as out:
            size = get_to(url, out, tls, report, cancelled)
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    return path, size


# ---- images ------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF",
                    ".webp": "WEBP"}


def image_kind(name: str) -> str:
    """``PNG``, ``JPEG``, ``GIF`` or ``WEBP`` by the name's extension; "" for another file."""
    return IMAGE_EXTENSIONS.get(os.path.splitext(name)[1].lower(), "")


def sniff_image(head: bytes) -> str:
    """What the first bytes say the image is (same words as ``image_kind``), or ""."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return ""


def split_send(rest: str) -> tuple[str, str]:
    """``/send``'s arguments, ``<path> [target]``, to (path, target). A path may hold spaces
    (no quotes needed): when the whole of ``rest`` names a file it is the path, else its last
    word is the target; a path in quotes (``'my file.png' bob``) works too."""
    rest = rest.strip()
    if rest[:1] in ("'", '"'):
        end = rest.find(rest[0], 1)
        if end > 0:
            return rest[1:end], rest[end + 1:].strip()
    if not rest or os.path.exists(os.path.expanduser(rest)):
        return rest, ""
    head, _, last = rest.rpartition(" ")
    if head and os.path.exists(os.path.expanduser(head.strip())):
        return head.strip(), last
    return rest, ""


def file_uri_path(text: str) -> str:
    """A pasted file: ``file:///a/b%20c.png`` (as file managers copy files) or a path, to the
    path of an existing regular file; "" when ``text`` is not one."""
    text = text.strip().splitlines()[0].strip() if text.strip() else ""
    if text.startswith("file://"):
        text = unquote(urlsplit(text).path)
    text = os.path.expanduser(text)
    return text if text and os.path.isabs(text) and os.path.isfile(text) else ""
