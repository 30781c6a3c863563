"""The router's chat state: one object, one thread, no I/O.

``RouterState`` owns every user ID, name and room and decides who gets what. Its public methods
take what arrived from the bus and return *deliveries*: ``(acceptor, BusMessage)`` pairs that the
loop around it encodes and sends, batched per acceptor. Tests drive it without sockets.

Invariants:
- a uid is six digits and unique among the users online; ``(acceptor, conn)`` names one user
- a name is unique after ``casefold()``; ``names`` maps the folded name to its user
- every user is in exactly one room; ``rooms[room]`` keeps members in order of arrival and a room
  exists while it has members; ``room_acceptors[room]`` counts members per acceptor, so a room
  message crosses the bus once per acceptor with members there, never once per client
- every membership or name change marks its room dirty; in a room of at most ``coalesce_above``
  members the push goes out at once (one USERS per change, as the original server did), so a
  member never sees a chat line that follows a change without the list that reflects it
- a larger room's list costs members x list length per push (10,000 members: 700 MB), so its
  pushes are throttled to ``push_budget`` bytes a second: at most one per ``push_interval(size)``
  (0.35 s at 1,000 members, 35 s at 10,000, never more than a minute), carrying every change
  since the last. A newcomer (or joiner) of a large room still gets the current list at once,
  right after its ID (or ROOM), and /users always answers at once
"""

from __future__ import annotations

import base64
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pychat.wire import bus, errors, replies
from pychat.wire.bus import (
    BusMessage,
    ChatConn,
    ChatRoom,
    Close,
    Cmd,
    Cost,
    Delivery,
    Done,
    Err,
    Notice,
    Open,
    SessionSet,
    Sync,
    ToConn,
    ToRoom,
)
from pychat.wire.commands import (
    AWAITED,
    LOBBY,
    ROUTER,
    Ban,
    Command,
    History,
    Join,
    Kick,
    Login,
    Logout,
    Nick,
    Password,
    Private,
    Register,
    Resume,
    Rooms,
    Say,
    Token,
    Topic,
    Unban,
    Upload,
    Users,
    describe,
    handlers,
    valid_name,
)

from .accounts import SERVER, Account, AccountStore, account_target, address_target, fold
from .clock import Clock
from .files import FileError, StoredFile
from .history import HistoryStore
from .passwords import InlineJobs, Jobs, Passwords, token_digest
from .transfers import Slot, Transfers

if TYPE_CHECKING:
    import random

# hashlib, hmac (libcrypto), ipaddress and random are imported where first needed: a login's
# seal, a ban by address, the first guest's uid (issue 18: an idle router loads none of them)

log = logging.getLogger("pychat.router")

MAX_PUSH_INTERVAL = 60.0
COST_REPORTED = 4096  # a command (or arrival) that made the server send this many bytes is paced
TOKEN_DAYS = 30.0  # a resume token's life
OFFLINE_LIMIT = 100  # private messages kept per offline account
LOGIN_FAILED = "login failed"
HASHING_PER_ADDRESS = 4  # passwords of one address in the pool at once ...
SUSPECT_FAILURES = 5  # ... 1 once it has this many failures counted (of its 20 free)
# a failed or throttled login costs its connection as much as this much output would (the
# acceptor charges a flood token per --flood-bytes, 64 KiB: 32 tokens, about 0.6 s of its
# commands at the default 50 a second), so "try again in N s" is not only advice
FAILED_LOGIN_COST = 32 * 64 * 1024
GUEST_COMMANDS = frozenset({Nick, Register, Login, Resume})  # --require-login lets guests do


class Throttle:
    """Failed logins, per key (an account's folded name, an address): after ``free`` failures
    the key's next attempt waits 1 s, each failure more doubles it, up to ``longest``; a key with no
    failure for ``forget`` seconds starts afresh; a success clears it. At most ``keys`` keys are
    kept (the oldest go first), so a flood of made-up names costs bounded memory."""

    def __init__(self, free: int, longest: float = 300.0, forget: float = 900.0,
                 keys: int = 100_000):
        self.free = free
        self.longest = longest
        self.forget = forget
        self.keys = keys
        self._state: OrderedDict[str, tuple[int, float, float]] = OrderedDict()  # n, last, until
        self._pending: dict[str, int] = {}  # attempts being checked (their result not known)

    def failures(self, key: str, now: float) -> int:
        entry = self._state.get(key)
        if entry is None or now - entry[1] > self.forget:
            return 0
        return entry[0]

    def wait(self, key: str, now: float) -> float:
        """Seconds ``key`` must still wait before its next attempt (0: none). Attempts still
        being checked count as failures to come: with ``free`` of them in flight, or fewer
        beside the failures already counted, the next waits (1 s) for their results, so that
        simultaneous guesses get no more than the free ones."""
        entry = self._state.get(key)
        pending = self._pending.get(key, 0)
        if entry is None:
            return 1.0 if pending >= self.free else 0.0
        n, last, until = entry
        if now - last > self.forget:
            del self._state[key]
            return 1.0 if pending >= self.free else 0.0
        wait = max(0.0, until - now)
        if not wait and n + pending >= self.free:
            return 1.0
        return wait

    def begin(self, key: str) -> None:
        """An attempt of ``key`` is being checked."""
        self._pending[key] = self._pending.get(key, 0) + 1

    def end(self, key: str) -> None:
        """Its check is over (``failed`` or ``succeeded`` says how)."""
        left = self._pending.get(key, 1) - 1
        if left > 0:
            self._pending[key] = left
        else:
            self._pending.pop(key, None)

    def failed(self, key: str, now: float) -> None:
        n, last, _ = self._state.pop(key, (0, now, 0.0))
        if now - last > self.forget:
            n = 0
        n += 1
        over = n - self.free  # the free ones spent: the next attempt waits 1 s, then 2, 4...
        until = now + min(self.longest, 2.0 ** over) if over >= 0 else 0.0
        self._state[key] = (n, now, until)
        while len(self._state) > self.keys:
            self._state.popitem(last=False)

    def succeeded(self, key: str) -> None:
        self._state.pop(key, None)


def host_of(peer: str) -> str:
    """The address part of an acceptor's ``host:port`` peer ("[::1]:5" and "::1:5" too)."""
    host = peer.rpartition(":")[0] if ":" in peer else peer
    return host.strip("[]")


def is_address(text: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class User:
    __slots__ = ("acceptor", "account", "account_id", "address", "conn", "name", "room", "token",
                 "uid")

    def __init__(self, uid: str, acceptor: str, conn: int, room: str, address: str = ""):
        self.uid = uid
        self.acceptor = acceptor
        self.conn = conn
        self.name = ""
        self.room = room
        self.address = address
        self.account = ""  # the account it is logged in to (its name as registered), "": guest
        self.account_id = 0
        self.token = ""  # the digest of the resume token issued to this session, if any


class RouterState:
    def __init__(self, clock: Clock, history: HistoryStore, rng: random.Random | None = None,
                 coalesce_above: int = 500, push_budget: float = 20e6,
                 monotonic: Callable[[], float] = time.monotonic, durable: bool = False,
                 accounts: AccountStore | None = None, passwords: Passwords | None = None,
                 jobs: Jobs | None = None, token_days: float = TOKEN_DAYS,
                 offline_limit: int = OFFLINE_LIMIT, wall: Callable[[], float] = time.time,
                 require_login: bool = False, transfers: Transfers | None = None,
                 web_url: Callable[[str], str] | None = None):
        self.clock = clock
        # files (PROTOCOL Part 5): uploads and downloads, None when the server keeps no files;
        # web_url(acceptor) is the base URL of a web door for that acceptor's client ("": none)
        self.transfers = transfers
        self.web_url = web_url or (lambda acceptor: "")
        # accounts (PROTOCOL Part 3): the file, the hashing, and the pool that hashes
        self.accounts = accounts if accounts is not None else AccountStore(None).open()
        self.passwords = passwords if passwords is not None else Passwords()
        self.jobs = jobs if jobs is not None else InlineJobs()
        self.token_days = token_days
        self.require_login = require_login  # guests may only GUEST_COMMANDS
        self.offline_limit = offline_limit
        self._wall = wall
        self._seal_key = self.accounts.seal_key()
        self.logins: dict[str, list[User]] = {}  # folded account name -> its sessions online
        self.by_account = Throttle(free=5)  # failed logins per account ...
        self.by_address = Throttle(free=20)  # ... and per address
        self._hashing: dict[str, int] = {}  # address -> its jobs in the pool
        self.logins_done = 0  # successful logins, registrations and resumes (status, metrics)
        self.logins_failed = 0
        self.durable = durable  # a message the history cannot keep is refused, not sent
        self.coalesce_above = coalesce_above
        self.push_budget = push_budget
        self._mono = monotonic
        self._pushed: dict[str, float] = {}  # large room -> when its list last went out
        self.history = history
        self._rng = rng  # made at the first uid (random is imported there)
        self.users: dict[str, User] = {}
        self.by_conn: dict[tuple[str, int], User] = {}
        self.names: dict[str, User] = {}
        self.rooms: dict[str, dict[str, User]] = {}
        self.room_acceptors: dict[str, dict[str, int]] = {}
        self._named: dict[str, int] = {}  # room -> members with a name
        # changes since a room's last push, for /cap deltas (ToRoom.delta): who arrived (in
        # the room's order), who left (arrived-then-left too: a list taken between pushes may
        # hold them), whose name changed
        self._arrived: dict[str, dict[str, None]] = {}
        self._departed: dict[str, dict[str, None]] = {}
        self._renamed: dict[str, dict[str, None]] = {}
        self._dirty: dict[str, bool] = {}  # room -> True: USERS (+NAMES) due; False: NAMES only
        # room -> its USERS line, kept as members arrive (a joiner's whole list, each time: at
        # 10,000 members joining, building it anew was 39% of the router's time), made anew
        # after a leave
        self._users_text: dict[str, str] = {}
        self._out: list[Delivery] = []
        self.chat_messages = 0  # public and private messages handled (for status and metrics)
        self._handlers = handlers(self, ROUTER)  # wire.commands.TABLE names them

    # ---- entry points: each returns the deliveries it caused ------------------------------------

    def handle(self, acceptor: str, msg: BusMessage) -> list[Delivery]:
        """A message from an acceptor's batch (the bus link's ``LinkApp.handle``)."""
        kind = type(msg)
        if kind is Cmd:
            assert isinstance(msg, Cmd)
            return self._charged(acceptor, msg.conn, self.command(acceptor, msg.conn, msg.command))
        if kind is Open:
            assert isinstance(msg, Open)
            return self._charged(acceptor, msg.conn, self.open(acceptor, msg.conn, msg.peer))
        if kind is Close:
            assert isinstance(msg, Close)
            return self.close(acceptor, msg.conn)
        if kind is Sync:
            assert isinstance(msg, Sync)
            return self.sync(acceptor, msg.conn, msg.uid, msg.name, msg.room, msg.peer,
                             msg.account, msg.seal)
        log.warning("acceptor %s sent a router-bound %s; dropped", acceptor, msg.kind)
        return []

    def open(self, acceptor: str, conn: int, peer: str = "") -> list[Delivery]:
        """A new connection: give it a uid, put it in the lobby, send ID (USERS follows). One
        from a banned address is told and closed."""
        key = (acceptor, conn)
        if key in self.by_conn:  # a duplicate open: the acceptor retried; keep the first
            return self._take()
        address = host_of(peer)
        ban = self.accounts.banned([address_target(address)], SERVER, self._wall()) \
            if address else None
        if ban is not None:
            self._refuse_banned(acceptor, conn, f"banned: {ban.reason or 'no reason given'}")
            return self._take()
        user = User(self._new_uid(), acceptor, conn, LOBBY, address)
        self._add(user)
        self._session(user)
        # ID before the USERS push that includes the newcomer (its handshake USERS)
        self._out.append((acceptor, ToConn(conn, replies.format_id(user.uid))))
        if not self._due(user.room):  # its own list now; the others' when the throttle allows
            self._out.append((acceptor, ToConn(conn, self._lists(user.room, names=False))))
        self._settle(user.room)
        return self._take()

    def sync(self, acceptor: str, conn: int, uid: str, name: str, room: str, peer: str = "",
             account: str = "", seal: str = "") -> list[Delivery]:
        """Adopt a session an acceptor already holds (after a router restart). A login comes
        back only with the seal this router's key made for it (acceptor, conn, account); a
        guest's name that has been registered meanwhile is not given back."""
        if (acceptor, conn) in self.by_conn:
            return self._take()
        notes: list[BusMessage] = []
        if not (len(uid) == 6 and uid.isascii() and uid.isdigit()) or uid in self.users:
            uid = self._new_uid()
            notes.append(ToConn(conn, replies.format_id(uid)))
        user = User(uid, acceptor, conn, room or LOBBY, host_of(peer))
        found = self.accounts.get(account) if account else None
        import hmac  # here, not at start (see the imports): a restore with a login is rare
        if found is not None and not hmac.compare_digest(
                seal, self._seal(acceptor, conn, found.id)):
            found = None
        if account and found is None:
            log.warning("acceptor %s: session %s claims account %s without its seal; a guest",
                        acceptor, conn, account)
            notes.append(Err(conn, errors.LOGIN_FAILED,
                             "your login could not be restored: log in again"))
        ban = self._server_ban(user, found)
        if ban:
            self._refuse_banned(acceptor, conn, ban)
            return self._take()
        self._add(user)
        if found is not None:
            self._log_in(user, found, quiet=True)
        elif name and not account:  # (a login not restored keeps no name either)
            if self.accounts.exists(name):
                notes.append(Err(conn, errors.NAME_REGISTERED, f"name {name} is registered"))
            elif fold(name) in self.names:
                notes.append(Err(conn, errors.NAME_TAKEN, f"name {name} is taken"))
            else:
                self._set_name(user, name)
        self._session(user)
        # before the USERS push that lists the (new) uid, as in open()
        self._out.extend((acceptor, note) for note in notes)
        self._settle(user.room)
        return self._take()

    def close(self, acceptor: str, conn: int) -> list[Delivery]:
        user = self.by_conn.get((acceptor, conn))
        if user is not None:
            self._remove(user)
            self._settle(user.room)
        return self._take()

    def command(self, acceptor: str, conn: int, cmd: Command) -> list[Delivery]:
        user = self.by_conn.get((acceptor, conn))
        if user is None:
            log.debug("command from unknown session %s/%s dropped", acceptor, conn)
            return self._take()
        handler = self._handlers.get(type(cmd))
        if handler is None:
            self._error(user, errors.INTERNAL, f"/{cmd.kind} is not served by the router")
        elif self.require_login and not user.account and type(cmd) not in GUEST_COMMANDS:
            self._error(user, errors.NOT_LOGGED_IN,
                        f"log in first (/login or /register): /{cmd.kind} needs an account here")
        else:
            handler(user, cmd)
            return self._take()
        if type(cmd) in AWAITED:  # its connection waits for the word
            self._done(user)
        return self._take()

    def cost(self, deliveries: list[Delivery]) -> int:
        """What ``deliveries`` make the acceptors write to clients, in bytes (characters, near
        enough): each line for one session once, each line for a room once per member there."""
        total = 0
        room_acceptors = self.room_acceptors
        for acceptor, msg in deliveries:
            kind = type(msg)
            if kind is ChatRoom or kind is ToRoom:
                assert isinstance(msg, (ChatRoom, ToRoom))
                total += (len(msg.text) + 1) * room_acceptors.get(msg.room, {}).get(acceptor, 0)
            elif kind is ToConn or kind is Err or kind is ChatConn:
                assert isinstance(msg, (ToConn, Err, ChatConn))
                total += len(msg.text) + 1
        return total

    def _charged(self, acceptor: str, conn: int, deliveries: list[Delivery]) -> list[Delivery]:
        """``deliveries`` and, when they cost much, a ``Cost`` for the session that caused them:
        its acceptor slows the client down accordingly (a /history of long lines, a /join of
        a crowded room, a line to a large room weigh more than one token)."""
        cost = self.cost(deliveries)
        if cost >= COST_REPORTED and (acceptor, conn) in self.by_conn:
            deliveries.append((acceptor, Cost(conn, cost)))
        return deliveries

    def acceptor_gone(self, acceptor: str) -> list[Delivery]:
        """An acceptor died: its users leave, everyone else sees the new lists; the transfers
        through its web door end."""
        if self.transfers is not None:
            self.transfers.acceptor_gone(acceptor.encode("utf-8"))
        for user in [u for u in self.users.values() if u.acceptor == acceptor]:
            self._remove(user)
        return self._take()

    def end_turn(self) -> list[Delivery]:
        """The answers of the password jobs that have finished; the USERS/NAMES pushes that are
        due (a large room's wait for its interval)."""
        if self.jobs.ready:
            self.jobs.drain()
        if self.transfers is not None:
            self._files_done()
        for room in list(self._dirty):
            self._settle(room)
        return self._take()

    def next_push(self) -> float | None:
        """Monotonic time at which a throttled push falls due; None when none waits."""
        return min((self._pushed.get(room, -math.inf)
                    + self.push_interval(len(self.rooms.get(room, ())))
                    for room in self._dirty), default=None)

    def push_interval(self, size: int) -> float:
        if size <= self.coalesce_above:
            return 0.0
        return min(MAX_PUSH_INTERVAL, 7.0 * size * size / self.push_budget)

    def acceptors(self) -> set[str]:
        return {u.acceptor for u in self.users.values()}

    # ---- command handlers, named after the command ----------------------------------------------

    def on_say(self, user: User, cmd: Say) -> None:
        self.chat_messages += 1
        stamp = replies.format_time(self.clock.now())
        line = replies.format_public(user.uid, cmd.text)
        if not self.history.append(user.room, stamp, line) and self.durable:
            self._not_kept(user, cmd)
            return
        self._chat_room(user.room, stamp, line)

    def on_msg(self, user: User, cmd: Private) -> None:
        self.chat_messages += 1
        targets = self._resolve(cmd.target)
        if not targets:
            self._offline_msg(user, cmd)
            return
        stamp = replies.format_time(self.clock.now())
        target = targets[0]
        line = replies.format_private_from(user.uid, cmd.text)
        # kept only if enabled
        if not self.history.append_private(stamp, user.uid, target.uid, line) and self.durable:
            self._not_kept(user, cmd)
            return
        for each in targets:  # an account's every session (its devices)
            self._chat_conn(each, stamp, line)
        self._chat_conn(user, stamp, replies.format_private_to(target.uid, cmd.text))

    def on_upload(self, user: User, cmd: Upload) -> None:
        """A one-time URL for the file's bytes (PROTOCOL Part 5); its limits are checked now."""
        transfers = self.transfers
        base = self.web_url(user.acceptor)
        if transfers is None or not base:
            self._error(user, errors.UPLOADS_OFF, "this server takes no files" if transfers is None
                        else "no web door to upload to")
            return
        target = ""
        if cmd.target:
            targets = self._resolve(cmd.target)
            if not targets:
                self._error(user, errors.NO_SUCH_USER, f"no such user {cmd.target}")
                return
            target = targets[0].uid
        uploader = (f"account:{user.account_id}" if user.account
                    else f"address:{user.address or user.uid}")
        try:
            slot = transfers.reserve(user.uid, user.acceptor, user.conn, uploader, cmd.size,
                                     cmd.name, "" if target else user.room, target)
        except FileError as e:
            self._error(user, e.code, e.text)
            return
        self._to(user, replies.format_upload(f"{base}/upload/{slot.token}"))

    def _files_done(self) -> None:
        """Uploads finished (their FILE: lines go out) or given up (their senders are told)."""
        assert self.transfers is not None
        for slot, result in self.transfers.take_finished():
            if isinstance(result, StoredFile):
                self._post_file(slot, result)
            else:
                self._tell_uploader(slot, result.code, result.text)
        for slot, code, why in self.transfers.take_failed():
            self._tell_uploader(slot, code, why)

    def _post_file(self, slot: Slot, f: StoredFile) -> None:
        base = self.web_url(slot.acceptor) or next(
            (url for url in map(self.web_url, self.acceptors()) if url), "")
        stamp = replies.format_time(self.clock.now())
        line = replies.format_file(slot.uid, f.size, base + f.path, f.name)
        self.chat_messages += 1
        if slot.room:
            self.history.append(slot.room, stamp, line)
            self._chat_room(slot.room, stamp, line)
            return
        self.history.append_private(stamp, slot.uid, slot.target, line)
        # as /msg: an account's every session (its devices), and the sender
        sessions: list[User] = []
        target = self.users.get(slot.target)
        if target is not None:
            sessions = (self.logins.get(fold(target.account)) or [target]) if target.account \
                else [target]
        sender = self.users.get(slot.uid)
        if sender is not None:
            sessions = [*sessions, sender]
        for user in dict.fromkeys(sessions):
            self._chat_conn(user, stamp, line)

    def _tell_uploader(self, slot: Slot, code: str, why: str) -> None:
        user = self.by_conn.get((slot.acceptor, slot.conn))
        if user is not None and user.uid == slot.uid:
            self._error(user, code if code in errors.CODES else errors.ABORTED,
                        f"upload of {slot.name} failed: {why}")

    def _offline_msg(self, user: User, cmd: Private) -> None:
        """A /msg to a name that is not online: kept for a registered one (from a logged-in
        sender, at most ``offline_limit`` waiting), an error otherwise."""
        account = self.accounts.get(cmd.target) if valid_name(cmd.target) else None
        if account is None or not user.account:
            self.chat_messages -= 1
            why = "" if account is None else " (log in to leave a message for an account)"
            self._error(user, errors.NO_SUCH_USER, f"no such user {cmd.target}{why}")
            return
        stamp = replies.format_time(self.clock.now())
        if not self.accounts.keep_offline(account.id, stamp, user.account, cmd.text,
                                          self.offline_limit):
            self.chat_messages -= 1
            self._error(user, errors.MAILBOX_FULL,
                        f"{account.name} has {self.offline_limit} messages waiting: not sent")
            return
        self._chat_conn(user, stamp, replies.format_private_to(account.name, cmd.text))

    def on_nick(self, user: User, cmd: Nick) -> None:
        if user.account:
            self._error(user, errors.LOGGED_IN,
                        f"you are logged in as {user.account}; /logout first")
            return
        if self.accounts.exists(cmd.name):
            self._error(user, errors.NAME_REGISTERED, f"name {cmd.name} is registered")
            return
        holder = self.names.get(fold(cmd.name))
        if holder is not None and holder is not user:
            self._error(user, errors.NAME_TAKEN, f"name {cmd.name} is taken")
            return
        self._set_name(user, cmd.name)
        self._session(user)
        self._to(user, f"OK nick {cmd.name}")
        self._dirty.setdefault(user.room, False)
        self._settle(user.room)

    def on_users(self, user: User, cmd: Users) -> None:
        self._to(user, self._users_line(user.room) + "\n" + self._names_line(user.room))

    def on_join(self, user: User, cmd: Join) -> None:
        old = user.room
        if cmd.room == old:
            self._to(user, replies.format_room(old) + "\n" + self._users_line(old) + "\n"
                     + self._names_line(old))
            self._send_topic(user, old)
            return
        ban = self.accounts.banned(self._targets(user), cmd.room, self._wall()) \
            if cmd.room != LOBBY else None
        if ban is not None:
            self._error(user, errors.BANNED, f"banned from {cmd.room}"
                        + (f": {ban.reason}" if ban.reason else ""))
            return
        self._move(user, cmd.room)
        self._send_topic(user, cmd.room)

    def _move(self, user: User, room: str) -> None:
        """``user`` goes to ``room``: ROOM and the lists to it, the pushes to both rooms."""
        old = user.room
        self._leave_room(user)
        user.room = room
        self._enter_room(user)
        self._claim(user)
        self._session(user)
        self._out.append((user.acceptor, ToConn(user.conn, replies.format_room(room))))
        # the new room's lists now, the joiner always getting NAMES (it asked); in a large room
        # the joiner gets them alone and the others' push waits for its interval
        if not self._due(room):
            self._out.append((user.acceptor, ToConn(user.conn, self._lists(room, True))))
        else:
            self._dirty[room] = True
            self._settle(room)
            if not self._named.get(room):
                self._out.append((user.acceptor, ToConn(user.conn, replies.format_names(()))))
        self._settle(old)

    def on_rooms(self, user: User, cmd: Rooms) -> None:
        counts = sorted((room, len(members)) for room, members in self.rooms.items())
        self._to(user, replies.format_rooms(counts))

    def on_history(self, user: User, cmd: History) -> None:
        items = self.history.recent(user.room, cmd.count)
        lines = [replies.format_history_header(len(items))]
        lines.extend(replies.tagged(stamp, line) for stamp, line in items)
        self._to(user, "\n".join(lines))

    # ---- accounts (PROTOCOL Part 3) ----------------------------------------------------------

    def on_register(self, user: User, cmd: Register) -> None:
        name = user.name
        if user.account:
            self._error(user, errors.LOGGED_IN, f"you are logged in as {user.account}")
        elif not name:
            self._error(user, errors.USAGE, "set a name with /nick first")
        elif self.accounts.exists(name):
            self._error(user, errors.NAME_REGISTERED, f"name {name} is registered")
        elif self._submit(user, self.passwords.hash, (cmd.password,),
                          lambda digest: self._registered(user, name, digest)):
            return
        self._done(user)

    def _registered(self, user: User, name: str, digest: str | None) -> None:
        if not self._online(user):
            return
        account = None
        if digest is None:
            self._error(user, errors.INTERNAL,
                        "registration failed: the password could not be hashed")
        elif user.account or user.name != name:  # it logged in or changed name meanwhile
            self._error(user, errors.USAGE, f"not registered: your name is no longer {name}")
        else:
            account = self.accounts.create(name, digest)
            if account is None:  # someone else's registration of the name came first
                self._error(user, errors.NAME_REGISTERED, f"name {name} is registered")
        if account is not None:
            log.info("account %s registered (from %s)", account.name, user.address or "?")
            self._log_in(user, account, word="register")
        self._done(user)

    def on_login(self, user: User, cmd: Login) -> None:
        if self._throttled(user, cmd.name):
            self._done(user)
            return
        account = self.accounts.get(cmd.name)
        stored = account.hash if account is not None else None
        name = cmd.name
        if not self._submit(user, self.passwords.verify, (stored, cmd.password),
                            lambda ok: self._checked(user, name, account, bool(ok)), name):
            self._done(user)

    def _checked(self, user: User, name: str, account: Account | None, ok: bool) -> None:
        if not self._online(user):
            return
        fresh = self.accounts.by_id(account.id) if account is not None and ok else None
        if fresh is None or account is None or fresh.hash != account.hash:
            self._login_failed(user, name)  # (or its password changed, or it went, meanwhile)
        else:
            self._login_ok(user, fresh)
        self._done(user)

    def on_resume(self, user: User, cmd: Resume) -> None:
        """A token is 256 random bits: no name's throttle applies (an account under a password
        guessing attack still resumes its devices), only the address's, against scanning."""
        if self._throttled(user, cmd.name, by_name=False):
            return
        digest = token_digest(cmd.token)
        account_id = self.accounts.token_account(digest, self._wall())
        account = self.accounts.by_id(account_id) if account_id is not None else None
        if account is None or fold(account.name) != fold(cmd.name):
            self._login_failed(user, cmd.name, by_name=False)
            return
        self._login_ok(user, account, token=digest)  # (the name's failures stay counted)

    def _login_ok(self, user: User, account: Account, token: str = "") -> None:
        """A password (``token`` empty: it clears the name's failures) or a token was right."""
        if not token:
            self.by_account.succeeded(fold(account.name))
        ban = self._server_ban(user, account)
        if ban:
            self._refuse_banned(user.acceptor, user.conn, ban)
            return
        if user.account:
            self._log_out(user)
        self._log_in(user, account, word="login")
        user.token = token

    def _login_failed(self, user: User, name: str, by_name: bool = True) -> None:
        now = self._mono()
        self.logins_failed += 1
        if by_name:
            self.by_account.failed(fold(name), now)
        if user.address:
            self.by_address.failed(user.address, now)
        self._error(user, errors.LOGIN_FAILED, LOGIN_FAILED)
        self._out.append((user.acceptor, Cost(user.conn, FAILED_LOGIN_COST)))

    def _throttled(self, user: User, name: str, by_name: bool = True) -> bool:
        """Too many failed logins lately for this name or this address: told (and its
        connection slowed: the answer costs it tokens), True."""
        now = self._mono()
        wait = max(self.by_account.wait(fold(name), now) if by_name else 0.0,
                   self.by_address.wait(user.address, now) if user.address else 0.0)
        if wait <= 0:
            return False
        self._error(user, errors.LOGIN_THROTTLED,
                    f"{LOGIN_FAILED}: too many attempts, try again in {math.ceil(wait)} s")
        self._out.append((user.acceptor, Cost(user.conn, FAILED_LOGIN_COST)))
        return True

    def on_logout(self, user: User, cmd: Logout) -> None:
        if not user.account:
            self._error(user, errors.NOT_LOGGED_IN, "not logged in")
            return
        if user.token:
            self.accounts.drop_token(user.token)
        self._log_out(user)
        self._session(user)
        self._to(user, "OK logout")
        self._dirty.setdefault(user.room, False)
        self._settle(user.room)

    def on_password(self, user: User, cmd: Password) -> None:
        account = self.accounts.by_id(user.account_id) if user.account else None
        if account is None:
            self._error(user, errors.NOT_LOGGED_IN, "not logged in")
        elif not self._throttled(user, account.name):
            passwords = self.passwords

            def change(stored: str, old: str, new: str) -> str | None:
                return passwords.hash(new) if passwords.verify(stored, old) else None

            known = account
            if self._submit(user, change, (account.hash, cmd.old, cmd.new),
                            lambda digest: self._password_changed(user, known, digest),
                            account.name):
                return
        self._done(user)

    def _password_changed(self, user: User, account: Account, digest: str | None) -> None:
        if not self._online(user):
            return
        if digest is None:
            self._login_failed(user, account.name)
        else:
            self.accounts.set_hash(account.id, digest)  # (and its tokens are revoked)
            log.info("account %s changed its password", account.name)
            self._to(user, "OK password")
        self._done(user)

    def on_token(self, user: User, cmd: Token) -> None:
        if not user.account:
            self._error(user, errors.NOT_LOGGED_IN, "not logged in")
            return
        # secrets.token_urlsafe(32), without importing secrets (hmac, hashlib: libcrypto)
        token = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode("ascii")
        expires = self._wall() + self.token_days * 86400
        user.token = token_digest(token)
        self.accounts.add_token(user.account_id, user.token, expires)
        self._to(user, replies.format_token(user.account, token, replies.format_time(expires)))

    def _submit(self, user: User, fn: Callable[..., Any], args: tuple[Any, ...],
                then: Callable[[Any], None], name: str = "") -> bool:
        """Hash off the loop; False (the user told) when its address has ``HASHING_PER_ADDRESS``
        hashes in the pool already (one address cannot fill the queue and starve the others'
        logins), or when the queue is full. ``name``: the account whose password is checked,
        a guess in flight for its throttle until the result is in."""
        address = user.address
        hashing = self._hashing
        failing = self.by_address.failures(address, self._mono()) >= SUSPECT_FAILURES
        limit = 1 if failing else HASHING_PER_ADDRESS
        if hashing.get(address, 0) >= limit:
            self._error(user, errors.LOGIN_THROTTLED, f"{LOGIN_FAILED}: too many logins from "
                                                      f"your address at once, try again in 1 s")
            return False

        key = fold(name)

        def finished(result: Any) -> None:
            left = hashing.get(address, 1) - 1
            if left > 0:
                hashing[address] = left
            else:
                hashing.pop(address, None)
            if key:
                self.by_account.end(key)
            then(result)

        if self.jobs.submit(fn, args, finished):
            hashing[address] = hashing.get(address, 0) + 1
            if key:
                self.by_account.begin(key)
            return True
        self._error(user, errors.BUSY, "the server is busy with other logins: try again")
        return False

    def _online(self, user: User) -> bool:
        return self.by_conn.get((user.acceptor, user.conn)) is user

    def _done(self, user: User) -> None:
        """The awaited command's answer is complete (bus Done): the client's next lines go."""
        self._settle(user.room)
        self._out.append((user.acceptor, Done(user.conn)))

    def _log_in(self, user: User, account: Account, word: str = "", quiet: bool = False) -> None:
        """The session shows the account's name (its guest name, if any, goes), is sealed for a
        resync, gets the messages kept for the account while it was away, and may own its
        room."""
        self.logins_done += 1
        user.account = account.name
        user.account_id = account.id
        self.logins.setdefault(fold(account.name), []).append(user)
        renamed = user.name != account.name
        if renamed:
            self._set_name(user, account.name)
        self._claim(user)
        self._session(user)
        if quiet:
            return
        self._to(user, f"OK {word} {account.name}")
        if renamed:
            self._dirty.setdefault(user.room, False)
        self._settle(user.room)
        waiting = self.accounts.offline(account.id)
        if waiting:
            lines = [replies.format_delayed_header(len(waiting))]
            lines += [replies.tagged(stamp, replies.format_private_from_name(sender, text))
                      for _, stamp, sender, text in waiting]
            self._to(user, "\n".join(lines))
            self.accounts.delivered(account.id, waiting[-1][0])

    def _log_out(self, user: User) -> None:
        folded = fold(user.account)
        sessions = self.logins.get(folded, [])
        if user in sessions:
            sessions.remove(user)
        if not sessions:
            self.logins.pop(folded, None)
        user.account = ""
        user.account_id = 0
        user.token = ""
        self._set_name(user, "")

    def _seal(self, acceptor: str, conn: int, account_id: int) -> str:
        import hashlib
        import hmac
        return hmac.new(self._seal_key, f"{acceptor}\0{conn}\0{account_id}".encode(),
                        hashlib.sha256).hexdigest()

    def _refuse_banned(self, acceptor: str, conn: int, text: str) -> None:
        """``ERROR: banned: <reason>`` (tagged ``banned`` for a client with codes), then the
        close."""
        self._out.append((acceptor, Err(conn, errors.BANNED, text)))
        self._out.append((acceptor, bus.Kick(conn, "")))

    def _targets(self, user: User) -> list[str]:
        """What a ban of this user is recorded against: its account, or a guest's address."""
        if user.account_id:
            return [account_target(user.account_id)]
        return [address_target(user.address)] if user.address else []

    def _server_ban(self, user: User, account: Account | None) -> str:
        """``banned: <reason>`` when the account or the address may not use the server,
        else ""."""
        targets = [address_target(user.address)] if user.address else []
        if account is not None:
            targets.append(account_target(account.id))
        ban = self.accounts.banned(targets, SERVER, self._wall())
        if ban is None:
            return ""
        return f"banned: {ban.reason or 'no reason given'}"

    # ---- moderation ----------------------------------------------------------------------------

    def _operator(self, user: User) -> bool:
        """Read from the file each time: ``pychat admin op`` counts at once."""
        if not user.account_id:
            return False
        account = self.accounts.by_id(user.account_id)
        return account is not None and account.operator

    def _owner(self, user: User, room: str) -> bool:
        return bool(user.account_id) and room != LOBBY \
            and self.accounts.room(room)[0] == user.account_id

    def _claim(self, user: User) -> None:
        """The first logged-in account in a room with no owner owns it (not #lobby)."""
        if user.account_id and user.room != LOBBY and self.accounts.room(user.room)[0] is None:
            self.accounts.set_owner(user.room, user.account_id)
            log.info("room %s: owned by %s", user.room, user.account)

    def _send_topic(self, user: User, room: str) -> None:
        topic = self.accounts.room(room)[1]
        if topic:
            self._to(user, replies.format_topic(room, topic))

    def on_topic(self, user: User, cmd: Topic) -> None:
        room = user.room
        if not cmd.text:
            self._to(user, replies.format_topic(room, self.accounts.room(room)[1]))
            return
        if not (self._owner(user, room) or self._operator(user)):
            self._error(user, errors.NOT_ALLOWED,
                        "not allowed: only the room's owner or an operator sets its topic")
            return
        text = "" if cmd.text == "-" else cmd.text
        self.accounts.set_topic(room, text, user.account)
        self._settle(room)
        line = replies.format_topic(room, text)
        for acceptor in self.room_acceptors.get(room, ()):
            self._out.append((acceptor, Notice(room, line)))

    def on_kick(self, user: User, cmd: Kick) -> None:
        targets = self._resolve(cmd.target)
        if not targets:
            self._error(user, errors.NO_SUCH_USER, f"no such user {cmd.target}")
            return
        if any(t is user or (user.account_id and t.account_id == user.account_id)
               for t in targets):
            self._error(user, errors.NOT_ALLOWED, "not allowed: you cannot kick yourself")
            return
        if any(self._operator(t) for t in targets):
            self._error(user, errors.NOT_ALLOWED, "not allowed: an operator cannot be kicked")
            return
        operator = self._operator(user)
        allowed = [t for t in targets if operator or self._owner(user, t.room)]
        if not allowed:
            self._error(user, errors.NOT_ALLOWED,
                        "not allowed: only an operator, or the owner of the user's room, kicks")
            return
        reason = cmd.reason or f"by {user.name or user.uid}"
        for target in allowed:
            self._kick_one(target, target.room, reason, f"kicked: {reason}")
        self._to(user, f"OK kick {cmd.target}")

    def _kick_one(self, target: User, room: str, reason: str, bye: str) -> None:
        """Out of ``room`` to the lobby (KICKED), or, in the lobby, off the server (BYE)."""
        if target.room != room:
            return
        if room == LOBBY:
            self._out.append((target.acceptor, bus.Kick(target.conn, f"BYE {bye}")))
            return
        self._to(target, replies.format_kicked(room, reason))
        self._move(target, LOBBY)
        self._send_topic(target, LOBBY)

    def on_ban(self, user: User, cmd: Ban) -> None:
        operator = self._operator(user)
        room = SERVER if operator else user.room
        if not operator and not self._owner(user, room):
            self._error(user, errors.NOT_ALLOWED,
                        "not allowed: only an operator, or a room's owner in that room, bans")
            return
        online = self._resolve(cmd.target)
        account: Account | None = None
        if is_address(cmd.target):
            target, shown = address_target(cmd.target), cmd.target
            hit = [u for u in self.users.values() if u.address == cmd.target]
        elif online and online[0].account_id:
            account = self.accounts.by_id(online[0].account_id)
            target, shown = account_target(online[0].account_id), online[0].account
            hit = list(self.logins.get(fold(online[0].account), []))
        elif online:  # a guest: its address (everyone behind it: docs/PROTOCOL.md)
            address = online[0].address
            target, shown = address_target(address), address
            hit = [u for u in self.users.values() if u.address == address]
        else:
            account = self.accounts.get(cmd.target) if valid_name(cmd.target) else None
            if account is None:
                self._error(user, errors.NO_SUCH_USER, f"no such user {cmd.target}")
                return
            target, shown, hit = account_target(account.id), account.name, []
        if user in hit or target in self._targets(user):
            self._error(user, errors.NOT_ALLOWED, "not allowed: you cannot ban yourself")
            return
        if account is not None and account.operator:
            self._error(user, errors.NOT_ALLOWED, "not allowed: an operator cannot be banned")
            return
        until = self._wall() + cmd.minutes * 60 if cmd.minutes else 0.0
        reason = cmd.reason or f"by {user.name or user.uid}"
        self.accounts.ban(target, room, until, reason, user.account or user.uid)
        log.info("%s banned %s from %s until %s: %s", user.account, shown,
                 room or "the server", replies.format_time(until) if until else "unban", reason)
        for each in hit:
            if room == SERVER:
                self._out.append((each.acceptor, bus.Kick(each.conn, f"BYE banned: {reason}")))
            else:
                self._kick_one(each, room, reason, f"banned: {reason}")
        self._to(user, f"OK ban {shown}")

    def on_unban(self, user: User, cmd: Unban) -> None:
        operator = self._operator(user)
        if not operator and not self._owner(user, user.room):
            self._error(user, errors.NOT_ALLOWED,
                        "not allowed: only an operator, or a room's owner in that room, unbans")
            return
        if is_address(cmd.target):
            target = address_target(cmd.target)
        else:
            account = self.accounts.get(cmd.target) if valid_name(cmd.target) else None
            if account is None:
                self._error(user, errors.NO_SUCH_BAN, f"no ban on {cmd.target}")
                return
            target = account_target(account.id)
        if not self.accounts.unban(target, None if operator else user.room):
            self._error(user, errors.NO_SUCH_BAN, f"no ban on {cmd.target}")
            return
        self._to(user, f"OK unban {cmd.target}")

    # ---- membership -----------------------------------------------------------------------------

    def _add(self, user: User) -> None:
        self.users[user.uid] = user
        self.by_conn[(user.acceptor, user.conn)] = user
        self._enter_room(user)

    def _remove(self, user: User) -> None:
        del self.users[user.uid]
        del self.by_conn[(user.acceptor, user.conn)]
        if user.account:
            sessions = self.logins.get(fold(user.account), [])
            if user in sessions:
                sessions.remove(user)
            if not sessions:
                self.logins.pop(fold(user.account), None)
        if user.name:
            self._unname(user)
        self._leave_room(user)

    def _enter_room(self, user: User) -> None:
        room = user.room
        members = self.rooms.setdefault(room, {})
        text = self._users_text.get(room)
        if text is not None:
            if user.uid in members:  # (already there: its place does not change)
                del self._users_text[room]
            else:  # a new key goes last in the dict, and last in the line
                self._users_text[room] = f"{text},{user.uid}" if members else \
                    replies.format_users((user.uid,))
        members[user.uid] = user
        self._arrived.setdefault(room, {})[user.uid] = None  # (a leave forgot it: at the end)
        if (departed := self._departed.get(room)) is not None:
            departed.pop(user.uid, None)
        per_acc = self.room_acceptors.setdefault(room, {})
        per_acc[user.acceptor] = per_acc.get(user.acceptor, 0) + 1
        if user.name:
            self._named[room] = self._named.get(room, 0) + 1
        self._dirty[room] = True

    def _leave_room(self, user: User) -> None:
        room = user.room
        members = self.rooms[room]
        del members[user.uid]
        self._users_text.pop(room, None)
        per_acc = self.room_acceptors[room]
        per_acc[user.acceptor] -= 1
        if not per_acc[user.acceptor]:
            del per_acc[user.acceptor]
        if user.name:
            self._named[room] -= 1
        if members:
            self._dirty[room] = True
            if (arrived := self._arrived.get(room)) is not None:
                arrived.pop(user.uid, None)
            if (renamed := self._renamed.get(room)) is not None:
                renamed.pop(user.uid, None)
            self._departed.setdefault(room, {})[user.uid] = None
        else:
            del self.rooms[room], self.room_acceptors[room]
            self._named.pop(room, None)
            self._dirty.pop(room, None)
            self._pushed.pop(room, None)
            self._arrived.pop(room, None)  # nobody left to tell; a newcomer gets the list
            self._departed.pop(room, None)
            self._renamed.pop(room, None)

    def _set_name(self, user: User, name: str) -> None:
        """``name`` ("" none) shown by ``user``. ``names`` maps a folded name to a session
        showing it: a guest's own, or one of an account's sessions (``logins`` has them all)."""
        member = user.uid in self.rooms.get(user.room, ())
        if user.name:
            self._unname(user)
            if member and not name:
                self._named[user.room] -= 1
        elif member and name:
            self._named[user.room] = self._named.get(user.room, 0) + 1
        user.name = name
        if name:
            self.names.setdefault(fold(name), user)
        if member:
            self._renamed.setdefault(user.room, {})[user.uid] = None

    def _unname(self, user: User) -> None:
        """``user`` stops showing its name in ``names`` (another session of its account, if
        any, stands for it there)."""
        folded = fold(user.name)
        if self.names.get(folded) is user:
            others = [u for u in self.logins.get(folded, ()) if u is not user]
            if others:
                self.names[folded] = others[0]
            else:
                del self.names[folded]

    def _resolve(self, target: str) -> list[User]:
        """The sessions a uid or a name stands for: an account's name, all of its sessions."""
        user = self.users.get(target)
        if user is not None:
            return [user]
        folded = fold(target)
        sessions = self.logins.get(folded)
        if sessions:
            return list(sessions)
        user = self.names.get(folded)
        return [user] if user is not None else []

    def _new_uid(self) -> str:
        if self._rng is None:
            import random
            self._rng = random.Random()
        while True:
            uid = str(self._rng.randrange(100000, 1000000))
            if uid not in self.users:
                return uid

    # ---- deliveries -----------------------------------------------------------------------------

    def _take(self) -> list[Delivery]:
        out, self._out = self._out, []
        return out

    def _users_line(self, room: str) -> str:
        text = self._users_text.get(room)
        if text is None:
            members = self.rooms.get(room)
            text = replies.format_users(members or ())
            if members:
                self._users_text[room] = text
        return text

    def _names_line(self, room: str) -> str:
        members = self.rooms.get(room, {}).values()
        return replies.format_names((u.uid, u.name) for u in members if u.name)

    def _push(self, room: str, users: bool) -> None:
        text = self._users_line(room) if users else ""
        if self._named.get(room) or self._renamed.get(room):  # (a name gone: "NAMES:")
            names = self._names_line(room)
            text = f"{text}\n{names}" if text else names
        if text:
            delta = self._delta(room)
            for acceptor in self.room_acceptors.get(room, ()):
                self._out.append((acceptor, ToRoom(room, text, delta)))

    def _delta(self, room: str) -> str:
        """The room's changes since its last push, as /cap deltas lines (and forget them)."""
        arrived = self._arrived.pop(room, None) or {}
        departed = self._departed.pop(room, None)
        renamed = self._renamed.pop(room, None) or {}
        lines = []
        if departed:
            lines.append(replies.format_left(departed))
        if arrived:
            lines.append(replies.format_joined(arrived))
        members = self.rooms[room]
        named = [(uid, members[uid].name) for uid in {**arrived, **renamed}
                 if uid in renamed or members[uid].name]
        if named:
            lines.append(replies.format_named(named))
        return "\n".join(lines)

    def _lists(self, room: str, names: bool) -> str:
        """USERS, then NAMES when asked for or when someone in the room has a name."""
        if names or self._named.get(room):
            return self._users_line(room) + "\n" + self._names_line(room)
        return self._users_line(room)

    def _due(self, room: str) -> bool:
        """May the room's list go out now? A small room's always; a large room's once its
        interval since its last push has passed."""
        size = len(self.rooms.get(room, ()))
        return size <= self.coalesce_above or (
            self._mono() >= self._pushed.get(room, -math.inf) + self.push_interval(size))

    def _settle(self, room: str) -> None:
        """Push a room's pending change if it is due."""
        if room not in self._dirty or not self._due(room):
            return
        if len(self.rooms.get(room, ())) > self.coalesce_above:
            self._pushed[room] = self._mono()
        users = self._dirty.pop(room)
        if room in self.rooms:
            self._push(room, users)

    def _session(self, user: User) -> None:
        seal = self._seal(user.acceptor, user.conn, user.account_id) if user.account else ""
        self._out.append((user.acceptor, SessionSet(user.conn, user.uid, user.name, user.room,
                                                    user.account, seal)))

    def _to(self, user: User, text: str) -> None:
        self._settle(user.room)
        self._out.append((user.acceptor, ToConn(user.conn, text)))

    def _error(self, user: User, code: str, text: str) -> None:
        self._settle(user.room)
        self._out.append((user.acceptor, Err(user.conn, code, text)))

    def _not_kept(self, user: User, cmd: Command) -> None:
        self.chat_messages -= 1
        self._error(user, errors.NOT_SENT,
                    f"not sent, the history file cannot keep up: {describe(cmd)}")

    def _chat_conn(self, user: User, stamp: str, line: str) -> None:
        self._settle(user.room)
        self._out.append((user.acceptor, ChatConn(user.conn, stamp, line)))

    def _chat_room(self, room: str, stamp: str, line: str) -> None:
        self._settle(room)
        for acceptor in self.room_acceptors.get(room, ()):
            self._out.append((acceptor, ChatRoom(room, stamp, line)))

