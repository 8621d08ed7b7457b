"""BrokerStats for RabbitMQ, from the management API's queue list plus worker heartbeats.

Which source gives which number (docs/rabbitmq.md has the table):

    ready, in_flight            management: messages_ready / messages_unacknowledged; for
                                a queue the sample shows idle, ready is a passive
                                queue.declare's count (live: the sample lags up to 5 s)
    oldest_ready_at             management: head_message_timestamp (we stamp each message
                                with the time it becomes ready; 1 s resolution)
    delayed, dead               management: messages in the .delay.* and .dead queues
    completed_total             management: message_stats.ack on the ready queue
    enqueued_total              completed_total + ready + in_flight + delayed (conservation:
                                what entered is either done or still there)
    busy_seconds_total, workers worker heartbeats (ebbtide.worker.<id> queues)

Without the management plugin: ready from a passive queue.declare, in_flight,
completed_total and busy from the live workers' heartbeats, no oldest age.
Pure functions here; the HTTP call is management.py, the basic_gets live in broker.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..base import BrokerStats, QueueStats, WorkerInfo, worker_info
from .topology import classify

MANAGEMENT_COLUMNS = (
    "name,messages_ready,messages_unacknowledged,head_message_timestamp,message_stats.ack"
)


def parse_workers(bodies: Iterable[str | bytes], now: float, ttl_s: float) -> list[dict]:
    """Latest heartbeat per worker, dropping stale and corrupt ones."""
    latest: dict[str, dict] = {}
    for raw in bodies:
        try:
            body = json.loads(raw)
            worker_id = str(body["worker_id"])
            at = float(body.get("at", 0))
        except (ValueError, KeyError, TypeError):
            continue
        if now - at > ttl_s:
            continue
        if worker_id not in latest or at > float(latest[worker_id].get("at", 0)):
            latest[worker_id] = body
    return list(latest.values())


def worker_infos(heartbeats: Sequence[dict], now: float) -> tuple[WorkerInfo, ...]:
    infos = (worker_info(w, now) for w in heartbeats)
    return tuple(info for info in infos if info is not None)


def _per_queue(heartbeats: Sequence[dict], field: str) -> dict[str, float]:
    total: dict[str, float] = {}
    for w in heartbeats:
        values = w.get(field)
        if isinstance(values, dict):
            for queue, n in values.items():
                if isinstance(n, int | float):
                    total[queue] = total.get(queue, 0) + n
    return total


def build_stats(
    prefix: str,
    now: float,
    queue_list: Sequence[dict],
    heartbeats: Sequence[dict],
    wanted: Sequence[str] | None,
    live_ready: Mapping[str, int] | None = None,
) -> BrokerStats:
    """BrokerStats from the management queue list (see the module docstring).
    `live_ready`: ready-queue depths read just now over AMQP; they count only for
    queues the sample shows idle."""
    live_ready = live_ready or {}
    rows: dict[str, dict[str, Any]] = {}
    for q in queue_list:
        kind = classify(prefix, str(q.get("name", "")))
        if kind is None or kind.kind in ("worker", "rate"):
            continue
        row = rows.setdefault(kind.queue, {"delayed": 0, "dead": 0})
        depth = int(q.get("messages_ready") or 0) + int(q.get("messages_unacknowledged") or 0)
        if kind.kind in ("ready", "lost"):
            # The lost lane (lost.py) is ready work too, run one at a time.
            row["seen"] = row.get("seen", False) or kind.kind == "ready"
            row["ready"] = row.get("ready", 0) + int(q.get("messages_ready") or 0)
            row["in_flight"] = row.get("in_flight", 0) + int(q.get("messages_unacknowledged") or 0)
            row["acks"] = row.get("acks", 0) + int((q.get("message_stats") or {}).get("ack") or 0)
            head = q.get("head_message_timestamp")
            if isinstance(head, int | float) and int(q.get("messages_ready") or 0):
                row["oldest"] = min(head, row.get("oldest") or head)
        elif kind.kind == "delay":
            row["delayed"] += depth
        else:
            row["dead"] += depth
    for name, depth in live_ready.items():
        row = rows.setdefault(name, {"delayed": 0, "dead": 0})
        if not row.get("ready") and not row.get("in_flight"):
            # The sample says idle, but tasks are there now (the sample lags by up to
            # collect_statistics_interval): what activation from zero must see at once.
            # A busy queue keeps its sampled figures, which stay consistent together.
            row["seen"], row["ready"] = True, depth
    busy = _per_queue(heartbeats, "busy_us")
    names = list(wanted) if wanted else sorted(n for n, r in rows.items() if r.get("seen"))
    queues: dict[str, QueueStats] = {}
    for name in names:
        row = rows.get(name, {})
        ready, in_flight, delayed = (
            row.get("ready", 0),
            row.get("in_flight", 0),
            row["delayed"] if row else 0,
        )
        completed = row.get("acks", 0)
        oldest = row.get("oldest")
        queues[name] = QueueStats(
            queue=name,
            ready=ready,
            ready_by_priority={},  # RabbitMQ does not tell per-priority depths
            in_flight=in_flight,
            delayed=delayed,
            dead=row.get("dead", 0),
            oldest_ready_at=float(oldest) if isinstance(oldest, int | float) and ready else None,
            enqueued_total=completed + ready + in_flight + delayed,
            completed_total=completed,
            busy_seconds_total=busy.get(name, 0) / 1e6,
        )
    return BrokerStats(now=now, queues=queues, workers=worker_infos(heartbeats, now))


def build_stats_without_management(
    now: float, ready: dict[str, int], heartbeats: Sequence[dict]
) -> BrokerStats:
    """Fallback when the management API is unreachable: AMQP depths plus heartbeats."""
    busy = _per_queue(heartbeats, "busy_us")
    done = _per_queue(heartbeats, "completed")
    held = _per_queue(heartbeats, "held_by_queue")
    queues = {}
    for name, n in ready.items():
        completed = int(done.get(name, 0))
        in_flight = int(held.get(name, 0))
        queues[name] = QueueStats(
            queue=name,
            ready=n,
            in_flight=in_flight,
            enqueued_total=completed + n + in_flight,
            completed_total=completed,
            busy_seconds_total=busy.get(name, 0) / 1e6,
        )
    return BrokerStats(now=now, queues=queues, workers=worker_infos(heartbeats, now))
