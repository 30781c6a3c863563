"""The file channel: uploads and downloads between an acceptor's web door and the router's store.

It rides the bus's ZeroMQ sockets (so CurveZMQ and the endpoint are the bus's) but not its
numbered batches: a multipart message whose frame 0 is ``HEADER`` is one transfer message, sent
at once and never again (a transfer does not survive a router restart: the client gets an HTTP
error and tries again). Flow control is by credit, as in the ZeroMQ guide's file transfer
chapter: the receiver of ``Data`` grants ``Credit`` in chunks of ``CHUNK`` bytes, at most
``WINDOW`` outstanding, so neither side holds more than a window of a transfer in memory and a
slow reader (a disk, a client's socket) slows the sender instead of filling it.

Layout: ``HEADER``, then the kind, then its fields as UTF-8 (integers as decimal ASCII), and
for ``Data`` one last frame of raw bytes. ``xfer`` is the acceptor's number for the transfer
(its HTTP connection's id): with the acceptor's routing id it names a transfer at the router.

Acceptor to router: ``Put`` (an upload's body is coming: its token and Content-Length), ``Data``
(a chunk of it, at ``offset``), ``Get`` (a download: the file id; ``head``: only its headers),
``Credit`` (a download's window), ``Abort`` (the client went away, or stalled).
Router to acceptor: ``Credit`` (an upload's window), ``Done`` (an upload's end: an HTTP status
and its text, the file's URL on success), ``Meta`` (a download's status and headers, as JSON),
``Data`` (a download's chunk), ``End`` (a download is complete), ``Abort`` (the router gave up).

Like the bus, ``decode`` checks every field and raises ``BusError`` for anything else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from .errors import BusError

VERSION = 1
HEADER = b"pychat-files/%d" % VERSION
CHUNK = 64 * 1024  # bytes of one Data message
WINDOW = 16  # Data messages a receiver allows in flight (1 MiB)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Transfer:
    kind: ClassVar[str]
    xfer: int


@dataclass(frozen=True, slots=True)
class Put(Transfer):
    token: str
    length: int
    kind: ClassVar[str] = "put"


@dataclass(frozen=True, slots=True)
class Get(Transfer):
    file_id: str
    head: int  # 1: the headers only (HTTP HEAD)
    kind: ClassVar[str] = "get"


@dataclass(frozen=True, slots=True)
class Data(Transfer):
    offset: int
    payload: bytes
    kind: ClassVar[str] = "data"


@dataclass(frozen=True, slots=True)
class Credit(Transfer):
    chunks: int
    kind: ClassVar[str] = "credit"


@dataclass(frozen=True, slots=True)
class Abort(Transfer):
    why: str
    kind: ClassVar[str] = "abort"


@dataclass(frozen=True, slots=True)
class Done(Transfer):
    status: int
    text: str
    kind: ClassVar[str] = "done"


@dataclass(frozen=True, slots=True)
class Meta(Transfer):
    status: int
    headers: str  # a JSON list of [name, value] pairs (a status other than 200: the reason)
    kind: ClassVar[str] = "meta"


@dataclass(frozen=True, slots=True)
class End(Transfer):
    kind: ClassVar[str] = "end"


_CLASSES = (Put, Get, Data, Credit, Abort, Done, Meta, End)
_LAYOUT = {cls.kind: (cls, tuple((f.name, f.type in ("int", int)) for f in fields(cls)
                                 if f.name != "payload"))
           for cls in _CLASSES}


def encode(msg: Transfer) -> list[bytes]:
    _, layout = _LAYOUT[msg.kind]
    frames = [HEADER, msg.kind.encode()]
    for name, _ in layout:
        text = str(getattr(msg, name))
        frames.append(text.encode("utf-8"))
    if isinstance(msg, Data):
        frames.append(msg.payload)
    return frames


def decode(frames: list[bytes]) -> Transfer:
    """One transfer message (``frames[0]`` is ``HEADER``), checked; ``BusError`` otherwise."""
    try:
        if not frames or frames[0] != HEADER:
            raise BusError("not a file-channel message")
        cls, layout = _LAYOUT[frames[1].decode("ascii")]
        want = len(layout) + (1 if cls is Data else 0)
        if len(frames) - 2 != want:
            raise BusError(f"{cls.kind}: {len(frames) - 2} fields, expected {want}")
        values: list[Any] = []
        for raw, (name, is_int) in zip(frames[2:], layout, strict=False):
            text = raw.decode("utf-8")
            if is_int:
                if not (0 < len(text) <= 18 and text.isascii() and text.isdigit()):
                    raise BusError(f"{cls.kind}.{name}: not a number")
                values.append(int(text))
            else:
                if len(text) > 4096 or _CONTROL.search(text):
                    raise BusError(f"{cls.kind}.{name}: too long, or control characters")
                values.append(text)
        if cls is Data:
            payload = frames[-1]
            if len(payload) > CHUNK:
                raise BusError(f"a data chunk of {len(payload)} bytes (max {CHUNK})")
            values.append(bytes(payload))
        msg = cls(*values)
    except BusError:
        raise
    except (UnicodeDecodeError, KeyError, IndexError, ValueError, TypeError) as e:
        raise BusError(f"undecodable file-channel message: {e!r}") from None
    problem = _check(msg)
    if problem:
        raise BusError(f"{msg.kind}: {problem}")
    return msg


def _check(msg: Transfer) -> str:
    if isinstance(msg, Put) and not _TOKEN.match(msg.token):
        return "not an upload token"
    if isinstance(msg, Get) and (not _TOKEN.match(msg.file_id) or msg.head not in (0, 1)):
        return "not a file id"
    if isinstance(msg, Credit) and not 0 < msg.chunks <= WINDOW:
        return f"credit of {msg.chunks} chunks"
    if isinstance(msg, (Done, Meta)) and not 100 <= msg.status <= 599:
        return f"HTTP status {msg.status}"
    if isinstance(msg, Meta) and msg.status == 200:
        try:
            headers = json.loads(msg.headers)
        except ValueError:
            return "headers not JSON"
        if not (isinstance(headers, list) and all(
                isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)
                for h in headers)):
            return "headers not a list of pairs"
    return ""
