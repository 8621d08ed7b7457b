"""Broker-side statistics the operator scales from: its door into the runtime.

This module is the contract between the worker runtime (which writes the numbers,
atomically with enqueue/claim/ack) and the operator (which reads them every poll).
Keep the dataclasses stable: the operator, the simulator and `ebbtide stats` use them.
They are defined with the broker contract (`brokers/base.py`: `Broker.stats()` returns
them) and re-exported here, so this module only points down.

`read_stats(url, queues)` must fetch everything in ONE broker round trip (a Lua script
on Redis), so one slow TaskQueue never slows the operator's other ticks.
"""

from __future__ import annotations

from .brokers import read_stats as _read_any
from .brokers.base import BrokerStats, QueueStats, WorkerInfo, worker_info
from .brokers.tls import BrokerTLS

__all__ = ["BrokerStats", "QueueStats", "WorkerInfo", "read_stats", "worker_info"]


def read_stats(
    broker_url_or_client: object,
    queues: list[str] | None = None,
    prefix: str = "ebbtide",
    tls: BrokerTLS | None = None,
) -> BrokerStats:
    """One consistent snapshot from the broker, in one round trip.

    Accepts a broker URL, a `redis.Redis` client, or a Broker; `queues=None` means every
    queue that has ever been enqueued to. `prefix` is the App's `key_prefix` (for a URL
    or a client; a Broker knows its own). `tls` verifies a rediss:// or amqps:// URL
    (default: EBBTIDE_BROKER_CA_FILE and friends).
    """
    return _read_any(broker_url_or_client, queues, prefix, tls)
