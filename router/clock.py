"""Where the router's timestamps come from: one small interface.

``Clock.now()`` returns Unix seconds (float). ``LocalClock`` reads the host clock. ``NtpClock``
reads the host clock plus an offset measured against NTP servers.

``NtpClock`` invariants:
- the network is only ever touched by its own daemon thread, never by the thread that calls
  ``now()`` (the router's loop): ``now()`` is one attribute read and one addition
- the offset and the server it came from are one tuple, replaced whole, so ``now()`` and
  ``status()`` never see an offset with the wrong server (an attribute store is atomic)
- until a server answers, the offset is 0 (the local clock) and the log says so once; after an
  answer the last measured offset stays in use while servers do not answer (a host clock drifts
  by milliseconds a day, far less than a missing correction would cost)
- the servers are asked in the order given; the first good answer wins the round
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


class NtpClock:
    """The host clock corrected by the offset measured against ``servers``.

    ``start()`` launches the polling thread (first round at once, then every ``interval``
    seconds); ``stop()`` ends it. ``query`` is the network call, replaceable in tests."""

    def __init__(self, servers: list[NtpServer], interval: float = 1024.0,
                 timeout: float = 2.0,
                 query: Callable[[NtpServer, float], float] = ntplib_query):
        if not servers:
            raise ValueError("NtpClock needs at least one server")
        self.servers = list(servers)
        self.interval = interval
        self.timeout = timeout
        self._query = query
        self._fix: tuple[float, NtpServer | None] = (0.0, None)  # (offset, server), whole
        self.last_answer: float | None = None  # time.time() of the last good answer
        self.rounds = 0
        self._said_local = False
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def now(self) -> float:
        return time.time() + self._fix[0]

    @property
    def offset(self) -> float:
        return self._fix[0]

    def status(self) -> dict:
        """For operators (stats): where the time comes from and by how much it is corrected."""
        offset, server = self._fix
        return {"source": "ntp" if server else "local", "offset_ms": round(offset * 1000, 3),
                "server": str(server) if server else None, "last_answer": self.last_answer,
                "servers": [str(s) for s in self.servers]}

    def start(self) -> None:
        log.info("clock: asking NTP %s every %gs", ", ".join(map(str, self.servers)),
                 self.interval)
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

    def poll(self) -> bool:
        """One round: ask the servers in order until one answers. True if one did."""
        self.rounds += 1
        errors = []
        for server in self.servers:
            if self._stop.is_set():
                return False
            try:
                offset = self._query(server, self.timeout)
            except Exception as e:  # OSError, NTPException, socket.gaierror: no answer
                errors.append(f"{server}: {e}")
                continue
            self._answered(offset, server)
            return True
        self._unanswered(errors)
        return False

    def _answered(self, offset: float, server: NtpServer) -> None:
        old, old_server = self._fix
        self._fix = (offset, server)
        self.last_answer = time.time()
        self._failing = False
        level = logging.DEBUG
        if old_server != server or abs(offset - old) >= LOG_CHANGE:
            level = logging.INFO
        log.log(level, "clock offset %+.1f ms from %s", offset * 1000, server)

    def _unanswered(self, errors: list[str]) -> None:
        log.debug("clock: NTP round %d: no answer (%s)", self.rounds, "; ".join(errors))
        offset, server = self._fix
        if server is None:
            if not self._said_local:
                self._said_local = True
                log.warning("using local clock: no NTP server answered (%s)", "; ".join(errors))
        elif not self._failing:
            self._failing = True
            log.warning("clock: no NTP server answered; keeping offset %+.1f ms from %s",
                        offset * 1000, server)
