"""A crowd of plain TCP clients in one room, for chaos tests and the faults benchmark.

``Crowd(port, n)`` connects ``n`` clients (raw sockets, as ``nc`` would) and reads every line
each one receives in one selector thread. ``run_senders`` makes some of them send numbered
lines (``s<i> <k>``) at a steady rate from one thread; ``check`` then says, for every client and
every sender, which numbers were lost, duplicated or out of order, counting the numbers whose
sender was told ``ERROR: not sent``: a line is either delivered to everyone once, in order, or
refused to its sender, never lost silently.
"""

from __future__ import annotations

import re
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from itertools import pairwise

CHAT = re.compile(r"^(?:@time=\S+ )?\d{6}: s(\d+) (\d+|end)$")
REFUSED = re.compile(r"^ERROR: not sent, .*: s(\d+) (\d+)$")


@dataclass
class Client:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)
    got: dict[int, list[int]] = field(default_factory=dict)  # sender -> numbers, as received
    ends: set[int] = field(default_factory=set)  # senders whose "end" arrived
    refused: list[tuple[int, int]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each chat line
    uid: str = ""  # from its ID line: the router has it in #lobby
    other: list[str] = field(default_factory=list)  # every other line (not chat, not refused)
    closed: bool = False


class Crowd:
    def __init__(self, port: int, n: int, timeout: float = 30.0):
        self.clients: list[Client] = []
        self.sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._stop = False
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            s.setblocking(False)
            c = Client(s)
            self.clients.append(c)
            self.sel.register(s, selectors.EVENT_READ, c)
        self._thread = threading.Thread(target=self._read, name="crowd reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            for key, _ in self.sel.select(0.05):
                c: Client = key.data
                try:
                    data = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    c.closed = True
                    self.sel.unregister(c.sock)
                    continue
                c.buf += data
                *lines, rest = c.buf.split(b"\n")
                c.buf = bytearray(rest)
                now = time.monotonic()
                with self._lock:
                    for raw in lines:
                        line = raw.decode("utf-8", "replace").rstrip("\r")
                        m = CHAT.match(line)
                        if m:
                            sender = int(m.group(1))
                            c.arrivals.append(now)
                            if m.group(2) == "end":
                                c.ends.add(sender)
                            else:
                                c.got.setdefault(sender, []).append(int(m.group(2)))
                            continue
                        m = REFUSED.match(line)
                        if m:
                            c.refused.append((int(m.group(1)), int(m.group(2))))
                        elif line.startswith("ID:") and not c.uid:
                            c.uid = line[3:]
                        else:
                            c.other.append(line)

    def wait(self, pred, timeout: float, what: str) -> None:
        """Poll the received state (under the lock) until ``pred()``; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if pred():
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"crowd: {what} not reached in {timeout}s")
            time.sleep(0.02)  # polling our own reader's state, not synchronising with the server

    def wait_registered(self, timeout: float = 60.0) -> None:
        """Every client has its ID: the router holds them all in #lobby."""
        self.wait(lambda: all(c.uid for c in self.clients), timeout, "every client's ID")

    def send(self, i: int, text: str) -> None:
        s = self.clients[i].sock
        data = (text + "\n").encode()
        while data:
            try:
                data = data[s.send(data):]
            except BlockingIOError:
                time.sleep(0.001)

    def run_senders(self, senders: int, count: int, rate: float,
                    on_line=None) -> threading.Thread:
        """Clients 0..senders-1 each send ``count`` numbered lines, ``rate`` lines/s in all,
        from one background thread; ``on_line(k)`` is called after round k (all senders)."""
        def go() -> None:
            gap = senders / rate
            t = time.monotonic()
            for k in range(count):
                for i in range(senders):
                    self.send(i, f"s{i} {k}")
                if on_line is not None:
                    on_line(k)
                t += gap
                pause = t - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # pacing the load, not synchronising
            for i in range(senders):
                self.send(i, f"s{i} end")
        th = threading.Thread(target=go, name="crowd senders", daemon=True)
        th.start()
        return th

    def all_ended(self, senders: int) -> bool:
        return all(len(c.ends) == senders or c.closed for c in self.clients)

    def check(self, senders: int, count: int) -> dict:
        """Per-client accounting; ``problems`` lists every loss, duplicate or reordering."""
        with self._lock:
            refused = {i: {k for s, k in self.clients[i].refused if s == i}
                       for i in range(senders)}
            problems: list[str] = []
            delivered = 0
            for ci, c in enumerate(self.clients):
                if c.closed:
                    problems.append(f"client {ci} was disconnected")
                    continue
                for i in range(senders):
                    got = c.got.get(i, [])
                    delivered += len(got)
                    want = [k for k in range(count) if k not in refused[i]]
                    if got != want:
                        missing = sorted(set(want) - set(got))
                        dups = len(got) - len(set(got))
                        problems.append(f"client {ci} from s{i}: missing {missing[:10]} "
                                        f"({len(missing)}), duplicates {dups}, "
                                        f"in order {got == sorted(got)}")
                    extra = set(got) & refused[i]
                    if extra:
                        problems.append(f"client {ci} got s{i}'s refused {sorted(extra)[:10]}")
            return {"problems": problems, "delivered": delivered,
                    "refused": sum(len(r) for r in refused.values())}

    def max_gap(self, after: float) -> float:
        """The longest time any client went without a chat line, from ``after`` to its last."""
        with self._lock:
            worst = 0.0
            for c in self.clients:
                times = [t for t in c.arrivals if t >= after]
                worst = max([worst] + [b - a for a, b in pairwise(times)])
            return worst

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        for c in self.clients:
            try:
                c.sock.close()
            except OSError:
                pass
        self.sel.close()
