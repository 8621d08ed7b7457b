"""Pure decisions of the message state machine."""

from __future__ import annotations

import pytest
from ebbtide.lifecycle import (
    Outcome,
    TaskState,
    after_failure,
    backoff_seconds,
    is_final,
    next_state,
    parse_rate,
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


def test_outcomes_keep_their_wire_names():
    # The Lua scripts and the RabbitMQ consumer read these strings.
    assert [o.value for o in Outcome] == ["ack", "retry", "dead", "requeue", "postpone"]
    assert Outcome.ACK == "ack" and f"{Outcome.REQUEUE}" == "requeue"


def test_every_outcome_moves_a_task_to_a_state_or_ends_it():
    assert next_state(Outcome.ACK) is None
    assert next_state(Outcome.RETRY) is TaskState.DELAYED
    assert next_state(Outcome.POSTPONE) is TaskState.DELAYED
    assert next_state(Outcome.DEAD) is TaskState.DEAD
    assert next_state(Outcome.REQUEUE) is TaskState.READY
    assert {o for o in Outcome if is_final(o)} == {Outcome.ACK, Outcome.DEAD}
    assert [s.value for s in TaskState] == ["ready", "delayed", "in_flight", "dead"]
