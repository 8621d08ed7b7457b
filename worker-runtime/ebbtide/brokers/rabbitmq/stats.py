"""BrokerStats for RabbitMQ, from the management API's queue list plus worker heartbeats.

Which source gives which number (docs/rabbitmq.md has the table):

    ready, in_flight            management: messages_ready / messages_unacknowledged
    oldest_ready_at             management: head_message_timestamp (we stamp each message
                                with the time it becomes ready; 1 s resolution)
    delayed, dead               management: messages in the .delay.* and .dead queues
    completed_total             management: message_stats.ack on the ready queue
    enqueued_total              completed_total + ready + in_flight + delayed (conservation:
                                what entered is either done or still there)
    busy_seconds_total, workers worker heartbeats (ebbtide.worker.<id> queues)

Without the management plugin: ready from a passive queue.declare, in_flight,
completed_total and busy from the live workers' heartbeats, no oldest age.
Pure functions here; the HTTP call and basic_gets live in broker.py.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from ..base import BrokerStats, QueueStats, WorkerInfo, worker_info
from .topology import classify

MANAGEMENT_COLUMNS = (
    "name,messages_ready,messages_unacknowledged,head_message_timestamp,message_stats.ack"
)


def fetch_queue_list(
    management_url: str,
    vhost: str,
    context: ssl.SSLContext | None = None,
    timeout: float = 5.0,
) -> list[dict]:
    """GET /api/queues/<vhost> with only the columns we need: one HTTP round trip.
    `context` verifies an https:// management URL (the broker's CA)."""
    parts = urlsplit(management_url)
    base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}"
    req = urllib.request.Request(
        f"{base}/api/queues/{quote(vhost, safe='')}?columns={MANAGEMENT_COLUMNS}"
    )
    if parts.username:
        from urllib.parse import unquote

        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        req.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310 - http(s) only
        return json.load(resp)


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
) -> BrokerStats:
    """BrokerStats from the management queue list (see the module docstring)."""
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
