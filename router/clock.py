"""Where the router's timestamps come from: one small interface.

``Clock.now()`` returns Unix seconds (float). ``LocalClock`` reads the host clock. ``NtpClock``
reads the host clock plus an offset measured against NTP servers, and trusts no single answer.

``NtpClock`` invariants:
- the network is only ever touched by its own daemon thread, never by the thread that calls
  ``now()`` (the router's loop): ``now()`` reads one immutable ``_Fix`` (replaced whole, an
  atomic attribute store) and computes the offset from it: a few additions
- agreement: each round asks every server ``samples`` times. A server's answer is the median of
  its samples, refused when they spread by more than ``agree``. An answer further than
  ``max_offset`` from the host clock is refused (a server that lies, or a host clock so wrong
  that the operator must look; ``max_offset=0`` lifts the bound). Of the answers left, a strict
  majority (at least two) must lie within ``agree`` of each other; the others are refused as
  false tickers. A round with one answering server is enough only with two or more samples.
  Every refusal is logged at warning with its reason and kept in ``status()["rejected"]``
- the first agreed offset is applied at once (a step, before or soon after the first message)
- after that the offset only slews: a new offset is approached at ``slew_rate`` seconds per
  second (0.5 ms/s, ntpd's most), so stamps never jump. A new offset more than ``step_limit``
  from the current target is a jump: refused until ``confirm_rounds`` rounds in a row agree on
  it (within ``agree``), then slewed to like any other. A large confirmed correction therefore
  takes long (2000 s per second of correction); a restart applies it at once
- until an offset is agreed, the offset is 0 (the local clock) and the log says so once; after
  one, the target stays while servers do not answer or are refused
- ``moved_at`` is the ``monotonic()`` of the first offset or of the last confirmed jump (None
  before the first), and ``status()["steady_s"]`` the seconds since, for whoever must not act
  on a clock that just moved (the history's own guard compares the clock with the monotonic
  clock instead: it is handed ``now`` only)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("pychat.clock")

NTP_PORT = 123
# a new offset is logged at info level when it moved this much (or the server changed)
LOG_CHANGE = 0.005  # seconds

# Trust (see the module docstring). MAX_OFFSET should become an option:
# --ntp-max-offset / PYCHAT_NTP_MAX_OFFSET, seconds, default 86400, 0 = no bound.
SAMPLES = 3  # answers asked of each server per round
AGREE = 0.25  # seconds: samples of a server, and servers, agree within this
MAX_OFFSET = 86400.0  # seconds from the host clock past which an answer is refused
STEP_LIMIT = 1.0  # seconds: a change of target larger than this is a jump, to be confirmed ...
CONFIRM_ROUNDS = 3  # ... by this many rounds in a row (the one that saw it first included)
SLEW_RATE = 0.0005  # seconds of correction applied per second (ntpd's 500 ppm)
SLEWING_SHOWN = 0.001  # seconds still to slew past which status() says "slewing"


class Clock(Protocol):
    def now(self) -> float: ...


class LocalClock:
    def now(self) -> float:
        return time.time()

    def status(self) -> dict:
        return {"source": "local", "offset_ms": 0.0, "server": None}

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass(frozen=True)
class NtpServer:
    host: str
    port: int = NTP_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == NTP_PORT else f"{host}:{self.port}"


def parse_servers(text: str) -> list[NtpServer]:
    """``"a.example, 127.0.0.1:11123, [::1]:123, ::1"`` -> servers; "" -> none (NTP off).

    Raises ValueError with what is wrong."""
    servers = []
    for item in text.replace(",", " ").split():
        host, port = item, NTP_PORT
        if item.startswith("["):  # [v6] or [v6]:port
            end = item.find("]")
            if end < 0:
                raise ValueError(f"unclosed [ in {item!r}")
            host, rest = item[1:end], item[end + 1:]
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"not HOST, HOST:PORT or [V6]:PORT: {item!r}")
                port = _port(rest[1:], item)
        elif item.count(":") == 1:
            host, p = item.split(":")
            port = _port(p, item)
        if not host:
            raise ValueError(f"no host in {item!r}")
        servers.append(NtpServer(host, port))
    return servers


def _port(text: str, item: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in {item!r}")
    return int(text)


def median(values: list[float]) -> float:
    """statistics.median, as it computes it, of a list that is not empty (statistics imports
    fractions and decimal: 1 MB for two calls, issue 18)."""
    data = sorted(values)
    n = len(data)
    if n % 2:
        return data[n // 2]
    return (data[n // 2 - 1] + data[n // 2]) / 2


def ntplib_query(server: NtpServer, timeout: float) -> float:
    """Ask one server; return the offset (server time - local time) in seconds.

    Raises OSError or ntplib.NTPException when it does not answer or answers nonsense."""
    import ntplib
    stats = ntplib.NTPClient().request(server.host, version=3, port=server.port,
                                       timeout=timeout)
    if not 1 <= stats.stratum <= 15 or stats.leap == 3:  # kiss-o'-death, or unsynchronized
        raise ntplib.NTPException(f"unsynchronized answer (stratum {stats.stratum}, "
                                  f"leap {stats.leap})")
    return stats.offset


@dataclass(frozen=True)
class _Fix:
    """The offset in force: ``start`` at monotonic time ``since``, moving towards ``target``
    at ``rate`` seconds per second (``start == target``: not moving)."""
    since: float
    start: float
    target: float
    rate: float
    server: NtpServer | None

    def offset(self, mono: float) -> float:
        gap = self.target - self.start
        done = (mono - self.since) * self.rate
        if done >= abs(gap):
            return self.target
        return self.start + done if gap > 0 else self.start - done


def _s(seconds: float) -> str:
    """An offset for the log: milliseconds while small, seconds past 10 s."""
    return f"{seconds * 1000:+.1f} ms" if abs(seconds) < 10 else f"{seconds:+.3f} s"


class NtpClock:
    """The host clock corrected by the offset the ``servers`` agree on.

    ``start()`` launches the polling thread (first round at once, then every ``interval``
    seconds); ``stop()`` ends it. ``query`` is the network call and ``monotonic`` the slew's
    time base, replaceable in tests."""

    def __init__(self, servers: list[NtpServer], interval: float = 1024.0,
                 timeout: float = 2.0,
                 query: Callable[[NtpServer, float], float] = ntplib_query, *,
                 samples: int = SAMPLES, agree: float = AGREE, max_offset: float = MAX_OFFSET,
                 step_limit: float = STEP_LIMIT, confirm_rounds: int = CONFIRM_ROUNDS,
                 slew_rate: float = SLEW_RATE,
                 monotonic: Callable[[], float] = time.monotonic):
        if not servers:
            raise ValueError("NtpClock needs at least one server")
        if samples < 1 or confirm_rounds < 1 or slew_rate <= 0:
            raise ValueError("NtpClock: samples and confirm_rounds must be >= 1, slew_rate > 0")
        self.servers = list(servers)
        self.interval = interval
        self.timeout = timeout
        self._query = query
        self.samples = samples
        self.agree = agree
        self.max_offset = max_offset
        self.step_limit = step_limit
        self.confirm_rounds = confirm_rounds
        self.slew_rate = slew_rate
        self._mono = monotonic
        self._fix = _Fix(0.0, 0.0, 0.0, slew_rate, None)  # replaced whole
        self.last_answer: float | None = None  # time.time() of the last agreed answer
        self.moved_at: float | None = None  # monotonic() of the first offset or last jump
        self.rounds = 0
        self.rejections = 0
        self.rejected: str | None = None  # the last refusal, for status()
        self._suspect: tuple[float, int] | None = None  # a jump being confirmed: (offset, rounds)
        self._said_local = False
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def now(self) -> float:
        fix = self._fix
        if fix.start == fix.target:
            return time.time() + fix.target
        return time.time() + fix.offset(self._mono())

    @property
    def offset(self) -> float:
        """The correction in force now (moving while a slew lasts)."""
        return self._fix.offset(self._mono())

    @property
    def target(self) -> float:
        return self._fix.target

    def status(self) -> dict:
        """For operators (stats): where the time comes from and by how much it is corrected."""
        fix = self._fix
        mono = self._mono()
        offset = fix.offset(mono)
        return {"source": "ntp" if fix.server else "local", "offset_ms": round(offset * 1000, 3),
                "server": str(fix.server) if fix.server else None,
                "last_answer": self.last_answer, "servers": [str(s) for s in self.servers],
                "target_ms": round(fix.target * 1000, 3),
                "slewing": abs(fix.target - offset) > SLEWING_SHOWN,
                "steady_s": None if self.moved_at is None else round(mono - self.moved_at, 1),
                "rejections": self.rejections, "rejected": self.rejected}

    def start(self) -> None:
        log.info("clock: asking NTP %s every %gs (%d samples each; %s)",
                 ", ".join(map(str, self.servers)), self.interval, self.samples,
                 f"refusing offsets over {self.max_offset:g}s" if self.max_offset
                 else "no bound on the offset")
        self._thread = threading.Thread(target=self._run, name="ntp", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # a bug here must not kill the clock thread (or anything else)
                log.exception("clock: NTP round failed")
            self._stop.wait(self.interval)

    # ---- one round ------------------------------------------------------------------------------

    def poll(self) -> bool:
        """One round: ask every server, agree on an offset, apply it. True if one was applied
        (or is being slewed to)."""
        self.rounds += 1
        errors: list[str] = []
        refused: list[str] = []
        answers: list[tuple[float, NtpServer, int]] = []  # (median offset, server, samples)
        for server in self.servers:
            got = self._ask(server, errors)
            if got is None:
                continue
            if self._stop.is_set():
                return False
            mid = median(got)
            if self.max_offset and abs(mid) > self.max_offset:
                refused.append(f"{server} answered {_s(mid)}, more than {self.max_offset:g} s "
                               f"from the host clock")
            elif max(got) - min(got) > self.agree:
                refused.append(f"{server}'s samples disagree ({', '.join(map(_s, got))})")
            else:
                answers.append((mid, server, len(got)))
        agreed = self._agree(answers, refused) if answers else None
        if refused:
            self._refuse(refused)
        if agreed is None:
            self._unanswered(errors, refused)
            return False
        if not self._apply(*agreed):
            return False
        self.last_answer = time.time()
        self._failing = False
        return True

    def _ask(self, server: NtpServer, errors: list[str]) -> list[float] | None:
        """Up to ``samples`` answers of one server; None if it did not answer at all (a
        server that fails once in a round is not asked again in that round)."""
        got: list[float] = []
        for _ in range(self.samples):
            if self._stop.is_set():
                break
            try:
                got.append(self._query(server, self.timeout))
            except Exception as e:  # OSError, NTPException, socket.gaierror: no answer
                if not got:
                    errors.append(f"{server}: {e}")
                break
        return got or None

    def _agree(self, answers: list[tuple[float, NtpServer, int]],
               refused: list[str]) -> tuple[float, NtpServer] | None:
        """The offset a strict majority of the answers agree on, and the server nearest it."""
        if len(answers) == 1:
            offset, server, n = answers[0]
            if n < 2:
                refused.append(f"{server} answered {_s(offset)} once: one sample of one server "
                               f"is not enough to trust")
                return None
            return offset, server
        best: list[tuple[float, NtpServer, int]] = []
        for offset, _, _ in answers:  # the largest group within agree of one of them
            group = [a for a in answers if abs(a[0] - offset) <= self.agree]
            if len(group) > len(best):
                best = group
        if len(best) < 2 or 2 * len(best) <= len(answers):
            refused.append("servers disagree (" + ", ".join(f"{s} {_s(o)}" for o, s, _ in
                                                             answers) + ")")
            return None
        for offset, server, _ in answers:
            if all(a[1] != server for a in best):
                refused.append(f"{server} answered {_s(offset)}, away from the others "
                               f"(a false ticker)")
        offset = median([a[0] for a in best])
        server = min(best, key=lambda a: abs(a[0] - offset))[1]
        return offset, server

    def _apply(self, offset: float, server: NtpServer) -> bool:
        mono = self._mono()
        fix = self._fix
        if fix.server is None:  # the first agreed offset: applied at once
            self._fix = _Fix(mono, offset, offset, self.slew_rate, server)
            self.moved_at = mono
            log.info("clock offset %+.1f ms from %s", offset * 1000, server)
            return True
        change = offset - fix.target
        if abs(change) > self.step_limit:
            seen = 1
            if self._suspect is not None and abs(self._suspect[0] - offset) <= self.agree:
                seen = self._suspect[1] + 1
            self._suspect = (offset, seen)
            if seen < self.confirm_rounds:
                self._refuse([f"the answers agree on {_s(offset)} ({server} nearest), a jump of "
                              f"{_s(change)} from {_s(fix.target)}: refused until "
                              f"{self.confirm_rounds} rounds in a row say so ({seen} so far)"])
                return False
            log.warning("clock: the jump to %s from %s was confirmed by %d rounds; slewing to "
                        "it at %g ms/s (about %.0f s)", _s(offset), server, seen,
                        self.slew_rate * 1000, abs(offset - fix.offset(mono)) / self.slew_rate)
            self.moved_at = mono
        self._suspect = None
        current = fix.offset(mono)
        self._fix = _Fix(mono, current, offset, self.slew_rate, server)
        level = logging.DEBUG
        if fix.server != server or abs(change) >= LOG_CHANGE:
            level = logging.INFO
        log.log(level, "clock offset %+.1f ms from %s (slewing from %+.1f ms)", offset * 1000,
                server, current * 1000)
        return True

    def _refuse(self, reasons: list[str]) -> None:
        self.rejections += len(reasons)
        self.rejected = "; ".join(reasons)
        for reason in reasons:
            log.warning("clock: refused: %s", reason)

    def _unanswered(self, errors: list[str], refused: list[str]) -> None:
        """A round without an agreed offset: nobody answered, or no answer could be trusted."""
        why = "; ".join(errors + refused)
        log.debug("clock: NTP round %d: no answer (%s)", self.rounds, why)
        fix = self._fix
        if fix.server is None:
            if not self._said_local:
                self._said_local = True
                log.warning("using local clock: %s (%s)", "no NTP answer could be trusted"
                            if refused else "no NTP server answered", why)
        elif not self._failing:
            self._failing = True
            log.warning("clock: %s; keeping offset %+.1f ms from %s",
                        "no NTP answer could be trusted" if refused
                        else "no NTP server answered", fix.target * 1000, fix.server)
