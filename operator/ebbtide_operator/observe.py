"""From two consecutive broker snapshots to the policy's Observation. Pure functions.

Rates come from cumulative counters (enqueued, completed, busy slot-seconds), so a missed
poll loses nothing: the next delta covers the gap. A counter that went backwards means the
broker lost its data (restart without persistence); that interval is skipped instead of
producing a negative or huge rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ebbtide.stats import BrokerStats

from ebbtide_operator.policy import Observation, QueueObservation
from ebbtide_operator.spec import TaskQueueSpec

SERVICE_RATE_ALPHA = 0.3  # EWMA weight of the newest mu sample
MIN_BUSY_SECONDS = 0.05  # below this the mu sample is too noisy to use


@dataclass(frozen=True)
class Rates:
    """What the operator remembers between polls (besides the previous snapshot)."""

    arrival_rate: float = 0.0  # tasks/s, all queues
    completion_rate: float = 0.0  # tasks/s, all queues
    service_rate: float | None = None  # mu, tasks/s per replica, smoothed; None = unknown
    queue_arrival: dict[str, float] = field(default_factory=dict)


def _delta(cur: float, prev: float) -> float | None:
    return None if cur < prev else cur - prev


def advance(
    previous: BrokerStats | None,
    current: BrokerStats,
    rates: Rates,
    concurrency: int,
    alpha: float = SERVICE_RATE_ALPHA,
) -> Rates:
    """Rates after `current`; unchanged when there is no usable previous snapshot."""
    if previous is None:
        return rates
    elapsed = current.now - previous.now
    if elapsed <= 0:
        return rates
    queue_arrival = dict(rates.queue_arrival)
    completed = busy = 0.0
    counters_ok = True
    for name, cur in current.queues.items():
        prev = previous.queues.get(name)
        if prev is None:
            continue
        enq = _delta(cur.enqueued_total, prev.enqueued_total)
        done = _delta(cur.completed_total, prev.completed_total)
        spent = _delta(cur.busy_seconds_total, prev.busy_seconds_total)
        if enq is None or done is None or spent is None:
            counters_ok = False
            continue
        queue_arrival[name] = enq / elapsed
        completed += done
        busy += spent
    if not counters_ok and not queue_arrival:
        return rates
    service_rate = rates.service_rate
    if busy >= MIN_BUSY_SECONDS and completed > 0:
        sample = concurrency * completed / busy
        service_rate = (
            sample if service_rate is None else alpha * sample + (1 - alpha) * service_rate
        )
    return Rates(
        arrival_rate=sum(queue_arrival.get(name, 0.0) for name in current.queues),
        completion_rate=completed / elapsed,
        service_rate=service_rate,
        queue_arrival=queue_arrival,
    )


def build_observation(
    stats: BrokerStats,
    rates: Rates,
    spec: TaskQueueSpec,
    replicas: int,
    ready_replicas: int,
) -> Observation:
    """Observation over the TaskQueue's own queues (others on the broker are ignored)."""
    queues = []
    for queue in spec.queues:
        q = stats.queues.get(queue.name)
        oldest_age = stats.oldest_age_s(queue.name)
        next_due_in: float | None = None
        if q is not None and q.next_due_at is not None:
            # A due task is backlog that has waited since its due time (a claim promotes
            # it); one not yet due is a wake-up time for the policy.
            if q.next_due_at <= stats.now:
                oldest_age = max(oldest_age, stats.now - q.next_due_at)
            else:
                next_due_in = q.next_due_at - stats.now
        queues.append(
            QueueObservation(
                name=queue.name,
                backlog=(q.ready + q.due) if q else 0,
                in_flight=q.in_flight if q else 0,
                oldest_age_s=oldest_age,
                arrival_rate=rates.queue_arrival.get(queue.name, 0.0),
                target_backlog_seconds=queue.target_backlog_seconds,
                next_due_in_s=next_due_in,
                delayed=q.delayed if q else 0,
                due=q.due if q else 0,
                dead=q.dead if q else 0,
            )
        )
    return Observation(
        now=stats.now,
        backlog=sum(q.backlog for q in queues),
        in_flight=sum(q.in_flight for q in queues),
        oldest_age_s=max((q.oldest_age_s for q in queues), default=0.0),
        arrival_rate=sum(q.arrival_rate for q in queues),
        completion_rate=rates.completion_rate,
        replicas=replicas,
        ready_replicas=ready_replicas,
        service_rate=rates.service_rate,
        queues=tuple(queues),
        broker_reachable=True,
    )


def unreachable_observation(
    now: float, last: Observation | None, replicas: int, ready_replicas: int
) -> Observation:
    """The broker could not be read: the last known figures, flagged unreachable, so the
    policy holds (or falls back) instead of reading 'empty' as 'idle'."""
    if last is None:
        return Observation(
            now=now,
            backlog=0,
            in_flight=0,
            oldest_age_s=0.0,
            arrival_rate=0.0,
            completion_rate=0.0,
            replicas=replicas,
            ready_replicas=ready_replicas,
            broker_reachable=False,
        )
    return Observation(
        now=now,
        backlog=last.backlog,
        in_flight=last.in_flight,
        oldest_age_s=last.oldest_age_s,
        arrival_rate=last.arrival_rate,
        completion_rate=last.completion_rate,
        replicas=replicas,
        ready_replicas=ready_replicas,
        service_rate=last.service_rate,
        queues=last.queues,
        broker_reachable=False,
    )
