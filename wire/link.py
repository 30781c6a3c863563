"""The bus's reliability protocol, both ends, as state machines: no sockets, no clock of their own.

``AcceptorLink`` is an acceptor's end, ``RouterLink`` the router's. Each takes what arrived (a
batch's frames, with ``now``) and the passage of time (``tick(now)``), and leaves what must be
sent in queues that a pump hands to ZeroMQ (acceptor/link.py, router/server.py). Tests drive
both ends with a fake clock and no sockets (tests/test_link.py).

The protocol (docs/ARCHITECTURE.md, "The bus"):
- **Numbering.** Every batch an acceptor sends, but its Hello batch, starts with ``Seq(n)``,
  n = 1, 2, ... for its epoch. The acceptor keeps each until the router's ``Ack`` covers it.
- **Handled once.** The router handles a number at most once (a number it has seen is only
  acknowledged again), and acknowledges the batches of a turn once everything that turn produced
  has left every queue (``release_acks``: a turn's acks are marked with each queue's count at
  its end): an acknowledged batch's results are in ZeroMQ's hands. A durable router (``gate``)
  also holds a turn's results until its history rows are committed.
- **Resync.** A router that does not know an acceptor (it restarted) answers its batches with
  ``Resync``; an acceptor that sees a new router epoch resyncs on its own. Resync is the Hello
  batch (``Hello`` and a ``Sync``/``Open`` per session, from the acceptor) followed by every
  unacknowledged batch again, with its own number.
- **Dedupe.** A batch the dead router had handled is handled again by the new one, so the router
  puts ``From(origin epoch, n)`` before what each numbered batch caused, for every acceptor it
  goes to; an acceptor drops results of an (origin, n) it has already seen. No line twice.
- **Settling.** The router names the acceptors it knows (``Peers``); a Hello carries that list.
  A router that has just started waits until every acceptor named has said Hello (asking each
  by name every ``SETTLE_ASK_INTERVAL``), or two heartbeats, before it handles numbered
  batches, which wait in order meanwhile: no line is fanned out to a room whose members on a
  late acceptor it cannot see yet.
- **Heartbeats.** Both ways, every ``heartbeat`` seconds, carrying the sender's epoch and
  interval. Three of the other end's intervals of silence and it is dead: the router drops the
  acceptor's users; the acceptor stops counting on the router, and a batch that waits longer
  than ``ROUTER_WAIT`` for a router that is gone is refused (``take_refused``: its senders are
  told) and never sent again.
- **Answered.** ``AcceptorLink.answered`` is the highest n such that every batch up to n has
  been acknowledged, refused, or followed by results of a later batch of ours: whatever those
  batches caused has reached this acceptor (a router handles one acceptor's batches in order,
  marks each one's results with ``From``, and sends a turn's results before its Ack, on the
  same pipe). ``receive`` reports it where it happens in the stream (``Answered``), so that
  replies an acceptor makes itself, held behind the commands before them, go out before the
  results of the commands after them.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from .bus import (
    Ack,
    BusMessage,
    Close,
    Cmd,
    Delivery,
    Err,
    From,
    Heartbeat,
    Hello,
    Open,
    Peers,
    Resync,
    Seq,
    Sync,
    ToRoom,
    decode,
    encode,
)
from .commands import describe
from .errors import NOT_SENT, BusError

# each end logs as the process it runs in: operators filter by process, not by module
alog = logging.getLogger("pychat.acceptor")
rlog = logging.getLogger("pychat.router")

MISSED_HEARTBEATS = 3
ROUTER_WAIT = 5.0  # seconds a batch waits for a router that is gone before its senders are told
SETTLE_ASK_INTERVAL = 0.05  # seconds between Resyncs to an acceptor a starting router awaits

Frames = list[bytes]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


# ---- the acceptor's end --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ResyncNeeded:
    """In what ``AcceptorLink.receive`` returns: send the Hello batch now (``resync``)."""
    why: str


@dataclass(frozen=True, slots=True)
class Answered:
    """In what ``AcceptorLink.receive`` returns: every batch up to ``n`` is answered, from here
    on in the stream (the router has begun on a later batch of ours: ``From(our epoch, n + 1)``),
    so replies held behind them may go before the results that follow."""
    n: int


@dataclass(frozen=True, slots=True)
class Missed:
    """In what ``AcceptorLink.receive`` returns: a room's list push was dropped as a repeat
    (results of a batch already seen, handled again by a restarted router). The router's next
    change is relative to it, so that room's members get their next push whole."""
    room: str


Received = BusMessage | ResyncNeeded | Answered | Missed  # what AcceptorLink.receive returns


class Sent:
    """A numbered batch the router has not acknowledged yet."""
    __slots__ = ("at", "frames", "msgs", "refused", "seq")

    def __init__(self, seq: int, at: float, frames: Frames, msgs: list[BusMessage]):
        self.seq = seq
        self.at = at
        self.frames = frames
        self.msgs = msgs
        self.refused = False


class AcceptorLink:
    """One acceptor's end of the bus. Send with ``send`` (messages of one loop turn share a
    numbered batch: ``flush`` closes it), feed what arrives to ``receive``, call ``tick`` by
    ``next_wake``; the pump sends ``out[0]`` and calls ``sent_one`` until ``out`` is empty or
    the socket pushes back."""

    def __init__(self, name: str, epoch: str, *, heartbeat: float, now: float,
                 max_backlog: int = 1_000, router_wait: float = ROUTER_WAIT):
        self.name = name
        self.epoch = epoch
        self.heartbeat = heartbeat
        self.max_backlog = max_backlog
        self.router_wait = router_wait
        self.peers = "[]"  # the acceptors the router last named (Peers), for our Hello
        self.web = ""  # our web door's base URL, for our Hello ("": none)
        # what to hand to the socket, oldest first, with the numbered batch each one is (None: a
        # Hello batch); bounded: past max_backlog the oldest is refused
        self.out: deque[tuple[Frames, Sent | None]] = deque()
        self._outbox: list[BusMessage] = []
        self._seq = 0
        self._unacked: deque[Sent] = deque()
        self._refused: list[list[BusMessage]] = []
        self._seen_from: dict[str, int] = {}  # origin epoch -> last batch whose results we had
        self._begun = 0  # the router has begun on our batch _begun + 1: all before are answered
        self._reported = 0  # the last Answered that receive returned
        self.router_epoch: str | None = None
        self.router_interval = heartbeat  # the router's own, once it has said
        self.router_seen = now
        self.router_alive = False
        self._next_beat = now

    # ---- sending --------------------------------------------------------------------------------

    @property
    def ticket(self) -> int:
        """The number the batch being collected will carry (what ``send`` returns now)."""
        return self._seq + 1

    @property
    def collecting(self) -> bool:
        """Messages wait in the batch being collected."""
        return bool(self._outbox)

    def send(self, msg: BusMessage) -> int:
        """Queue ``msg`` in the batch being collected; returns that batch's number."""
        self._outbox.append(msg)
        return self._seq + 1

    def flush(self, now: float) -> None:
        """Close the batch being collected: number it, keep it until acknowledged, queue it."""
        if not self._outbox:
            return
        msgs, self._outbox = self._outbox, []
        self._seq += 1
        sent = Sent(self._seq, now, encode([Seq(self._seq), *msgs]), msgs)
        self._unacked.append(sent)
        self._put(sent.frames, sent)

    def hello(self, sessions: list[BusMessage], now: float) -> None:
        """The Hello batch (unnumbered): who we are, then a Sync or Open per session held."""
        self.flush(now)
        self._put(encode([Hello(self.name, self.epoch, self.peers, _ms(self.heartbeat),
                                self.web), *sessions]), None)

    def resync(self, sessions: list[BusMessage], now: float) -> int:
        """A router that does not know us: the Hello batch, then every batch it has not
        acknowledged, in order, with their numbers. Returns how many were sent again."""
        self.flush(now)
        self.out.clear()  # all of it is in _unacked again below (or a stale Hello batch)
        self.hello(sessions, now)
        again = 0
        for sent in self._unacked:
            if not sent.refused:
                self._put(sent.frames, sent)
                again += 1
        return again

    def _put(self, frames: Frames, sent: Sent | None) -> None:
        self.out.append((frames, sent))
        while len(self.out) > self.max_backlog:  # the router cannot take more: the oldest goes
            _, refused = self.out.popleft()
            if refused is not None:
                self._refuse(refused)

    def sent_one(self) -> None:
        """The pump handed ``out[0]`` to the socket."""
        self.out.popleft()

    def _refuse(self, sent: Sent) -> None:
        if not sent.refused:
            sent.refused = True
            self._refused.append(sent.msgs)

    def take_refused(self) -> list[list[BusMessage]]:
        """Batches that will never reach a router: their senders must be told."""
        refused, self._refused = self._refused, []
        return refused

    # ---- acknowledgements ---------------------------------------------------------------------

    def ack(self, n: int) -> None:
        unacked = self._unacked
        while unacked and unacked[0].seq <= n:
            unacked.popleft()

    @property
    def answered(self) -> int:
        """Every batch numbered up to this has been answered: acknowledged, refused, or followed
        by results of a later one of ours (the router handles an acceptor's batches in order)."""
        for sent in self._unacked:
            if not sent.refused:
                return max(sent.seq - 1, self._begun)
        return self._seq

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def expire(self, older_than: float) -> int:
        """Refuse the unacknowledged batches sent before ``older_than``; returns how many."""
        refused = 0
        for sent in self._unacked:
            if sent.at >= older_than:
                break
            if not sent.refused:
                self._refuse(sent)
                refused += 1
        while self._unacked and self._unacked[0].refused:
            self._unacked.popleft()
        return refused

    # ---- receiving ----------------------------------------------------------------------------

    def receive(self, frames: Frames, now: float) -> list[Received]:
        """A batch from the router: what the acceptor must act on (lines, sessions, kicks,
        ``ResyncNeeded`` and ``Answered``), in order; the link's own messages are taken here.
        Raises ``BusError`` for a batch that does not decode."""
        bad: list[BusError] = []
        messages = decode(frames, bad)
        for e in bad:
            alog.warning("dropped a bad message from the router: %s", e)
        out: list[Received] = []
        skip = False
        for msg in messages:
            kind = type(msg)
            if kind is From:  # whose batch caused what follows: results seen once only
                assert isinstance(msg, From)
                if msg.origin:
                    skip = msg.n <= self._seen_from.get(msg.origin, 0)
                    if not skip:
                        self._seen_from[msg.origin] = msg.n
                    if msg.origin == self.epoch and msg.n - 1 > self._begun:
                        self._begun = msg.n - 1
                        self._report(out)
                else:
                    skip = False
            elif skip:
                if kind is ToRoom:  # a repeat, but the router's next change follows it
                    assert isinstance(msg, ToRoom)
                    out.append(Missed(msg.room))
                continue
            elif kind is Heartbeat:
                assert isinstance(msg, Heartbeat)
                self._router_heartbeat(msg, now, out)
            elif kind is Ack:
                assert isinstance(msg, Ack)
                self.ack(msg.n)
                self._report(out)
            elif kind is Resync:
                out.append(ResyncNeeded("the router asked"))
            elif kind is Peers:
                assert isinstance(msg, Peers)
                self.peers = msg.names
            else:
                out.append(msg)
        return out

    def _report(self, out: list[Received]) -> None:
        """What is answered has grown here, in the stream: say so at this point."""
        n = self.answered
        if n > self._reported:
            self._reported = n
            out.append(Answered(n))

    def _router_heartbeat(self, msg: Heartbeat, now: float,
                          out: list[Received]) -> None:
        self.router_seen = now
        interval = msg.interval_ms / 1000
        if interval != self.router_interval:
            self.router_interval = interval
            if abs(interval - self.heartbeat) > 1e-3:
                alog.warning("the router's heartbeat is %gs, ours %gs: set --heartbeat alike on "
                            "both (we judge its silence by its own)", interval, self.heartbeat)
        if not self.router_alive:
            self.router_alive = True
            alog.info("router %s is alive", msg.epoch)
        if self.router_epoch is None:
            self.router_epoch = msg.epoch
        elif msg.epoch != self.router_epoch:
            self.router_epoch = msg.epoch
            out.append(ResyncNeeded(f"router restarted (epoch {msg.epoch})"))

    # ---- time -----------------------------------------------------------------------------------

    def next_wake(self) -> float:
        return self._next_beat

    def tick(self, now: float) -> None:
        """Heartbeat when due; notice a silent router; refuse what waited too long for it."""
        if now < self._next_beat:
            return
        self._next_beat = now + self.heartbeat
        self.send(Heartbeat(self.epoch, _ms(self.heartbeat)))
        silent = now - self.router_seen
        if self.router_alive and silent > MISSED_HEARTBEATS * self.router_interval:
            self.router_alive = False
            alog.warning("router silent for %.1fs; commands wait in the bus queue", silent)
        if not self.router_alive and self.router_epoch is not None:
            refused = self.expire(now - self.router_wait)
            if refused:
                alog.warning("router gone for over %.0fs: refused %d waiting batches",
                            self.router_wait, refused)


# ---- the router's end ----------------------------------------------------------------------------

class Gate(Protocol):
    """What a durable router's results wait for (its history: ``SqliteHistory``). ``ticket()``
    taken at the end of a turn is passed once ``done() >= ticket``: every row the turn wrote is
    committed."""

    def ticket(self) -> int: ...

    def done(self) -> int: ...


class LinkApp(Protocol):
    """What the router's end hands the messages to (``RouterState``): each call returns the
    deliveries it caused, ``(acceptor, message)`` pairs."""

    def handle(self, acceptor: str, msg: BusMessage) -> list[Delivery]: ...

    def acceptor_gone(self, acceptor: str) -> list[Delivery]: ...

    def end_turn(self) -> list[Delivery]: ...


class Peer:
    """An acceptor the router knows."""
    __slots__ = ("done", "epoch", "ident", "interval", "last_seen", "queue", "queued", "seq",
                 "web")

    def __init__(self, ident: bytes, epoch: str, now: float, interval: float):
        self.ident = ident
        self.epoch = epoch
        self.last_seen = now
        self.interval = interval  # its heartbeat interval: silence is judged by it
        self.queue: deque[Frames] = deque()  # batches for it, routing id first, oldest first
        self.seq = 0  # the highest batch number taken from it
        self.done = 0  # the highest batch number handled (acknowledged at the end of a turn)
        self.queued = 0  # batches ever put in ``queue`` (what left it: queued - len(queue))
        self.web = ""  # its web door's base URL (Hello), "" for none


class RouterLink:
    """The router's end of the bus. ``receive`` each batch (frames after the routing id), then
    ``end_turn``; ``tick`` by ``next_wake``. The pump sends each peer's ``queue`` from the left
    (``Peer.ident`` is each batch's first frame), then ``release_acks`` (and sends again);
    ``raw`` holds best-effort messages to routing ids that may be no peer. A peer the socket
    cannot reach goes through ``lost``.

    With a ``gate`` (durable mode), a turn's batches and acks wait in ``held`` until the gate
    passes its ticket; ``release_held`` (the pump calls it before sending) moves them, in turn
    order, into the queues. So nobody hears of a message before it is on disk, and nothing
    queued later is sent before it; an ack is queued as soon as its own turn's results left."""

    def __init__(self, app: LinkApp, epoch: str, *, heartbeat: float, now: float,
                 settle_seconds: float | None = None, max_backlog: int = 10_000,
                 max_waiting: int = 100_000, gate: Gate | None = None):
        self.app = app
        self.gate = gate
        # turns waiting for the gate: (ticket, [(acceptor, peer, batch)], acks due then)
        self.held: deque[tuple[int, list[tuple[str, Peer, Frames]],
                               dict[str, tuple[Peer, int]]]] = deque()
        self.epoch = epoch
        self.heartbeat = heartbeat
        self.max_backlog = max_backlog
        self.max_waiting = max_waiting
        self.peers: dict[str, Peer] = {}
        self.raw: deque[tuple[bytes, list[BusMessage]]] = deque()
        self.started = now
        self.messages_queued = 0  # bus messages put in peers' queues (a metric)
        self._next_beat = now
        self._turn: dict[str, list[BusMessage]] = {}  # this turn's messages, per acceptor
        self._origin: tuple[str, int] | None = None  # the numbered batch being handled
        self._marked: dict[str, tuple[str, int] | None] = {}
        self._ack_due: set[str] = set()
        # acks waiting for their turns' results to leave every queue: ([(acceptor, peer, its
        # queued count at the turn's end)], {acceptor: (peer, batch number handled by then)})
        self._ack_marks: deque[tuple[list[tuple[str, Peer, int]],
                                     dict[str, tuple[Peer, int]]]] = deque()
        self._resync_asked: dict[str, float] = {}
        # settling after a start: the acceptors we wait for (None: no Hello yet), the deadline,
        # and the numbered batches waiting meanwhile: (acceptor, number, messages)
        self.settled = False
        self.settle_seconds = 2 * heartbeat if settle_seconds is None else settle_seconds
        self._expected: set[str] | None = None
        self._settle_by = 0.0
        self._waiting: list[tuple[str, int, list[BusMessage]]] = []
        self._waiting_count = 0

    @property
    def settling(self) -> bool:
        return not self.settled and bool(self._expected)

    # ---- receiving ----------------------------------------------------------------------------

    def receive(self, ident: bytes, frames: Frames, now: float) -> None:
        """One batch from a DEALER whose routing id is ``ident``."""
        bad: list[BusError] = []
        try:
            acceptor = ident.decode("utf-8")
            messages = decode(frames, bad)
        except (BusError, UnicodeDecodeError) as e:
            rlog.warning("dropped a bad batch from %r: %s", ident, e)
            return
        # an acceptor is a peer, not an authority: what no client sends is dropped
        for problem in bad:
            rlog.warning("dropped a bad message from %s: %s", acceptor, problem)
        peer = self.peers.get(acceptor)
        if messages and type(messages[0]) is Seq:
            first = messages[0]
            assert isinstance(first, Seq)
            n = first.n
            if peer is None:  # we restarted, or lost it: it sends this again after its resync
                self._ask_resync(acceptor, ident, now)
                return
            peer.last_seen = now
            if n <= peer.seq:  # handled already (sent again by a second resync)
                self._ack_due.add(acceptor)
                return
            peer.seq = n
            if self.settled:
                self._dispatch_numbered(acceptor, peer, n, messages[1:], now)
            elif self._waiting_count + len(messages) <= self.max_waiting:
                self._waiting.append((acceptor, n, messages[1:]))
                self._waiting_count += len(messages)
            else:
                self._refuse(ident, messages, "the router is restarting")
                peer.done = n
                self._ack_due.add(acceptor)
            return
        if peer is None and not any(isinstance(m, Hello) for m in messages):
            self._refuse(ident, messages, "the router was restarting")
            self._ask_resync(acceptor, ident, now)
            return
        self._dispatch(acceptor, ident, peer, messages, now)

    def _dispatch_numbered(self, acceptor: str, peer: Peer, n: int,
                           messages: list[BusMessage], now: float) -> None:
        self._origin = (peer.epoch, n)
        self._dispatch(acceptor, peer.ident, peer, messages, now)
        self._origin = None
        peer.done = n
        self._ack_due.add(acceptor)

    def _dispatch(self, acceptor: str, ident: bytes, peer: Peer | None,
                  messages: list[BusMessage], now: float) -> None:
        handle = self.app.handle
        for msg in messages:
            kind = type(msg)
            if kind is Hello:
                assert isinstance(msg, Hello)
                peer = self._hello(acceptor, ident, peer, msg, now)
                continue
            if peer is None:  # messages before its Hello in the same batch
                self._refuse(ident, [msg], "the router was restarting")
                continue
            peer.last_seen = now
            if kind is Heartbeat:
                assert isinstance(msg, Heartbeat)
                self._check_interval(acceptor, peer, msg.interval_ms)
            elif kind is Cmd or kind is Open or kind is Close or kind is Sync:
                self._deliver(handle(acceptor, msg))
            else:
                rlog.warning("acceptor %s sent a router-bound %s; dropped", acceptor, msg.kind)

    def _hello(self, acceptor: str, ident: bytes, peer: Peer | None, msg: Hello,
               now: float) -> Peer:
        if peer is not None and peer.epoch != msg.epoch:
            rlog.info("acceptor %s restarted (epoch %s)", acceptor, msg.epoch)
            self._deliver(self.app.acceptor_gone(acceptor))
            peer = None
        if peer is None:
            self._resync_asked.pop(acceptor, None)
            peer = self.peers[acceptor] = Peer(ident, msg.epoch, now, self.heartbeat)
            rlog.info("acceptor %s joined (epoch %s)", acceptor, msg.epoch)
            self._add(acceptor, Heartbeat(self.epoch, _ms(self.heartbeat)))
            self._joined(msg.peers, now)
        self._check_interval(acceptor, peer, msg.heartbeat_ms)
        peer.web = msg.web
        return peer

    def _check_interval(self, acceptor: str, peer: Peer, interval_ms: int) -> None:
        interval = interval_ms / 1000
        if interval != peer.interval:
            peer.interval = interval
            if abs(interval - self.heartbeat) > 1e-3:
                rlog.warning("acceptor %s heartbeats every %gs, we every %gs: set --heartbeat "
                            "alike on both (we judge its silence by its own)", acceptor,
                            interval, self.heartbeat)

    # ---- a turn's results -----------------------------------------------------------------------

    def _add(self, acceptor: str, msg: BusMessage) -> None:
        """Queue ``msg`` for ``acceptor`` this turn, behind a ``From`` whenever the origin
        (the numbered batch being handled) changes for that acceptor."""
        msgs = self._turn.get(acceptor)
        if msgs is None:
            msgs = self._turn[acceptor] = []
        origin = self._origin
        if self._marked.get(acceptor) != origin:
            self._marked[acceptor] = origin
            msgs.append(From(*origin) if origin else From("", 0))
        msgs.append(msg)

    def _deliver(self, deliveries: list[Delivery]) -> None:
        add = self._add
        for acceptor, msg in deliveries:
            add(acceptor, msg)

    def end_turn(self, now: float) -> None:
        """Close the turn: settle if due, the state's due pushes, then each acceptor's messages
        as one batch in its queue."""
        self._check_settled(now)
        self._deliver(self.app.end_turn())
        batches: list[tuple[str, Peer, Frames]] = []
        while self._turn:  # again only if an acceptor was lost here: its users' departure
            turn, self._turn = self._turn, {}
            self._marked = {}
            for acceptor, msgs in turn.items():
                peer = self.peers.get(acceptor)
                if peer is None or not msgs:
                    continue
                self.messages_queued += len(msgs)
                batch = [peer.ident, *self._encode(acceptor, msgs)]
                if self.gate is None:
                    self._queue(acceptor, peer, batch, now)
                else:
                    batches.append((acceptor, peer, batch))
        due, self._ack_due = self._ack_due, set()
        acks = {name: (self.peers[name], self.peers[name].done) for name in due
                if name in self.peers}
        if self.gate is None:
            self._mark_acks(acks)
        elif batches or acks:
            self.held.append((self.gate.ticket(), batches, acks))
            self.release_held(now)
        if self._turn:  # a peer lost above: the others hear of its users now
            self.end_turn(now)

    @property
    def turn_open(self) -> bool:
        """Deliveries wait for ``end_turn`` (a peer was lost outside a turn)."""
        return bool(self._turn)

    def release_held(self, now: float) -> None:
        """Queue the held turns whose ticket the gate has passed, oldest first."""
        held = self.held
        if not held or self.gate is None:
            return
        done = self.gate.done()
        while held and held[0][0] <= done:
            _, batches, acks = held.popleft()
            for acceptor, peer, batch in batches:
                if self.peers.get(acceptor) is peer:
                    self._queue(acceptor, peer, batch, now)
            self._mark_acks(acks)

    def _queue(self, acceptor: str, peer: Peer, batch: Frames, now: float) -> None:
        peer.queue.append(batch)
        peer.queued += 1
        if len(peer.queue) > self.max_backlog:
            self.lost(acceptor, f"{len(peer.queue)} batches behind", now)

    def _mark_acks(self, acks: dict[str, tuple[Peer, int]]) -> None:
        """Acks of a turn whose results are queued: due once every queue has sent them."""
        if acks:
            self._ack_marks.append(
                ([(name, peer, peer.queued) for name, peer in self.peers.items()], acks))

    @staticmethod
    def _encode(acceptor: str, msgs: list[BusMessage]) -> Frames:
        try:
            return encode(msgs)
        except BusError:  # one bad message must not take the others with it
            good = []
            for m in msgs:
                try:
                    encode([m])
                except BusError as e:
                    rlog.error("dropped a message for %s that cannot be encoded: %s", acceptor, e)
                else:
                    good.append(m)
            return encode(good)

    def release_acks(self) -> bool:
        """Queue the acknowledgements of the turns whose results have all left the peers'
        queues (none may wait where it would die with us; a peer lost since counts as gone).
        True if any were queued."""
        marks = self._ack_marks
        peers = self.peers
        ready: dict[str, tuple[Peer, int]] = {}
        while marks and all(peer.queued - len(peer.queue) >= queued or peers.get(name) is not peer
                            for name, peer, queued in marks[0][0]):
            ready.update(marks.popleft()[1])
        for acceptor, (peer, done) in ready.items():
            if peers.get(acceptor) is peer:  # not an ack of one epoch to the next
                peer.queue.append([peer.ident, *encode([Ack(done)])])
                peer.queued += 1
        return bool(ready)

    # ---- settling after a start ---------------------------------------------------------------

    def _joined(self, peers_json: str, now: float) -> None:
        """An acceptor said Hello: tell everyone the new list; while settling, learn whom else
        to wait for from the list it brings."""
        self._announce_peers()
        if self.settled:
            return
        try:
            named = {p for p in json.loads(peers_json) if isinstance(p, str)}
        except (ValueError, TypeError):
            named = set()
        if self._expected is None:
            self._expected = set()
            self._settle_by = now + self.settle_seconds
        self._expected |= named
        self._expected -= self.peers.keys()
        # settled (if every one is in) at the end of the turn: after this Hello batch's Syncs

    def _announce_peers(self) -> None:
        peers = Peers(json.dumps(sorted(self.peers)))
        for name in self.peers:
            self._add(name, peers)

    def _check_settled(self, now: float) -> None:
        if self.settled or self._expected is None:
            return
        if not self._expected:
            self._settle(now, "every acceptor has resynced")
        elif now >= self._settle_by:
            self._settle(now, f"{sorted(self._expected)} did not resync in time")
        else:  # don't wait for their next heartbeat: their routing id is their name
            for name in self._expected:
                if self._resync_asked.get(name, -1e9) < now - SETTLE_ASK_INTERVAL:
                    self._resync_asked[name] = now
                    self.raw.append((name.encode("utf-8"), [Resync()]))

    def _settle(self, now: float, why: str) -> None:
        self.settled = True
        waiting, self._waiting, self._waiting_count = self._waiting, [], 0
        rlog.info("settled %.0f ms after start: %s; handling %d waiting batches",
                 (now - self.started) * 1000, why, len(waiting))
        for acceptor, n, messages in waiting:
            peer = self.peers.get(acceptor)
            if peer is not None:
                self._dispatch_numbered(acceptor, peer, n, messages, now)

    def _ask_resync(self, acceptor: str, ident: bytes, now: float) -> None:
        if self._resync_asked.get(acceptor, -1e9) < now - self.heartbeat:
            self._resync_asked[acceptor] = now
            rlog.info("unknown acceptor %s: asking it to resync", acceptor)
            self.raw.append((ident, [Resync()]))

    def _refuse(self, ident: bytes, messages: list[BusMessage], why: str) -> None:
        """Tell each client whose command will not be handled."""
        refusals: list[BusMessage] = [
            Err(m.conn, NOT_SENT, f"not sent, {why}: {describe(m.command)}")
            for m in messages if isinstance(m, Cmd)]
        if refusals:
            self.raw.append((ident, refusals))

    # ---- time and loss --------------------------------------------------------------------------

    def next_wake(self, now: float) -> float:
        return min(self._next_beat, now + SETTLE_ASK_INTERVAL) if self.settling \
            else self._next_beat

    def tick(self, now: float) -> None:
        """Heartbeats when due (and the silent acceptors lost); settling's asks and deadline."""
        if now >= self._next_beat:
            self._next_beat = now + self.heartbeat
            for acceptor, peer in list(self.peers.items()):
                if now - peer.last_seen > MISSED_HEARTBEATS * peer.interval:
                    self.lost(acceptor, f"no heartbeat for {now - peer.last_seen:.1f}s", now)
            beat = Heartbeat(self.epoch, _ms(self.heartbeat))
            for acceptor in self.peers:
                self._add(acceptor, beat)
        self.end_turn(now)

    def lost(self, acceptor: str, why: str, now: float) -> None:
        """An acceptor is gone (silent, unreachable, or too far behind): its users leave, and
        the others hear it at the next ``end_turn`` (the pump calls it after a loss of its own)."""
        peer = self.peers.pop(acceptor, None)
        if peer is None:
            return
        rlog.warning("acceptor %s lost: %s; its users leave", acceptor, why)
        self._ack_due.discard(acceptor)  # (an ack mark naming it is released without it)
        self._turn.pop(acceptor, None)
        self._deliver(self.app.acceptor_gone(acceptor))
        self._deliver(self.app.end_turn())
        self._announce_peers()

