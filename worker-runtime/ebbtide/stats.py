"""Broker-side statistics the operator scales from.

This module is the contract between the worker runtime (which writes the numbers,
atomically with enqueue/claim/ack) and the operator (which reads them every poll).
Keep the dataclasses stable: the operator, the simulator and `ebbtide stats` use them.

`read_stats(url, queues)` must fetch everything in ONE broker round trip (a Lua script
on Redis), so one slow TaskQueue never slows the operator's other ticks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WorkerInfo:
    """One live worker process, from its heartbeat."""

    worker_id: str
    pod: str | None  # env POD_NAME, so the operator can set pod-deletion-cost
    busy: bool  # running at least one task right now
    running: int  # tasks executing now
    concurrency: int  # task slots
    queues: tuple[str, ...]
    last_seen: float  # unix seconds (broker clock)


@dataclass(frozen=True)
class QueueStats:
    """One queue's counters. Cumulative counters only ever grow; rates are derived by
    the reader from two snapshots, so a missed poll loses no information."""

    queue: str
    ready: int  # claimable now, all priority levels
    ready_by_priority: dict[int, int] = field(default_factory=dict)
    in_flight: int = 0  # claimed under a lease, not yet acked
    delayed: int = 0  # scheduled (delay=) or waiting for a retry
    dead: int = 0  # in the dead-letter queue
    oldest_ready_at: float | None = None  # unix seconds when the oldest ready task became ready
    enqueued_total: int = 0  # cumulative, bumped atomically with every enqueue
    completed_total: int = 0  # cumulative, bumped atomically with every final ack (success or dead)
    busy_seconds_total: float = 0.0  # cumulative task-slot seconds spent executing (for mu)


@dataclass(frozen=True)
class BrokerStats:
    """A consistent snapshot of the broker, taken at broker time `now`."""

    now: float  # unix seconds, from the broker's clock (Redis TIME)
    queues: dict[str, QueueStats]
    workers: tuple[WorkerInfo, ...] = ()

    def oldest_age_s(self, queue: str) -> float:
        q = self.queues.get(queue)
        if q is None or q.oldest_ready_at is None:
            return 0.0
        return max(0.0, self.now - q.oldest_ready_at)


def worker_info(heartbeat: Mapping[str, Any], now: float) -> WorkerInfo | None:
    """A WorkerInfo from one decoded heartbeat body (both brokers write the same JSON,
    see worker.Worker.info); None for a foreign or corrupt one, which must never break
    the operator's poll."""
    try:
        return WorkerInfo(
            worker_id=str(heartbeat["worker_id"]),
            pod=heartbeat.get("pod"),
            busy=bool(heartbeat.get("running", 0)),
            running=int(heartbeat.get("running", 0)),
            concurrency=int(heartbeat.get("concurrency", 0)),
            queues=tuple(heartbeat.get("queues", ())),
            last_seen=float(heartbeat.get("at", now)),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def read_stats(
    broker_url_or_client: object, queues: list[str] | None = None, prefix: str = "ebbtide"
) -> BrokerStats:
    """One consistent snapshot from the broker, in one round trip.

    Accepts a broker URL, a `redis.Redis` client, or a Broker; `queues=None` means every
    queue that has ever been enqueued to. `prefix` is the App's `key_prefix` (for a URL
    or a client; a Broker knows its own). The brokers live above this module (they build
    these dataclasses), hence the import at call time.
    """
    from .brokers import read_stats as read

    return read(broker_url_or_client, queues, prefix)
