"""Uploads and downloads at the router: the slots ``/upload`` opens, the file channel's
transfers (wire/transfer.py), and the store (router/files.py) behind them.

An upload: ``/upload <bytes> <name> [target]`` reserves a **slot** (``reserve``): the store's
``begin`` checks the limits at once (size, the uploader's quota and rate, the store's room), and
the client gets ``UPLOAD:<url>``, a one-time URL on a web door valid for ``UPLOAD_TTL``. A
``PUT`` of that URL on any acceptor's web door becomes a file-channel ``Put``: the slot must be
waiting (not used, not expired, not another PUT's) and the Content-Length must be the declared
size, else the door answers the HTTP status of ``Done``. Then the body comes in ``Data`` chunks,
``WINDOW`` in flight, granted again as each is written, so the door reads the client no faster
than the disk takes it. At the last byte the file is finished (fsync, rename, its row) in a
thread of its own, off the router's loop; its ``FILE:`` line is then posted like a chat line
(the room's, in its history; or the target's and the sender's) and the door answers ``201``.
Anything else (a stall of ``STALL`` seconds, the client or the acceptor gone, a router
restart, a store refusal) aborts the upload: nothing partial is kept or announced, the door
answers with an HTTP error and the uploader's session gets an ``ERROR:`` line.

A download: ``Get`` of a file id gives ``Meta`` (404, or 200 and the headers of
``files.response_headers``), then the bytes in ``Data`` chunks as the door grants ``Credit``
(it grants as its client reads), then ``End``. Anyone holding the URL may fetch the file (the
URL's 128 random bits are the key) for as long as the store keeps it.

``out`` collects the file-channel messages to send (the server sends them); ``finished`` the
uploads whose finishing ended (the state posts them at the end of a turn).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from pychat.wire import transfer
from pychat.wire.errors import BusError

from .files import FileError, FileStore, StoredFile, Writer, response_headers

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("pychat.router")

UPLOAD_TTL = 600.0  # seconds an upload URL stays valid (PROTOCOL Part 5: 10 minutes)
STALL = 60.0  # seconds an upload's body may send nothing before it is given up
EXPIRE_EVERY = 60.0  # seconds between sweeps of files past --files-max-age
DOWNLOAD_WINDOW = 4  # chunks a download starts with (its door grants more as its client reads)


@dataclass(eq=False)
class Slot:
    token: str
    uid: str
    acceptor: str  # the uploader's session, told of a failure
    conn: int
    size: int
    name: str
    room: str  # the room the file goes to, or "" for a private file
    target: str  # the private target's uid, or ""
    writer: Writer
    expires: float  # monotonic
    by: tuple[bytes, int] | None = None  # the PUT streaming it: (acceptor's id, xfer)
    received: int = 0  # bytes written
    queued: int = 0  # bytes received (written, or waiting for the pool's thread)
    granted: int = 0  # chunks granted, not yet received
    last: float = 0.0  # monotonic time of its last chunk
    finishing: bool = False


@dataclass(eq=False)
class Download:
    file: BinaryIO
    size: int
    offset: int = 0
    credit: int = 0


class Transfers:
    def __init__(self, store: FileStore, *, monotonic: Callable[[], float],
                 wall: Callable[[], float], ttl: float = UPLOAD_TTL):
        self.store = store
        self.ttl = ttl
        self.monotonic = monotonic
        self.wall = wall
        self.slots: dict[str, Slot] = {}  # by token
        self.streams: dict[tuple[bytes, int], Slot] = {}  # uploads being received, by xfer
        self.downloads: dict[tuple[bytes, int], Download] = {}
        self.out: deque[tuple[bytes, list[bytes]]] = deque()  # (acceptor id, frames)
        self.finished: deque[tuple[Slot, StoredFile | FileError]] = deque()
        self.failed: deque[tuple[Slot, str, str]] = deque()  # (slot, code, why): to be told
        self.written: deque[tuple[Slot, int, FileError | None]] = deque()  # chunks written
        self.poke: Callable[[], None] = lambda: None  # wakes the loop (set by the server)
        # the pool's thread (and concurrent.futures) at its first job: not at an idle start
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.uploads_done = 0
        self.downloads_done = 0
        self._next_expiry = monotonic() + EXPIRE_EVERY

    @property
    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pychat-files")
        return self._executor

    # ---- /upload -----------------------------------------------------------------------------

    def reserve(self, uid: str, acceptor: str, conn: int, uploader: str, size: int, name: str,
                room: str, target: str) -> Slot:
        """A slot for an upload, its limits checked; ``FileError`` when refused."""
        writer = self.store.begin(size, uploader, self.wall())
        token = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        slot = Slot(token, uid, acceptor, conn, size, name, room, target, writer,
                    self.monotonic() + self.ttl)
        self.slots[token] = slot
        return slot

    # ---- the file channel --------------------------------------------------------------------

    def receive(self, ident: bytes, frames: list[bytes]) -> None:
        try:
            msg = transfer.decode(frames)
        except BusError as e:
            log.warning("dropped a bad file-channel message from %r: %s", ident, e)
            return
        key = (ident, msg.xfer)
        if isinstance(msg, transfer.Put):
            self._put(key, msg)
        elif isinstance(msg, transfer.Data):
            self._data(key, msg)
        elif isinstance(msg, transfer.Get):
            self._get(key, msg)
        elif isinstance(msg, transfer.Credit):
            download = self.downloads.get(key)
            if download is not None:
                download.credit = min(transfer.WINDOW, download.credit + msg.chunks)
                self._send_chunks(key, download)
        elif isinstance(msg, transfer.Abort):
            if (slot := self.streams.get(key)) is not None:
                self._fail(slot, f"the upload stopped: {msg.why}")
            if (download := self.downloads.pop(key, None)) is not None:
                download.file.close()

    def _send(self, key: tuple[bytes, int], msg: transfer.Transfer) -> None:
        self.out.append((key[0], transfer.encode(msg)))

    def _put(self, key: tuple[bytes, int], msg: transfer.Put) -> None:
        slot = self.slots.get(msg.token)
        if slot is None:
            self._send(key, transfer.Done(msg.xfer, 404, "no such upload (used, or never made)"))
            return
        if slot.by is not None or slot.finishing:
            self._send(key, transfer.Done(msg.xfer, 409, "this upload is already being sent"))
            return
        if self.monotonic() > slot.expires:
            self._send(key, transfer.Done(msg.xfer, 410, "this upload URL has expired"))
            self._fail(slot, "the upload URL expired before the file came")
            return
        if msg.length != slot.size:
            self._send(key, transfer.Done(
                msg.xfer, 400, f"this upload is {slot.size} bytes, not {msg.length}"))
            return
        slot.by = key
        slot.last = self.monotonic()
        self.streams[key] = slot
        if slot.size == 0:
            self._finish(slot)
            return
        slot.granted = transfer.WINDOW
        self._send(key, transfer.Credit(msg.xfer, transfer.WINDOW))

    def _data(self, key: tuple[bytes, int], msg: transfer.Data) -> None:
        """A chunk: written (and hashed) in the pool's thread, not on the router's loop, in
        order (one thread); its credit goes back once it is written (``take_written``)."""
        slot = self.streams.get(key)
        if slot is None or slot.finishing:
            return  # (aborted meanwhile: the door was told)
        if msg.offset != slot.queued or slot.granted <= 0:
            self._fail(slot, "the upload's chunks came out of order")
            return
        slot.queued += len(msg.payload)
        slot.granted -= 1
        slot.last = self.monotonic()
        self._pool.submit(self._write, slot, msg.payload)

    def _write(self, slot: Slot, payload: bytes) -> None:
        """(The pool's thread.)"""
        error: FileError | None = None
        try:
            slot.writer.write(payload)
        except FileError as e:
            error = e
        with self._lock:
            self.written.append((slot, len(payload), error))
        self.poke()

    def take_written(self) -> None:
        """Chunks written since the last call: each gives its credit back, the last one has
        the upload finished; a write that failed fails the upload."""
        with self._lock:
            done, self.written = list(self.written), deque()
        for slot, n, error in done:
            if slot.by is None or self.streams.get(slot.by) is not slot or slot.finishing:
                continue  # given up meanwhile
            if error is not None:
                self._fail(slot, error.text, code=error.code)
                continue
            slot.received += n
            if slot.received >= slot.size:
                self._finish(slot)
            elif slot.queued < slot.size:
                slot.granted += 1
                self._send(slot.by, transfer.Credit(slot.by[1], 1))

    def _finish(self, slot: Slot) -> None:
        """The last byte came: finish it (fsync, rename, row) in the pool's thread."""
        slot.finishing = True
        where = slot.room or f"private:{slot.target}"

        def run() -> None:
            try:
                result: StoredFile | FileError = slot.writer.finish(slot.name, where, self.wall())
            except FileError as e:
                result = e
            except Exception as e:  # the disk: logged, the upload fails
                log.exception("finishing an upload failed")
                result = FileError("storage", f"the server could not store the file: {e}")
            with self._lock:
                self.finished.append((slot, result))
            self.poke()

        self._pool.submit(run)

    def take_finished(self) -> list[tuple[Slot, StoredFile | FileError]]:
        """Uploads whose finishing ended since the last call (the state posts them); each is
        forgotten, and its door told. The chunks written meanwhile are taken first."""
        self.take_written()
        with self._lock:
            done, self.finished = list(self.finished), deque()
        for slot, result in done:
            self._forget(slot)
            if slot.by is not None:
                if isinstance(result, StoredFile):
                    self.uploads_done += 1
                    self._send(slot.by, transfer.Done(slot.by[1], 201, result.path))
                else:
                    self._send(slot.by, transfer.Done(slot.by[1], 500, result.text))
        return done

    def _fail(self, slot: Slot, why: str, code: str = "aborted") -> None:
        """Give the upload up: nothing kept; its PUT (if any) gets an error; the uploader is
        told by the state (``failed``)."""
        slot.writer.abort()
        self._forget(slot)
        if slot.by is not None:
            self._send(slot.by, transfer.Abort(slot.by[1], why))
        self.failed.append((slot, code, why))

    def _forget(self, slot: Slot) -> None:
        self.slots.pop(slot.token, None)
        if slot.by is not None:
            self.streams.pop(slot.by, None)

    def take_failed(self) -> list[tuple[Slot, str, str]]:
        done, self.failed = list(self.failed), deque()
        return done

    # ---- downloads ---------------------------------------------------------------------------

    def _get(self, key: tuple[bytes, int], msg: transfer.Get) -> None:
        f = self.store.get(msg.file_id)
        if f is None:
            self._send(key, transfer.Meta(msg.xfer, 404, "no such file (deleted, or expired)"))
            return
        headers = response_headers(f)
        if msg.head:
            self._send(key, transfer.Meta(msg.xfer, 200, json.dumps(headers)))
            self._send(key, transfer.End(msg.xfer))
            return
        file = self.store.open(msg.file_id)
        if file is None:
            self._send(key, transfer.Meta(msg.xfer, 404, "no such file (deleted, or expired)"))
            return
        self._send(key, transfer.Meta(msg.xfer, 200, json.dumps(headers)))
        download = Download(file, f.size, credit=DOWNLOAD_WINDOW)
        self.downloads[key] = download
        self._send_chunks(key, download)

    def _send_chunks(self, key: tuple[bytes, int], download: Download) -> None:
        while download.credit > 0 and download.offset < download.size:
            chunk = download.file.read(transfer.CHUNK)
            if not chunk:
                break
            self._send(key, transfer.Data(key[1], download.offset, chunk))
            download.offset += len(chunk)
            download.credit -= 1
        if download.offset >= download.size:
            download.file.close()
            self.downloads.pop(key, None)
            self.downloads_done += 1
            self._send(key, transfer.End(key[1]))

    # ---- time, departures ------------------------------------------------------------------

    def tick(self) -> None:
        """Expired slots and stalled uploads are given up; once a minute, files past their age
        are deleted (in the pool's thread: a sweep may delete many)."""
        now = self.monotonic()
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRE_EVERY
            self._pool.submit(self._expire)
        for slot in list(self.slots.values()):
            if slot.finishing:
                continue
            if slot.by is None and now > slot.expires:
                self._fail(slot, "the upload URL expired before the file came")
            elif slot.by is not None and now - slot.last > STALL:
                self._fail(slot, f"the upload stalled (nothing for {STALL:.0f} s)")

    def _expire(self) -> None:
        try:
            gone = self.store.expire(self.wall())
        except Exception:  # the disk: logged; the next sweep tries again
            log.exception("deleting old files failed")
            return
        if gone:
            log.info("files: %d past their age deleted", gone)

    def acceptor_gone(self, ident: bytes) -> None:
        for key, slot in list(self.streams.items()):
            if key[0] == ident and not slot.finishing:
                self._fail(slot, "the web door it came through went away")
        for key in [k for k in self.downloads if k[0] == ident]:
            self.downloads.pop(key).file.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for slot in list(self.slots.values()):
            slot.writer.abort()
        for download in self.downloads.values():
            download.file.close()
        self.store.close()

