"""The worker's non-outcome decisions: settings, claim sizes, hand-backs, readiness."""

from __future__ import annotations

import json

import pytest
from ebbtide.brokers.base import Delivery
from ebbtide.worker import decisions
from ebbtide.worker.decisions import RateDenials, Settings


def test_settings_derive_the_heartbeat_and_the_worker_ttl_from_the_lease():
    s = Settings.of(concurrency=4, prefetch=None, lease_seconds=30.0)
    assert (s.prefetch, s.capacity, s.prefetch_explicit) == (4, 8, False)
    assert (s.lease_ms, s.heartbeat_s, s.worker_ttl_ms) == (30_000, 1.0, 30_000)
    assert s.alive_ms == 4000  # a dead worker's tasks come back after 4 s, not 30
    short = Settings.of(concurrency=1, prefetch=0, lease_seconds=1.5)
    assert short.prefetch_explicit and short.capacity == 1
    assert short.heartbeat_s == 0.5 and short.worker_ttl_ms == 1500
    assert short.alive_ms == 1500  # never longer than the lease, three heartbeats at least


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"concurrency": 0}, "--concurrency must be >= 1"),
        ({"lease_seconds": 0.1}, "--lease-seconds must be >= 0.5"),
        ({"prefetch": -1}, "--prefetch must be >= 0"),
        ({"thread_limit": "many"}, "--thread-limit must be 'auto' or a number, got 'many'"),
        ({"thread_limit": "9"}, r"--thread-limit must be 'auto' or 1..--concurrency \(8\), got 9"),
        ({"thread_limit": 0}, r"1..--concurrency \(8\), got 0"),
    ],
)
def test_settings_refuse_bad_flags(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Settings.of(**kwargs)


def test_the_thread_limit_is_measured_unless_fixed():
    assert Settings.of(thread_limit="auto").thread_limit is None
    assert Settings.of().thread_limit is None
    assert Settings.of(concurrency=8, thread_limit="3").thread_limit == 3


def test_free_slots_do_not_count_finished_tasks_awaiting_their_settlement():
    assert decisions.free_slots(16, None, held=10, settling=4) == 10
    assert decisions.free_slots(16, None, held=16, settling=0) == 0


def test_a_push_window_above_capacity_may_be_claimed_whole():
    assert decisions.free_slots(16, 40, held=10, settling=0) == 30
    assert decisions.free_slots(16, 4, held=10, settling=0) == 6  # never below capacity


def test_exchange_claims_the_freed_slots_unless_stopping_or_a_claim_is_on_its_way():
    assert decisions.exchange_quota(16, 12, 4, stopping=False, claim_in_flight=False) == 8
    assert decisions.exchange_quota(16, 20, 0, stopping=False, claim_in_flight=False) == 0
    assert decisions.exchange_quota(16, 0, 0, stopping=True, claim_in_flight=False) == 0
    assert decisions.exchange_quota(16, 0, 0, stopping=False, claim_in_flight=True) == 0


def test_shutdown_hands_back_what_is_neither_settling_nor_running():
    a, b, c = (Delivery("q", f"1|0|{x}", "") for x in "abc")
    held = {d.entry: d for d in (a, b, c)}
    assert decisions.cut_off({a.entry: a, b.entry: b}, {b.entry}) == [a]
    assert decisions.leftovers(held, settling={a.entry}, running={b.entry}) == [c]


def test_readiness():
    assert decisions.readiness(True, 0.0, 5.0) == (False, "stopping")
    assert decisions.readiness(False, 9.0, 5.0) == (True, "ready")
    assert decisions.readiness(False, 16.0, 5.0) == (False, "no successful broker call for 16s")
    assert decisions.readiness(False, 12.0, 1.0)[0] is False  # at least 10 s of slack


def test_a_heartbeat_is_late_past_half_the_liveness_window():
    settings = decisions.Settings.of()  # heartbeat 1 s, liveness 4 s
    assert not decisions.heartbeat_late(settings.heartbeat_s + 0.2, settings.alive_ms / 1000)
    assert decisions.heartbeat_late(2.5, settings.alive_ms / 1000)


def test_heartbeat_info_is_what_stats_reads_back():
    from ebbtide.stats import worker_info

    text = decisions.heartbeat_info("w1", "pod-1", 2, 5, 8, ("a", "b"), 100.0)
    info = worker_info(json.loads(text), now=0.0)
    assert info is not None
    assert (info.worker_id, info.pod, info.busy, info.running) == ("w1", "pod-1", True, 2)
    assert (info.concurrency, info.queues, info.last_seen) == (8, ("a", "b"), 100.0)


def test_enqueue_lag():
    assert decisions.enqueue_lag_s(1_000, 3.5) == 2.5
    assert decisions.enqueue_lag_s(None, 3.5) is None


def test_rate_denials_double_the_wait_until_a_token_is_granted():
    rate = RateDenials()
    assert [rate.denied("t", 100, 1000) for _ in range(3)] == [100, 200, 400]
    assert rate.denied("other", 100, 1000) == 100  # counted per task
    rate.granted("t")
    assert rate.denied("t", 100, 1000) == 100


def test_only_the_claims_that_go_straight_to_an_idle_slot_run_now():
    from ebbtide.worker.decisions import run_now

    assert run_now(concurrency=2, held=0, settling=0, claimed=4) == 2
    assert run_now(concurrency=2, held=3, settling=2, claimed=4) == 1  # one still running
    assert run_now(concurrency=2, held=4, settling=0, claimed=4) == 0  # all busy: prefetch
    assert run_now(concurrency=8, held=0, settling=0, claimed=3) == 3


def test_readiness_fails_when_a_loop_stopped():
    from ebbtide.worker.decisions import readiness

    assert readiness(False, 0.0, 1.0) == (True, "ready")
    assert readiness(False, 0.0, 1.0, ["settle", "fetch"]) == (False, "fetch, settle loop stopped")
    assert readiness(True, 0.0, 1.0, ["fetch"])[0] is False
    assert readiness(False, 11.0, 1.0)[0] is False


def test_prefetch_hold_covers_a_few_round_trips_up_to_the_cap():
    from ebbtide.worker.decisions import PREFETCH_RTTS, prefetch_hold_s

    assert prefetch_hold_s(0.002, 0.05) == PREFETCH_RTTS * 0.002  # a Redis 2 ms away
    assert prefetch_hold_s(0.1, 0.05) == 0.05  # never past the cap
    assert prefetch_hold_s(-1.0, 0.05) == 0.0


def test_a_held_task_a_worker_was_lost_with_stops_claims_until_it_is_settled():
    plain, lost = Delivery("q", "1|0|a", "{}"), Delivery("q", "2|0|b", "{}", recoveries=1)
    assert not decisions.holds_lost([plain])
    assert decisions.holds_lost([plain, lost])
    assert not decisions.holds_lost([plain, lost], settled=["2|0|b"])
