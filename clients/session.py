"""The reconnecting client core: one TCP connection at a time, in its own thread.

``Session`` owns the socket. Its thread connects, reads the handshake, asks for the
capabilities ``time`` (stamps), ``codes`` (errors it can match without reading English) and
``end`` (``END <word>`` closes each command's reply), turns every server line into a
``wire.replies`` event and hands it to ``on_event`` (called on the session's thread: a Tk front
puts it on a queue, an asyncio front uses ``call_soon_threadsafe``). Fronts never touch the
socket: ``send()`` only appends to a queue and wakes the thread, so no front does network I/O on
its own thread.

Replies come in the order of the commands, so the session keeps the commands it wrote, in order,
and pairs each ``END`` with the oldest one: a front that asked to be told (``send(line,
show=True)``, for a ``/users`` the user typed) gets ``events.Answered`` once the whole reply is
in. A server without ``end`` just never answers them so.

When the connection drops (or stops answering keepalive pings) the session reconnects with
exponential backoff (0.2 s doubling to 5 s, +-20% jitter) and restores what the user had: it
re-sends ``/nick <name>`` (or, logged in, ``/resume <account> <token>``) and ``/join <room>``.
The server gives a new uid. A name still held by the dead connection (the router drops it after
3 missed acceptor heartbeats) is asked for again every half second for ``restore_for`` seconds
before the front is told it is refused.

Logging in (accounts): given ``Credentials`` (``login=`` or ``login()``), the session sends
``/login <name> <password>`` after the handshake instead of ``/nick`` (for a new account,
``/nick <name>`` and, once the server has taken it, ``/register <password>``). On ``OK login``
or ``OK register`` it forgets the credentials, tells the front ``events.LoggedIn`` and asks
``/token``, whose ``TOKEN:`` it keeps (not shown); a refusal is ``events.LoginRefused``. A
reconnect logs in again with ``/resume <account> <token>``, never the password; a refused
resume (the token expired, or was revoked by a logout or a password change) is a
``LoginRefused`` with ``restored``, so the front can ask for the password again. A ``/login``,
``/register`` or ``/password`` the user types (``send()``) is noticed too: its success fetches
a token (a new password revokes the old tokens). ``BYE kicked:``/``BYE banned:``, and a login
refused as banned, end the session: it does not reconnect.

Files (PROTOCOL Part 5): ``send_file(path, target)`` queues ``/upload <size> <name> [target]``
like any line; the ``UPLOAD:`` (or ``ERROR:``) answering it is paired with it as ``END`` lines
are (replies come in the order of the commands) and not handed on; a thread of the transfer's
own then PUTs the file, streamed from disk (``clients.transfer``), with the session's TLS
context for an ``https`` URL. ``download(url, dest, name)`` GETs a file to disk in a thread of
its own. Both report ``events.TransferProgress`` and one ``events.TransferDone`` from their
thread (fronts take events from any thread). An ``/upload`` unanswered when its connection
drops is told failed, not sent again; ``close()`` stops the transfers at their next chunk.

Invariants (all on the session thread):
- ``name`` and ``room`` are what the server last confirmed (``OK nick``, ``OK login``,
  ``ROOM:``): those are restored, never a name the server refused; ``account`` is the account
  logged in to ("" for a guest), ``token`` its resume token
- the password is held (``_login``) only until the server has answered the login (OK or
  refused); it is sent again only when the connection dropped before the answer. A reconnect
  between ``OK login`` and its ``TOKEN:`` has nothing to log in with: the front is told
  (``LoginRefused``, ``restored``)
- right behind every ``/join`` it sends, the session asks for the room's history (``history``
  lines), so a front shows recent lines on entry and after a reconnect (``ChatState`` drops
  the ones already shown)
- lines given to ``send()`` while disconnected are sent, in order, once the connection is back
  and restored; the keepalive's own ``PONG`` is not handed on

TLS (``tls=`` an ``ssl.SSLContext``, see ``clients.options.tls_context``): every connection,
reconnects included, does its handshake (within ``connect_timeout``) before anything else,
checking the certificate and that it names ``host``; ``tls_info`` then says what it is
(``TLS 1.3, verified``), and the ``connected to`` status says it too. What no retry can mend
ends the session at once, as a ``TlsFailed`` event then ``CLOSED``: a certificate refused, a
server that does not speak TLS, or (without TLS) a server that closes the very first connection
without a word, as a TLS server does when plain text comes in (a plain connection says its
first ``/ping`` at once, so that such a server closes it at once instead of at its handshake
timeout).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pychat.wire import commands, errors, replies
from pychat.wire.errors import ClientError
from pychat.wire.framing import LineBuffer

from . import events, transfer

log = logging.getLogger("pychat.session")

KEEPALIVE_TOKEN = "pychat-keepalive"
RETRY_NAME_EVERY = 0.5


# The front's event callback. Whatever it returns is ignored (an asyncio front passes
# ``call_soon_threadsafe``, which returns a Handle), hence ``object`` rather than ``None``.
OnEvent = Callable[[object], object]


@dataclass(slots=True)
class Credentials:
    """Who to log in as: an account's name and password; ``register``: make the account (the
    name must be free) and log in to it. The session keeps them only until answered."""
    name: str
    password: str = field(repr=False)
    register: bool = False


@dataclass(frozen=True, slots=True)
class TlsFailed:
    """The session ended before it could talk to the server, for a reason no retry mends: the
    server's certificate was refused, the server does not speak TLS, or (plain) it seems to
    want TLS. ``reason`` is one line for a person. The session's ``CLOSED`` status follows."""
    reason: str


# the reasons OpenSSL gives when what came back is not TLS at all (a plain-text server)
NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL", "HTTP_REQUEST",
           "PACKET_LENGTH_TOO_LONG", "RECORD_TOO_LARGE")
TLS_SEND_CHUNK = 16384  # a TLS write is retried with the same bytes: at most this many a time


def tls_problem(e: ssl.SSLError) -> str:
    """A failed handshake in one line, for a person."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"the server's certificate was refused: {e.verify_message or e.reason}"
    if e.reason in NOT_TLS:
        return "the server does not speak TLS (it answered in plain text): drop --tls/--ca"
    return f"TLS handshake failed: {e.reason or e}"


@dataclass(slots=True)
class _Upload:
    """A file ``send_file`` announced with ``/upload``, until the server answers with its URL
    (then a thread of its own PUTs it) or refuses it."""
    id: int
    path: str
    name: str
    size: int
    target: str


UPLOAD_LINE_GONE = "the connection dropped before the server answered the /upload"
FAILED_UPLOAD_ECHO = 30.0  # seconds the server's own "upload of X failed" may follow ours


@dataclass(slots=True)
class _Auth:
    """A ``/login``, ``/register`` or ``/resume`` written on a connection, until answered.
    ``cred``: ours (the session's own login), else typed by the user; ``token``: a resume's;
    ``restore``: sent to restore the login after a reconnect."""
    word: str
    name: str
    cred: Credentials | None = None
    token: str = field(default="", repr=False)
    restore: bool = False


class Session:
    def __init__(self, host: str, port: int, on_event: OnEvent, *,
                 name: str = "", room: str = commands.LOBBY, history: int = 20,
                 login: Credentials | None = None, tls: ssl.SSLContext | None = None,
                 backoff_first: float = 0.2, backoff_max: float = 5.0,
                 connect_timeout: float = 5.0, keepalive: float = 20.0,
                 restore_for: float = 15.0):
        self.host, self.port = host, port
        self.on_event = on_event
        self.history = history
        self.backoff_first, self.backoff_max = backoff_first, backoff_max
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.restore_for = restore_for
        self.tls = tls
        self.tls_info = ""  # the current connection's TLS, in words ("TLS 1.3, verified")
        # confirmed by the server (the session thread writes them; others may read them)
        self.uid = ""
        self.name = ""
        self.room = room
        self.state = events.CONNECTING
        self.attempt = 0
        self.reconnects = 0
        self.account = ""  # the account logged in to ("" a guest), as the server spells it
        self.token = ""  # its resume token (a reconnect logs in with it), and until when
        self.token_expires = ""
        # sent on the first connection, confirmed or refused there (a login brings its own name)
        self._wanted_name = "" if login else name
        self._login = login  # the login to send, until the server has answered it
        self._stop_why = ""  # the server ended the session for good (kicked, banned)
        # (line, tell the front when answered, the file an /upload line announces)
        self._out: deque[tuple[str, bool, _Upload | None]] = deque()
        self._ids = itertools.count(1)  # transfers' ids
        self._cancel = threading.Event()  # set by close(): transfers stop at their next chunk
        self._failed_uploads: dict[str, float] = {}  # names our PUT failed, until when
        self._lock = threading.Lock()
        self._closing = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="pychat-session", daemon=True)

    # ---- any thread ------------------------------------------------------------------------------

    def start(self) -> Session:
        self._thread.start()
        return self

    def send(self, line: str, show: bool = False) -> None:
        """Queue one line as the user typed it (text or a command); ``show``: hand the front
        ``events.Answered`` when the server has answered it all (``/users``, ``/rooms``)."""
        with self._lock:
            self._out.append((line, show, None))
        self._wake()

    # ---- files (PROTOCOL Part 5) -----------------------------------------------------------------

    def send_file(self, path: str, target: str = "") -> int:
        """Send the file at ``path`` to the room (or privately to ``target``, a uid or name):
        ``/upload <size> <name> [target]`` (the name's spaces as ``_``) goes in order with the
        lines sent, and once the server answers with its URL a thread of the transfer's own
        PUTs the file, streamed from disk. Returns the transfer's id; the front gets
        ``events.TransferProgress`` and then one ``events.TransferDone`` (the file's URL, or
        why it failed: a server's refusal of the ``/upload`` has its code)."""
        tid = next(self._ids)
        name = transfer.upload_name(path)
        try:
            size = os.stat(path).st_size
            if not os.path.isfile(path):
                raise IsADirectoryError(0, "not a file")
            with open(path, "rb"):
                pass
        except OSError as e:
            self._emit(events.TransferDone(tid, events.UPLOAD, name, 0,
                                           error=e.strerror or str(e)))
            return tid
        line = f"/upload {size} {name} {target}".rstrip()
        try:
            cmd = commands.parse_line(line)
        except ClientError as e:
            cmd, why = None, e.message
        else:
            why = "" if isinstance(cmd, commands.Upload) else "not an /upload"
        if why:
            self._emit(events.TransferDone(tid, events.UPLOAD, name, size, error=why))
            return tid
        self._emit(events.TransferProgress(tid, events.UPLOAD, name, 0, size))
        with self._lock:
            self._out.append((line, False, _Upload(tid, path, name, size, target)))
        self._wake()
        return tid

    def download(self, url: str, dest: str, name: str) -> int:
        """Save the file at ``url`` (a ``FILE:`` line's; called ``name``) to ``dest``, a path
        or a folder, never over an existing file (``transfer.reserve_path`` adds ``-1``...), in
        a thread of its own, streamed. Returns the transfer's id; the front gets
        ``events.TransferProgress`` and one ``events.TransferDone`` (its ``path``, or why)."""
        tid = next(self._ids)
        threading.Thread(target=self._download, args=(tid, url, dest, name),
                         name=f"pychat-get-{tid}", daemon=True).start()
        return tid

    def _download(self, tid: int, url: str, dest: str, name: str) -> None:
        def report(done: int, total: int) -> None:
            self._emit(events.TransferProgress(tid, events.DOWNLOAD, name, done, total))
        try:
            path, size = transfer.download(url, dest, name, self.tls, report, self._cancel)
        except transfer.TransferError as e:
            self._emit(events.TransferDone(tid, events.DOWNLOAD, name, 0, url, error=str(e)))
        except Exception as e:  # never a silent dead thread: the front hears of it
            log.exception("download of %s failed", url)
            self._emit(events.TransferDone(tid, events.DOWNLOAD, name, 0, url, error=repr(e)))
        else:
            self._emit(events.TransferDone(tid, events.DOWNLOAD, name, size, url, path))

    def _put(self, job: _Upload, url: str) -> None:
        """The thread of one upload: its bytes PUT to the URL the server gave."""
        def report(done: int) -> None:
            self._emit(events.TransferProgress(job.id, events.UPLOAD, job.name, done, job.size))
        try:
            file_url = transfer.put_file(url, job.path, job.size, self.tls, report, self._cancel)
        except transfer.TransferError as e:
            self._upload_failed(job, str(e))
        except Exception as e:
            log.exception("upload of %s failed", job.path)
            self._upload_failed(job, repr(e))
        else:
            self._emit(events.TransferDone(job.id, events.UPLOAD, job.name, job.size,
                                           url=file_url, path=job.path))

    def _upload_failed(self, job: _Upload, why: str, code: str | None = None,
                       answered: bool = False) -> None:
        """Tell the front; ``answered``: by the server's ERROR to the /upload itself. A PUT
        that failed is also told by the server in a chat ERROR (``upload of X failed``): that
        one is not shown again for a while."""
        if not answered:
            with self._lock:
                self._failed_uploads[job.name] = time.monotonic() + FAILED_UPLOAD_ECHO
        self._emit(events.TransferDone(job.id, events.UPLOAD, job.name, job.size,
                                       path=job.path, error=why, code=code))

    def _echo_of_failed_upload(self, ev: replies.Error) -> bool:
        """The server's ERROR about an upload whose failure the front was told already."""
        if not ev.message.startswith("upload of "):
            return False
        now = time.monotonic()
        with self._lock:
            for name, until in list(self._failed_uploads.items()):
                if until < now:
                    del self._failed_uploads[name]
                elif ev.message.startswith(f"upload of {name} failed"):
                    del self._failed_uploads[name]
                    return True
        return False

    def set_name(self, name: str) -> None:
        self.send(f"/nick {name}")

    def login(self, name: str, password: str, register: bool = False) -> None:
        """Log in to account ``name`` (``register``: make it first) on the current connection,
        or on the next one; the answer is ``events.LoggedIn`` or ``events.LoginRefused``."""
        with self._lock:
            self._login = Credentials(name, password, register)
        self._wake()

    def logout(self) -> None:
        self.send("/logout")

    def close(self, timeout: float = 3.0) -> None:
        """Say goodbye (``/quit``) when connected, stop reconnecting, wait for the thread."""
        with self._lock:
            self._closing = True
            self._out.append(("/quit", False, None))
        self._cancel.set()
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    # ---- the session thread ----------------------------------------------------------------------

    def _emit(self, ev) -> None:
        try:
            self.on_event(ev)
        except Exception:
            log.exception("on_event failed for %r", ev)

    def _status(self, state: str, text: str, log_it: bool = True) -> None:
        self.state = state
        self._emit(events.Status(state, text, self.attempt, log_it))

    def _pause(self, seconds: float) -> bool:
        """Wait, unless close() is called; True if we should go on."""
        deadline = time.monotonic() + seconds
        while not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            select.select([self._wake_r], [], [], left)
            self._drain_wake()
        return False

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _run(self) -> None:
        delay = self.backoff_first
        where = f"{self.host}:{self.port}"
        why: str | None  # None only when _serve says we said goodbye (then we stop)
        while not self._closing:
            self._status(events.CONNECTING, f"connecting to {where}"
                         + (f" (attempt {self.attempt})" if self.attempt else ""), False)
            try:
                sock = self._connect()
            except ssl.SSLError as e:
                if isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
                    why = "the server closed the connection during the TLS handshake"
                else:  # no retry mends it: the certificate, or no TLS over there
                    self._fail(f"TLS to {where}: {tls_problem(e)}")
                    break
            except OSError as e:
                why = e.strerror or str(e)
            else:
                self.attempt, delay = 0, self.backoff_first
                why = self._serve(sock)
                if why is None or self._stop_why:  # we said goodbye, or the server did
                    break
                if why is _SILENT:
                    why = ("the server closed the connection without a word: does it want TLS? "
                           "(--tls, or --ca FILE)")
                    if not self.reconnects:  # never welcomed here: most likely a TLS port
                        self._fail(f"{where}: {why}")
                        break
            if self._closing:
                break
            self.attempt += 1
            wait = min(delay, self.backoff_max) * random.uniform(0.8, 1.2)
            delay = min(delay * 2, self.backoff_max)
            self._status(events.RECONNECTING, f"disconnected ({why}); reconnecting in "
                         f"{wait:.1f} s (attempt {self.attempt})")
            if not self._pause(wait):
                break
        self._status(events.CLOSED, f"disconnected: {self._stop_why}" if self._stop_why
                     else "disconnected")
        self._wake_r.close()
        self._wake_w.close()

    def _connect(self) -> socket.socket:
        """A connected socket, its TLS handshake done when the session has TLS."""
        sock = socket.create_connection((self.host, self.port), self.connect_timeout)
        if self.tls is None:
            self.tls_info = ""
            return sock
        try:
            tls = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        version = (tls.version() or "TLS").replace("TLSv", "TLS ")
        self.tls_info = f"{version}, verified" if self.tls.verify_mode == ssl.CERT_REQUIRED \
            else f"{version}, NOT verified"
        return tls

    def _fail(self, reason: str) -> None:
        """End the session for a reason no retry mends (told as ``TlsFailed``)."""
        self._stop_why = reason
        self._emit(TlsFailed(reason))

    def _serve(self, sock: socket.socket) -> str | None:
        """One connection, until it drops (returns why) or we quit (returns None)."""
        conn = _Connection(self, sock)
        try:
            return conn.run()
        finally:
            sock.close()
            for job in conn.uploads:  # announced, never answered: no URL to send them to
                if job is not None:
                    self._upload_failed(job, UPLOAD_LINE_GONE, answered=True)


_SILENT = "silent"  # _Connection.run: the server closed before saying anything at all


class _Connection:
    """The life of one TCP connection of a ``Session`` (its thread only)."""

    def __init__(self, session: Session, sock: socket.socket):
        self.s = session
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.tls = sock if isinstance(sock, ssl.SSLSocket) else None
        self.tls_retry = 0  # a TLS write that must be tried again with this many bytes
        self.heard = False  # any byte from the server yet
        self.buffer = LineBuffer(1 << 20)
        self.outbuf = bytearray()
        self.ready = False      # handshake read and restore sent: user lines may go
        self.restoring = False  # waiting for the restored name (or login) and room
        self.pending_nicks: deque[tuple[str, bool]] = deque()  # (name, is a restore)
        self.retry_name_at = 0.0
        self.restore_deadline = 0.0
        self.want_room = ""
        self.quitting = False
        self.last_rx = time.monotonic()
        self.ping_sent = 0.0
        self.ends = False  # /cap end asked: every command written from it on gets an END
        self.asked: deque[tuple[str, bool]] = deque()  # (END word, show) of commands written
        # logging in
        self.auths: deque[_Auth] = deque()  # /login, /register, /resume written, unanswered
        self.written_login: Credentials | None = None  # the session's login sent here
        self.register_after: Credentials | None = None  # a /register waiting for its /nick
        self.tokens_asked = 0  # our own /token lines, unanswered (their TOKEN is not shown)
        self.named = ""  # the name the server confirmed on this connection
        self.retry_auth_at = 0.0  # the server could not take our login yet: again then
        self.auth_retries = 0  # ... for at most restore_for
        # the /upload lines written, unanswered, in order: send_file's, or None for one typed
        self.uploads: deque[_Upload | None] = deque()

    def write(self, line: str, show: bool = False) -> None:
        self.outbuf += line.encode("utf-8") + b"\n"
        if self.ends and (word := commands.end_word(line)):
            self.asked.append((word, show))

    def run(self) -> str | None:
        s = self.s
        if self.tls is None:  # said at once: a TLS server closes on it at once (see Session)
            self.write(f"/ping {KEEPALIVE_TOKEN}")
        while True:
            now = time.monotonic()
            if self.ready:
                self._take_login()
                self._take_user_lines()
            if self.retry_name_at and now >= self.retry_name_at:
                self.retry_name_at = 0.0
                self._nick(s.name or s._wanted_name, restore=True)
            if self.retry_auth_at and now >= self.retry_auth_at:
                self.retry_auth_at = 0.0
                self._retry_auth()
            timeout = self._keepalive(now)
            if timeout is None:
                return "no answer to keepalive"
            for at in (self.retry_name_at, self.retry_auth_at):
                if at:
                    timeout = min(timeout, max(0.0, at - now))
            readable, writable, _ = select.select(
                [self.sock, s._wake_r], [self.sock] if self.outbuf else [], [], timeout)
            if s._wake_r in readable:
                s._drain_wake()
            if writable:
                why = self._send()
                if why:
                    return why
            if self.sock in readable:
                while True:  # TLS: a record read may leave more decrypted bytes waiting
                    try:
                        data = self.sock.recv(65536)
                    except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                            ssl.SSLWantWriteError):
                        break
                    except ssl.SSLError as e:
                        return f"TLS: {e.reason or e}"
                    except OSError as e:
                        return e.strerror or str(e)
                    if not data:
                        if not self.heard:
                            return _SILENT
                        return None if self.quitting else "the server closed the connection"
                    self.heard = True
                    self.last_rx = time.monotonic()
                    self.ping_sent = 0.0
                    for item in self.buffer.feed(data):
                        if isinstance(item, bytes) and self._line(item.decode("utf-8",
                                                                              "replace")):
                            return None
                    if self.tls is None or not self.tls.pending():
                        break

    def _send(self) -> str:
        """Write what the socket takes of ``outbuf``; why the connection failed, or ""."""
        try:
            if self.tls is not None:  # a write not taken must be tried again with the same bytes
                n = self.tls_retry or min(len(self.outbuf), TLS_SEND_CHUNK)
                self.tls_retry = n
                sent = self.sock.send(self.outbuf[:n])
                self.tls_retry = 0
            else:
                sent = self.sock.send(self.outbuf)
            del self.outbuf[:sent]
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except ssl.SSLError as e:
            return f"TLS: {e.reason or e}"
        except OSError as e:
            return e.strerror or str(e)
        return ""

    def _keepalive(self, now: float) -> float | None:
        """Seconds the select may wait; None when the server stopped answering."""
        ka = self.s.keepalive
        if self.ping_sent:
            if now - self.ping_sent > ka / 2:
                return None
            return self.ping_sent + ka / 2 - now
        if now - self.last_rx >= ka:
            self.write(f"/ping {KEEPALIVE_TOKEN}")
            self.ping_sent = now
            return ka / 2
        return self.last_rx + ka - now

    def _take_user_lines(self) -> None:
        s = self.s
        while True:
            with s._lock:
                if not s._out:
                    return
                line, show, job = s._out.popleft()
            try:
                cmd = commands.parse_line(line)
            except ClientError:
                cmd = None  # the server will say what is wrong
            if isinstance(cmd, commands.Upload):
                self.uploads.append(job)
            if isinstance(cmd, commands.Nick):
                self.pending_nicks.append((cmd.name, False))
            elif isinstance(cmd, commands.Quit):
                self.quitting = True
            elif isinstance(cmd, commands.Login):  # typed: its success fetches a token too
                self.auths.append(_Auth("login", cmd.name))
            elif isinstance(cmd, commands.Register):
                self.auths.append(_Auth("register", s.name))
            elif isinstance(cmd, commands.Resume):
                self.auths.append(_Auth("resume", cmd.name, token=cmd.token))
            self.write(line, show)
            if isinstance(cmd, commands.Join):
                self._ask_history()

    def _ask_history(self) -> None:
        """Right behind a /join (the server answers in order): the new room's recent lines."""
        if self.s.history:
            self.write(f"/history {self.s.history}")

    def _nick(self, name: str, restore: bool) -> None:
        self.pending_nicks.append((name, restore))
        self.write(f"/nick {name}")

    # ---- logging in ------------------------------------------------------------------------------

    def _take_login(self) -> None:
        """The session's login, if one is due and not yet written on this connection."""
        s = self.s
        with s._lock:
            cred = s._login
        if cred is None or cred is self.written_login or self.retry_auth_at:
            return
        self._write_login(cred, restore=False)

    def _write_login(self, cred: Credentials, restore: bool) -> None:
        self.written_login = cred
        if cred.register and self.named != cred.name:
            self.register_after = cred  # /register makes the session's name an account
            self._nick(cred.name, restore=False)
        elif cred.register:
            self.auths.append(_Auth("register", cred.name, cred, restore=restore))
            self.write(f"/register {cred.password}")
        else:
            self.auths.append(_Auth("login", cred.name, cred, restore=restore))
            self.write(f"/login {cred.name} {cred.password}")

    def _resume(self) -> None:
        s = self.s
        self.auths.append(_Auth("resume", s.account, token=s.token, restore=True))
        self.write(f"/resume {s.account} {s.token}")

    def _retry_auth(self) -> None:
        """Our login or resume again, after the server could not take it (not sent, busy)."""
        s = self.s
        with s._lock:
            cred = s._login
        if cred is not None:
            self._write_login(cred, restore=self.restoring)
        elif s.account and s.token:
            self._resume()

    def _forget(self, cred: Credentials | None) -> None:
        """The login ``cred`` is answered: the session no longer holds its password."""
        s = self.s
        if cred is None:
            return
        with s._lock:
            if s._login is cred:
                s._login = None
        if self.written_login is cred:
            self.written_login = None
        if self.register_after is cred:
            self.register_after = None

    def _logged_in(self, word: str, name: str) -> None:
        """``OK login <name>`` (a /login or a /resume) or ``OK register <name>``."""
        s = self.s
        self.auth_retries = 0
        heads = ("register",) if word == "register" else ("login", "resume")
        auth = self.auths.popleft() if self.auths and self.auths[0].word in heads else None
        s.account = s.name = name
        if auth is not None and auth.word == "resume":  # the token we resumed with still holds
            s.token = auth.token
            s._emit(events.LoggedIn(name, restored=auth.restore))
            if auth.restore:
                self._restored()
            return
        # a new login: the password is forgotten, a token (for reconnects) asked for
        restore = auth is not None and auth.restore
        if auth is not None:
            self._forget(auth.cred)
        s.token = ""
        self._ask_token()
        s._emit(events.LoggedIn(name, registered=word == "register", restored=restore))
        if restore:
            self._restored()

    def _ask_token(self) -> None:
        self.tokens_asked += 1
        self.write("/token")

    def _token(self, ev: replies.TokenIssued) -> bool:
        """A ``TOKEN:`` line: kept; True when it answers our own ``/token`` (not shown)."""
        s = self.s
        if ev.name.casefold() == s.account.casefold():
            s.token, s.token_expires = ev.token, ev.expires
        if not self.tokens_asked:
            return False  # the user typed /token: the front shows it
        self.tokens_asked -= 1
        return True

    def _auth_refused(self, ev: replies.Error) -> bool:
        """An ERROR answering a /login, /register or /resume (or our /token): ours are told to
        the front as ``LoginRefused``. True if swallowed."""
        s = self.s
        head = self.asked[0][0] if self.asked else ""
        if head == "token" and self.tokens_asked:  # logged in, but no token to keep: shown
            self.tokens_asked -= 1
            return False
        if not self.auths or head != self.auths[0].word:
            return False
        auth = self.auths.popleft()
        if auth.cred is None and not auth.restore:
            return False  # typed by the user: shown as the error it is
        if ev.code in (errors.NOT_SENT, errors.BUSY) \
                and self.auth_retries * RETRY_NAME_EVERY < s.restore_for:
            self.auth_retries += 1  # the router is away or busy: again, in a moment
            self.retry_auth_at = time.monotonic() + RETRY_NAME_EVERY
            return False
        self.auth_retries = 0
        self._forget(auth.cred)
        if auth.word == "resume":  # the token is no good any more: a guest, with no name
            s.account = s.token = s.name = ""
        if ev.code == errors.BANNED:
            s._stop_why = ev.message
        s._emit(events.LoginRefused(auth.name, ev.message, ev.code, restored=auth.restore,
                                    final=ev.code == errors.BANNED))
        if auth.restore:
            self._restored()
        return True

    def _welcome_login(self, name: str, again: bool) -> None:
        """After the handshake: our login, or the one to restore, or the guest's name."""
        s = self.s
        with s._lock:
            cred = s._login
        if cred is not None:
            self._write_login(cred, restore=again)  # (sent again if it was never answered)
        elif s.account and s.token:
            self._resume()
        elif s.account:  # dropped between OK login and its TOKEN: nothing to log in again with
            account, s.account, s.name = s.account, "", ""
            s._emit(events.LoginRefused(account, "the connection dropped before the login "
                                        "was complete: log in again", None, restored=True))
        elif name:
            self._nick(name, restore=again)

    # ---- the handshake and the restore -----------------------------------------------------------

    def _on_welcome(self) -> None:
        """Handshake read: ask for capabilities, restore name (or login) and room, then let user
        lines go. Each capability on its own line: a server that lacks one refuses only that
        one."""
        s = self.s
        self.write("/cap time")
        self.write("/cap codes")
        self.write("/cap deltas")  # room list changes as JOINED/LEFT/NAMED, not whole lists
        self.ends = True
        self.write("/cap end")
        name = s.name or s._wanted_name
        self.want_room = s.room if s.room != commands.LOBBY else ""
        again = s.reconnects > 0
        self.restoring = bool(again and (name or self.want_room or s.account or s._login))
        self.restore_deadline = time.monotonic() + s.restore_for
        self._welcome_login(name, again)
        if self.want_room:
            self.write(f"/join {self.want_room}")
        else:
            s.room = commands.LOBBY
        self._ask_history()
        s.reconnects += 1
        self.ready = True
        where = f"{s.host}:{s.port}" + (f" ({s.tls_info})" if s.tls_info else "")
        s._status(events.CONNECTED, f"connected to {where} as {s.uid}", not self.restoring)

    def _restored(self) -> None:
        s = self.s
        if self.restoring and not self.want_room and not any(r for _, r in self.pending_nicks) \
                and not self.retry_name_at and not self.retry_auth_at \
                and not any(a.restore for a in self.auths):
            self.restoring = False
            who = s.name or s.uid
            s._status(events.CONNECTED, f"reconnected as {who} in {s.room}")

    # ---- server lines ----------------------------------------------------------------------------

    def _line(self, line: str) -> bool:
        """Handle one server line; True when the server said goodbye (to our /quit, or for
        good: kicked, banned)."""
        s = self.s
        ev = replies.parse_server_line(line)
        if isinstance(ev, replies.IdAssigned):
            s.uid = ev.uid
        elif isinstance(ev, replies.UserList) and not self.ready and s.uid in ev.uids:
            s._emit(ev)
            self._on_welcome()
            return False
        elif isinstance(ev, replies.Pong) and ev.token == KEEPALIVE_TOKEN:
            return False
        elif isinstance(ev, replies.Ok) and ev.what.startswith("nick "):
            self._nick_ok(ev)
            return False
        elif isinstance(ev, replies.Ok) and ev.what.startswith(("login ", "register ")):
            word, _, name = ev.what.partition(" ")
            self._logged_in(word, name)
            return False
        elif isinstance(ev, replies.Ok) and ev.what == "logout":
            s.account = s.token = s.name = ""
        elif isinstance(ev, replies.Ok) and ev.what == "password":
            s.token = ""  # the old tokens are revoked: a new one for the next reconnect
            self._ask_token()
        elif isinstance(ev, replies.TokenIssued):
            if self._token(ev):
                return False
        elif isinstance(ev, replies.RoomChanged):
            s.room = ev.room
            s._emit(ev)
            if self.want_room and ev.room == self.want_room:
                self.want_room = ""
                self._restored()
            return False
        elif (isinstance(ev, replies.UploadUrl) and self._upload_answered(ev)) or (
                isinstance(ev, replies.Error) and (
                    self._upload_answered(ev) or s._echo_of_failed_upload(ev)
                    or self._nick_refused(ev) or self._auth_refused(ev))):
            return False
        elif isinstance(ev, replies.Error) and self.want_room and self.asked \
                and self.asked[0][0] == "join":
            self.want_room = ""  # the room to restore refused us (banned from it): the lobby
            s._emit(ev)
            self._restored()
            return False
        elif isinstance(ev, replies.Error) and ev.code == errors.UNKNOWN_CAPABILITY \
                and self.ends and self.asked and self.asked[0][0] == "cap":
            self.ends = False  # a server without END lines: stop waiting for them
            self.asked.clear()
        elif isinstance(ev, replies.End):
            self._ended(ev.word)
            return False
        elif isinstance(ev, replies.Bye):
            if ev.reason:  # kicked or banned: the server closes, and we do not come back
                s._stop_why = ev.reason
            s._emit(ev)
            return self.quitting or bool(ev.reason)
        s._emit(ev)
        return False

    def _nick_ok(self, ev: replies.Ok) -> None:
        s = self.s
        s.name = self.named = ev.what[5:]
        if self.pending_nicks:
            self.pending_nicks.popleft()
        s._emit(ev)
        cred = self.register_after
        if cred is not None and cred.name == s.name:  # our new account's name is ours now
            self.register_after = None
            self.auths.append(_Auth("register", cred.name, cred, restore=self.restoring))
            self.write(f"/register {cred.password}")
        self._restored()

    def _ended(self, word: str) -> None:
        """The reply to the oldest command written is complete (commands are answered in
        order; one that is not the oldest means a command went unanswered: drop up to it)."""
        while self.asked:
            asked, show = self.asked.popleft()
            if asked == "upload":  # an /upload the server did not answer (it always does)
                left = sum(1 for w, _ in self.asked if w == "upload")
                while len(self.uploads) > left:
                    job = self.uploads.popleft()
                    if job is not None:
                        self.s._upload_failed(job, "the server did not answer the /upload",
                                              answered=True)
            if asked == word:
                if show:
                    self.s._emit(events.Answered(word))
                return

    def _upload_answered(self, ev: replies.UploadUrl | replies.Error) -> bool:
        """``UPLOAD:`` or ``ERROR:`` answering the oldest /upload written: ours starts its PUT
        (or is told refused) and the line is not handed on; True then."""
        if not self.uploads or (self.ends and not (self.asked and self.asked[0][0] == "upload")):
            return False
        if not self.ends and not isinstance(ev, replies.UploadUrl):
            return False  # (without END lines only an UPLOAD: is known to answer one)
        job = self.uploads.popleft()
        if job is None:
            return False  # typed by the user: shown as it is
        if isinstance(ev, replies.UploadUrl):
            threading.Thread(target=self.s._put, args=(job, ev.url),
                             name=f"pychat-put-{job.id}", daemon=True).start()
        else:
            self.s._upload_failed(job, ev.message, ev.code, answered=True)
        return True

    def _nick_refused(self, ev: replies.Error) -> bool:
        """An ERROR answering our /nick: retry a restore, or tell the front. True if swallowed."""
        if not self.pending_nicks:
            return False
        name, restore = self.pending_nicks[0]
        taken = ev.code == errors.NAME_TAKEN
        registered = ev.code == errors.NAME_REGISTERED
        if ev.code == errors.LOGGED_IN:  # "/logout first": shown as it is
            self.pending_nicks.popleft()
            return False
        if not taken and not registered and ev.code not in (errors.INVALID_NAME, errors.USAGE):
            return False
        self.pending_nicks.popleft()
        s = self.s
        cred = self.register_after
        if cred is not None and cred.name == name:  # the new account's name is not to be had
            self._forget(cred)
            s._emit(events.LoginRefused(name, f"name {name} is taken" if taken else ev.message,
                                        ev.code, restored=restore))
            return True
        if restore and taken and time.monotonic() < self.restore_deadline:
            self.retry_name_at = time.monotonic() + RETRY_NAME_EVERY
            s._status(s.state, f"name {name} is still held by the old connection; retrying",
                      False)
            return True
        if restore:
            s.name = ""
        if name == s._wanted_name:
            s._wanted_name = ""
        reason = (f"name {name} is taken: choose another" if taken
                  else f"name {name} is registered: log in to use it" if registered
                  else ev.message)
        s._emit(events.NameRefused(name, reason, registered))
        self._restored()
        return True
