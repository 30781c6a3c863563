"""Lines to clients: each room's local members, the queues, rounds of writes, send-queue limits.

Owns ``rooms`` (room -> its local sessions, in order of arrival) and every session's position in
the write rounds; a session's ``out`` list is its queue. Nobody ever waits for a client.

Fan-out: a room message arrives once per acceptor; its line is encoded once and appended to the
room's ``Run``, the lines its line-protocol members have not all had yet: one append per message,
not one per member. Its WebSocket members have a run of their own, of the line framed once, and
its IRC members one of the line translated once (``_fan_out_doors``: for the members registered,
and a chat line skips its sender). Each member of a run keeps a ``mark``, the room's lines it
has had; a line queued for the member alone (a reply, a private message, a list) first moves
the run's lines it has not had into its own queue, so its lines keep their order. A round
writes a member in step (nothing of its own, nothing had) the run's lines joined once for all
of them (with ``@time=``, a second join, made when the first member with ``/cap time``, or
IRC's server-time, is met). Queues are written in rounds
(``flush``), one write per client per round, ``FLUSH_SLICE`` clients at a time with the loop
running between slices (reads and router batches are not held up by a long round, and lines
that arrive meanwhile reach the clients not written yet in the same round). A plain client
whose transport holds nothing unsent is written with ``os.write`` on its socket (cheaper than
``transport.write``); a partial write leaves the rest to the transport, which pauses the session
(``pause_writing``): a paused ("blocked") client's lines wait in its queue, as references to the
bytes the room shares, until ``resume_writing``.

Coalescing: the send syscall is most of an acceptor's cost under load, so after a round of writes
that batched (its writes carried at least ``BATCHED`` lines each on average: lines are coming
faster than rounds) the next round waits ``coalesce_factor`` times as long as that round's writes
took (at most ``coalesce_ms``), and lines that arrive meanwhile share one write. A round that
wrote each client about one line is followed by no wait: at a light load a wait delays lines
without saving writes. A busy acceptor batches more and spends a bounded share of its time in
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
from typing import TYPE_CHECKING, Any

from pychat.wire import replies

from . import web
from .limits import Limits

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("pychat.acceptor")

FLUSH_SLICE = 128  # clients a round writes before the loop gets a turn (reads, router batches)
TRIM_AT = 512  # lines a room's run holds before what every member has had is forgotten
BATCHED = 1.5  # lines per write, on average over a round, from which the next round waits


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


def _irc_bytes(lines: list[str]) -> bytes:
    return "".join(f"{line}\r\n" for line in lines).encode("utf-8")


def _timed_irc(tagged: tuple[str, tuple[str, str, str]]) -> bytes:
    from .irc import chat_lines  # (loaded with the IRC door: an acceptor without it never is)

    stamp, (source, target, text) = tagged
    return _irc_bytes(chat_lines(f"@time={stamp} ", source, target, text))


class Run:
    """A room's lines that some of its members of one kind have not had yet, oldest first:
    lines for the line protocol, frames for WebSocket (``timed_of`` ``_timed_frame``), IRC
    lines for the IRC door (its members once registered; a line skips its sender,
    ``senders``). ``items[0]`` is the room's line number ``base``; a member ``s`` has had the
    room's lines before number ``s.mark``. ``lagging`` counts the members that lack some: when
    none does, the lines are forgotten at once (``base`` moves past them); while lines keep
    coming during rounds, ``trim`` forgets what all have had every ``TRIM_AT`` lines."""

    __slots__ = ("_blob", "_blob_n", "_tblob", "_tblob_n", "_trim_at", "base", "items",
                 "lagging", "members", "senders", "tags", "timed", "timed_of")

    def __init__(self, timed_of: Callable[[Any], bytes], skips_sender: bool = False):
        self.members: dict[Session, None] = {}  # the room's members of its kind that get it
        self.timed_of = timed_of  # a line's tag -> the line as a ``/cap time`` member gets it
        # (IRC) its members by uid: a chat line is not sent back to its sender
        self.senders: dict[str, Session] | None = {} if skips_sender else None
        self.base = 0  # the number of items[0]
        self.items: list[bytes] = []  # the lines
        # of those with a time tag, what ``timed_of`` makes it of: (stamp, text), or for IRC
        # (stamp, (source, channel, text))
        self.tags: list[tuple[str, Any] | None] = []
        self.timed: list[bytes] = []  # the lines as ``/cap time`` members get them, made lazily
        self.lagging = 0  # members whose mark is before the end
        self._trim_at = TRIM_AT  # the length at which ``trim`` runs next
        self._blob, self._blob_n = b"", -1  # all the lines joined, and how many they were
        self._tblob, self._tblob_n = b"", -1  # the same with ``@time=``

    @property
    def end(self) -> int:
        return self.base + len(self.items)

    def append(self, data: bytes, tag: tuple[str, Any] | None) -> None:
        self.items.append(data)
        self.tags.append(tag)
        self.lagging = len(self.members)  # every member lacks this one
        if len(self.items) > self._trim_at:
            self.trim()

    def lines(self, timed: bool) -> list[bytes]:
        if not timed:
            return self.items
        made, items, tags, timed_of = self.timed, self.items, self.tags, self.timed_of
        for i in range(len(made), len(items)):
            tag = tags[i]
            made.append(items[i] if tag is None else timed_of(tag))
        return made

    def joined(self, timed: bool) -> bytes:
        """Every line, in one bytes object: made once per length (once a round, unless lines
        arrive during it), written to every member in step."""
        n = len(self.items)
        if timed:
            if self._tblob_n != n:
                self._tblob, self._tblob_n = b"".join(self.lines(True)), n
            return self._tblob
        if self._blob_n != n:
            self._blob, self._blob_n = (self.items[0] if n == 1 else b"".join(self.items)), n
        return self._blob

    def caught_up(self, n: int = 1) -> None:
        """``n`` lagging members have had every line: none left? Then they are forgotten."""
        self.lagging -= n
        if self.lagging <= 0:
            self.lagging = 0
            self.base += len(self.items)
            self.items.clear()
            self.tags.clear()
            self.timed.clear()
            self._blob_n = self._tblob_n = -1

    def trim(self) -> None:
        """Forget the lines every member has had (all lines come to a member in rounds, so the
        run never holds more than what arrived since its slowest member's last write)."""
        m = min([s.mark for s in self.members], default=self.end) - self.base
        if m > 0:
            del self.items[:m]
            del self.tags[:m]
            if len(self.timed) > m:
                del self.timed[:m]
            else:
                self.timed.clear()
            self.base += m
            self._blob_n = self._tblob_n = -1
        # (a member still lacking them all: not again before twice as many, so that a scan of
        # the members stays rarer than the lines)
        self._trim_at = max(TRIM_AT, 2 * len(self.items))


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
        self.runs: dict[str, Run] = {}  # each room of ``rooms``: its lines (the module's doc)
        self.irc_runs: dict[str, Run] = {}  # each room of ``doors`` with a registered member
        self.web_runs: dict[str, Run] = {}  # each room of ``webs``: its lines, framed
        self._dirty_rooms: dict[str, None] = {}  # rooms with lines for the next round
        self._trim: dict[str, None] = {}  # rooms of the round being written
        self._kinds = (self.rooms, self.doors, self.webs)  # by ``Session.KIND``
        # by ``Session.KIND``: the kind's runs, how its @time= lines are made, whether a line
        # skips its sender
        self._runs: tuple[tuple[dict[str, Run], Callable[[Any], bytes], bool], ...] = (
            (self.runs, _timed_line, False), (self.irc_runs, _timed_irc, True),
            (self.web_runs, _timed_frame, False))
        self._all_runs = tuple(kind[0] for kind in self._runs)
        self._dirty: list[Session] = []
        self._flush_handle: asyncio.Handle | None = None
        self._coalesce_max = limits.coalesce_ms / 1000.0
        self._coalesce_factor = limits.coalesce_factor
        self._next_flush = 0.0  # loop time before which a round of writes waits
        self._round: list[Session] = []  # the round being written, FLUSH_SLICE at a time
        self._round_at = 0  # its next client
        self._round_cost = 0.0  # seconds its slices took so far
        self._round_writes = 0  # and the writes and lines they made
        self._round_lines = 0
        self._stall_handle: asyncio.TimerHandle | None = None
        self._over: dict[Session, int] = {}  # clients above send_queue -> bytes at last check
        self._held: dict[Session, tuple[int, int]] = {}  # blocked -> (lines, bytes) counted

    # ---- membership ------------------------------------------------------------------------------

    def move(self, s: Session, room: str) -> None:
        """``s`` is now a member of ``room`` (the router said so). It gets the room's run from
        now on, once it can be sent room lines (an IRC client: once registered, ``ready``)."""
        if s.room != room:
            self.leave(s)
            self._kinds[s.KIND].setdefault(room, {})[s] = None
            door = s.door
            if door is None or door.registered:
                self._enter_run(s, room)

    def ready(self, s: Session) -> None:
        """An IRC member of a room has registered: the room's lines from now on."""
        if s.run is None and s in self._kinds[s.KIND].get(s.room, ()):
            self._enter_run(s, s.room)

    def renumbered(self, s: Session, old_uid: str) -> None:
        """``s`` has a new uid (a new router gave it another: its old one was taken): its run
        knows it by the new one (its own lines are skipped, not the old uid's new owner's)."""
        run = s.run
        if run is not None and run.senders is not None:
            if run.senders.get(old_uid) is s:
                del run.senders[old_uid]
            run.senders[s.uid] = s

    def _enter_run(self, s: Session, room: str) -> None:
        """The room's lines from now on, not those before."""
        runs, timed_of, skips_sender = self._runs[s.KIND]
        run = runs.get(room)
        if run is None:
            run = runs[room] = Run(timed_of, skips_sender)
        run.members[s] = None
        if run.senders is not None:
            run.senders[s.uid] = s
        s.run, s.mark = run, run.end

    def leave(self, s: Session, keep: bool = True) -> None:
        """``s`` leaves its room; the room's lines it has not had yet stay queued for it
        (``keep``; not for a closed session)."""
        run = s.run
        if run is not None:
            if keep and s.mark < run.end:  # into its own queue, written in the next round
                if not s.out:
                    self._dirty.append(s)
                    if self._flush_handle is None:
                        self._schedule_flush()
                self._take_run(s)
            elif s.mark < run.end:
                run.caught_up()  # (lacks nothing any more: it is gone)
            s.run, s.mark = None, 0
            run.members.pop(s, None)
            if run.senders is not None and run.senders.get(s.uid) is s:
                del run.senders[s.uid]
            if not run.members:
                runs = self._runs[s.KIND][0]
                if runs.get(s.room) is run:
                    del runs[s.room]
                    if not any(s.room in r for r in self._all_runs):
                        self._dirty_rooms.pop(s.room, None)
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
        self.leave(s, keep=False)

    # ---- queueing --------------------------------------------------------------------------------

    def queue(self, s: Session, data: bytes) -> None:
        if not s.out:
            self._dirty.append(s)
            if self._flush_handle is None:
                self._schedule_flush()
        if s.run is not None:
            self._take_run(s)  # its room's lines before this one
        s.out.append(data)

    def _take_run(self, s: Session) -> None:
        """Move the lines of ``s``'s room it has not had into its own queue (``s.out``)."""
        run = s.run
        assert run is not None
        end = run.end
        if s.mark < end:
            s.out.extend(run.lines(s.cap_time)[s.mark - run.base:])
            s.mark = end
            run.caught_up()

    def fan_out(self, room: str, data: bytes, tagged: tuple[str, str] | None = None) -> None:
        """Queue ``data`` for every local member of ``room``: the hot path, one append to the
        room's run per kind of member, not one per member. With ``tagged`` = (stamp, text),
        members with ``/cap time`` get the tagged line instead, encoded once per run, when the
        first of them is written. IRC members' run has the line translated once for all of
        them (``_fan_out_doors``); WebSocket members' run has the line framed once (server
        frames are unmasked: the same bytes for everyone)."""
        queued = room in self.doors and self._fan_out_doors(room, data, tagged)
        if room in self.webs:  # WebSocket members: their run, of the line framed once
            self.web_runs[room].append(web.frames(data), tagged)
            queued = True
        if room in self.rooms:  # line members: the room's run, one append for all of them
            self.runs[room].append(data, tagged)
            queued = True
        if queued:
            if room not in self._trim:  # (in the round being written: the members it has not
                self._dirty_rooms[room] = None  # reached get it there, the others after it)
            if self._flush_handle is None:
                self._schedule_flush()

    def _fan_out_doors(self, room: str, data: bytes, tagged: tuple[str, str] | None) -> bool:
        """A room line for the room's IRC members. A chat line or a file is translated once
        (and once more with ``@time=``, when the first member with server-time is written) into
        the room's IRC run, for its registered members; a chat line skips its sender (IRC
        clients do not expect their own echo): its mark moves past it. Any other line goes
        through each member's translator. Whether the run got the line."""
        from .irc import chat_lines, file_text  # (the IRC door's, loaded with it)

        text = tagged[1] if tagged is not None else data.decode("utf-8").rstrip("\n")
        event = replies.parse_server_line(text)
        sender = ""
        if type(event) is replies.FileShared:
            assert isinstance(event, replies.FileShared)
            uid, said = event.uid, file_text(event)
        elif type(event) is replies.Chat and not event.private:
            assert isinstance(event, replies.Chat)
            uid = sender = event.uid
            said = event.text
        else:
            for s in list(self.doors[room]):
                s.send_line(text)
            return False
        run = self.irc_runs.get(room)
        if run is None:  # no member registered yet
            return False
        # any member's door but the sender's (whose own nick may be ahead of the others' lists)
        them = iter(run.members)
        first = next(them)
        door = (next(them, first) if first.uid == sender else first).door
        assert door is not None
        source, channel = door.source(uid), door.room
        # (made now: the door may have left the room before a server-time member is written)
        tag = (tagged[0], (source, channel, said)) if tagged is not None else None
        me = run.senders.get(sender) if sender and run.senders is not None else None
        if me is not None and (me.run is not run or me.uid != sender):
            me = None  # (a stale entry: guarded, though a uid change re-keys it, renumbered)
        if me is not None and me.mark < run.end:  # its lines before its own, in its own queue
            if not me.out:
                self._dirty.append(me)
            self._take_run(me)
        run.append(_irc_bytes(chat_lines("", source, channel, said)), tag)
        if me is not None:  # had: the line is not sent back to its sender
            me.mark = run.end
            run.caught_up()
        return True

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
        if self._flush_handle is None and (self._dirty or self._dirty_rooms):
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
        if s.run is not None:
            self._take_run(s)
        if s.out:
            self._write(s)

    # ---- rounds of writes ------------------------------------------------------------------------

    def flush(self) -> None:
        """Start a round of writes: one write per client with lines queued."""
        if self._flush_handle is not None:  # (its own call: a no-op; any other: the one left)
            self._flush_handle.cancel()
        rest = self._round[self._round_at:]  # a round cut short keeps its clients, first
        todo = rest + self._dirty if rest else self._dirty
        self._dirty = []
        if self._dirty_rooms:  # every member of a room's runs, once each
            dedupe = bool(todo) or len(self._dirty_rooms) > 1
            for room in self._dirty_rooms:
                for runs in self._all_runs:
                    run = runs.get(room)
                    if run is not None:
                        todo.extend(run.members)
                self._trim[room] = None
            self._dirty_rooms = {}
            if dedupe:  # (a member in a room and queued alone, or moved between two rooms)
                todo = list(dict.fromkeys(todo))
        self._round = todo
        self._round_at = 0
        self._round_cost = 0.0
        self._round_writes = self._round_lines = 0
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
        end = min(i + FLUSH_SLICE, len(dirty))  # (the slice's end: no other ``end`` below)
        writes = lines = 0
        write = os.write
        # the run of the members met last (most of a slice shares one): its numbers, its lines
        # joined, and how many of its lagging members caught up here (told to it when the next
        # run is met and at the end: it cannot reach none before, so base and had hold)
        cur: Run | None = None
        base = had = caught = 0
        blob = b""
        for k in range(i, end):  # the hot loop: _write inlined
            s = dirty[k]
            out = s.out
            run = s.run
            if run is not None and run is not cur:
                if caught:
                    assert cur is not None
                    cur.caught_up(caught)
                cur, caught, blob = run, 0, b""
                base = run.base
                had = base + len(run.items)
            if run is not None and s.mark < had:  # its room's lines
                if s.blocked:
                    self._take_run(s)
                    self._hold(s)
                    continue
                t = s.transport
                if t is None or t.is_closing():
                    out.clear()
                    s.mark = had
                    caught += 1
                    continue
                mark = s.mark
                if out:  # its own lines first (those queued before the room's are in out)
                    out.extend(run.lines(s.cap_time)[mark - base:])
                    n = len(out)
                    data = b"".join(out)
                    out.clear()
                elif mark == base and not s.cap_time:  # in step: the lines joined once
                    n = had - mark
                    data = blob or run.joined(False)
                    blob = data
                else:
                    n = had - mark
                    data = run.joined(True) if mark == base else \
                        b"".join(run.lines(s.cap_time)[mark - base:])
                s.mark = had
                caught += 1
            else:
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
        if caught:
            assert cur is not None
            cur.caught_up(caught)
        stats = self.stats
        stats["writes"] += writes
        stats["lines_out"] += lines
        self._round_cost += time.perf_counter() - began
        self._round_writes += writes
        self._round_lines += lines
        if end < len(dirty):
            self._round_at = end
            self._flush_handle = self.loop.call_soon(self._write_slice)
            return
        self._round = []
        for room in self._trim:  # the members a line came too late for (the round had
            for runs in self._all_runs:  # passed them): in the next round, alone
                run = runs.get(room)
                if run is not None and run.lagging:
                    last = run.end
                    self._dirty += [s for s in run.members if s.mark < last]
        self._trim = {}
        if self._round_lines >= BATCHED * self._round_writes > 0:  # it batched: wait
            self._next_flush = self.loop.time() + min(self._coalesce_max,
                                                      self._round_cost * self._coalesce_factor)
        else:  # about one line a client: the next line goes out as soon as it comes
            self._next_flush = 0.0
        # lines queued during the round for clients it had passed; blocked clients alone
        # (re-queued by _hold to be counted again) wait for new lines, as before
        if self._dirty_rooms or any(not s.blocked for s in self._dirty):
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
