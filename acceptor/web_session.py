"""The web door's pump: HTTP requests, then (on ``GET /ws``) a ``Session`` over WebSocket frames.

A connection starts in HTTP (acceptor/web.py parses the heads): the browser client's files are
served, with keep-alive, and the connection is admitted and counted like any other (it counts
with the TLS handshakes in ``Acceptor.handshaking`` until it upgrades) and has
``tls_handshake_timeout`` seconds per request before it is closed. A ``GET /ws`` with an
allowed origin is handed to websockets' sans-I/O ``ServerProtocol`` for the handshake; once it
answers 101 the connection becomes a session like the TCP door's: the same ``Connection``
(flood, limits, order), output queues, send-queue limits and router.

What differs from the TCP door: each text frame the client sends is a line (a frame that ends
with a line end loses it; one with several lines is several lines, each a line for the core's
limits; fragmented messages are put together, up to ``web_max_frame``; a binary frame's bytes
are taken as TCP's are, invalid UTF-8 included); every line for the client is a text frame
(``web.frames``), and a room's lines are framed once for all its web members
(``Output.fan_out``). websockets answers pings
and close frames and enforces the frame size, UTF-8 and the protocol's rules; a violation
closes the connection with its close code. The acceptor pings a web session quiet for
``Limits.ping_after`` seconds (a browser answers by itself), so proxies keep it open and the idle
deadline sees it alive. The session ends with a close frame after its last line.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pychat.wire import replies, transfer

from . import web
from .session import Session

if TYPE_CHECKING:
    from websockets.server import ServerProtocol

    from .server import Acceptor

log = logging.getLogger("pychat.acceptor")
ws_log = logging.getLogger("pychat.acceptor.websocket")
ws_log.setLevel(logging.WARNING)  # websockets' own debug lines are one per frame

WELCOME_FRAME = web.frame(replies.WELCOME.encode("utf-8"))


@dataclass
class Upload:
    length: int  # the body's Content-Length
    expect: bool  # the client waits for 100 Continue
    keep_alive: bool
    sent: int = 0  # body bytes sent to the router
    credit: int = 0  # chunks the router takes now
    continued: bool = False


@dataclass
class Download:
    head: bool  # HEAD: no body
    keep_alive: bool
    owed: int = 0  # credit to give back once the client has read


class WebSession(Session):
    KIND = 2
    __slots__ = ("buf", "deadline", "download", "http", "paced", "parts", "upload", "ws")

    def __init__(self, acceptor: Acceptor, conn_id: int):
        super().__init__(acceptor, conn_id)
        self.buf: bytearray | None = bytearray()  # HTTP bytes read, not parsed yet
        self.http = False  # admitted, in HTTP (counted in acceptor.handshaking)
        self.deadline: asyncio.TimerHandle | None = None
        self.ws: ServerProtocol | None = None
        self.parts: list[bytes] | None = None  # a fragmented text message's frames so far
        self.upload: Upload | None = None  # a PUT's body on its way to the router
        self.download: Download | None = None  # a GET's file on its way from the router
        self.paced: asyncio.TimerHandle | None = None  # a chunk waits for --transfer-mbps

    # ---- HTTP --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.admit(transport):
            return
        self.http = True
        self.acceptor.handshaking += 1
        self._arm_deadline()

    def _arm_deadline(self, seconds: float = 0.0) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = self.acceptor.loop.call_later(
            seconds or self.acceptor.limits.tls_handshake_timeout, self._expired)

    def _expired(self) -> None:
        self.deadline = None
        if not self.http or self.transport is None:
            return
        if self.upload is not None or self.download is not None:
            why = "stalled" if self.upload is not None else "the router did not answer"
            self.acceptor.send_transfer(transfer.Abort(self.id, why))
            self._transfer_over()
            self._refuse(408, f"the transfer {why}")
            return
        self.transport.abort()

    def _end_http(self) -> None:
        if self.http:
            self.http = False
            self.acceptor.handshaking -= 1
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def data_received(self, data: bytes) -> None:
        if self.open:
            self._frames_in(data)
        elif self.http:
            assert self.buf is not None
            self.buf += data
            if self.upload is not None:
                self._send_body()
            elif self.download is None:
                self._requests()

    def _requests(self) -> None:
        t = self.transport
        buf = self.buf
        while t is not None and not t.is_closing() and self.http and buf is not None:
            try:
                head = web.take_head(buf)
            except web.HttpError as e:
                self._refuse(e.status, e.text)
                return
            if head is None:
                return
            if self.blocked:  # answers the client has not read: read no more requests for now
                buf[:0] = head.raw
                t.pause_reading()
                return
            if head.path == "/ws" and head.upgrade and head.method == "GET":
                self._upgrade(head)
                return
            if head.path.startswith("/upload/") and head.method == "PUT":
                self._put(head)
                return
            if head.path.startswith("/files/") and head.method in ("GET", "HEAD"):
                self._get(head)
                return
            answer, keep = self.acceptor.web_static.serve(head, self.tls)
            self.acceptor.stats["web_requests"] += 1
            t.write(answer)
            if not keep:
                t.close()
                return
            self._arm_deadline()

    def _refuse(self, status: int, text: str) -> None:
        """An HTTP error answer, then the close."""
        t = self.transport
        if t is not None:
            t.write(web.error_response(status, text, self.tls))
            t.close()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.download is not None and self.download.owed:  # the client read: more comes
            self._give_credit(self.download, 0)
            return
        if (self.http and self.upload is None and self.download is None
                and self.transport is not None and not self.transport.is_closing()):
            self.transport.resume_reading()
            self._requests()  # the requests that waited

    # ---- files: PUT /upload/<token>, GET /files/<id>/<name> ---------------------------------

    def _put(self, head: web.Head) -> None:
        """An upload's body: streamed to the router in chunks, as its credit allows."""
        t = self.transport
        assert t is not None
        token = head.path[len("/upload/"):]
        length = head.headers.get("content-length", "")
        if "transfer-encoding" in head.headers:
            self._refuse(411, "send the file with a Content-Length (no chunked encoding)")
            return
        if not (length.isascii() and length.isdigit() and len(length) <= 15):
            self._refuse(411, "a Content-Length is needed")
            return
        if not web.TOKEN.match(token):
            self._refuse(404, "no such upload")
            return
        self.upload = Upload(int(length), head.headers.get("expect", "").lower()
                             == "100-continue", head.keep_alive)
        self.acceptor.transfers[self.id] = self
        self.acceptor.send_transfer(transfer.Put(self.id, token, int(length)))
        t.pause_reading()  # until the router says it takes the body (its credit)
        self._arm_deadline(self.acceptor.limits.transfer_stall)

    def _get(self, head: web.Head) -> None:
        t = self.transport
        assert t is not None
        parts = head.path.split("/")  # "", "files", id, name
        if len(parts) != 4 or not web.TOKEN.match(parts[2]):
            self._refuse(404, "no such file")
            return
        self.download = Download(head.method == "HEAD", head.keep_alive)
        self.acceptor.transfers[self.id] = self
        self.acceptor.send_transfer(transfer.Get(self.id, parts[2], int(head.method == "HEAD")))
        t.pause_reading()  # one request at a time
        self._arm_deadline(self.acceptor.limits.transfer_stall)

    def on_transfer(self, msg: transfer.Transfer) -> None:
        """What the router says about this connection's upload or download."""
        t = self.transport
        if t is None or t.is_closing():
            return
        up, down = self.upload, self.download
        if up is not None:
            if isinstance(msg, transfer.Credit):
                up.credit += msg.chunks
                if up.expect and not up.continued:
                    up.continued = True
                    t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self._send_body()
            elif isinstance(msg, transfer.Done):
                self._transfer_over()
                if msg.status == 201:
                    url = self.acceptor.web_base + msg.text
                    t.write(web.response(201, [("Content-Type", "text/plain; charset=utf-8"),
                                               ("Location", url), ("Cache-Control", "no-store")],
                                         (url + "\n").encode(), keep_alive=up.keep_alive,
                                         tls=self.tls))
                    if up.keep_alive and up.sent >= up.length:
                        self._next_request()
                        return
                    t.close()
                else:
                    self._refuse(msg.status, msg.text)
            elif isinstance(msg, transfer.Abort):
                self._transfer_over()
                self._refuse(500, f"upload failed: {msg.why}")
        elif down is not None:
            if isinstance(msg, transfer.Meta):
                if msg.status != 200:
                    self._transfer_over()
                    self._refuse(msg.status, msg.headers)
                    return
                headers = [(k, v) for k, v in json.loads(msg.headers)
                           if k.lower() not in web.OWN_HEADERS]
                t.write(web.file_head(headers, keep_alive=down.keep_alive, tls=self.tls))
            elif isinstance(msg, transfer.Data):
                t.write(msg.payload)
                self._arm_deadline(self.acceptor.limits.transfer_stall)
                if t.get_write_buffer_size() <= 2 * transfer.CHUNK:
                    self._give_credit(down, 1)
                else:
                    down.owed += 1  # given back as the client reads (resume_writing)
            elif isinstance(msg, transfer.End):
                self._transfer_over()
                if down.keep_alive:
                    self._next_request()
                else:
                    t.close()
            elif isinstance(msg, transfer.Abort):
                self._transfer_over()
                t.abort()  # the head is gone already: a cut connection says it failed

    def _send_body(self) -> None:
        """Chunks of the body that have come, as far as the credit goes; reading paused when
        the credit or the buffer says so."""
        up, t, buf = self.upload, self.transport, self.buf
        assert up is not None and t is not None and buf is not None
        while up.credit > 0 and up.sent < up.length:
            want = min(transfer.CHUNK, up.length - up.sent)
            if len(buf) < want or self.paced is not None:
                break
            wait = self.acceptor.transfer_wait()
            if wait:  # --transfer-mbps: this chunk goes a little later
                self.paced = self.acceptor.loop.call_later(wait, self._paced_body)
                break
            with memoryview(buf) as view:  # one copy, not a slice and then a copy of it
                chunk = bytes(view[:want])
            del buf[:want]
            self.acceptor.send_transfer(transfer.Data(self.id, up.sent, chunk))
            up.sent += want
            up.credit -= 1
            self._arm_deadline(self.acceptor.limits.transfer_stall)
        if (up.sent >= up.length or up.credit <= 0 or len(buf) >= 2 * transfer.CHUNK
                or self.paced is not None):
            t.pause_reading()  # all sent (the answer comes), the router is behind, or paced
        else:
            t.resume_reading()

    def _paced_body(self) -> None:
        self.paced = None
        if self.upload is not None and self.transport is not None:
            self._send_body()

    def _paced_credit(self) -> None:
        self.paced = None
        down = self.download
        if down is not None and down.owed and self.transport is not None and not self.blocked:
            self._give_credit(down, 0)

    def _give_credit(self, down: Download, n: int) -> None:
        """``n`` more chunks of credit owed to a download; what is owed goes back when the
        pace allows (else a little later)."""
        down.owed += n
        if self.paced is not None or self.acceptor.transfer_pace is None:
            if self.paced is None and down.owed:  # no pace: all that is owed, at once
                owed, down.owed = down.owed, 0
                self.acceptor.send_transfer(transfer.Credit(self.id,
                                                            min(transfer.WINDOW, owed)))
            return
        while down.owed:  # one chunk a token
            wait = self.acceptor.transfer_wait()
            if wait:
                self.paced = self.acceptor.loop.call_later(wait, self._paced_credit)
                return
            down.owed -= 1
            self.acceptor.send_transfer(transfer.Credit(self.id, 1))

    def _transfer_over(self) -> None:
        self.acceptor.transfers.pop(self.id, None)
        self.upload = self.download = None
        if self.paced is not None:
            self.paced.cancel()
            self.paced = None

    def _next_request(self) -> None:
        """Keep-alive: the next request on this connection."""
        t = self.transport
        if t is not None and not t.is_closing():
            self._arm_deadline()
            t.resume_reading()
            self._requests()

    def _upgrade(self, head: web.Head) -> None:
        t = self.transport
        assert t is not None and self.buf is not None
        if not web.origin_allowed(head, self.acceptor.web_origins):
            log.info("conn %d (%s): WebSocket refused, origin %r not allowed", self.id,
                     self.peer, head.headers.get("origin"))
            self.acceptor.stats["web_origin_refusals"] += 1
            self._refuse(403, "origin not allowed")
            return
        # websockets is imported at the first upgrade, not at start: an acceptor nobody opens a
        # WebSocket to stays smaller (about 2 MB)
        from websockets.http11 import Request
        from websockets.server import ServerProtocol

        ws = ServerProtocol(max_size=self.acceptor.web_max_frame, logger=ws_log)
        ws.receive_data(head.raw)
        events = ws.events_received()
        if len(events) != 1 or not isinstance(events[0], Request):
            self._refuse(400, "bad WebSocket handshake")
            return
        answer = ws.accept(events[0])
        answer.headers["Server"] = "pychat"
        ws.send_response(answer)
        t.write(b"".join(ws.data_to_send()))
        if answer.status_code != 101:
            t.close()
            return
        self.acceptor.stats["web_sockets"] += 1
        rest = bytes(self.buf)
        self.buf = None
        self.ws = ws
        self._end_http()
        self.acceptor.session_opened(self)
        if rest:
            self._frames_in(rest)

    # ---- WebSocket ---------------------------------------------------------------------------

    def _frames_in(self, data: bytes) -> None:
        from websockets.frames import Frame, Opcode

        ws = self.ws
        assert ws is not None
        conn = self.conn
        conn.seen = self.acceptor.loop.time()  # (a pong is not silence)
        ws.receive_data(data)
        events = ws.events_received()
        self._send_control()
        for event in events:
            if not self.open or conn.quitting:
                break
            if not isinstance(event, Frame):  # (only frames, once the handshake is done)
                continue
            op = event.opcode
            if op is Opcode.TEXT or op is Opcode.BINARY:  # (binary: bytes, as TCP's are)
                if event.fin:
                    self._lines(bytes(event.data))
                else:
                    self.parts = [bytes(event.data)]
            elif op is Opcode.CONT and self.parts is not None:
                self.parts.append(bytes(event.data))
                if event.fin:
                    whole, self.parts = b"".join(self.parts), None
                    self._lines(whole)
            elif op is Opcode.CLOSE:
                self.pump(conn.receive_eof)  # what was read is served, then the close
        if ws.parser_exc is not None and self.open:  # websockets closed it (code and reason)
            log.info("conn %d (%s): WebSocket closed: %s", self.id, self.peer, ws.parser_exc)
            self.close()

    def _lines(self, payload: bytes) -> None:
        if payload.endswith(b"\n"):
            payload = payload[:-2] if payload.endswith(b"\r\n") else payload[:-1]
        for line in payload.split(b"\n") if b"\n" in payload else (payload,):
            if not self.open or self.conn.quitting:
                return
            self.pump(self.conn.receive_line, line)

    def _send_control(self) -> None:
        """What websockets wrote (pongs, the answer to a close, a failure's close frame)."""
        ws = self.ws
        assert ws is not None
        for chunk in ws.data_to_send():
            if chunk:
                self.acceptor.output.queue(self, chunk)

    def ping(self, now: float) -> None:
        if self.ws is not None and self.ws.state.name == "OPEN":
            self.pinged = now
            self.acceptor.output.queue(self, web.PING)

    # ---- output ------------------------------------------------------------------------------

    def send_line(self, text: str) -> None:
        if self.greeting:
            self.greet()
        self.acceptor.output.queue(self, web.frames(text.encode("utf-8")))

    def greet(self) -> None:
        self.greeting = False
        self.acceptor.output.queue(self, WELCOME_FRAME)

    def last_words(self, text: str, code: str | None = None) -> bytes:
        words = web.frame(replies.format_error(text, code).encode("utf-8"))
        if self.ws is None:  # still in HTTP: no WebSocket to speak in
            return web.error_response(503, text, self.tls)
        return words + self._closing_frame()

    def _closing_frame(self) -> bytes:
        ws = self.ws
        if ws is None or ws.state.name != "OPEN":
            return b""
        ws.send_close(1000)
        return b"".join(ws.data_to_send())

    def close(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.ws is None:
            t.close()
            return
        if self.greeting:
            self.greet()
        closing = self._closing_frame()
        if closing:
            self.acceptor.output.queue(self, closing)
        super().close()

    def eof_received(self) -> bool:
        """In HTTP, the client's end of input is the end (an upload cut short fails); on the
        WebSocket, a half-close like the TCP door's."""
        if self.open:
            return super().eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upload is not None or self.download is not None:
            self.acceptor.send_transfer(transfer.Abort(self.id, "the client went away"))
            self._transfer_over()
        self._end_http()
        super().connection_lost(exc)
