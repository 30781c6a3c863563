"""Pure tier: router.clock (parsing --ntp, the NTP-corrected clock) with a fake query.

``NtpClock.poll()`` is one round, run here in the test's thread with a fake ``query`` (no
network) and a fake monotonic clock (the slew's time base), so that agreement, refusals and
slewing are checked without waiting; the real ntplib against loopback servers is in
test_ntp_e2e.py.
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
    """``answers[server]``: an offset, a list of offsets (one per sample, the last repeated),
    or an exception to raise (that server is down)."""

    def __init__(self, **answers):
        self.answers = answers
        self.asked: list[str] = []
        self._given: dict[str, int] = {}

    def __call__(self, server: NtpServer, timeout: float) -> float:
        self.asked.append(server.host)
        answer = self.answers.get(server.host, OSError("timed out"))
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, list):
            i = self._given.get(server.host, 0)
            self._given[server.host] = i + 1
            return answer[min(i, len(answer) - 1)]
        return answer


class FakeMono:
    def __init__(self, t: float = 5000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def servers(*hosts):
    return [NtpServer(h) for h in hosts]


def make(hosts, fake, **kw):
    kw.setdefault("monotonic", FakeMono())
    return NtpClock(servers(*hosts), query=fake, **kw)


def refusals(caplog):
    return [m for m in caplog.messages if m.startswith("clock: refused: ")]


def test_before_any_answer_it_is_the_local_clock():
    clock = make("a", FakeNtp())
    before = time.time()
    assert before <= clock.now() <= time.time()
    assert clock.status()["source"] == "local"


def test_an_agreed_offset_corrects_now_at_once(caplog):
    caplog.set_level(logging.DEBUG, "pychat.clock")
    fake = FakeNtp(a=[2.5, 2.52, 2.49])
    clock = make("a", fake)
    assert clock.poll()
    assert fake.asked == ["a", "a", "a"]  # three samples of the one server
    before = time.time()
    t = clock.now()
    assert before + 2.5 <= t <= time.time() + 2.5  # the median, applied at once (the first)
    st = clock.status()
    assert st["source"] == "ntp" and st["offset_ms"] == 2500.0 and st["server"] == "a"
    assert st["target_ms"] == 2500.0 and not st["slewing"] and st["servers"] == ["a"]
    assert st["last_answer"] == clock.last_answer and st["rejected"] is None
    assert "clock offset +2500.0 ms from a" in caplog.messages


def test_one_sample_of_one_server_is_not_trusted(caplog):
    caplog.set_level(logging.INFO, "pychat.clock")
    clock = make("a", FakeNtp(a=2.5), samples=1)
    assert not clock.poll()
    assert clock.offset == 0.0 and clock.status()["source"] == "local"
    assert refusals(caplog) == ["clock: refused: a answered +2500.0 ms once: one sample of one "
                                "server is not enough to trust"]


def test_an_answer_31_days_away_is_refused_and_said(caplog):
    caplog.set_level(logging.INFO, "pychat.clock")
    clock = make("a", FakeNtp(a=31 * 86400.0))
    for _ in range(2):
        assert not clock.poll()
    assert clock.offset == 0.0 and clock.status()["source"] == "local"
    want = "clock: refused: a answered +2678400.000 s, more than 86400 s from the host clock"
    assert refusals(caplog) == [want, want]
    assert clock.status()["rejected"] == want[len("clock: refused: "):]
    assert clock.status()["rejections"] == 2
    said = [m for m in caplog.messages if m.startswith("using local clock")]
    assert len(said) == 1 and "no NTP answer could be trusted" in said[0]


def test_the_operator_may_lift_the_bound():
    clock = make("a", FakeNtp(a=31 * 86400.0), max_offset=0)
    assert clock.poll()
    assert clock.offset == 31 * 86400.0


def test_a_server_whose_samples_disagree_is_refused(caplog):
    caplog.set_level(logging.INFO, "pychat.clock")
    clock = make("a", FakeNtp(a=[0.1, 0.9, 0.5]))
    assert not clock.poll()
    assert refusals(caplog) == ["clock: refused: a's samples disagree (+100.0 ms, +900.0 ms, "
                                "+500.0 ms)"]


def test_a_false_ticker_among_three_servers_is_outvoted(caplog):
    caplog.set_level(logging.INFO, "pychat.clock")
    fake = FakeNtp(a=0.020, b=7.0, c=0.030)
    clock = make(("a", "b", "c"), fake, samples=1)
    assert clock.poll()
    assert sorted(set(fake.asked)) == ["a", "b", "c"]  # every server is asked
    assert clock.offset == pytest.approx(0.025)
    assert refusals(caplog) == ["clock: refused: b answered +7000.0 ms, away from the others "
                                "(a false ticker)"]


def test_two_servers_that_disagree_give_no_offset(caplog):
    caplog.set_level(logging.INFO, "pychat.clock")
    clock = make(("a", "b"), FakeNtp(a=0.0, b=3.0))
    assert not clock.poll()
    assert clock.offset == 0.0
    assert refusals(caplog) == ["clock: refused: servers disagree (a +0.0 ms, b +3000.0 ms)"]


def test_two_servers_agreeing_once_each_are_enough():
    clock = make(("a", "b"), FakeNtp(a=0.100, b=0.110), samples=1)
    assert clock.poll()
    assert clock.offset == pytest.approx(0.105)


def test_a_down_server_is_asked_once_per_round_and_the_others_decide():
    fake = FakeNtp(b=-0.25)
    clock = make(("a", "b"), fake)
    assert clock.poll()
    assert fake.asked == ["a", "b", "b", "b"]
    assert clock.offset == -0.25 and clock.status()["server"] == "b"


def test_after_the_first_offset_changes_are_slewed_at_half_a_millisecond_a_second(caplog):
    caplog.set_level(logging.INFO, "pychat.clock")
    mono = FakeMono()
    fake = FakeNtp(a=0.010)
    clock = make("a", fake, monotonic=mono)
    assert clock.poll() and clock.offset == 0.010
    fake.answers["a"] = 0.110  # 100 ms later than we are
    assert clock.poll()
    assert clock.offset == 0.010 and clock.target == 0.110  # nothing moved yet
    assert clock.status()["slewing"]
    mono.t += 100  # 100 s at 0.5 ms/s: 50 ms done
    assert clock.offset == pytest.approx(0.060)
    before = time.time()
    t = clock.now()
    assert before + 0.060 <= t <= time.time() + 0.060
    mono.t += 100
    assert clock.offset == pytest.approx(0.110) and not clock.status()["slewing"]
    fake.answers["a"] = 0.090  # and back down, from where it is
    assert clock.poll()
    mono.t += 20
    assert clock.offset == pytest.approx(0.100)
    assert "clock offset +110.0 ms from a (slewing from +10.0 ms)" in caplog.messages


def test_a_jump_after_agreement_is_refused_until_rounds_confirm_it_then_slewed(caplog):
    caplog.set_level(logging.INFO, "pychat.clock")
    mono = FakeMono()
    fake = FakeNtp(a=0.010, b=0.012)
    clock = make(("a", "b"), fake, monotonic=mono, samples=1, confirm_rounds=3)
    assert clock.poll()
    assert clock.moved_at == mono.t and clock.status()["steady_s"] == 0.0
    mono.t += 10
    fake.answers.update(a=3600.0, b=3600.0)  # both servers now say an hour later
    assert not clock.poll()
    assert not clock.poll()
    assert clock.target == pytest.approx(0.011) and clock.status()["steady_s"] == 10.0
    assert len(refusals(caplog)) == 2
    assert "a jump of +3599.989 s" in refusals(caplog)[0]
    fake.answers.update(a=0.011, b=0.011)  # it was a blip: the count starts again
    assert clock.poll()
    fake.answers.update(a=3600.0, b=3600.0)
    assert not clock.poll() and not clock.poll()
    assert clock.poll()  # the third round in a row: accepted, slewed to
    assert clock.target == 3600.0 and clock.offset == pytest.approx(0.011)
    assert clock.moved_at == mono.t  # a confirmed jump is a move
    mono.t += 1000
    assert clock.offset == pytest.approx(0.511)  # 0.5 s of the hour after 1000 s
    assert any("was confirmed by 3 rounds; slewing to it at 0.5 ms/s" in m
               for m in caplog.messages)


def test_a_jump_is_measured_from_the_target_not_from_a_slew_under_way():
    mono = FakeMono()
    fake = FakeNtp(a=0.0)
    clock = make("a", fake, monotonic=mono, step_limit=1.0)
    clock.poll()
    fake.answers["a"] = 0.8
    assert clock.poll()  # under the step limit: slewing (1600 s to get there)
    fake.answers["a"] = 0.9
    assert clock.poll()  # 0.1 s from the target: no jump, though 0.9 s from the offset now
    assert clock.target == 0.9


def test_no_answer_says_local_clock_once_and_a_later_answer_corrects(caplog):
    caplog.set_level(logging.INFO, "pychat.clock")
    fake = FakeNtp()
    clock = make(("a", "b"), fake)
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
    clock = make("a", fake)
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
    clock = make("a", fake)
    clock.poll()
    fake.answers["a"] = 0.011  # 1 ms: below the threshold
    clock.poll()
    fake.answers["a"] = 0.100
    clock.poll()
    assert [m for m in caplog.messages if m.startswith("clock offset")] == [
        "clock offset +10.0 ms from a", "clock offset +100.0 ms from a (slewing from +10.0 ms)"]
    assert clock.target == 0.100


def test_the_thread_polls_at_once_and_then_every_interval():
    answered = threading.Event()
    calls = []

    def query(server, timeout):
        calls.append(time.monotonic())
        if len(calls) >= 3 * 3:  # three rounds of three samples
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
        if len(calls) >= 4:
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
