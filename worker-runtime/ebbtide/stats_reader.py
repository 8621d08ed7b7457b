"""`read_stats` for any broker handle: a URL, a redis.Redis client, or a Broker."""

from __future__ import annotations

from typing import Any

from .stats import BrokerStats

WORKER_TTL_MS = 90_000  # a worker whose heartbeat is older than this is gone


def read_stats(handle: Any, queues: list[str] | None = None) -> BrokerStats:
    if isinstance(handle, str):
        from .broker import open_broker

        broker = open_broker(handle)
        try:
            return broker.stats(queues, WORKER_TTL_MS)
        finally:
            broker.close()
    if hasattr(handle, "stats") and hasattr(handle, "enqueue"):
        return handle.stats(queues, WORKER_TTL_MS)
    # A redis.Redis client (decode_responses either way).
    from . import scripts
    from .redis_broker import parse_stats

    raw = handle.eval(scripts.source("stats"), 0, "ebbtide", WORKER_TTL_MS, *(queues or ()))
    return parse_stats(_decode(raw))


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value
