"""What the worker settles after a run: pure functions, checked field by field."""

from __future__ import annotations

import json

from ebbtide.brokers.base import Delivery
from ebbtide.lifecycle import Outcome
from ebbtide.worker import outcomes


def delivery(payload: str | bytes = "{}") -> Delivery:
    return Delivery("q", "1700000000000|0|id1", payload)


def test_success_acks_with_busy_time_and_releases_the_key():
    s = outcomes.success(delivery(), {"id": "id1", "key": "k"}, 0.25)
    assert (s.op, s.busy_us, s.unique_key, s.payload) == (Outcome.ACK, 250_000, "k", "")
    assert outcomes.success(delivery(), {"key": 7}, 0).unique_key == ""  # not a str key


def test_failure_with_retries_left_schedules_a_backoff_retry():
    body = {"id": "id1", "task": "t", "args": [], "attempt": 1, "key": "k"}
    failed = outcomes.failure(
        delivery(), body, 3, ValueError("boom"), 0.5, backoff_base=1.0, now=99.0, rand=lambda: 0
    )
    s = failed.settlement
    assert s.op is Outcome.RETRY and failed.outcome is Outcome.RETRY
    assert s.delay_ms == 1000  # attempt 1: ceiling 2 s, equal jitter with rand=0 -> 1 s
    assert s.busy_us == 500_000 and s.unique_key == ""  # a retry keeps the key reserved
    written = json.loads(s.payload)
    assert written["attempt"] == 2 and written["error"] == "ValueError: boom"
    assert "traceback" not in written and "died_at" not in written
    assert (failed.attempts, failed.retry_in, failed.error) == (2, 1.0, "ValueError: boom")
    assert body["attempt"] == 1  # the decoded body is not changed in place


def test_failure_without_retries_left_buries_with_traceback_and_time_of_death():
    try:
        raise KeyError("x")
    except KeyError as exc:
        error = exc
    body = {"id": "id1", "task": "t", "attempt": 3, "key": "k"}
    failed = outcomes.failure(delivery(), body, 3, error, 0.0, backoff_base=1.0, now=42.5)
    s = failed.settlement
    assert s.op is Outcome.DEAD and s.delay_ms == 0 and s.unique_key == "k"
    written = json.loads(s.payload)
    assert written["attempt"] == 4 and written["died_at"] == 42.5
    assert "KeyError: 'x'" in written["traceback"] and failed.retry_in is None


def test_undecodable_payloads_are_kept_raw_with_the_reason():
    s = outcomes.undecodable(delivery(b"\xff{"), "undecodable payload: x", 1.0)
    assert s.op is Outcome.DEAD
    assert json.loads(s.payload) == {
        "error": "undecodable payload: x",
        "raw": "\ufffd{",
        "died_at": 1.0,
    }


def test_unknown_tasks_are_retried_for_the_grace_period_then_go_to_the_dlq_saying_so():
    body = {"id": "i", "task": "nope", "key": "k"}
    first = outcomes.unknown_task(delivery(), body, 2.0, 600, rand=lambda: 1.0)
    again = json.loads(first.payload)
    assert first.op is Outcome.RETRY and first.delay_ms == 1000
    assert (again["unknown_since"], again["unknown_tries"]) == (2.0, 1)
    second = outcomes.unknown_task(delivery(), again, 100.0, 600, rand=lambda: 1.0)
    assert second.op is Outcome.RETRY and second.delay_ms == 2000  # backoff
    assert json.loads(second.payload)["unknown_since"] == 2.0  # the first sighting stays
    s = outcomes.unknown_task(delivery(), again, 602.0, 600)
    written = json.loads(s.payload)
    assert s.op is Outcome.DEAD and s.unique_key == "k"
    assert "unknown task name 'nope'" in written["error"] and written["died_at"] == 602.0
    odd = outcomes.unknown_task(delivery(), {**body, "unknown_since": "x"}, 5.0, 600)
    assert odd.op is Outcome.RETRY  # a garbled field counts from now


def test_a_task_lost_too_often_dies_unrun_saying_how_often():
    from ebbtide.lifecycle import lost_too_often

    assert not lost_too_often(3, 3) and lost_too_often(4, 3) and lost_too_often(1, 0)
    d = delivery()
    d.recoveries = 4
    s = outcomes.lost(d, {"id": "i", "task": "t", "key": "k"}, 3.0)
    assert s.op is Outcome.DEAD and s.unique_key == "k"
    assert json.loads(s.payload)["error"] == "worker lost 4 times"


def test_postpone_is_a_delay_without_a_new_payload():
    s = outcomes.postpone(delivery(), 250)
    assert (s.op, s.delay_ms, s.payload) == (Outcome.POSTPONE, 250, "")


def test_hand_back_requeues_newest_first_so_the_batch_keeps_its_order():
    ds = [Delivery("q", f"1|0|{i}", "") for i in range(3)]
    back = outcomes.hand_back(ds)
    assert [s.op for s in back] == [Outcome.REQUEUE] * 3
    assert [s.delivery.entry for s in back] == ["1|0|2", "1|0|1", "1|0|0"]  # LPUSH order


def test_a_rejected_task_dies_unrun_with_the_reason_and_releases_its_key():
    d = delivery()
    s = outcomes.rejected(d, {"id": "i", "task": "t", "key": "k", "attempt": 0}, "bad 'a'", 4.0)
    assert s.op is Outcome.DEAD and s.unique_key == "k"
    body = json.loads(s.payload)
    assert body["error"] == "bad 'a'" and body["died_at"] == 4.0 and body["attempt"] == 0
