"""The shared pace of routine status writes (write_budget.py): pure logic, a fake clock."""

from __future__ import annotations

import pytest
from ebbtide_operator.write_budget import (
    ROUTINE_MAX_AGE_SECONDS,
    WriteBudget,
    per_second_from_env,
    routine_only,
)

LAST = {
    "replicas": 0,
    "desiredReplicas": 0,
    "backlog": 5,
    "oldestAgeSeconds": 3.0,
    "conditions": [{"type": "Ready", "status": "True"}],
    "policyState": {"idleSince": 1.0},
}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_figures_and_policy_state_are_routine_the_rest_is_not():
    assert routine_only(LAST, {**LAST, "backlog": 9, "oldestAgeSeconds": 4.0})
    assert routine_only(LAST, {**LAST, "policyState": {"idleSince": 2.0}})
    assert not routine_only(LAST, {**LAST, "desiredReplicas": 1})
    assert not routine_only(LAST, {**LAST, "conditions": [{"type": "Ready", "status": "False"}]})
    assert not routine_only(LAST, {**LAST, "lastScaleTime": "2026-12-02T00:00:00Z"})


def test_routine_writes_take_tokens_and_wait_when_there_are_none():
    clock = Clock()
    budget = WriteBudget(2.0, clock=clock)
    routine = {**LAST, "backlog": 6}
    assert [budget.allow(LAST, routine, now=1.0, last_write_at=0.0) for _ in range(3)] == [
        True,
        True,
        False,
    ]
    assert budget.deferred == 1
    clock.now = 0.5  # half a second at 2/s: one token back
    assert budget.allow(LAST, routine, now=1.5, last_write_at=0.0)
    assert not budget.allow(LAST, routine, now=1.5, last_write_at=0.0)


def test_changes_someone_acts_on_first_writes_and_stale_copies_always_go_out():
    budget = WriteBudget(1.0, clock=Clock())
    assert budget.allow(LAST, {**LAST, "backlog": 6}, now=1.0, last_write_at=0.0)
    urgent = {**LAST, "desiredReplicas": 3}
    assert all(budget.allow(LAST, urgent, now=1.0, last_write_at=0.0) for _ in range(5))
    assert budget.allow(None, LAST, now=1.0, last_write_at=None)
    stale = ROUTINE_MAX_AGE_SECONDS + 1.0
    assert budget.allow(LAST, {**LAST, "backlog": 7}, now=stale, last_write_at=0.0)


def test_no_limit_allows_everything():
    budget = WriteBudget(None)
    assert all(budget.allow(LAST, {**LAST, "backlog": i}, 1.0, 0.0) for i in range(100))


def test_the_rate_comes_from_the_environment_and_bad_values_are_named():
    assert per_second_from_env({}) == 20.0
    assert per_second_from_env({"EBBTIDE_STATUS_WRITES_PER_SECOND": "5"}) == 5.0
    assert per_second_from_env({"EBBTIDE_STATUS_WRITES_PER_SECOND": "0"}) is None
    for bad in ("-1", "fast", "nan", "inf"):
        with pytest.raises(ValueError, match="EBBTIDE_STATUS_WRITES_PER_SECOND"):
            per_second_from_env({"EBBTIDE_STATUS_WRITES_PER_SECOND": bad})
