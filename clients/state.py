"""What a client shows, kept from server events: pure, no sockets, no threads, no Tk.

``ChatState.apply(event)`` takes the events of ``wire.replies`` (and the session events of
``clients.session``) and returns the ``LogLine`` to show for it, if any. Both fronts (Tk and
console) render the same ``LogLine`` objects, so they agree on what a line says.

Invariants:
- ``users`` is the member list of our room, in the server's order; ``names`` maps the uids of
  our room that have a name; ``known`` remembers every uid -> name seen in this session, so a line
  from someone who left (or a private line from another room) still shows a name where one was
  ever known
- a chat line already shown (same server time, sender and text) is not shown again while we stay
  in the room: the history asked for after a reconnect only fills the gap (entering another room
  forgets what was seen, so coming back shows that room's history)
- ``recent`` holds the current room's last ``RECENT_MAX`` public lines (history included)
- ``rooms`` (from ``ROOMS:``) has our own room's count kept up to date by ``USERS:`` pushes
- ``history_left`` counts the chat lines still due after ``HISTORY:<k>``; they are marked history
- ``files`` lists every file a ``FILE:`` line announced in this session, numbered from 1 in
  the order first seen (``/get <n>``); a file seen again (history) keeps its number;
  ``transfers`` holds the files moving now (``events.TransferProgress``), by transfer id
- ``account`` is the account we are logged in to ("" for a guest; then ``name`` is a guest's
  name, or ""); ``topic`` is our room's topic ("" for none: reset on entering a room, whose
  ``TOPIC:`` follows its lists when it has one)
"""

from __future__ import annotations

import calendar
import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from pychat.wire import replies

from . import events
from .transfer import human_size

DEDUP_MAX = 2000  # chat lines remembered for the history de-duplication
RECENT_MAX = 200  # chat lines of the current room kept in ``recent``

# kinds of log line, which the fronts style: own, public, private (from or to), system, error,
# and a file sent (its line's ``file`` says which)
OWN, PUBLIC, PRIVATE, SYSTEM, ERROR, FILE = "own", "public", "private", "system", "error", "file"
FILES_MAX = 1000  # files remembered for /get (the oldest numbers are forgotten past it)


@dataclass(frozen=True, slots=True)
class SharedFile:
    """A file a ``FILE:`` line announced: its number in this session (``/get <n>``), who sent
    it (``who`` their name as shown then; ``mine``: we did), its name, size and URL."""
    number: int
    uid: str
    who: str
    name: str
    size: int
    url: str
    mine: bool = False

    def size_text(self) -> str:
        return human_size(self.size)


@dataclass(frozen=True, slots=True)
class Transfer:
    """A file moving now, as the fronts show it (a progress bar)."""
    id: int
    kind: str  # events.UPLOAD or events.DOWNLOAD
    name: str
    done: int
    total: int

    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total else None


@dataclass(frozen=True, slots=True)
class LogLine:
    clock: str          # HH:MM:SS, local time, from the server's stamp when the line had one
    kind: str           # OWN, PUBLIC, PRIVATE, SYSTEM or ERROR
    who: str            # the sender's name (or uid); "" for system lines
    text: str
    mention: bool = False  # the text names us
    history: bool = False  # part of a room's history shown on entry
    file: SharedFile | None = None  # a FILE line's file (its text: "sent NAME (SIZE) #N URL")

    def plain(self) -> str:
        """One line of text, as the console's pipe mode prints it."""
        if self.file is not None:
            return f"[{self.clock}] {self.who} {self.text}"
        if self.kind == ERROR:
            return f"[{self.clock}] ! {self.text}"
        if not self.who:
            return f"[{self.clock}] * {self.text}"
        return f"[{self.clock}] {self.who}: {self.text}"


def clock_of(stamp: str | None) -> str:
    """``2026-11-26T11:34:42.123Z`` to local ``HH:MM:SS``; now when there is no stamp."""
    if stamp:
        try:
            secs = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
            return time.strftime("%H:%M:%S", time.localtime(secs))
        except ValueError:
            pass
    return time.strftime("%H:%M:%S")


class ChatState:
    def __init__(self) -> None:
        self.uid = ""
        self.name = ""
        self.room = "#lobby"
        self.users: tuple[str, ...] = ()
        self.names: dict[str, str] = {}
        self.known: dict[str, str] = {}
        self.rooms: tuple[tuple[str, int], ...] = ()
        self.status = "starting"
        self.account = ""
        self.topic = ""
        self.history_left = 0
        self.recent: deque[LogLine] = deque(maxlen=RECENT_MAX)  # this room's chat, oldest first
        self._baseline = True  # the next USERS is a new room's list, not arrivals
        self._names_baseline = False  # ... and the NAMES after it is not renames
        self._seen: OrderedDict[tuple, None] = OrderedDict()
        self._mention: re.Pattern | None = None
        self.files: list[SharedFile] = []  # numbered from 1: files[n - 1]
        self._file_numbers: dict[str, int] = {}  # url -> number
        self._files_forgotten = 0  # numbers below this + 1 were dropped (FILES_MAX)
        self.transfers: dict[int, Transfer] = {}

    # ---- lookups ---------------------------------------------------------------------------------

    def display(self, uid: str) -> str:
        """A uid as people read it: the name where one is known."""
        return self.names.get(uid) or self.known.get(uid) or uid

    def user_rows(self) -> list[tuple[str, str]]:
        """(uid, label) for each member of our room, in order; our own row says (you)."""
        rows = []
        for uid in self.users:
            name = self.names.get(uid)
            label = f"{name} ({uid})" if name else uid
            rows.append((uid, label + ("  (you)" if uid == self.uid else "")))
        return rows

    def file(self, number: int) -> SharedFile | None:
        """The file numbered ``number`` (``/get <n>``), if seen and still remembered."""
        i = number - 1 - self._files_forgotten
        return self.files[i] if 0 <= i < len(self.files) else None

    def _remember_file(self, ev: replies.FileShared) -> SharedFile:
        number = self._file_numbers.get(ev.url)
        known = self.file(number) if number else None
        if known is not None:
            return known
        number = self._files_forgotten + len(self.files) + 1
        f = SharedFile(number, ev.uid, self.display(ev.uid), ev.name, ev.size, ev.url,
                       ev.uid == self.uid)
        self.files.append(f)
        self._file_numbers[ev.url] = number
        if len(self.files) > FILES_MAX:
            gone = self.files.pop(0)
            self._file_numbers.pop(gone.url, None)
            self._files_forgotten += 1
        return f

    def who(self) -> str:
        """Who we are, in words: ``alice (logged in)``, ``alice`` (a guest's name), ``(no
        name)``."""
        if self.account:
            return f"{self.name or self.account} (logged in)"
        return self.name or "(no name)"

    def title(self) -> str:
        return f"PyChat - {self.who()} - ID {self.uid or '?'} - {self.room}"

    def _set_name(self, name: str) -> None:
        self.name = name
        self._mention = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.I) if name else None

    # ---- events ----------------------------------------------------------------------------------

    def apply(self, ev) -> LogLine | None:
        if isinstance(ev, replies.Chat):
            return self._chat(ev)
        if isinstance(ev, replies.FileShared):
            return self._file(ev)
        if isinstance(ev, events.TransferProgress):
            self.transfers[ev.id] = Transfer(ev.id, ev.kind, ev.name, ev.done, ev.total)
            return None
        if isinstance(ev, events.TransferDone):
            return self._transfer_done(ev)
        if isinstance(ev, replies.UploadUrl):  # a typed /upload: where its PUT goes
            return self._system(f"upload URL (one PUT of the bytes): {ev.url}")
        if isinstance(ev, replies.IdAssigned):
            self.uid = ev.uid
            self.users, self.names, self.history_left = (), {}, 0
            self.topic = ""
            self._baseline = True
            return None
        if isinstance(ev, replies.UserList):
            return self._users(ev.uids)
        if isinstance(ev, replies.NameList):
            return self._names(dict(ev.names))
        if isinstance(ev, (replies.Joined, replies.Left, replies.Named)):  # /cap deltas
            roster = replies.Roster()
            roster.uids, roster.names = list(self.users), dict(self.names)
            roster.apply(ev)
            if isinstance(ev, replies.Named):
                return self._names(roster.names)
            line = self._users(tuple(roster.uids))
            self.names = roster.names  # a member who left takes their name along
            return line
        if isinstance(ev, replies.RoomChanged):
            changed = ev.room != self.room
            self.room = ev.room
            self.topic = ""  # the room's TOPIC follows its lists, when it has one
            self._baseline = True
            if changed:  # entering a room shows its history, even lines seen there before
                self._seen.clear()
                self.recent.clear()
            return self._system(f"you are in {ev.room}") if changed else None
        if isinstance(ev, replies.RoomList):
            self.rooms = ev.rooms
            return None
        if isinstance(ev, replies.HistoryStart):
            self.history_left = ev.count
            return None
        if isinstance(ev, replies.Ok):
            if ev.what.startswith("nick "):
                self._set_name(ev.what[5:])
                return self._system(f"you are now {self.name}")
            if ev.what == "logout":
                self.account = ""
                self._set_name("")
                return self._system("you are logged out: a guest, with no name")
            if ev.what == "password":
                return self._system("password changed")
            return None
        if isinstance(ev, events.LoggedIn):
            self.account = ev.name
            self._set_name(ev.name)
            if ev.restored:  # after a reconnect: the status line says it
                return None
            return self._system(f"account {ev.name} made: you are logged in as {ev.name}"
                                if ev.registered else f"you are logged in as {ev.name}")
        if isinstance(ev, events.LoginRefused):
            if ev.restored:
                self.account = ""
                self._set_name("")
                return LogLine(clock_of(None), ERROR, "", f"could not log in again as "
                               f"{ev.name} ({ev.reason}): you are a guest; log in again")
            return LogLine(clock_of(None), ERROR, "", ev.reason)
        if isinstance(ev, replies.Topic):
            if ev.room != self.room:
                return None
            had, self.topic = self.topic, ev.text
            if ev.text:
                return self._system(f"topic of {ev.room}: {ev.text}")
            return self._system(f"the topic of {ev.room} was cleared") if had else None
        if isinstance(ev, replies.Kicked):
            return LogLine(clock_of(None), ERROR, "", f"you were kicked from {ev.room}"
                           + (f": {ev.reason}" if ev.reason else ""))
        if isinstance(ev, replies.DelayedStart):  # its lines are private lines from names
            return self._system(f"{ev.count} private message{'s' if ev.count != 1 else ''} "
                                "came while you were away:")
        if isinstance(ev, replies.TokenIssued):  # a /token the user typed (the session's own
            # are not handed on): shown, since it was asked for
            return self._system(f"token for {ev.name}, valid until {ev.expires}: {ev.token}")
        if isinstance(ev, replies.Error):
            return LogLine(clock_of(None), ERROR, "", ev.message)
        if isinstance(ev, replies.Info):
            return self._system(ev.raw[6:] if ev.raw.startswith("HELP: ") else ev.raw)
        if isinstance(ev, replies.Pong):
            return self._system(f"pong {ev.token}".rstrip())
        if isinstance(ev, events.Answered):  # a typed /users or /rooms: its reply is all in
            if ev.word == "users":
                return self._system(f"in {self.room}: " + ", ".join(
                    label for _, label in self.user_rows()))
            if ev.word == "rooms":
                listed = ", ".join(f"{room} ({n})" for room, n in self.rooms)
                return self._system(f"rooms: {listed or 'none'}")
            return None
        if isinstance(ev, replies.Bye):
            if ev.reason:  # kicked or banned: the server closes the connection
                return LogLine(clock_of(None), ERROR, "", f"the server closed the connection: "
                               f"{ev.reason}")
            return self._system("the server said goodbye")
        if isinstance(ev, events.Status):
            self.status = ev.text
            return self._system(ev.text) if ev.log else None
        if isinstance(ev, events.NameRefused):
            return LogLine(clock_of(None), ERROR, "", ev.reason)
        return None

    def _users(self, uids: tuple[str, ...]) -> LogLine | None:
        old, self.users = self.users, uids
        self.rooms = tuple((room, len(uids) if room == self.room else n) for room, n in self.rooms
                           if room != self.room or uids)
        if uids and self.room not in dict(self.rooms):
            self.rooms = tuple(sorted(self.rooms + ((self.room, len(uids)),)))
        if self._baseline:  # a new room's list (or the handshake's): its NAMES follows
            self._baseline, self._names_baseline = False, True
            return None
        self._names_baseline = False
        before = set(old)
        came = [u for u in uids if u not in before]
        now = set(uids)
        left = [u for u in old if u not in now]
        parts = [f"{', '.join(map(self.display, came))} joined"] if came else []
        parts += [f"{', '.join(map(self.display, left))} left"] if left else []
        return self._system("; ".join(parts)) if parts else None

    def _names(self, names: dict[str, str]) -> LogLine | None:
        renamed = [f"{self.names[uid]} is now {name}" if uid in self.names else f"{uid} is {name}"
                   for uid, name in names.items()
                   if uid != self.uid and self.names.get(uid) != name]
        if self._names_baseline:
            self._names_baseline, renamed = False, []
        self.names = names
        self.known.update(names)
        return self._system("; ".join(renamed)) if renamed else None

    def _system(self, text: str) -> LogLine:
        return LogLine(clock_of(None), SYSTEM, "", text)

    def _transfer_done(self, ev: events.TransferDone) -> LogLine | None:
        self.transfers.pop(ev.id, None)
        if ev.error:
            verb = "send" if ev.kind == events.UPLOAD else "save"
            return LogLine(clock_of(None), ERROR, "", f"could not {verb} {ev.name}: {ev.error}")
        if ev.kind == events.UPLOAD:  # (the server's FILE: line tells everyone, and its URL)
            return self._system(f"{ev.name} sent ({human_size(ev.size)})")
        return self._system(f"saved {ev.name} ({human_size(ev.size)}) to {ev.path}")

    def _file(self, ev: replies.FileShared) -> LogLine | None:
        """A FILE: line: a chat line (history, de-duplication) of its own kind."""
        in_history = self.history_left > 0
        if in_history:
            self.history_left -= 1
        if ev.stamp:
            key = (ev.stamp, ev.uid, ev.url)
            if key in self._seen:
                return None
            self._seen[key] = None
            if len(self._seen) > DEDUP_MAX:
                self._seen.popitem(last=False)
        f = self._remember_file(ev)
        who = self.display(ev.uid)
        line = LogLine(clock_of(ev.stamp), FILE, who,
                       f"sent {f.name} ({f.size_text()}) #{f.number} {f.url}",
                       history=in_history, file=f)
        self.recent.append(line)
        return line

    def _chat(self, ev: replies.Chat) -> LogLine | None:
        in_history = self.history_left > 0
        if in_history:
            self.history_left -= 1
        if ev.time:
            key = (ev.time, ev.uid, ev.text, ev.private, ev.to)
            if key in self._seen:
                return None
            self._seen[key] = None
            if len(self._seen) > DEDUP_MAX:
                self._seen.popitem(last=False)
        mention = bool(self._mention and ev.uid != self.uid and self._mention.search(ev.text))
        if ev.private:
            if ev.to is not None:
                who = f"to {self.display(ev.to)}"
            else:
                who = f"from {self.display(ev.uid)}"
            return LogLine(clock_of(ev.time), PRIVATE, who, ev.text, mention, in_history)
        kind = OWN if ev.uid == self.uid else PUBLIC
        line = LogLine(clock_of(ev.time), kind, self.display(ev.uid), ev.text, mention, in_history)
        self.recent.append(line)
        return line
