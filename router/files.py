"""Uploaded files, kept on disk: content-addressed blobs and one SQLite table of what was sent.

Pure and synchronous: no asyncio, no bus, no sockets. The router (or a thread of its) calls it
for uploads (``begin`` .. ``Writer.finish``) and downloads (``get``, ``open``); the protocol,
the bus's chunks and the web door's HTTP are the callers' business.

Layout, in the router's data folder (``FileStore.in_folder(data_dir)``)::

    <data_dir>/files/files.sqlite3      one row per stored file (below)
    <data_dir>/files/blobs/ab/cdef...   the bytes, named by their SHA-256 (hex, 2 + 62)
    <data_dir>/files/tmp/<random>.part  uploads in progress

``FileStore(None)`` is the memory store (tests, ``--files memory``): the table in memory, the
blobs in a private temporary folder that ``close()`` removes.

Interface (every size in bytes, every time ``now`` a ``time.time()`` stamp passed in)::

    store = FileStore.in_folder(data_dir, FileLimits(...)).open_store()  # FileStoreError
    w = store.begin(size, uploader, now)      # FileError: too-large, rate, quota, store-full
    w.write(chunk)                            # FileError: size-mismatch (past size), storage
    w.received                                # bytes so far
    f = w.finish(name, where, now)            # -> StoredFile; FileError: size-mismatch
    w.abort()                                 # anything, any time, twice: nothing is left
    with store.begin(...) as w: ...           # aborted on the way out unless finished
    store.get(file_id) -> StoredFile | None
    store.open(file_id) -> BinaryIO | None    # the caller reads (and closes) it
    store.delete(file_id) -> bool
    store.expire(now) -> int                  # files older than limits.max_age, deleted
    store.usage() -> (files, bytes); store.user_usage(uploader) -> bytes; store.status()
    store.close()                             # aborts the uploads in progress
    safe_name(raw), sniff(head, name), fit_name(name, type), url_name(name),
    disposition(type, name), response_headers(f)   # pure functions of names and bytes

A ``StoredFile`` (frozen) has ``id`` (22 characters of URL-safe base64: 128 random bits, the
unguessable part of its URL), ``blob`` (the SHA-256, hex), ``name`` (``safe_name``, then
``fit_name``), ``type`` (``sniff``), ``size``, ``uploader``, ``where`` and ``created``;
``f.path`` is its URL path ``/files/<id>/<url_name(name)>``. ``uploader`` is the key that
quotas and rates count by and ``where`` is the room or private target the file was sent to:
both opaque strings to the store, chosen by the router ("" is a key like any other).

Invariants:

- **nothing partial**: bytes are streamed into ``tmp/`` (never held whole in memory: the
  ``Writer`` keeps the hash state and the first ``SNIFF_BYTES``), fsynced, then renamed to
  their blob name (atomic), then the row is committed. A SIGKILL at any point leaves at most a
  temporary file or a blob that no row names; ``open_store()`` deletes both (and forgets the
  row of a blob that is gone). So a row's blob is complete, and a failed upload leaves nothing.
- **a row is what keeps a blob**: identical bytes are stored once (the second upload's
  temporary file is removed, its row names the same blob); a blob is deleted when the last row
  naming it goes (refcount by query). Rows are added and deleted, and blobs placed and
  unlinked, under the store's lock, so no upload reuses a blob being deleted.
- **one transaction per change**, WAL, ``synchronous=NORMAL`` (blobs themselves are fsynced,
  and their folder, before the row that names them is committed). ``PRAGMA user_version``
  counts ``MIGRATIONS``; a damaged file, or one from a newer pychat, is refused at open with
  one line (``FileStoreError``). One router per data folder (``open_store()`` empties
  ``tmp/``).
- **limits** (``FileLimits``; every refusal a ``FileError`` with a stable ``code`` and a text a
  user understands, raised before any byte is taken where it can be):
  - ``begin`` refuses a size over ``max_file`` (or over ``max_total``: a file larger than the
    whole store) with ``too-large``; more than ``uploads_per_hour`` begun by one uploader (a
    token bucket of ``upload_burst``, in memory: a restart refills it) with ``rate``; more than
    ``user_quota`` stored by one uploader, counting its uploads in progress, with ``quota``;
    and uploads in progress that together would pass ``max_total`` with ``store-full``.
  - the declared size is exact: a byte past it (``write``) or one missing (``finish``) is
    ``size-mismatch``, and the upload is aborted.
  - ``max_total`` counts every stored file's size (duplicates too: an upper bound of the disk
    used). When a new file would pass it, ``finish`` deletes the **oldest files first**, of any
    uploader, until it fits: a chat's files are most wanted while new, and an upload the
    server accepted is never refused at its end for want of room. The disk holds at most
    ``max_total`` of stored files, plus the uploads in progress (together at most
    ``max_total``). Past ``max_age``, ``expire(now)`` deletes files (the router calls it, say
    once a minute; until then an old file is still served).
  - A 0 turns off ``user_quota``, ``uploads_per_hour``, ``max_total`` and ``max_age``.
- **types are sniffed, never believed** (``sniff``): PNG, JPEG, GIF, WebP, PDF, ZIP, gzip,
  MP4/MOV/M4A, MP3, Ogg, WAV by their first bytes, valid UTF-8 without NUL as
  ``text/plain; charset=utf-8``, anything else ``application/octet-stream``. HTML, SVG, XML and
  JavaScript never get their own types (a browser would run their scripts): they are text or
  octet-stream. Only PNG, JPEG, GIF, WebP and plain text are shown ``inline``; everything else
  is an ``attachment`` (``disposition``); ``response_headers`` adds ``nosniff`` and a sandboxing
  Content-Security-Policy.
- **a misleading extension is fixed by appending the truth** (``fit_name``): bytes of a type
  we know keep a name ending in one of that type's extensions, and are given its own one after
  the name otherwise (``cat.html`` of PNG bytes is ``cat.html.png``); text and unknown bytes
  keep their name unless its extension claims a type we know or one that runs script
  (``.png``, ``.html``, ``.svg``, ``.js`` ...): then ``.txt`` (text) or ``.bin`` is appended
  (``cat.png`` holding ``<script>`` is ``cat.png.txt``, an executable named ``cat.png`` is
  ``cat.png.bin``). So a file saved under its name never opens as something its bytes are not.

Threads: every ``FileStore`` method may be called from any thread (one lock; SQLite is used
with ``check_same_thread=False``). A ``Writer`` is for one upload; its methods take its own
lock, so it may be handed between threads (the router may run ``write`` in a worker thread:
``hashlib`` releases the GIL while hashing large buffers) and ``abort`` may come from another
thread (it waits for the chunk being written). ``write`` does not take the store's lock: a slow
disk delays only its own upload.

Notes for the callers:

- ``open_store`` (not ``open``: ``open(file_id)`` is the download) reads the folder once, to
  repair it: its time grows with the number of blobs (a walk of ``blobs/``).
- ``finish`` fsyncs the file (a 1 GB upload: the disk's time to write what is still dirty)
  and ``expire`` or a full store may delete many rows in one call: run them off the chat's
  thread. ``get`` is one indexed read; ``begin`` two (quota).
- ``where`` is recorded, not enforced: who may fetch a file is the door's rule.
- An S3-compatible object store would replace the blob half only (``_place``, ``open``, the
  unlinks, the walk in ``_repair``): a streamed multipart upload to a temporary key, then a
  copy to the key named by the hash (or kept as is, when a ``HEAD`` finds the hash already
  there), a presigned ``GET`` for downloads, and a lifecycle rule on the temporary prefix for
  what a crash leaves; the table, the limits and the refcount by query stay as they are.
"""

from __future__ import annotations

import codecs
import io
import logging
import math
import os
import re
import sqlite3
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO
from urllib.parse import quote

from pychat.wire.errors import (
    ABORTED,
    BAD_SIZE,
    QUOTA,
    RATE,
    SIZE_MISMATCH,
    STORAGE,
    STORE_FULL,
    TOO_LARGE,
    ClientError,
)

from .transaction import write_transaction

# hashlib and secrets (libcrypto), shutil, tempfile and unicodedata are imported where first
# needed (a file stored or named, a store in memory, a repair): an idle router loads none of
# them (issue 18)

log = logging.getLogger("pychat.files")

FOLDER = "files"  # in the data folder
FILENAME = "files.sqlite3"
BLOBS = "blobs"
TMP = "tmp"
PART = ".part"  # a temporary file's suffix

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
DAY = 86400.0

SNIFF_BYTES = 4096  # the head a Writer keeps for sniff()
NAME_MAX = 100  # characters of a file name
EXT_MAX = 16  # characters of what counts as an extension
ID_BYTES = 16  # 128 random bits: 22 characters of URL-safe base64
EXPIRE_CHUNK = 500  # rows deleted per transaction by expire()
BUCKETS_MAX = 10_000  # rate buckets kept before the full ones are forgotten

# FileError's codes (wire/errors.py holds every code; STORAGE: the server's disk failed, logged)
CODES = (TOO_LARGE, QUOTA, RATE, STORE_FULL, SIZE_MISMATCH, BAD_SIZE, ABORTED, STORAGE)

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema. `place`: the room or private target (`where` in Python)
    """
    CREATE TABLE files (
        id TEXT PRIMARY KEY, blob TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL,
        size INTEGER NOT NULL, uploader TEXT NOT NULL, place TEXT NOT NULL,
        created REAL NOT NULL);
    CREATE INDEX files_blob ON files (blob);
    CREATE INDEX files_created ON files (created);
    CREATE INDEX files_uploader ON files (uploader, size);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

COLUMNS = "id, blob, name, type, size, uploader, place, created"
_HEX = re.compile(r"[0-9a-f]+")


class FileStoreError(Exception):
    """The files folder or its table cannot be used; the message is one line for the
    operator (raised by ``open_store()``)."""


class FileError(ClientError):
    """An upload refused or failed: ``code`` (one of ``CODES``) for programs, ``text`` for
    the user (one line). A ``ClientError``: the router answers it with ``e.line()``."""

    def __init__(self, code: str, text: str):
        super().__init__(text, code)
        self.text = text


@dataclass(frozen=True)
class FileLimits:
    """What the store accepts. Defaults a chat server would pick: a screenshot or a PDF goes,
    a disk image does not; one uploader cannot hold more than a tenth of the store."""

    max_file: int = 100 * MiB  # bytes of one file
    user_quota: int = 1 * GiB  # bytes of one uploader's files and uploads; 0: no quota
    uploads_per_hour: float = 60.0  # uploads begun by one uploader, on average; 0: no limit
    upload_burst: int = 20  # ... and at once (a few screenshots dropped together)
    max_total: int = 10 * GiB  # bytes of all stored files; the oldest go first; 0: no limit
    max_age: float = 30 * DAY  # seconds a file is kept; 0: until pushed out by max_total

    def __post_init__(self) -> None:
        if self.max_file <= 0:
            raise ValueError("max_file must be positive")
        if min(self.user_quota, self.uploads_per_hour, self.max_total, self.max_age) < 0:
            raise ValueError("limits must be 0 (off) or positive")
        if self.upload_burst < 1:
            raise ValueError("upload_burst must be at least 1")

    @property
    def largest(self) -> int:
        """The largest file accepted: max_file, or the whole store if that is smaller."""
        return min(self.max_file, self.max_total) if self.max_total else self.max_file


# ---- names ---------------------------------------------------------------------------------------

_BIDI = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A),
                   0xFEFF])  # marks, embeddings/overrides, isolates; and the BOM
_UNSAFE = frozenset('<>:"|?*')  # not in a Windows file name (nor welcome in HTML): "_"
_DEVICES = frozenset(["con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                      *(f"lpt{i}" for i in range(1, 10))])  # Windows device names
_DOTS = re.compile(r"\.{2,}")
_DRIVE = re.compile(r"[A-Za-z]:")


def safe_name(raw: str) -> str:
    """The file name a user sees and the URL carries. Its base name only (after the last ``/``
    or ``\\``; a drive letter dropped); whitespace (newlines too) is one space, controls, lone
    surrogates, bidi marks, overrides and isolates (U+202A-U+202E, U+2066-U+2069, U+200E/F,
    U+061C) and the BOM removed; ``<>:"|?*`` become ``_``; NFC; runs of dots one dot; no dot
    or space at either end; a Windows device name (``CON``...) gets ``_`` before it; at most
    ``NAME_MAX`` characters, keeping the extension; never empty (``file``). Idempotent."""
    import unicodedata
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    if _DRIVE.match(name):
        name = name[2:]
    out = []
    for c in name:
        if c.isspace():
            out.append(" ")
        elif c in _UNSAFE:
            out.append("_")
        elif ord(c) in _BIDI or unicodedata.category(c) in ("Cc", "Cs"):
            continue
        else:
            out.append(c)
    name = unicodedata.normalize("NFC", " ".join("".join(out).split()))
    name = _DOTS.sub(".", name).strip(". ")
    if name.split(".", 1)[0].rstrip(" ").casefold() in _DEVICES:
        name = "_" + name
    return _cap(name) or "file"


def _split_ext(name: str) -> tuple[str, str]:
    """(stem, extension without its dot); the extension is "" when there is none (or it is
    too long, or holds a space, to be one)."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or not ext or len(ext) > EXT_MAX or " " in ext:
        return name, ""
    return stem, ext


def _cap(name: str) -> str:
    """At most NAME_MAX characters, the extension kept."""
    if len(name) <= NAME_MAX:
        return name
    stem, ext = _split_ext(name)
    if not ext:
        return name[:NAME_MAX].rstrip(". ")
    return stem[:NAME_MAX - len(ext) - 1].rstrip(". ") + "." + ext


def url_name(name: str) -> str:
    """The name as one URL path segment (UTF-8, percent-encoded; no ``/`` left)."""
    return quote(name, safe="")


# ---- types ---------------------------------------------------------------------------------------

PNG = "image/png"
JPEG = "image/jpeg"
GIF = "image/gif"
WEBP = "image/webp"
PDF = "application/pdf"
ZIP = "application/zip"
GZIP = "application/gzip"
MP4 = "video/mp4"
MOV = "video/quicktime"
M4A = "audio/mp4"
MP3 = "audio/mpeg"
OGG = "audio/ogg"
WAV = "audio/wav"
TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"

# The extensions each sniffed type may carry; the first is the one fit_name() appends.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    PNG: ("png",), JPEG: ("jpg", "jpeg", "jpe", "jfif"), GIF: ("gif",), WEBP: ("webp",),
    PDF: ("pdf",),
    ZIP: ("zip", "docx", "xlsx", "pptx", "odt", "ods", "odp", "odg", "epub", "jar", "apk",
          "whl", "kmz", "3mf", "xpi", "cbz"),
    GZIP: ("gz", "tgz"), MP4: ("mp4", "m4v"), MOV: ("mov", "qt"), M4A: ("m4a", "m4b", "mp4"),
    MP3: ("mp3",), OGG: ("ogg", "oga", "ogv", "opus", "spx"), WAV: ("wav",),
}
# Extensions that claim a type we sniff: text or unknown bytes under one of them mislead.
CLAIMED = frozenset(ext for exts in EXTENSIONS.values() for ext in exts)
# Extensions a browser or a desktop would open as something that runs script.
ACTIVE = frozenset(["html", "htm", "xhtml", "xht", "shtml", "svg", "svgz", "xml", "xsl", "xslt",
                    "js", "mjs", "hta", "mht", "mhtml", "swf"])
# Shown in the page (images that cannot run script; text shown as text, nosniff), not saved.
INLINE = frozenset([PNG, JPEG, GIF, WEBP, TEXT])
TYPES = (*EXTENSIONS, TEXT, BINARY)  # every type sniff() returns


def sniff(head: bytes, name: str = "") -> str:
    """The content type of a file from its first bytes (``SNIFF_BYTES`` are enough). The name
    only confirms weak signatures (an MP3 without a tag, an old QuickTime file): it never
    gives a type the bytes do not show. HTML, SVG, XML and JavaScript are never their own types
    (text or octet-stream). UTF-8 (no NUL) is text: the head may end inside a character."""
    h = bytes(head[:SNIFF_BYTES])
    ext = _split_ext(name)[1].lower()
    if h.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if h.startswith(b"\xff\xd8\xff"):
        return JPEG
    if h[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if h[:4] == b"RIFF" and h[8:12] == b"WEBP":
        return WEBP
    if h[:4] == b"RIFF" and h[8:12] == b"WAVE":
        return WAV
    if h.startswith(b"%PDF-"):
        return PDF
    if h[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return ZIP
    if h.startswith(b"\x1f\x8b\x08"):
        return GZIP
    if h.startswith(b"OggS\x00"):
        return OGG
    if h[:3] == b"ID3" and len(h) >= 5 and h[3] in (2, 3, 4) and h[4] == 0:
        return MP3
    if h[4:8] == b"ftyp":
        brand = h[8:12]
        if brand == b"qt  ":
            return MOV
        if brand in (b"M4A ", b"M4B "):
            return M4A
        return MP4
    if ext in ("mov", "qt") and h[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return MOV
    if ext == "mp3" and len(h) >= 2 and h[0] == 0xFF and h[1] & 0xE0 == 0xE0:
        return MP3  # an MPEG audio frame's sync bits: too weak without the name
    if b"\x00" not in h and _utf8(h):
        return TEXT
    return BINARY


def _utf8(head: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def fit_name(name: str, content_type: str) -> str:
    """``name`` (a ``safe_name``) made to agree with the sniffed type: see the module
    docstring. Idempotent; never longer than ``NAME_MAX``."""
    ext = _split_ext(name)[1].lower()
    own = EXTENSIONS.get(content_type)
    if own is not None:
        return name if ext in own else _cap(f"{name}.{own[0]}")
    if ext in CLAIMED or ext in ACTIVE:
        return _cap(f"{name}.{'txt' if content_type == TEXT else 'bin'}")
    return name


def disposition(content_type: str, name: str) -> str:
    """The Content-Disposition of a download: ``inline`` only for the images that cannot run
    script and for plain text, ``attachment`` otherwise; the name as RFC 6266 ``filename*``
    (UTF-8), with an ASCII ``filename`` for old clients."""
    kind = "inline" if content_type in INLINE else "attachment"
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in name)
    return f"{kind}; filename=\"{fallback or 'file'}\"; filename*=UTF-8''{quote(name, safe='')}"


def response_headers(f: StoredFile) -> list[tuple[str, str]]:
    """The headers the web door sends with a file: its type, length and disposition; no
    sniffing by the browser; a policy that gives the file no script, no plugins and no
    origin even if a browser renders it; and no Referer (the URL is the key to the file)."""
    return [("Content-Type", f.type), ("Content-Length", str(f.size)),
            ("Content-Disposition", f.disposition),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
                                        "sandbox"),
            ("Cross-Origin-Resource-Policy", "same-origin"),
            ("Referrer-Policy", "no-referrer")]


@dataclass(frozen=True)
class StoredFile:
    id: str  # 22 characters, URL-safe base64 of 128 random bits
    blob: str  # SHA-256 of the bytes, hex
    name: str  # safe_name, then fit_name
    type: str  # sniffed
    size: int
    uploader: str
    where: str  # the room, or the private target
    created: float

    @property
    def path(self) -> str:
        """Its URL path on the web door."""
        return f"/files/{self.id}/{url_name(self.name)}"

    @property
    def disposition(self) -> str:
        return disposition(self.type, self.name)


def _size(n: float) -> str:
    """Bytes for people: 900 bytes, 12.5 KiB, 100 MiB, 1 GiB."""
    if n < KiB:
        return f"{int(n)} bytes" if n != 1 else "1 byte"
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + " " + unit
    raise AssertionError(n)  # pragma: no cover


def _duration(seconds: float) -> str:
    s = max(1, math.ceil(round(seconds, 6)))
    if s < 120:
        return f"{s} s"
    return f"{math.ceil(s / 60)} min"


# ---- the store -----------------------------------------------------------------------------------

class FileStore:
    def __init__(self, folder: str | None, limits: FileLimits | None = None, *,
                 busy_ms: int = 2000):
        """``folder``: the files folder (``in_folder`` names it); None: the memory store."""
        self.folder = folder
        self.limits = limits or FileLimits()
        self.busy_ms = busy_ms
        self.path = os.path.join(folder, FILENAME) if folder is not None else None
        self._root = ""  # the folder in use (the memory store's temporary one)
        self._fsync = folder is not None
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._writers: set[Writer] = set()  # uploads in progress: their sizes are reserved
        self._buckets: dict[str, tuple[float, float]] = {}  # uploader -> (tokens, at)
        self._files = 0  # rows, and the sum of their sizes: counted at open, then kept as
        self._bytes = 0  # each commit changes them (one store per folder: nobody else writes)

    @classmethod
    def in_folder(cls, data_dir: str, limits: FileLimits | None = None, *,
                  busy_ms: int = 2000) -> FileStore:
        return cls(os.path.join(data_dir, FOLDER), limits, busy_ms=busy_ms)

    # ---- opening, versions, repair --------------------------------------------------------------

    def open_store(self) -> FileStore:
        """Open (or create) the folder and its table, check them, and repair what a crash left:
        temporary files, blobs no row names, rows whose blob is gone. Raises FileStoreError."""
        if self.folder is None:
            import tempfile
            self._root = tempfile.mkdtemp(prefix="pychat-files-")
        else:
            self._root = self.folder
            try:
                for sub in ("", BLOBS, TMP):
                    os.makedirs(os.path.join(self.folder, sub), mode=0o700, exist_ok=True)
            except OSError as e:
                raise FileStoreError(f"cannot create files folder {self.folder}: "
                                     f"{e.strerror or e}") from None
        os.makedirs(os.path.join(self._root, BLOBS), exist_ok=True)
        os.makedirs(os.path.join(self._root, TMP), exist_ok=True)
        try:
            db = sqlite3.connect(self.path or ":memory:", isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error as e:
            self.close()
            raise FileStoreError(f"cannot open files table {self.path}: {e}") from None
        self._db = db
        try:
            self._prepare(db)
            self._repair()
        except sqlite3.DatabaseError as e:
            self.close()
            raise FileStoreError(f"files table {self.path} cannot be used: {e}") from None
        except OSError as e:
            self.close()
            raise FileStoreError(f"files folder {self.folder} cannot be used: "
                                 f"{e.strerror or e}") from None
        except FileStoreError:
            self.close()
            raise
        n, size = self.db.execute("SELECT COUNT(*), TOTAL(size) FROM files").fetchone()
        self._files, self._bytes = int(n), int(size)
        log.info("files: %s (%d files, %s)", self.folder or "in memory", self._files,
                 _size(self._bytes))
        return self

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute(f"PRAGMA busy_timeout = {int(self.busy_ms)}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise FileStoreError(f"files table {self.path} has schema version {version}; this "
                                 f"pychat knows {SCHEMA_VERSION} (a newer pychat wrote it)")
        if self.path is not None:
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise FileStoreError(f"files table {self.path} is damaged: {problems[0]}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise FileStoreError(f"files table {self.path}: cannot use WAL ({mode})")
        db.execute("PRAGMA synchronous = NORMAL")
        for n in range(version, SCHEMA_VERSION):
            with self._write() as w:
                for statement in MIGRATIONS[n].split(";"):
                    if statement.strip():
                        w.execute(statement)
                w.execute("PRAGMA user_version = %d" % (n + 1))
        with self._write() as w:  # the test write: a read-only file fails here
            w.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened', ?)",
                      (repr(os.getpid()),))

    def _repair(self) -> None:
        tmp = os.path.join(self._root, TMP)
        left = 0
        for entry in os.listdir(tmp):
            try:
                os.unlink(os.path.join(tmp, entry))
                left += 1
            except IsADirectoryError:
                import shutil
                shutil.rmtree(os.path.join(tmp, entry), ignore_errors=True)
        if left:
            log.warning("files: removed %d unfinished uploads", left)
        named = {row[0] for row in self.db.execute("SELECT DISTINCT blob FROM files")}
        found: set[str] = set()
        orphans = 0
        blobs = os.path.join(self._root, BLOBS)
        for fan in os.listdir(blobs):
            folder = os.path.join(blobs, fan)
            if len(fan) != 2 or not _HEX.fullmatch(fan) or not os.path.isdir(folder):
                continue
            for rest in os.listdir(folder):
                digest = fan + rest
                if len(rest) != 62 or not _HEX.fullmatch(rest):
                    continue
                if digest in named:
                    found.add(digest)
                else:
                    os.unlink(os.path.join(folder, rest))
                    orphans += 1
        if orphans:
            log.warning("files: removed %d stored blobs that no file named", orphans)
        gone = sorted(named - found)
        if gone:
            with self._write() as w:
                w.executemany("DELETE FROM files WHERE blob = ?", [(g,) for g in gone])
            log.error("files: %d stored files had lost their bytes and were forgotten",
                      len(gone))

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "files store not open"
        return self._db

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self.db)

    def version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def close(self) -> None:
        """Abort the uploads in progress, close the table (the memory store's folder goes)."""
        with self._lock:
            writers = list(self._writers)
        for w in writers:  # not under the store's lock: abort takes the writer's lock first
            w.abort()
        with self._lock:
            self._close_db()
            if self.folder is None and self._root:
                import shutil
                shutil.rmtree(self._root, ignore_errors=True)
                self._root = ""

    # ---- uploads --------------------------------------------------------------------------------

    def begin(self, size: int, uploader: str, now: float) -> Writer:
        """Start an upload of exactly ``size`` bytes; the limits are checked now (see the
        module docstring), and ``size`` is reserved against the quota and the total until the
        writer finishes or aborts."""
        lim = self.limits
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise FileError(BAD_SIZE, "the size of a file is a whole number of bytes")
        if size > lim.largest:
            raise FileError(TOO_LARGE, f"file too large: {_size(size)}; this server takes "
                                       f"files up to {_size(lim.largest)}")
        with self._lock:
            tokens = self._bucket(uploader, now)
            if lim.user_quota:
                used = self.user_usage(uploader) + sum(
                    w.size for w in self._writers if w.uploader == uploader)
                if used + size > lim.user_quota:
                    raise FileError(QUOTA, f"upload quota exceeded: you have {_size(used)} of "
                                           f"{_size(lim.user_quota)} stored; this file needs "
                                           f"{_size(size)}")
            if lim.max_total:
                busy = sum(w.size for w in self._writers)
                if busy + size > lim.max_total:
                    raise FileError(STORE_FULL, "the server's file store is full with uploads "
                                                "in progress; try again in a few minutes")
            tmp = os.path.join(self._root, TMP, os.urandom(8).hex() + PART)  # token_hex(8)
            try:
                raw = io.FileIO(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                        | getattr(os, "O_CLOEXEC", 0), 0o600), "wb")
            except OSError as e:
                log.error("files: cannot start an upload in %s: %s", tmp, e)
                raise FileError(STORAGE, "the server cannot store files right now") from None
            w = Writer(self, size, uploader, tmp, raw)
            self._writers.add(w)
            if lim.uploads_per_hour:
                self._buckets[uploader] = (tokens - 1, now)
            return w

    def _bucket(self, uploader: str, now: float) -> float:
        """The uploader's tokens at ``now`` (at least one, or FileError ``rate``)."""
        lim = self.limits
        if not lim.uploads_per_hour:
            return 0.0
        per_second = lim.uploads_per_hour / 3600
        if len(self._buckets) > BUCKETS_MAX:  # forget the full ones: they are the default
            self._buckets = {k: (t, at) for k, (t, at) in self._buckets.items()
                             if t + max(0.0, now - at) * per_second < lim.upload_burst}
        tokens, at = self._buckets.get(uploader, (float(lim.upload_burst), now))
        tokens = min(float(lim.upload_burst), tokens + max(0.0, now - at) * per_second)
        if tokens < 1:
            raise FileError(RATE, f"too many uploads: at most {lim.uploads_per_hour:g} an "
                                  f"hour; try again in {_duration((1 - tokens) / per_second)}")
        return tokens

    def _release(self, w: Writer) -> None:
        with self._lock:
            self._writers.discard(w)

    def _store(self, w: Writer, tmp: str, digest: str, name: str, where: str,
               now: float) -> StoredFile:
        """The finished upload's blob in place and its row committed, making room first by
        deleting the oldest files. Called by Writer.finish (the temporary file is fsynced)."""
        import secrets
        clean = safe_name(name)
        ctype = sniff(bytes(w._head), clean)
        f = StoredFile(secrets.token_urlsafe(ID_BYTES), digest, fit_name(clean, ctype), ctype,
                       w.size, w.uploader, where, now)
        with self._lock:
            self._writers.discard(w)
            blob = self._blob_path(digest)
            placed = self._place(tmp, blob, f.size)
            try:
                with self._write() as db:
                    doomed = self._make_room(db, f.size)
                    db.execute(f"INSERT INTO files ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               (f.id, f.blob, f.name, f.type, f.size, f.uploader, f.where,
                                f.created))
            except BaseException:
                if placed:
                    self._drop_blobs([digest])
                raise
            self._counted(1, f.size, doomed)
            self._drop_blobs([d for d, _ in doomed])
        return f

    def _blob_path(self, digest: str) -> str:
        return os.path.join(self._root, BLOBS, digest[:2], digest[2:])

    def _place(self, tmp: str, blob: str, size: int) -> bool:
        """Move the temporary file to its blob name; True if it is new (not a duplicate)."""
        try:
            if os.stat(blob).st_size == size:
                os.unlink(tmp)  # the same bytes are stored already
                return False
            log.error("files: stored blob %s has the wrong size; replaced", blob)
        except FileNotFoundError:
            pass
        folder = os.path.dirname(blob)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.replace(tmp, blob)
        if self._fsync and os.name == "posix":
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return True

    def _make_room(self, db: sqlite3.Connection, size: int) -> list[tuple[str, int]]:
        """Delete the oldest files until ``size`` more fits in max_total (in the caller's
        transaction): (blob, size) of the deleted rows, to count and drop once committed."""
        if not self.limits.max_total:
            return []
        over = self._bytes + size - self.limits.max_total
        if over <= 0:
            return []
        doomed: list[tuple[str, str, int]] = []
        cur = db.execute("SELECT id, blob, size FROM files ORDER BY created, rowid")
        while over > 0:
            rows = cur.fetchmany(256)
            if not rows:
                break
            for file_id, digest, n in rows:
                doomed.append((file_id, digest, n))
                over -= n
                if over <= 0:
                    break
        cur.close()  # read before the deletes, not during them
        db.executemany("DELETE FROM files WHERE id = ?", [(i,) for i, _, _ in doomed])
        log.info("files: %d oldest files deleted to make room", len(doomed))
        return [(d, n) for _, d, n in doomed]

    def _counted(self, added: int, size: int, deleted: list[tuple[str, int]]) -> None:
        """Keep usage() as the committed rows are (under the lock, after a commit)."""
        self._files += added - len(deleted)
        self._bytes += size - sum(n for _, n in deleted)

    def _drop_blobs(self, digests: list[str]) -> None:
        """Unlink the blobs that no row names any more (under the lock, after the commit)."""
        for digest in set(digests):
            if self.db.execute("SELECT 1 FROM files WHERE blob = ? LIMIT 1",
                               (digest,)).fetchone() is None:
                try:
                    os.unlink(self._blob_path(digest))
                except FileNotFoundError:
                    pass
                except OSError as e:  # left for the next open_store() to remove
                    log.error("files: cannot delete %s: %s", self._blob_path(digest), e)

    # ---- downloads, deletion, retention ---------------------------------------------------------

    @staticmethod
    def _row(row: tuple | None) -> StoredFile | None:
        if row is None:
            return None
        return StoredFile(row[0], row[1], row[2], row[3], int(row[4]), row[5], row[6],
                          float(row[7]))

    def get(self, file_id: str) -> StoredFile | None:
        with self._lock:
            return self._row(self.db.execute(f"SELECT {COLUMNS} FROM files WHERE id = ?",
                                             (file_id,)).fetchone())

    def open(self, file_id: str) -> BinaryIO | None:
        """The file's bytes to read (the caller closes it), or None. A download that has its
        file open reads to the end even if the file is deleted meanwhile (POSIX)."""
        with self._lock:
            f = self.get(file_id)
            if f is None:
                return None
            try:
                return open(self._blob_path(f.blob), "rb")
            except FileNotFoundError:
                log.error("files: the bytes of %s (%s) are missing", f.id, f.blob)
                return None

    def delete(self, file_id: str) -> bool:
        with self._lock:
            row = self.db.execute("SELECT blob, size FROM files WHERE id = ?",
                                  (file_id,)).fetchone()
            if row is None:
                return False
            with self._write() as db:
                db.execute("DELETE FROM files WHERE id = ?", (file_id,))
            self._counted(0, 0, [(row[0], int(row[1]))])
            self._drop_blobs([row[0]])
            return True

    def expire(self, now: float) -> int:
        """Delete the files older than ``max_age`` (``EXPIRE_CHUNK`` per transaction): how
        many. Nothing with max_age 0."""
        if not self.limits.max_age:
            return 0
        cutoff = now - self.limits.max_age
        total = 0
        while True:
            with self._lock:
                rows = self.db.execute("SELECT id, blob, size FROM files WHERE created < ? "
                                       "ORDER BY created LIMIT ?",
                                       (cutoff, EXPIRE_CHUNK)).fetchall()
                if not rows:
                    break
                with self._write() as db:
                    db.executemany("DELETE FROM files WHERE id = ?", [(r[0],) for r in rows])
                self._counted(0, 0, [(r[1], int(r[2])) for r in rows])
                self._drop_blobs([r[1] for r in rows])
            total += len(rows)
        if total:
            log.info("files: %d files older than %g days deleted", total,
                     self.limits.max_age / DAY)
        return total

    def usage(self) -> tuple[int, int]:
        """(files, bytes) stored: every file's size, duplicates counted (max_total's measure).
        Kept in memory: no query."""
        with self._lock:
            return self._files, self._bytes

    def user_usage(self, uploader: str) -> int:
        """Bytes stored by ``uploader`` (uploads in progress not included)."""
        with self._lock:
            return int(self.db.execute("SELECT TOTAL(size) FROM files WHERE uploader = ?",
                                       (uploader,)).fetchone()[0])

    def status(self) -> dict:
        """For operators (stats)."""
        files, size = self.usage()
        with self._lock:
            writers = list(self._writers)
        return {"backend": "sqlite" if self.folder else "memory", "path": self.folder or "",
                "files": files, "bytes": size, "uploads": len(writers),
                "reserved": sum(w.size for w in writers)}


class Writer:
    """One upload in progress (made by ``FileStore.begin``): ``write`` the bytes in order,
    then ``finish`` or ``abort``. Each method holds the writer's lock (see "Threads" in the
    module docstring). After a ``FileError`` from ``write`` or ``finish`` the upload is aborted:
    its temporary file is gone and its reservation released."""

    def __init__(self, store: FileStore, size: int, uploader: str, tmp: str, raw: io.FileIO):
        self.store = store
        self.size = size
        self.uploader = uploader
        self.received = 0
        self._tmp = tmp
        self._raw: io.FileIO | None = raw
        import hashlib
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self._lock = threading.Lock()
        self.done = False  # finished or aborted
        self._cancel = False  # abort() asked: the next write stops (set without the lock)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append ``chunk`` (hashed, written to the temporary file; not kept)."""
        with self._lock:
            if self._cancel:
                self._abort()
            if self.done:
                raise FileError(ABORTED, "this upload was cancelled")
            view = memoryview(chunk).cast("B")
            n = len(view)
            if self.received + n > self.size:
                self._abort()
                raise FileError(SIZE_MISMATCH, f"more bytes than declared: the upload was "
                                               f"to be {self.size} bytes")
            if len(self._head) < SNIFF_BYTES:
                self._head += view[:SNIFF_BYTES - len(self._head)]
            self._hash.update(view)
            try:
                raw = self._raw
                assert raw is not None
                while view:
                    k = raw.write(view)
                    view = view[k or 0:]
            except OSError as e:
                self._abort()
                log.error("files: cannot write %s: %s", self._tmp, e)
                raise FileError(STORAGE, "the server could not store the file (its disk "
                                         "failed or is full)") from None
            self.received += n

    def finish(self, name: str, where: str, now: float) -> StoredFile:
        """Store the file under ``safe_name(name)`` (fitted to its sniffed type), sent to
        ``where``, created ``now``: the blob in place, its row committed. Raises FileError
        ``size-mismatch`` when fewer bytes than declared came (and aborts)."""
        with self._lock:
            if self.done:
                raise FileError(ABORTED, "this upload was cancelled")
            if self.received != self.size:
                self._abort()
                raise FileError(SIZE_MISMATCH, f"upload incomplete: {self.received} of the "
                                               f"{self.size} bytes declared arrived")
            raw = self._raw
            assert raw is not None
            try:
                if self.store._fsync:
                    os.fsync(raw.fileno())
                raw.close()
                self._raw = None
                stored = self.store._store(self, self._tmp, self._hash.hexdigest(), name,
                                           where, now)
            except (OSError, sqlite3.Error) as e:
                self._abort()
                log.error("files: cannot store an upload: %s", e)
                raise FileError(STORAGE, "the server could not store the file (its disk "
                                         "failed or is full)") from None
            except BaseException:
                self._abort()
                raise
            self.done = True
            return stored

    def abort(self) -> None:
        """Give up the upload: its temporary file is removed. Harmless when it is over. From
        another thread, it waits for the chunk being written (and a writer thread looping on
        ``write`` gets ``aborted`` at its next call)."""
        self._cancel = True  # before the lock: a thread looping on write() cannot starve us
        with self._lock:
            self._abort()

    def _abort(self) -> None:
        if self.done:
            return
        self.done = True
        if self._raw is not None:
            try:
                self._raw.close()
            except OSError:
                pass
            self._raw = None
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass  # placed already, or never made
        except OSError as e:  # left for the next open_store() to remove
            log.error("files: cannot remove %s: %s", self._tmp, e)
        self.store._release(self)
