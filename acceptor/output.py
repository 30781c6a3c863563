"""Lines to clients: each room's local members, the queues, rounds of writes, send-queue limits.

Owns ``rooms`` (room -> its local sessions, in order of arrival) and every session's position in
the write rounds; a session's ``out`` list is its queue. Nobody ever waits for a client.

Fan-out: a room message arrives once per acceptor; its line is encoded once (twice at most: with
and without ``@time=``) and appended to each local member's queue. Queues are written in rounds
(``flush``), one write per client per round, ``FLUSH_SLICE`` clients at a time with the loop
running between slices (reads and router batches are not held up by a long round, and lines
that arrive meanwhile reach the clients not written yet in the same round). A plain client
whose transport holds nothing unsent is written with ``os.write`` on its socket (cheaper than
``transport.write``); a partial write leaves the rest to the transport, which pauses the session
(``pause_writing``): a paused ("blocked") client's lines wait in its queue, as references to the
bytes the room shares, until ``resume_writing``.

Coalescing: the send syscall is most of an acceptor's cost under load, so after a round of writes
the next round waits ``coalesce_factor`` times as long as that round's writes took (at most
``coalesce_ms``), and lines that arrive meanwhile share one write. A light load (a quick round)
waits next to nothing; a busy acceptor batches more and spends a bounded share of its time in
send calls.

Send queues: a client whose unsent bytes pass ``send_queue`` is watched: if it has drained nothing
by the next stall check it is dropped (``on_drop``); past ``send_queue_hard`` it is dropped at
once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from pychat.wire import replies

from . import web
from .limits import Limits

if TYPE_CHECKING:
    from .irc import IrcDoor
    from .session import Session

log = logging.getLogger("pychat.acceptor")

FLUSH_SLICE = 128  # clients a round writes before the loop gets a turn (reads, router batches)


def uids_named(events: list[replies.Event]) -> set[str]:
    """The uids a list change names (who arrived, left or was renamed)."""
    out: set[str] = set()
    for event in events:
        if isinstance(event, (replies.Joined, replies.Left)):
            out.update(event.uids)
        elif isinstance(event, replies.Named):
            out.update(uid for uid, _ in event.names)
    return out


def _timed_line(tagged: tuple[str, str]) -> bytes:
    return (replies.tagged(*tagged) + "\n").encode("utf-8")


def _timed_frame(tagged: tuple[str, str]) -> bytes:
    return web.frame(replies.tagged(*tagged).encode("utf-8"))


class Output:
    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits, stats: dict[str, int],
                 on_drop: Callable[[Session, str], None], before_slice: Callable[[], None]):
        self.loop = loop
        self.limits = limits
        self.stats = stats
        self.on_drop = on_drop  # a client over its send queue: the acceptor closes it
        self.before_slice = before_slice  # what was read goes to the router before each slice
        self.rooms: dict[str, dict[Session, None]] = {}  # line-protocol members
        self.doors: dict[str, dict[Session, None]] = {}  # IRC members (``s.door`` set)
        self.webs: dict[str, dict[Session, None]] = {}  # WebSocket members (frames)
        self._kinds = (self.rooms, self.doors, self.webs)  # by ``Session.KIND``
        self._dirty: list[Session] = []
        self._flush_handle: asyncio.Handle | None = None
        self._coalesce_max = limits.coalesce_ms / 1000.0
        self._coalesce_factor = limits.coalesce_factor
        self._next_flush = 0.0  # loop time before which a round of writes waits
        self._round: list[Session] = []  # the round being written, FLUSH_SLICE at a time
        self._round_at = 0  # its next client
        self._round_cost = 0.0  # seconds its slices took so far
        self._stall_handle: asyncio.TimerHandle | None = None
        self._over: dict[Session, int] = {}  # clients above send_queue -> bytes at last check
        self._held: dict[Session, tuple[int, int]] = {}  # blocked -> (lines, bytes) counted

    # ---- membership ------------------------------------------------------------------------------

    def move(self, s: Session, room: str) -> None:
        """``s`` is now a member of ``room`` (the router said so)."""
        if s.room != room:
            self.leave(s)
            self._kinds[s.KIND].setdefault(room, {})[s] = None

    def leave(self, s: Session) -> None:
        rooms = self._kinds[s.KIND]
        members = rooms.get(s.room)
        if members is not None:
            members.pop(s, None)
            if not members:
                del rooms[s.room]

    def members(self, room: str) -> list[Session]:
        """Every local member of ``room``, of every door."""
        return [*self.rooms.get(room, ()), *self.doors.get(room, ()), *self.webs.get(room, ())]

    def forget(self, s: Session) -> None:
        """``s`` is closed: out of its room and of the send-queue watch."""
        self._over.pop(s, None)
        self._held.pop(s, None)
        self.leave(s)

    # ---- queueing --------------------------------------------------------------------------------

    def queue(self, s: Session, data: bytes) -> None:
        if not s.out:
            self._dirty.append(s)
            if self._flush_handle is None:
                self._schedule_flush()
        s.out.append(data)

    def fan_out(self, room: str, data: bytes, tagged: tuple[str, str] | None = None) -> None:
        """Queue ``data`` for every local member of ``room``: the hot path, so the queueing of
        ``queue`` is inlined (one flush scheduled per message, not a call per member). With
        ``tagged`` = (stamp, text), members with ``/cap time`` get the tagged line instead,
        encoded once, when the first of them is met. IRC members (``doors``) get the line
        translated once for all of them (``_fan_out_doors``); WebSocket members get the same
        framed once (server frames are unmasked: the same bytes for everyone)."""
        if room in self.doors:
            self._fan_out_doors(self.doors[room], data, tagged)
        webs = self.webs.get(room)
        if webs:
            self._queue_all(webs, web.frames(data), tagged, _timed_frame)
        members = self.rooms.get(room)
        if members:
            self._queue_all(members, data, tagged, _timed_line)

    def _queue_all(self, members: dict[Session, None], plain: bytes,
                   tagged: tuple[str, str] | None,
                   timed_of: Callable[[tuple[str, str]], bytes]) -> None:
        """``plain`` for every member, or to those with ``/cap time`` ``timed_of(tagged)``,
        made once when the first of them is met; one flush scheduled for all of them."""
        dirty = self._dirty
        timed = None
        for s in members:
            out = s.out
            if not out:
                dirty.append(s)
            if tagged is not None and s.cap_time:
                if timed is None:
                    timed = timed_of(tagged)
                out.append(timed)
            else:
                out.append(plain)
        if self._flush_handle is None:
            self._schedule_flush()

    def _fan_out_doors(self, members: dict[Session, None], data: bytes,
                       tagged: tuple[str, str] | None) -> None:
        """A room line for the room's IRC members: a chat line (which skips its sender: IRC
        clients do not expect their own echo) or a file is translated once (twice at most:
        with and without ``@time=``) for all of them; any other line goes through each
        member's translator."""
        text = tagged[1] if tagged is not None else data.decode("utf-8").rstrip("\n")
        event = replies.parse_server_line(text)
        lines: Callable[[IrcDoor, str | None], list[str]]
        sender = ""
        if type(event) is replies.FileShared:
            assert isinstance(event, replies.FileShared)
            file = event
            lines = lambda door, stamp: door.file_lines(replace(file, stamp=stamp), room=True)  # noqa: E731
        elif type(event) is replies.Chat and not event.private:
            assert isinstance(event, replies.Chat)
            chat, sender = event, event.uid
            lines = lambda door, stamp: door.public(stamp, chat.uid, chat.text)  # noqa: E731
        else:
            for s in members:
                s.send_line(text)
            return
        stamp = tagged[0] if tagged is not None else None
        plain: bytes | None = None
        timed: bytes | None = None
        for s in members:
            door = s.door
            if s.uid == sender or door is None or not door.registered:
                continue
            if stamp and "server-time" in door.caps:
                if timed is None:
                    timed = "".join(f"{line}\r\n" for line in lines(door, stamp)).encode()
                self.queue(s, timed)
            else:
                if plain is None:
                    plain = "".join(f"{line}\r\n" for line in lines(door, None)).encode()
                self.queue(s, plain)

    def roster(self, room: str, text: str, delta: str) -> None:
        """A room's USERS/NAMES push: the whole lists, or to members with ``/cap deltas`` that
        have a list to apply it to, the change (``delta``; when empty, the lists too)."""
        if room in self.doors:
            self._roster_doors(self.doors[room], text, delta)
        members = self.rooms.get(room)
        if members:
            self._roster(members, (text + "\n").encode("utf-8"),
                         (delta + "\n").encode("utf-8") if delta else b"")
        webs = self.webs.get(room)
        if webs:  # the same, framed once
            self._roster(webs, web.frames(text.encode("utf-8")),
                         web.frames(delta.encode("utf-8")) if delta else b"")

    def _roster_doors(self, members: dict[Session, None], text: str, delta: str) -> None:
        """A push for a room's IRC members. Those in step (a list to apply the change to, the
        change not about themselves) all have the same list and see the same JOIN/PART/NICK
        lines: the first of them applies the change and makes the lines, the others take its
        list (one list for all of them from then on: ``IrcDoor.share``) and the same bytes.
        So a push costs what it changes once, not once per member (in a room of 1,000, a push
        of 300 arrivals cost 360 ms when each member made its own lines). The others each
        translate their own (a whole list, or a change that names them)."""
        shared: bytes | None = None
        roster = None
        events: list[replies.Event] | None = None
        named: set[str] = set()
        for s in members:
            door = s.door
            if not (s.conn.cap_deltas and not s.fresh and delta):
                s.fresh = False
                s.send_line(text)
                continue
            if events is None:
                events = [replies.parse_server_line(line) for line in delta.split("\n")]
                named = uids_named(events)
            if door is None or not door.in_step() or s.uid in named:
                s.send_line(delta)
            elif shared is None:
                lines = door.from_core(delta, shared=True)
                shared = "".join(f"{line}\r\n" for line in lines).encode("utf-8")
                roster = door.roster
                door.share(roster)
                if shared:
                    self.queue(s, shared)
            else:
                assert roster is not None
                if door.roster is not roster:
                    door.share(roster)
                if shared:
                    self.queue(s, shared)

    def _roster(self, members: dict[Session, None], full: bytes, change: bytes) -> None:
        change = change or full
        for s in members:
            if s.conn.cap_deltas and not s.fresh:
                self.queue(s, change)
            else:
                s.fresh = False
                self.queue(s, full)

    def kick(self) -> None:
        """Lines were queued directly (``fan_out`` batches): make sure a round is coming."""
        if self._flush_handle is None and self._dirty:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        wait = self._next_flush - self.loop.time()
        self._flush_handle = (self.loop.call_later(wait, self.flush) if wait > 0
                              else self.loop.call_soon(self.flush))

    def unblocked(self, s: Session) -> None:
        """resume_writing: the lines that waited in ``s.out`` go in the next flush."""
        self._held.pop(s, None)
        if s.out:
            self._dirty.append(s)
            if self._flush_handle is None:
                self._schedule_flush()

    def watch(self, s: Session) -> None:
        """pause_writing: a blocked client's queue (mostly ``s.out``) is checked at each stall
        check for as long as it stays blocked."""
        self._over.setdefault(s, 0)
        if self._stall_handle is None:
            self._stall_handle = self.loop.call_later(self.limits.stall_check,
                                                      self._check_stalled)

    def write_now(self, s: Session) -> None:
        if s.out:
            self._write(s)

    # ---- rounds of writes ------------------------------------------------------------------------

    def flush(self) -> None:
        """Start a round of writes: one write per client with lines queued."""
        if self._flush_handle is not None:  # (its own call: a no-op; any other: the one left)
            self._flush_handle.cancel()
        rest = self._round[self._round_at:]  # a round cut short keeps its clients, first
        self._round = rest + self._dirty if rest else self._dirty
        self._dirty = []
        self._round_at = 0
        self._round_cost = 0.0
        self._write_slice()

    def _write_slice(self) -> None:
        """Write ``FLUSH_SLICE`` clients of the round, then let the loop run before the next
        slice: the lines of senders on this acceptor are read meanwhile, and what the router
        sends back joins the queues of the clients the round has not reached yet (one write
        for both), instead of waiting behind a round of thousands of writes."""
        self._flush_handle = None
        self.before_slice()  # lines read since the last slice go to the router before this one
        began = time.perf_counter()
        dirty = self._round
        i = self._round_at
        end = min(i + FLUSH_SLICE, len(dirty))
        writes = lines = 0
        write = os.write
        for k in range(i, end):  # the hot loop: _write inlined
            s = dirty[k]
            out = s.out
            if not out:
                continue
            if s.blocked:
                self._hold(s)
                continue
            t = s.transport
            if t is None or t.is_closing():
                out.clear()
                continue
            n = len(out)
            data = out[0] if n == 1 else b"".join(out)
            out.clear()
            if s.fd >= 0:  # nothing unsent in the transport: write to the socket ourselves
                try:
                    sent = write(s.fd, data)  # os.write: ~1 us less than transport.write
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:  # reset, broken pipe: the transport's write meets it too
                    sent = 0
                if sent < len(data):  # the rest (all, on an error) to the transport
                    t.write(data[sent:] if sent else data)
            else:
                t.write(data)
            writes += 1
            lines += n
            if s.blocked:  # pause_writing ran inside write: bytes were left unsent
                self._check_queue(s, t)
        stats = self.stats
        stats["writes"] += writes
        stats["lines_out"] += lines
        self._round_cost += time.perf_counter() - began
        if end < len(dirty):
            self._round_at = end
            self._flush_handle = self.loop.call_soon(self._write_slice)
            return
        self._round = []
        self._next_flush = self.loop.time() + min(self._coalesce_max,
                                                  self._round_cost * self._coalesce_factor)
        # lines queued during the round for clients it had passed; blocked clients alone
        # (re-queued by _hold to be counted again) wait for new lines, as before
        if any(not s.blocked for s in self._dirty):
            self._schedule_flush()

    def _hold(self, s: Session) -> None:
        """``s`` is blocked: its lines wait in ``s.out`` (the same bytes objects as the other
        members', not a copy) for resume_writing. The new ones are counted against the hard
        limit, and ``s`` stays dirty to be counted again at the next flush."""
        t = s.transport
        if t is None or t.is_closing():
            s.out.clear()
            self._held.pop(s, None)
            return
        counted, size = self._held.get(s, (0, 0))
        out = s.out
        size += sum(map(len, out[counted:]))
        self._held[s] = (len(out), size)
        if size + t.get_write_buffer_size() > self.limits.send_queue_hard:
            self._drop(s, f"send queue over {self.limits.send_queue_hard} bytes")
        else:
            self._dirty.append(s)

    def _write(self, s: Session) -> None:
        out = s.out
        t = s.transport
        self._held.pop(s, None)
        if t is None or t.is_closing():
            out.clear()
            return
        stats = self.stats
        stats["writes"] += 1
        stats["lines_out"] += len(out)
        t.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        self._check_queue(s, t)

    # ---- send-queue limits -----------------------------------------------------------------------

    def _check_queue(self, s: Session, t: asyncio.WriteTransport) -> None:
        size = t.get_write_buffer_size()
        if size > self.limits.send_queue:
            if size > self.limits.send_queue_hard:
                self._drop(s, f"send queue over {self.limits.send_queue_hard} bytes")
            elif not self._over.get(s):  # not watched yet, or watched only as blocked
                self._over[s] = size
                if self._stall_handle is None:
                    self._stall_handle = self.loop.call_later(self.limits.stall_check,
                                                              self._check_stalled)

    def _check_stalled(self) -> None:
        """Drop clients above send_queue that drained nothing since the last check."""
        self._stall_handle = None
        for s, before in list(self._over.items()):
            t = s.transport
            size = t.get_write_buffer_size() if t is not None and not t.is_closing() else 0
            if s.blocked and size:
                size += sum(map(len, s.out))  # its lines wait there, not in the transport
            if size <= self.limits.send_queue:
                if s.blocked and size:
                    self._over[s] = 0  # still watched while blocked
                else:
                    del self._over[s]
            elif size >= before > self.limits.send_queue:
                self._drop(s, f"send queue over {self.limits.send_queue} bytes and not draining")
            else:
                self._over[s] = size
        if self._over:
            self._stall_handle = self.loop.call_later(self.limits.stall_check,
                                                      self._check_stalled)

    def _drop(self, s: Session, why: str) -> None:
        self._over.pop(s, None)
        self.stats["send_queue_drops"] += 1
        self.on_drop(s, why)

    def close(self) -> None:
        for handle in (self._flush_handle, self._stall_handle):
            if handle is not None:
                handle.cancel()
