"""Rates and observations from consecutive snapshots. Pure."""

from __future__ import annotations

import pytest
from ebbtide.stats import BrokerStats, QueueStats
from ebbtide_operator import observe
from ebbtide_operator.spec import parse_spec

SPEC = parse_spec(
    {
        "broker": {"external": {"secretRef": {"name": "s"}}},
        "queues": [{"name": "a", "targetBacklogSeconds": 10}, {"name": "b"}],
        "worker": {"image": "w", "app": "m:app", "concurrency": 2},
    }
)


def snap(now, a=(0, 0, 0, 0.0), b=(0, 0, 0, 0.0), oldest_a=None, workers=()):
    def q(name, fields, oldest=None):
        ready, enq, done, busy = fields
        return QueueStats(
            queue=name,
            ready=ready,
            enqueued_total=enq,
            completed_total=done,
            busy_seconds_total=busy,
            oldest_ready_at=oldest,
            in_flight=1,
        )

    return BrokerStats(now=now, queues={"a": q("a", a, oldest_a), "b": q("b", b)}, workers=workers)


def test_first_snapshot_gives_no_rates():
    rates = observe.advance(None, snap(100), observe.Rates(), concurrency=2)
    assert rates == observe.Rates()


def test_arrival_completion_and_service_rate():
    prev = snap(100, a=(0, 100, 50, 10.0), b=(0, 0, 0, 0.0))
    cur = snap(110, a=(0, 300, 150, 60.0), b=(0, 50, 50, 50.0))
    rates = observe.advance(prev, cur, observe.Rates(), concurrency=2)
    assert rates.queue_arrival == {"a": 20.0, "b": 5.0}
    assert rates.arrival_rate == 25.0
    assert rates.completion_rate == 15.0
    # 150 tasks over 100 busy slot-seconds, 2 slots per replica -> 3 tasks/s per replica
    assert rates.service_rate == pytest.approx(3.0)


def test_service_rate_is_smoothed():
    rates = observe.Rates(service_rate=1.0)
    prev = snap(0, a=(0, 0, 0, 0.0))
    cur = snap(5, a=(0, 10, 10, 10.0))  # sample = 2 * 10 / 10 = 2
    out = observe.advance(prev, cur, rates, concurrency=2, alpha=0.5)
    assert out.service_rate == pytest.approx(1.5)


def test_idle_interval_keeps_known_service_rate():
    rates = observe.Rates(service_rate=4.0)
    out = observe.advance(snap(0), snap(5), rates, concurrency=1)
    assert out.service_rate == 4.0 and out.arrival_rate == 0.0


def test_counter_reset_is_skipped_not_negative():
    rates = observe.Rates(arrival_rate=7.0, queue_arrival={"a": 7.0}, service_rate=2.0)
    prev = snap(0, a=(0, 1000, 900, 100.0), b=(0, 1000, 900, 100.0))
    cur = snap(5, a=(0, 3, 1, 0.1), b=(0, 2, 1, 0.1))
    out = observe.advance(prev, cur, rates, concurrency=1)
    assert out.arrival_rate >= 0 and out.service_rate == 2.0


def test_clock_going_backwards_changes_nothing():
    rates = observe.Rates(arrival_rate=3.0)
    assert observe.advance(snap(10), snap(10), rates, 1) is rates


def test_observation_uses_own_queues_and_targets():
    stats = snap(1000, a=(40, 0, 0, 0.0), b=(2, 0, 0, 0.0), oldest_a=990.0)
    rates = observe.Rates(queue_arrival={"a": 1.0, "b": 2.0}, service_rate=3.0, completion_rate=4.0)
    obs = observe.build_observation(stats, rates, SPEC, replicas=3, ready_replicas=2)
    assert (obs.backlog, obs.in_flight, obs.oldest_age_s) == (42, 2, 10.0)
    assert obs.arrival_rate == 3.0 and obs.service_rate == 3.0 and obs.completion_rate == 4.0
    assert [q.target_backlog_seconds for q in obs.queues] == [10.0, 30.0]
    assert (obs.replicas, obs.ready_replicas, obs.broker_reachable) == (3, 2, True)


def test_missing_queue_counts_as_empty():
    stats = BrokerStats(now=5, queues={})
    obs = observe.build_observation(stats, observe.Rates(), SPEC, 1, 1)
    assert obs.backlog == 0 and len(obs.queues) == 2


def test_unreachable_keeps_last_figures_and_says_so():
    stats = snap(1000, a=(40, 0, 0, 0.0))
    last = observe.build_observation(stats, observe.Rates(service_rate=2.0), SPEC, 3, 3)
    obs = observe.unreachable_observation(2000, last, replicas=3, ready_replicas=1)
    assert obs.broker_reachable is False and obs.backlog == 40 and obs.service_rate == 2.0
    assert obs.now == 2000 and obs.ready_replicas == 1
    blank = observe.unreachable_observation(2000, None, 2, 2)
    assert blank.broker_reachable is False and blank.replicas == 2


def test_due_delayed_tasks_are_backlog_aged_from_their_due_time():
    """A claim promotes due tasks, so they are backlog; one due 12 s ago has waited 12 s."""
    a = QueueStats(queue="a", ready=3, delayed=10, due=4, next_due_at=988.0)
    stats = BrokerStats(now=1000.0, queues={"a": a})
    obs = observe.build_observation(stats, observe.Rates(), SPEC, 0, 0)
    (qa, _) = obs.queues
    assert (qa.backlog, qa.oldest_age_s, qa.next_due_in_s) == (7, 12.0, None)


def test_a_future_delayed_task_is_a_wake_up_time():
    a = QueueStats(queue="a", ready=0, delayed=1, due=0, next_due_at=1060.0)
    stats = BrokerStats(now=1000.0, queues={"a": a})
    (qa, qb) = observe.build_observation(stats, observe.Rates(), SPEC, 0, 0).queues
    assert (qa.backlog, qa.next_due_in_s) == (0, 60.0)
    assert qb.next_due_in_s is None


def test_delayed_due_and_dead_are_carried_per_queue_for_the_metrics():
    a = QueueStats(queue="a", ready=1, delayed=10, due=4, dead=3, next_due_at=990.0)
    stats = BrokerStats(now=1000.0, queues={"a": a})
    (qa, qb) = observe.build_observation(stats, observe.Rates(), SPEC, 0, 0).queues
    assert (qa.delayed, qa.due, qa.dead) == (10, 4, 3)
    assert (qb.delayed, qb.due, qb.dead) == (0, 0, 0)  # not on the broker yet
