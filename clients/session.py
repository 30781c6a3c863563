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
re-sends ``/nick <name>`` and ``/join <room>``. The server gives a new uid. A name still held by
the dead connection (the router drops it after 3 missed acceptor heartbeats) is asked for again
every half second for ``restore_for`` seconds before the front is told it is refused.

Invariants (all on the session thread):
- ``name`` and ``room`` are what the server last confirmed (``OK nick``, ``ROOM:``): those are
  restored, never a name the server refused
- right behind every ``/join`` it sends, the session asks for the room's history (``history``
  lines), so a front shows recent lines on entry and after a reconnect (``ChatState`` drops
  the ones already shown)
- lines given to ``send()`` while disconnected are sent, in order, once the connection is back
  and restored; the keepalive's own ``PONG`` is not handed on
"""

from __future__ import annotations

import logging
import random
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from pychat.wire import commands, errors, replies
from pychat.wire.errors import ClientError
from pychat.wire.framing import LineBuffer

from . import events

log = logging.getLogger("pychat.session")

KEEPALIVE_TOKEN = "pychat-keepalive"
RETRY_NAME_EVERY = 0.5


# The front's event callback. Whatever it returns is ignored (an asyncio front passes
# ``call_soon_threadsafe``, which returns a Handle), hence ``object`` rather than ``None``.
OnEvent = Callable[[object], object]


class Session:
    def __init__(self, host: str, port: int, on_event: OnEvent, *,
                 name: str = "", room: str = commands.LOBBY, history: int = 20,
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
        # confirmed by the server (the session thread writes them; others may read them)
        self.uid = ""
        self.name = ""
        self.room = room
        self.state = events.CONNECTING
        self.attempt = 0
        self.reconnects = 0
        self._wanted_name = name  # sent on the first connection, confirmed or refused there
        self._out: deque[tuple[str, bool]] = deque()  # (line, tell the front when answered)
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
            self._out.append((line, show))
        self._wake()

    def set_name(self, name: str) -> None:
        self.send(f"/nick {name}")

    def close(self, timeout: float = 3.0) -> None:
        """Say goodbye (``/quit``) when connected, stop reconnecting, wait for the thread."""
        with self._lock:
            self._closing = True
            self._out.append(("/quit", False))
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
                sock = socket.create_connection((self.host, self.port), self.connect_timeout)
            except OSError as e:
                why = e.strerror or str(e)
            else:
                self.attempt, delay = 0, self.backoff_first
                why = self._serve(sock)
                if why is None:  # we said goodbye
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
        self._status(events.CLOSED, "disconnected")
        self._wake_r.close()
        self._wake_w.close()

    def _serve(self, sock: socket.socket) -> str | None:
        """One connection, until it drops (returns why) or we quit (returns None)."""
        conn = _Connection(self, sock)
        try:
            return conn.run()
        finally:
            sock.close()


class _Connection:
    """The life of one TCP connection of a ``Session`` (its thread only)."""

    def __init__(self, session: Session, sock: socket.socket):
        self.s = session
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.buffer = LineBuffer(1 << 20)
        self.outbuf = bytearray()
        self.ready = False      # handshake read and restore sent: user lines may go
        self.restoring = False  # waiting for the restored name and room
        self.pending_nicks: deque[tuple[str, bool]] = deque()  # (name, is a restore)
        self.retry_name_at = 0.0
        self.restore_deadline = 0.0
        self.want_room = ""
        self.quitting = False
        self.last_rx = time.monotonic()
        self.ping_sent = 0.0
        self.ends = False  # /cap end asked: every command written from it on gets an END
        self.asked: deque[tuple[str, bool]] = deque()  # (END word, show) of commands written

    def write(self, line: str, show: bool = False) -> None:
        self.outbuf += line.encode("utf-8") + b"\n"
        if self.ends and (word := commands.end_word(line)):
            self.asked.append((word, show))

    def run(self) -> str | None:
        s = self.s
        while True:
            now = time.monotonic()
            if self.ready:
                self._take_user_lines()
            if self.retry_name_at and now >= self.retry_name_at:
                self.retry_name_at = 0.0
                self._nick(s.name or s._wanted_name, restore=True)
            timeout = self._keepalive(now)
            if timeout is None:
                return "no answer to keepalive"
            if self.retry_name_at:
                timeout = min(timeout, max(0.0, self.retry_name_at - now))
            readable, writable, _ = select.select(
                [self.sock, s._wake_r], [self.sock] if self.outbuf else [], [], timeout)
            if s._wake_r in readable:
                s._drain_wake()
            if writable:
                try:
                    sent = self.sock.send(self.outbuf)
                    del self.outbuf[:sent]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    return e.strerror or str(e)
            if self.sock in readable:
                try:
                    data = self.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    return e.strerror or str(e)
                if not data:
                    return None if self.quitting else "the server closed the connection"
                self.last_rx = time.monotonic()
                self.ping_sent = 0.0
                for item in self.buffer.feed(data):
                    if isinstance(item, bytes) and self._line(item.decode("utf-8", "replace")):
                        return None

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
                line, show = s._out.popleft()
            try:
                cmd = commands.parse_line(line)
            except ClientError:
                cmd = None  # the server will say what is wrong
            if isinstance(cmd, commands.Nick):
                self.pending_nicks.append((cmd.name, False))
            elif isinstance(cmd, commands.Quit):
                self.quitting = True
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

    def _on_welcome(self) -> None:
        """Handshake read: ask for capabilities, restore name and room, then let user lines go.
        Each capability on its own line: a server that lacks one refuses only that one."""
        s = self.s
        self.write("/cap time")
        self.write("/cap codes")
        self.write("/cap deltas")  # room list changes as JOINED/LEFT/NAMED, not whole lists
        self.ends = True
        self.write("/cap end")
        name = s.name or s._wanted_name
        self.want_room = s.room if s.room != commands.LOBBY else ""
        again = s.reconnects > 0
        self.restoring = bool(again and (name or self.want_room))
        self.restore_deadline = time.monotonic() + s.restore_for
        if name:
            self._nick(name, restore=again)
        if self.want_room:
            self.write(f"/join {self.want_room}")
        else:
            s.room = commands.LOBBY
        self._ask_history()
        s.reconnects += 1
        self.ready = True
        where = f"{s.host}:{s.port}"
        s._status(events.CONNECTED, f"connected to {where} as {s.uid}", not self.restoring)

    def _restored(self) -> None:
        s = self.s
        if self.restoring and not self.want_room and not any(r for _, r in self.pending_nicks) \
                and not self.retry_name_at:
            self.restoring = False
            who = s.name or s.uid
            s._status(events.CONNECTED, f"reconnected as {who} in {s.room}")

    def _line(self, line: str) -> bool:
        """Handle one server line; True when the server said goodbye to our /quit."""
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
            s.name = ev.what[5:]
            if self.pending_nicks:
                self.pending_nicks.popleft()
            s._emit(ev)
            self._restored()
            return False
        elif isinstance(ev, replies.RoomChanged):
            s.room = ev.room
            s._emit(ev)
            if self.want_room and ev.room == self.want_room:
                self.want_room = ""
                self._restored()
            return False
        elif isinstance(ev, replies.Error) and self._nick_refused(ev):
            return False
        elif isinstance(ev, replies.Error) and ev.code == errors.UNKNOWN_CAPABILITY \
                and self.ends and self.asked and self.asked[0][0] == "cap":
            self.ends = False  # a server without END lines: stop waiting for them
            self.asked.clear()
        elif isinstance(ev, replies.End):
            self._ended(ev.word)
            return False
        elif isinstance(ev, replies.Bye):
            s._emit(ev)
            return self.quitting
        s._emit(ev)
        return False

    def _ended(self, word: str) -> None:
        """The reply to the oldest command written is complete (commands are answered in
        order; one that is not the oldest means a command went unanswered: drop up to it)."""
        while self.asked:
            asked, show = self.asked.popleft()
            if asked == word:
                if show:
                    self.s._emit(events.Answered(word))
                return

    def _nick_refused(self, ev: replies.Error) -> bool:
        """An ERROR answering our /nick: retry a restore, or tell the front. True if swallowed."""
        if not self.pending_nicks:
            return False
        name, restore = self.pending_nicks[0]
        taken = ev.code == errors.NAME_TAKEN
        if not taken and ev.code not in (errors.INVALID_NAME, errors.USAGE):
            return False
        self.pending_nicks.popleft()
        s = self.s
        if restore and taken and time.monotonic() < self.restore_deadline:
            self.retry_name_at = time.monotonic() + RETRY_NAME_EVERY
            s._status(s.state, f"name {name} is still held by the old connection; retrying",
                      False)
            return True
        if restore:
            s.name = ""
        if name == s._wanted_name:
            s._wanted_name = ""
        s._emit(events.NameRefused(name, f"name {name} is taken: choose another" if taken
                                   else ev.message))
        self._restored()
        return True
