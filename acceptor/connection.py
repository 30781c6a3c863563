"""One client connection as a state machine: bytes (or lines) in, actions out. No I/O, no clock.

``Connection`` is the part of a client that every door shares (in the manner of h11's
``Connection`` and websockets' ``Protocol``): the TCP door feeds it bytes, a WebSocket door would
feed it text frames as lines, an IRC door would wrap it with a translator. It knows nothing of
asyncio, sockets or the bus. Each call takes ``now`` (the caller's monotonic clock), the
``ticket`` of the bus batch that commands routed during the call will travel in, and
``answered`` (every batch up to it is answered: see below), and returns actions for the caller
to carry out, in order:

- ``Write(text)``: a line (or lines joined by ``\\n``) for the client, without the final newline
- ``Route(command)``: a command for the router; the caller sends it in batch ``ticket``
- ``Close(reason)``: close after writing everything queued; the router hears ``reason``
- ``PAUSE`` / ``RESUME``: stop or restart reading from the client
- ``CUT``: close the bus batch being collected; later commands go in the next one (``ticket``
  + 1). It comes before a command routed after a held reply whose command shares the batch:
  the reply must go out before this command's results, and answers are per batch.

It owns:
- framing (``LineBuffer``): lines, over-long lines, and the pieces of a client that never ends a
  line (until its first ``\\n``, a piece idle for ``piece_idle`` seconds is a line; at EOF the
  last piece is a line);
- the flood bucket: a command for the router waits for its token with reading paused, and a
  turn handles at most ``lines_per_turn`` lines (fairness); nothing read is dropped. What a
  command made the server send is charged afterwards (``charge``, from the router's ``cost``):
  a token per ``flood_bytes``, so the next commands wait for the work this one caused. A
  heavy command (its reply or pushes grow with the data: ``/history``, ``/users``, ``/join``...)
  waits, with reading paused, until the one before it is answered, so its cost is known first;
- order: a reply made here (``PONG``, ``OK cap``, ``HELP:``, usage ``ERROR:`` lines, ``BYE``)
  waits until the router has answered every command routed before it, so it reaches the client
  behind their results. The caller says what is answered, with every call and, for a
  connection that holds replies, as soon as it grows (``answered_up_to``): every batch up to n
  has been answered (its results came first) or refused (its senders were told);
- leaving: after ``/quit``, ``BYE`` and the close wait like any reply and nothing more is read;
  after EOF (a half-close) the lines already read are served and every reply due is sent
  before the close;
- capabilities: ``time`` (chat lines tagged with their ``@time=``), ``codes`` (``ERROR:`` lines
  tagged with their ``@code=``), ``end`` (``END <word>`` after the whole reply to each command,
  held like any reply, so a client reads up to it instead of sending ``/ping`` markers);
- the idle and unfinished-line deadlines (``tick``).

Invariants: actions come out in the order their causes came in; a ``Close`` is the last action
ever returned; a command is routed at most once; ``wake_at`` is when ``tick`` must next run for
a precise deadline (a flood token, the next turn, an idle piece), None when nothing waits on it.
The caller also runs ``tick`` about once a second for the coarse ones (idle, slowloris).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pychat.wire import errors, replies
from pychat.wire.commands import (
    AWAITED,
    HEAVY,
    LOCAL,
    ROUTED,
    Cap,
    Command,
    Help,
    Ping,
    Quit,
    Say,
    handler_names,
    help_lines,
    parse_line,
    word_of,
)
from pychat.wire.errors import ClientError, LineTooLong
from pychat.wire.framing import LineBuffer, decode, sanitize

from .limits import Limits, TokenBucket

CAPABILITIES = ("time", "codes", "end", "deltas")
LOCAL_HANDLERS = handler_names(LOCAL)  # wire.commands.TABLE names them (methods below)


@dataclass(frozen=True, slots=True)
class Write:
    text: str


@dataclass(frozen=True, slots=True)
class Route:
    command: Command


@dataclass(frozen=True, slots=True)
class Close:
    reason: str


class _Reading:
    __slots__ = ("on",)

    def __init__(self, on: bool):
        self.on = on

    def __repr__(self) -> str:
        return "RESUME" if self.on else "PAUSE"


PAUSE = _Reading(False)
RESUME = _Reading(True)


class _Cut:
    __slots__ = ()

    def __repr__(self) -> str:
        return "CUT"


CUT = _Cut()

Action = Write | Route | Close | _Reading | _Cut
Item = bytes | LineTooLong | Command


class Connection:
    __slots__ = ("_awaiting", "_heavy", "_resume_at", "answered", "bucket", "cap_codes",
                 "cap_deltas", "cap_end", "cap_time",
                 "closed", "eof", "held",
                 "limits", "line_since", "lines", "newline_seen", "paused", "pending",
                 "quitting", "seen", "ticket", "wake_at")

    def __init__(self, limits: Limits, now: float, ticket: int):
        """``ticket``: the batch that announced the connection to the router (its Open); what
        the client asks before that is answered comes after its ID."""
        self.limits = limits
        self.lines = LineBuffer(limits.max_line)
        self.bucket = TokenBucket(limits.flood_rate, limits.flood_burst, now)
        self.pending: deque[Item] = deque()  # read, not handled yet (flood, turn budget)
        self.cap_time = False
        self.cap_codes = False
        self.cap_end = False
        self.cap_deltas = False
        self.quitting = ""  # why the client is leaving, once it asked (or ended its input)
        self.eof = False
        self.closed = False
        self.paused = False  # we stopped reading (flood, turn budget, leaving)
        self.seen = now  # when the client last sent bytes (idle limit)
        self.line_since = 0.0  # when the unfinished line began (slowloris), 0: none
        self.newline_seen = False  # strict lines once the client has ended one
        self.ticket = ticket  # the batch carrying the latest command routed for us
        self.answered = ticket - 1  # every batch up to this one is answered
        self.held: deque[tuple[int, Action]] = deque()  # replies waiting for their ticket
        self._resume_at: float | None = None
        self._heavy = 0  # the batch of our latest heavy command (0: none unanswered)
        self._awaiting = ""  # the awaited command whose Done we wait for ("": none)
        self.wake_at: float | None = None

    # ---- input -------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float, ticket: int, answered: int) -> list[Action]:
        """Bytes from a stream transport (TCP, TLS)."""
        out = self.answered_up_to(answered)
        if self.quitting or self.closed or not data:
            return out
        lines = self.lines
        items = lines.feed(data)
        self.seen = now
        if not self.newline_seen and b"\n" in data:
            self.newline_seen = True
        if not lines.partial:
            self.line_since = 0.0
        elif items or not self.line_since:  # an unfinished line began in this chunk
            self.line_since = now
        if items:
            self.pending.extend(items)
            if not self.paused:
                self._run(now, ticket, out)
        self._rearm()
        return out

    def receive_line(self, line: bytes, now: float, ticket: int, answered: int) -> list[Action]:
        """One whole line from a message transport (a WebSocket text frame), without newline."""
        out = self.answered_up_to(answered)
        if self.quitting or self.closed:
            return out
        self.seen = now
        self.newline_seen = True
        self.pending.append(line if len(line) <= self.limits.max_line
                            else LineTooLong(self.limits.max_line))
        if not self.paused:
            self._run(now, ticket, out)
        self._rearm()
        return out

    def receive_eof(self, now: float, ticket: int, answered: int) -> list[Action]:
        """The client ended its input (a half-close): its last piece is a line; everything read
        is still served, then every reply due is sent, then the connection closes."""
        out = self.answered_up_to(answered)
        if self.quitting or self.closed or self.eof:
            return out
        self.eof = True
        self._take_piece()
        if not self.paused:
            self._run(now, ticket, out)
        self._rearm()
        return out

    def _take_piece(self) -> bool:
        """The unfinished piece is a line (idle before the first newline, or at the end of
        input): queue it. False if there was none."""
        piece = self.lines.take_partial()
        self.line_since = 0.0
        if piece is None:
            return False
        self.pending.append(piece)
        return True

    def tick(self, now: float, ticket: int, answered: int) -> list[Action]:
        """Time passed: a flood token or the next turn is due, a piece sat idle, or the client
        was silent (idle) or slow (an unfinished line) for too long."""
        out = self.answered_up_to(answered)
        if self.closed:
            return out
        if self._resume_at is not None and now >= self._resume_at:
            self._resume_at = None
            self._run(now, ticket, out)
        limits = self.limits
        piece_idle = (not self.newline_seen and limits.piece_idle and self.lines.partial
                      and not self.quitting and not self.eof
                      and now - self.seen >= limits.piece_idle)
        if piece_idle and self._take_piece() and not self.paused:
            self._run(now, ticket, out)
        if not self.quitting and not self.paused and not self.eof:
            unfinished = limits.partial_line_timeout
            idle = limits.idle_timeout
            if unfinished and self.line_since and now - self.line_since > unfinished:
                self._leave(out, f"line not finished in {unfinished:g} s",
                            errors.UNFINISHED_LINE, "unfinished line")
            elif idle and now - self.seen > idle:
                self._leave(out, f"idle timeout (nothing received in {idle:g} s)",
                            errors.IDLE_TIMEOUT, "idle timeout")
        self._rearm()
        return out

    def finish(self, error: str, now: float, ticket: int, answered: int) -> list[Action]:
        """The router is done with our awaited command (``/login``...: bus ``Done``), or will
        never be (``error``: it restarted meanwhile): ``END`` for it, then the lines that
        waited behind it."""
        out = self.answered_up_to(answered)
        if not self._awaiting or self.closed:
            return out
        word, self._awaiting = self._awaiting, ""
        if error:
            self._reply(replies.format_error(error, errors.NOT_SENT if self.cap_codes else None),
                        out)
        if self.cap_end:
            self._reply(replies.format_end(word), out)
        if not self.quitting:
            self._run(now, ticket, out)
        self._rearm()
        return out

    @property
    def awaiting(self) -> str:
        """The awaited command (its word) the router has not finished, or ""."""
        return self._awaiting

    @property
    def awaits_answers(self) -> bool:
        """Something here waits for the router's answers: held replies, or a heavy command."""
        return bool(self.held) or self._heavy > self.answered

    def charge(self, sent: int) -> None:
        """The router reports that a command of ours made it send ``sent`` bytes: every
        ``flood_bytes`` of it beyond the first costs one more token (the bucket may go into debt:
        the next command for the router waits until it is paid)."""
        extra = sent // self.limits.flood_bytes
        if extra:
            self.bucket.tokens -= extra

    def answered_up_to(self, n: int) -> list[Action]:
        """Every batch up to ``n`` is answered: the replies held behind them go out."""
        out: list[Action] = []
        if n <= self.answered:
            return out
        self.answered = n
        if self._heavy and n >= self._heavy and self.pending and self._resume_at is None:
            self._resume_at = 0.0  # the heavy command waiting may go: a turn, at once
            self.wake_at = 0.0
        held = self.held
        while held and held[0][0] <= n:
            action = held.popleft()[1]
            out.append(action)
            if type(action) is Close:
                self.closed = True
        return out

    # ---- handling ----------------------------------------------------------------------------

    def _run(self, now: float, ticket: int, out: list[Action]) -> None:
        """Handle read lines in order; the rest wait, with reading paused, when a command for
        the router finds the flood bucket empty (it waits for its token), or when this turn's
        line budget is spent (the others get a turn). Lines that only cost the sender (errors,
        local commands) take no token."""
        pending = self.pending
        bucket = self.bucket
        budget = self.limits.lines_per_turn
        while pending:
            if self.quitting:
                pending.clear()
                break
            if self._awaiting:  # nothing more until the router is done with it
                self._pause(None, out)
                return
            item = pending.popleft()
            try:
                if not isinstance(item, Command):
                    if isinstance(item, LineTooLong):
                        raise item
                    parsed = parse_line(sanitize(decode(item)))
                    if parsed is None:
                        continue
                    item = parsed
                if type(item) in ROUTED:
                    heavy = type(item) in HEAVY
                    if heavy and self._heavy > self.answered:  # the last one's cost not known
                        pending.appendleft(item)
                        self._pause(None, out)
                        return
                    if not bucket.take(now):
                        pending.appendleft(item)  # parsed once; waits for its token
                        self._pause(now + bucket.wait(), out)
                        return
                    if self.held and self.held[-1][0] >= ticket:  # a reply waits in between
                        out.append(CUT)
                        ticket += 1
                    out.append(Route(item))
                    self.ticket = ticket
                    if heavy:
                        self._heavy = ticket
                    if type(item) in AWAITED:
                        self._awaiting = word_of(item)  # its END comes with its Done
                    elif self.cap_end and type(item) is not Say:
                        self._reply(replies.format_end(word_of(item)), out)
                else:
                    getattr(self, LOCAL_HANDLERS[type(item)])(item, out)
                    if self.cap_end and not self.quitting:
                        self._reply(replies.format_end(word_of(item)), out)
            except ClientError as e:
                self._reply(e.line(self.cap_codes), out)
                if self.cap_end and e.word:
                    self._reply(replies.format_end(e.word), out)
            budget -= 1
            if budget <= 0 and pending:
                self._pause(now, out)  # the next turn
                return
        if self.paused and not self.quitting and not self.eof:
            self.paused = False
            out.append(RESUME)
            self.seen = now  # the time spent paused was ours, not the client's
            if self.line_since:
                self.line_since = now
        if self.eof and not self.quitting:
            self.quitting = "end of input"
            self._emit(Close(self.quitting), out)

    def _pause(self, until: float | None, out: list[Action]) -> None:
        """Stop reading until ``until`` (a token, the next turn), or until an answer (None)."""
        self._resume_at = until
        if not self.paused:
            self.paused = True
            if not self.eof:
                out.append(PAUSE)

    def _rearm(self) -> None:
        wake = self._resume_at
        if not self.newline_seen and self.limits.piece_idle and self.lines.partial \
                and not self.eof and not self.quitting:
            piece = self.seen + self.limits.piece_idle
            wake = piece if wake is None else min(wake, piece)
        self.wake_at = wake

    # local commands (wire.commands.TABLE), named after the command ---------------------------

    def on_ping(self, cmd: Ping, out: list[Action]) -> None:
        self._reply(replies.format_pong(cmd.token), out)

    def on_help(self, cmd: Help, out: list[Action]) -> None:
        self._reply("\n".join(help_lines()), out)

    def on_cap(self, cmd: Cap, out: list[Action]) -> None:
        names = cmd.name.split()
        for name in names:
            if name not in CAPABILITIES:
                raise ClientError(f"unknown capability {name} (known: {', '.join(CAPABILITIES)})",
                                  errors.UNKNOWN_CAPABILITY, "cap")
        for name in names:
            setattr(self, f"cap_{name}", True)
        self._reply(f"OK cap {cmd.name}", out)

    def on_quit(self, cmd: Quit, out: list[Action]) -> None:
        """BYE after the results of what came before, then close; read nothing more."""
        self.quitting = f"quit: {cmd.reason}" if cmd.reason else "quit"
        self.pending.clear()
        self._resume_at = None
        if not self.paused:
            self.paused = True
            out.append(PAUSE)
        self._reply("BYE", out)
        if self.cap_end:
            self._reply(replies.format_end("quit"), out)
        self._emit(Close(self.quitting), out)

    def _leave(self, out: list[Action], text: str, code: str, why: str) -> None:
        """The server ends it (idle, slowloris): the line and the close go out at once."""
        self.quitting = why
        self.pending.clear()
        self._resume_at = None
        self.closed = True
        out.append(Write(replies.format_error(text, code if self.cap_codes else None)))
        out.append(Close(why))

    # ---- output ------------------------------------------------------------------------------

    def _reply(self, text: str, out: list[Action]) -> None:
        self._emit(Write(text), out)

    def _emit(self, action: Action, out: list[Action]) -> None:
        """Now, or behind the commands routed before it that the router has not answered."""
        if self.held or self.ticket > self.answered:
            self.held.append((self.ticket, action))
        else:
            out.append(action)
            if type(action) is Close:
                self.closed = True
