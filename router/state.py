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

import logging
import math
import random
import time
from collections.abc import Callable

from pychat.wire import errors, replies
from pychat.wire.bus import (
    BusMessage,
    ChatConn,
    ChatRoom,
    Close,
    Cmd,
    Cost,
    Delivery,
    Err,
    Open,
    SessionSet,
    Sync,
    ToConn,
    ToRoom,
)
from pychat.wire.commands import (
    LOBBY,
    ROUTER,
    Command,
    History,
    Join,
    Nick,
    Private,
    Rooms,
    Say,
    Users,
    describe,
    handlers,
)

from .clock import Clock
from .history import HistoryStore

log = logging.getLogger("pychat.router")

MAX_PUSH_INTERVAL = 60.0
COST_REPORTED = 4096  # a command (or arrival) that made the server send this many bytes is paced


class User:
    __slots__ = ("acceptor", "conn", "name", "room", "uid")

    def __init__(self, uid: str, acceptor: str, conn: int, room: str):
        self.uid = uid
        self.acceptor = acceptor
        self.conn = conn
        self.name = ""
        self.room = room


class RouterState:
    def __init__(self, clock: Clock, history: HistoryStore, rng: random.Random | None = None,
                 coalesce_above: int = 500, push_budget: float = 20e6,
                 monotonic: Callable[[], float] = time.monotonic, durable: bool = False):
        self.clock = clock
        self.durable = durable  # a message the history cannot keep is refused, not sent
        self.coalesce_above = coalesce_above
        self.push_budget = push_budget
        self._mono = monotonic
        self._pushed: dict[str, float] = {}  # large room -> when its list last went out
        self.history = history
        self._rng = rng or random.Random()
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
            return self._charged(acceptor, msg.conn, self.open(acceptor, msg.conn))
        if kind is Close:
            assert isinstance(msg, Close)
            return self.close(acceptor, msg.conn)
        if kind is Sync:
            assert isinstance(msg, Sync)
            return self.sync(acceptor, msg.conn, msg.uid, msg.name, msg.room)
        log.warning("acceptor %s sent a router-bound %s; dropped", acceptor, msg.kind)
        return []

    def open(self, acceptor: str, conn: int) -> list[Delivery]:
        """A new connection: give it a uid, put it in the lobby, send ID (USERS follows)."""
        key = (acceptor, conn)
        if key in self.by_conn:  # a duplicate open: the acceptor retried; keep the first
            return self._take()
        user = User(self._new_uid(), acceptor, conn, LOBBY)
        self._add(user)
        self._session(user)
        # ID before the USERS push that includes the newcomer (its handshake USERS)
        self._out.append((acceptor, ToConn(conn, replies.format_id(user.uid))))
        if not self._due(user.room):  # its own list now; the others' when the throttle allows
            self._out.append((acceptor, ToConn(conn, self._lists(user.room, names=False))))
        self._settle(user.room)
        return self._take()

    def sync(self, acceptor: str, conn: int, uid: str, name: str, room: str) -> list[Delivery]:
        """Adopt a session an acceptor already holds (after a router restart)."""
        if (acceptor, conn) in self.by_conn:
            return self._take()
        notes: list[BusMessage] = []
        if not (len(uid) == 6 and uid.isascii() and uid.isdigit()) or uid in self.users:
            uid = self._new_uid()
            notes.append(ToConn(conn, replies.format_id(uid)))
        user = User(uid, acceptor, conn, room or LOBBY)
        self._add(user)
        if name:
            if name.casefold() in self.names:
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
        else:
            handler(user, cmd)
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
        """An acceptor died: its users leave, everyone else sees the new lists."""
        for user in [u for u in self.users.values() if u.acceptor == acceptor]:
            self._remove(user)
        return self._take()

    def end_turn(self) -> list[Delivery]:
        """Send the USERS/NAMES pushes that are due (a large room's wait for its interval)."""
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
        target = self._resolve(cmd.target)
        if target is None:
            self._error(user, errors.NO_SUCH_USER, f"no such user {cmd.target}")
            return
        stamp = replies.format_time(self.clock.now())
        line = replies.format_private_from(user.uid, cmd.text)
        # kept only if enabled
        if not self.history.append_private(stamp, user.uid, target.uid, line) and self.durable:
            self._not_kept(user, cmd)
            return
        self._chat_conn(target, stamp, line)
        self._chat_conn(user, stamp, replies.format_private_to(target.uid, cmd.text))

    def on_nick(self, user: User, cmd: Nick) -> None:
        holder = self.names.get(cmd.name.casefold())
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
            return
        self._leave_room(user)
        user.room = cmd.room
        self._enter_room(user)
        self._session(user)
        self._out.append((user.acceptor, ToConn(user.conn, replies.format_room(cmd.room))))
        # the new room's lists now, the joiner always getting NAMES (it asked); in a large room
        # the joiner gets them alone and the others' push waits for its interval
        if not self._due(cmd.room):
            self._out.append((user.acceptor, ToConn(user.conn, self._lists(cmd.room, True))))
        else:
            self._dirty[cmd.room] = True
            self._settle(cmd.room)
            if not self._named.get(cmd.room):
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

    # ---- membership -----------------------------------------------------------------------------

    def _add(self, user: User) -> None:
        self.users[user.uid] = user
        self.by_conn[(user.acceptor, user.conn)] = user
        self._enter_room(user)

    def _remove(self, user: User) -> None:
        del self.users[user.uid]
        del self.by_conn[(user.acceptor, user.conn)]
        if user.name:
            del self.names[user.name.casefold()]
        self._leave_room(user)

    def _enter_room(self, user: User) -> None:
        room = user.room
        self.rooms.setdefault(room, {})[user.uid] = user
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
        if user.name:
            del self.names[user.name.casefold()]
        elif user.uid in self.rooms.get(user.room, ()):
            self._named[user.room] = self._named.get(user.room, 0) + 1
        user.name = name
        self.names[name.casefold()] = user
        if user.uid in self.rooms.get(user.room, ()):
            self._renamed.setdefault(user.room, {})[user.uid] = None

    def _resolve(self, target: str) -> User | None:
        user = self.users.get(target)
        return user if user is not None else self.names.get(target.casefold())

    def _new_uid(self) -> str:
        while True:
            uid = str(self._rng.randrange(100000, 1000000))
            if uid not in self.users:
                return uid

    # ---- deliveries -----------------------------------------------------------------------------

    def _take(self) -> list[Delivery]:
        out, self._out = self._out, []
        return out

    def _users_line(self, room: str) -> str:
        return replies.format_users(self.rooms.get(room, {}))

    def _names_line(self, room: str) -> str:
        members = self.rooms.get(room, {}).values()
        return replies.format_names((u.uid, u.name) for u in members if u.name)

    def _push(self, room: str, users: bool) -> None:
        text = self._users_line(room) if users else ""
        if self._named.get(room):
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
        self._out.append((user.acceptor, SessionSet(user.conn, user.uid, user.name, user.room)))

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

