"""Pure decisions of the message state machine."""

from __future__ import annotations

import random

import pytest
from ebbtide.lifecycle import (
    Outcome,
    after_failure,
    backoff_seconds,
    parse_queues,
    parse_rate,
    plan_claim,
    rate_wait_ms,
)
from hypothesis import given
from hypothesis import strategies as st


@given(st.integers(0, 60), st.floats(0, 1, exclude_max=True))
def test_backoff_is_bounded_and_jittered(attempt, u):
    delay = backoff_seconds(attempt, base=1.0, cap=600.0, rand=lambda: u)
    ceiling = min(600.0, 2.0**attempt)
    assert ceiling / 2 <= delay <= ceiling


def test_backoff_grows():
    lows = [backoff_seconds(a, rand=lambda: 0.0) for a in range(5)]
    assert lows == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_after_failure():
    assert after_failure(0, 3) is Outcome.RETRY
    assert after_failure(2, 3) is Outcome.RETRY
    assert after_failure(3, 3) is Outcome.DEAD
    assert after_failure(0, 0) is Outcome.DEAD


def test_parse_queues():
    sel = parse_queues("high:3, low:1")
    assert sel.queues == (("high", 3), ("low", 1)) and not sel.strict
    assert parse_queues("a,b", strict=True).strict
    assert parse_queues(None).names == ("default",)
    for bad in ("a:0", "a:x", "a,a", "bad name", ","):
        with pytest.raises(ValueError):
            parse_queues(bad)


def test_strict_plan_lets_the_first_queue_take_all():
    assert plan_claim(parse_queues("a,b,c", strict=True), 10) == [("a", 10), ("b", 0), ("c", 0)]


@given(st.integers(1, 200), st.integers(0, 2**32))
def test_weighted_plan_covers_every_queue_and_n(n, seed):
    rng = random.Random(seed)
    plan = plan_claim(parse_queues("a:3,b:1,c:2"), n, rand=rng.random)
    assert sorted(q for q, _ in plan) == ["a", "b", "c"]
    assert sum(quota for _, quota in plan) == n


def test_weighted_plan_follows_weights():
    rng = random.Random(7)
    totals = {"a": 0, "b": 0}
    for _ in range(2000):
        for q, quota in plan_claim(parse_queues("a:3,b:1"), 1, rand=rng.random):
            totals[q] += quota
    assert 0.7 < totals["a"] / 2000 < 0.8


def test_parse_rate():
    assert parse_rate("100/s") == (100, 1000)
    assert parse_rate("10/m") == (10, 60_000)
    assert parse_rate("5/10s") == (5, 10_000)
    for bad in ("", "0/s", "x/s", "10/d", "10"):
        with pytest.raises(ValueError, match="bad rate"):
            parse_rate(bad)


def test_rate_wait_doubles_with_denials_in_a_row_up_to_one_window():
    assert [rate_wait_ms(100, 1000, n) for n in range(6)] == [100, 200, 400, 800, 1000, 1000]
    assert rate_wait_ms(0, 1000, 0) == 1  # never a zero postponement
    assert rate_wait_ms(1500, 1000, 3) == 1500  # never shorter than the broker asked
    assert rate_wait_ms(10, 1000, 10_000) == 1000  # no overflow on long streaks
