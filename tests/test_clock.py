"""Pure tier: router.clock (parsing --ntp, the NTP-corrected clock) with a fake query.

``NtpClock.poll()`` is one round, run here in the test's thread with a fake ``query`` (no
network); the real ntplib against loopback servers is in test_ntp_e2e.py.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from pychat.router.clock import LocalClock, NtpClock, NtpServer, parse_servers


@pytest.mark.parametrize("text, want", [
    ("", []),
    ("  ", []),
    ("pool.ntp.org", [NtpServer("pool.ntp.org", 123)]),
    ("127.0.0.1:11123", [NtpServer("127.0.0.1", 11123)]),
    ("a, b:124  c", [NtpServer("a"), NtpServer("b", 124), NtpServer("c")]),
    ("[::1]:11123", [NtpServer("::1", 11123)]),
    ("[::1]", [NtpServer("::1", 123)]),
    ("::1", [NtpServer("::1", 123)]),
])
def test_parse_servers(text, want):
    assert parse_servers(text) == want


@pytest.mark.parametrize("text", ["a:", "a:0", "a:70000", "a:x", "[::1", "[::1]x", ":123",
                                  "[]:123"])
def test_parse_servers_refuses(text):
    with pytest.raises(ValueError):
        parse_servers(text)


def test_server_prints_back_as_it_parses():
    for text in ["a", "b:124", "[::1]:11123", "[::1]"]:
        assert str(parse_servers(text)[0]) == text


class FakeNtp:
    """``answers[server]``: an offset, or an exception to raise (that server is down)."""

    def __init__(self, **answers):
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, server: NtpServer, timeout: float) -> float:
        self.asked.append(server.host)
        answer = self.answers.get(server.host, OSError("timed out"))
        if isinstance(answer, Exception):
            raise answer
        return answer


def servers(*hosts):
    return [NtpServer(h) for h in hosts]


def test_before_any_answer_it_is_the_local_clock():
    clock = NtpClock(servers("a"), query=FakeNtp())
    before = time.time()
    assert before <= clock.now() <= time.time()
    assert clock.status()["source"] == "local"


def test_the_measured_offset_corrects_now(caplog):
    caplog.set_level(logging.DEBUG, "pychat.clock")
    clock = NtpClock(servers("a"), query=FakeNtp(a=2.5))
    assert clock.poll()
    before = time.time()
    t = clock.now()
    assert before + 2.5 <= t <= time.time() + 2.5
    assert clock.status() == {"source": "ntp", "offset_ms": 2500.0, "server": "a",
                              "last_answer": clock.last_answer, "servers": ["a"]}
    assert "clock offset +2500.0 ms from a" in caplog.messages


def test_servers_are_asked_in_order_until_one_answers():
    fake = FakeNtp(b=-0.25, c=9.0)
    clock = NtpClock(servers("a", "b", "c"), query=fake)
    assert clock.poll()
    assert fake.asked == ["a", "b"]
    assert clock.offset == -0.25
    assert clock.status()["server"] == "b"


def test_no_answer_says_local_clock_once_and_a_later_answer_corrects(caplog):
    caplog.set_level(logging.INFO, "pychat.clock")
    fake = FakeNtp()
    clock = NtpClock(servers("a", "b"), query=fake)
    for _ in range(3):
        assert not clock.poll()
    said = [m for m in caplog.messages if m.startswith("using local clock")]
    assert len(said) == 1
    assert "no NTP server answered" in said[0]
    assert clock.offset == 0.0
    fake.answers["b"] = 0.75
    assert clock.poll()
    assert clock.offset == 0.75
    assert "clock offset +750.0 ms from b" in caplog.messages


def test_after_an_answer_a_silence_keeps_the_last_offset(caplog):
    caplog.set_level(logging.INFO, "pychat.clock")
    fake = FakeNtp(a=1.0)
    clock = NtpClock(servers("a"), query=fake)
    clock.poll()
    del fake.answers["a"]
    clock.poll()
    clock.poll()
    assert clock.offset == 1.0 and clock.status()["source"] == "ntp"
    kept = [m for m in caplog.messages if "keeping offset" in m]
    assert kept == ["clock: no NTP server answered; keeping offset +1000.0 ms from a"]
    assert not [m for m in caplog.messages if m.startswith("using local clock")]


def test_small_changes_are_not_logged_at_info(caplog):
    caplog.set_level(logging.INFO, "pychat.clock")
    fake = FakeNtp(a=0.010)
    clock = NtpClock(servers("a"), query=fake)
    clock.poll()
    fake.answers["a"] = 0.011  # 1 ms: below the threshold
    clock.poll()
    fake.answers["a"] = 0.100
    clock.poll()
    assert [m for m in caplog.messages if m.startswith("clock offset")] == [
        "clock offset +10.0 ms from a", "clock offset +100.0 ms from a"]
    assert clock.offset == 0.100


def test_the_thread_polls_at_once_and_then_every_interval():
    answered = threading.Event()
    calls = []

    def query(server, timeout):
        calls.append(time.monotonic())
        if len(calls) >= 3:
            answered.set()
        return 0.5

    clock = NtpClock(servers("a"), interval=0.01, query=query)
    clock.start()
    try:
        assert answered.wait(5)
    finally:
        clock.stop()
    assert clock.offset == 0.5


def test_a_query_that_raises_anything_does_not_kill_the_thread(caplog):
    done = threading.Event()
    calls = []

    def query(server, timeout):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("a bug in the query")
        done.set()
        return 0.25

    clock = NtpClock(servers("a"), interval=0.01, query=query)
    clock.start()
    try:
        assert done.wait(5)
    finally:
        clock.stop()
    assert clock.offset == 0.25


def test_local_clock():
    before = time.time()
    assert before <= LocalClock().now() <= time.time()
    assert LocalClock().status()["source"] == "local"
