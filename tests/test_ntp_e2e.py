"""The router's NTP clock over real processes, against NTP servers on loopback only.

- a real NTP server: chrony (``chronyd -x``: it serves time and leaves the system clock alone),
  started by the test on a free UDP port with its own conf, pidfile and driftfile in tmp_path,
  and stopped by its pid;
- a server that is down: a loopback port nobody listens on;
- a known offset: ``OffsetNtp``, a stand-in written here (not a real NTP server) that answers
  in ntplib's packet format with its time = real time + a fixed offset, so the correction can be
  checked against a known value; two of them agree, and one set 31 days ahead is the server that
  lies (the answer that once emptied a history file). Its offset can be changed while it runs:
  a jump after agreement.

Nothing here sends a packet to anything but 127.0.0.1.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
from datetime import datetime, timezone

import ntplib
import pytest

from support.procs import Proc, start_serve

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

TAG_RE = re.compile(r"@time=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (.*)\Z")
OFFSET = 2.5  # seconds, what the stand-in adds to the real time


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seen(p: Proc, pattern: str, timeout: float = 20.0) -> re.Match:
    """A line of p's output matching pattern: already printed, or the next one to come."""
    rx = re.compile(pattern)
    for line in list(p.output):
        m = rx.search(line)
        if m:
            return m
    return p.wait_for(pattern, timeout)


def stamp_skew(c, text: str) -> float:
    """Send text, read its tagged echo: the stamp minus the local time (seconds)."""
    before = time.time()
    c.send(text)
    line = c.expect(lambda ln: ln.endswith(f"{c.uid}: {text}"))
    after = time.time()
    stamp = datetime.strptime(TAG_RE.match(line).group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
    t = stamp.replace(tzinfo=timezone.utc).timestamp()
    return t - (before + after) / 2


def client(connect, port: int):
    c = connect(port)
    c.handshake()
    c.send("/cap time")
    c.expect("OK cap time")
    return c


class OffsetNtp:
    """Stand-in NTP server on 127.0.0.1 (not chrony): answers every request with server time =
    real time + ``offset``, using ntplib's packet format. A thread owns its socket."""

    def __init__(self, offset: float, port: int = 0):
        self.offset = offset
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            request = ntplib.NTPPacket()
            request.from_data(data)
            reply = ntplib.NTPPacket(version=3, mode=4)
            reply.stratum = 2
            reply.ref_id = 0x7F000001
            reply.orig_timestamp = request.tx_timestamp  # ntplib computes the offset with it
            now = ntplib.system_to_ntp_time(time.time() + self.offset)
            reply.ref_timestamp = reply.recv_timestamp = now
            reply.tx_timestamp = ntplib.system_to_ntp_time(time.time() + self.offset)
            self.sock.sendto(reply.to_data(), addr)
            self.answered += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def offset_ntp():
    made: list[OffsetNtp] = []

    def make(offset: float = OFFSET, port: int = 0) -> OffsetNtp:
        s = OffsetNtp(offset, port)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_the_stand_in_answers_ntplib_with_its_offset(offset_ntp):
    s = offset_ntp(OFFSET)
    r = ntplib.NTPClient().request("127.0.0.1", version=3, port=s.port, timeout=2)
    assert abs(r.offset - OFFSET) < 0.05


def test_stamps_are_corrected_by_the_offset_the_server_reports(procs, connect, offset_ntp):
    s = offset_ntp(OFFSET)
    p, port = start_serve("--ntp", f"127.0.0.1:{s.port}", "--history", "memory")
    procs.append(p)
    m = seen(p, rf"clock offset ([+-]\d+\.\d) ms from 127\.0\.0\.1:{s.port}")
    assert abs(float(m.group(1)) / 1000 - OFFSET) < 0.05
    c = client(connect, port)
    skew = stamp_skew(c, "what time is it")
    assert abs(skew - OFFSET) < 0.25, skew  # the stamp is local time + about 2.5 s


def test_ntp_down_uses_the_local_clock_says_so_once_and_a_later_answer_corrects(
        procs, connect, offset_ntp):
    port_nobody = free_udp_port()
    p, port = start_serve("--ntp", f"127.0.0.1:{port_nobody}", "--ntp-interval", "0.2",
                          "--ntp-timeout", "0.2", "--history", "memory", "--log-level", "debug")
    procs.append(p)
    seen(p, r"using local clock: no NTP server answered")
    p.wait_for(r"clock: NTP round 3: no answer")  # two more silent rounds
    said = [ln for ln in p.output if "using local clock" in ln]
    assert len(said) == 1, said
    c = client(connect, port)
    assert abs(stamp_skew(c, "local time")) < 0.25
    # the server comes up: the next round corrects the clock
    offset_ntp(OFFSET, port_nobody)
    p.wait_for(rf"INFO clock offset \+2\d{{3}}\.\d ms from 127\.0\.0\.1:{port_nobody}")
    assert abs(stamp_skew(c, "corrected time") - OFFSET) < 0.25


@pytest.fixture
def chrony(procs, tmp_path):
    """chronyd on a free loopback UDP port, serving time from the local clock (stratum 10),
    leaving the system clock alone (-x); yields its port."""
    chronyd = shutil.which("chronyd") or (
        "/usr/sbin/chronyd" if os.path.exists("/usr/sbin/chronyd") else None)
    if chronyd is None:
        pytest.skip("chronyd is not installed (Debian package chrony; .ci/run installs it)")
    port = free_udp_port()
    conf = tmp_path / "chrony.conf"
    conf.write_text(f"port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 10\n"
                    f"cmdport 0\npidfile {tmp_path / 'chronyd.pid'}\n"
                    f"driftfile {tmp_path / 'chrony.drift'}\n")
    p = Proc([chronyd, "-x", "-d", "-u", getpass.getuser(), "-f", str(conf)], name="chronyd")
    procs.append(p)
    client = ntplib.NTPClient()
    deadline = time.monotonic() + 15
    while True:  # ready when it answers (each try waits up to 0.2 s for the answer)
        try:
            client.request("127.0.0.1", version=3, port=port, timeout=0.2)
            break
        except (ntplib.NTPException, OSError):
            if not p.alive() or time.monotonic() > deadline:
                pytest.fail("chronyd did not answer:\n" + "\n".join(p.output))
    return port


def test_a_real_ntp_server_on_loopback_corrects_nothing_it_need_not(procs, connect, chrony):
    p, port = start_serve("--ntp", f"127.0.0.1:{chrony}", "--history", "memory")
    procs.append(p)
    m = seen(p, rf"clock offset ([+-]\d+\.\d) ms from 127\.0\.0\.1:{chrony}")
    assert abs(float(m.group(1))) < 50  # chrony serves this host's own clock
    assert not [ln for ln in p.output if "using local clock" in ln]
    c = client(connect, port)
    assert abs(stamp_skew(c, "chrony time")) < 0.25


def test_without_ntp_the_router_says_it_uses_the_host_clock(procs, connect):
    p, port = start_serve("--history", "memory")
    procs.append(p)
    seen(p, r"clock: the host clock \(no --ntp\)")
    assert not [ln for ln in p.output if "NTP" in ln and "clock: the host clock" not in ln]
    c = client(connect, port)
    assert abs(stamp_skew(c, "host time")) < 0.25


# ---- time that lies: refused, agreed, slewed; history keeps its rows ------------------------

DAY = 86400.0
LIE = 31 * DAY  # the answer that once emptied a history file


def test_an_answer_31_days_ahead_is_refused_by_the_router(procs, connect, offset_ntp):
    liar = offset_ntp(LIE)
    p, port = start_serve("--ntp", f"127.0.0.1:{liar.port}", "--ntp-interval", "0.3",
                          "--history", "memory")
    procs.append(p)
    seen(p, rf"clock: refused: 127\.0\.0\.1:{liar.port} answered \+2678400\.\d{{3}} s, more "
            rf"than 86400 s from the host clock")
    seen(p, r"using local clock: no NTP answer could be trusted")
    p.wait_for(r"clock: refused: ")  # and again the next round
    c = client(connect, port)
    assert abs(stamp_skew(c, "still the host's time")) < 0.25
    assert not [ln for ln in p.output if re.search(r"clock offset", ln)]


def test_two_servers_that_agree_are_applied_and_a_later_jump_is_confirmed_then_slewed(
        procs, connect, offset_ntp):
    a, b = offset_ntp(OFFSET), offset_ntp(OFFSET + 0.01)
    p, port = start_serve("--ntp", f"127.0.0.1:{a.port}, 127.0.0.1:{b.port}",
                          "--ntp-interval", "0.3", "--history", "memory")
    procs.append(p)
    seen(p, r"clock offset \+25\d\d\.\d ms from 127\.0\.0\.1:")  # the first: applied at once
    c = client(connect, port)
    assert abs(stamp_skew(c, "agreed") - OFFSET) < 0.25
    a.offset = b.offset = OFFSET + 10  # both now say 10 s later: a jump
    p.wait_for(r"clock: refused: the answers agree on \+12\.5\d\d s \(127\.0\.0\.1:\d+ "
               r"nearest\), a jump of \+99\d\d\.\d ms from \+25\d\d\.\d ms: refused until 3 "
               r"rounds in a row say so \(1 so far\)")
    p.wait_for(r"\(2 so far\)")
    p.wait_for(r"clock: the jump to \+12\.\d{3} s from .* was confirmed by 3 rounds; slewing "
               r"to it at 0\.5 ms/s")
    # slewed, not stepped: 10 s at 0.5 ms/s takes 20,000 s; the stamps moved by milliseconds
    assert abs(stamp_skew(c, "slewing") - OFFSET) < 0.25


def test_a_lying_server_empties_no_history_file(tmp_path, offset_ntp):
    """Real parts in this process: the router's NtpClock asks a stand-in over UDP on loopback
    (ntplib), and a SqliteHistory stamped and purged by that clock runs its writer with a short
    purge interval. The answer of +31 days is refused; and with the bound lifted by the
    operator the clock takes it, yet the purge deletes nothing: the host clock disagrees."""
    from pychat.router.clock import NtpClock, NtpServer
    from pychat.router.sqlite_history import FILENAME, SqliteHistory
    from pychat.wire.replies import format_time

    liar = offset_ntp(LIE)
    data = str(tmp_path / "data")
    for max_offset in (DAY, 0.0):  # the default bound, then none
        clock = NtpClock([NtpServer("127.0.0.1", liar.port)], timeout=2.0,
                         max_offset=max_offset)
        h = SqliteHistory(data, max_age=30 * DAY, clock=clock.now, purge_every=0.02)
        h.open()
        try:
            if max_offset:
                for i in range(5):
                    h.append("#a", format_time(time.time() - DAY + i), f"yesterday {i}")
            accepted = clock.poll()
            assert accepted == (not max_offset)
            assert abs(clock.offset - (0 if max_offset else LIE)) < 0.1
            runs = h.retention_runs
            assert h.wait_retention(runs + 5, 10)  # five purges with that clock
            assert [ln for _, ln in h.recent("#a", 20)] == [f"yesterday {i}" for i in range(5)]
        finally:
            h.close()
        with sqlite3.connect(os.path.join(data, FILENAME)) as db:
            assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 5
