"""Queue selection: the --queues spec and the per-claim plan."""

from __future__ import annotations

import random

import pytest
from ebbtide.selection import parse_queues, plan_claim
from hypothesis import given
from hypothesis import strategies as st


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


def test_queue_names_follow_the_one_rule_of_message_check_queue():
    assert parse_queues("a" * 200).names == ("a" * 200,)
    with pytest.raises(ValueError, match="bad queue name"):
        parse_queues("a" * 201)  # the producer's length limit holds for --queues too
