"""Pure tier: acceptor.limits. The bucket is driven with explicit ``now`` values: no sleeping."""

from __future__ import annotations

import dataclasses

import pytest

from pychat.acceptor.limits import Limits, TokenBucket
from pychat.wire.framing import DEFAULT_MAX_LINE


def test_burst_then_nothing_at_the_same_instant():
    b = TokenBucket(rate=10.0, burst=5, now=100.0)
    assert [b.take(100.0) for _ in range(5)] == [True] * 5
    assert b.take(100.0) is False
    assert b.take(100.0) is False


def test_after_the_burst_tokens_come_at_the_rate():
    b = TokenBucket(rate=10.0, burst=3, now=0.0)
    assert all(b.take(0.0) for _ in range(3))
    assert b.take(0.05) is False          # half a token
    assert b.wait() == pytest.approx(0.05)
    assert b.take(0.1) is True            # one token after 1/rate seconds
    assert b.take(0.1) is False
    # over one second at 10/s: exactly 10 more lines
    granted = sum(b.take(0.1 + i / 100) for i in range(1, 101))
    assert granted == 10


def test_refill_is_capped_at_the_burst():
    b = TokenBucket(rate=100.0, burst=4, now=0.0)
    assert all(b.take(0.0) for _ in range(4))
    # an hour idle refills to the burst, not to 360000 tokens
    assert [b.take(3600.0) for _ in range(6)] == [True] * 4 + [False] * 2


def test_wait_is_zero_with_a_token_and_positive_without():
    b = TokenBucket(rate=2.0, burst=1, now=0.0)
    assert b.wait() == 0.0
    assert b.take(0.0) is True
    assert b.wait() == pytest.approx(0.5)
    assert b.take(0.25) is False
    assert b.wait() == pytest.approx(0.25)
    assert b.take(0.5) is True


def test_a_steady_flooder_gets_burst_plus_rate_times_elapsed():
    rate, burst = 50.0, 100
    b = TokenBucket(rate, burst, now=0.0)
    # 10,000 lines offered over 10 seconds, one every millisecond
    granted = sum(b.take(i / 1000) for i in range(10_000))
    assert granted == pytest.approx(burst + rate * 9.999, abs=1)


def test_defaults_are_named_and_safe():
    limits = Limits()
    limits.check()
    assert limits.max_line == DEFAULT_MAX_LINE == 4096
    assert limits.send_queue > 0 and limits.flood_burst > 0 and limits.flood_rate > 0
    assert limits.max_connections > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_line = 1


@pytest.mark.parametrize("field", ["max_line", "send_queue", "flood_burst", "flood_rate",
                                   "max_connections"])
@pytest.mark.parametrize("value", [0, -1, -0.5])
def test_check_rejects_non_positive_values(field, value):
    with pytest.raises(ValueError, match=field):
        Limits(**{field: value}).check()


@pytest.mark.parametrize("field", ["max_line", "send_queue", "flood_burst", "max_connections"])
def test_check_accepts_one(field):
    Limits(**{field: 1}).check()


def test_check_accepts_a_fractional_rate():
    Limits(flood_rate=0.5).check()
