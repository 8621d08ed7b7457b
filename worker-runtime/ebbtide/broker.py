"""The small broker interface the App and the Worker talk to, and the URL dispatch.

Redis is built in; a RabbitMQ broker slots in by implementing `Broker` and adding a
scheme to `open_broker`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from .errors import UnsupportedBroker

if TYPE_CHECKING:
    from .stats import BrokerStats

REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to enqueue."""

    task_id: str
    priority: int
    delay_ms: int
    key: str  # '' = not unique
    payload: str


@dataclass(slots=True)
class Delivery:
    """One claimed message, held under a lease until it is settled."""

    queue: str
    entry: str  # opaque broker handle (Redis: the ready-list entry)
    payload: str | bytes  # JSON text, as stored


@dataclass(frozen=True, slots=True)
class Settlement:
    """What to do with a claimed message (see lifecycle.Outcome)."""

    op: str
    delivery: Delivery
    payload: str = ""  # '' = unchanged
    delay_ms: int = 0
    busy_us: int = 0
    unique_key: str = ""


@dataclass(frozen=True, slots=True)
class DeadTask:
    queue: str
    member: str
    task_id: str
    died_at: float
    payload: str


class Broker(Protocol):
    """Producer side is synchronous (called from user code); consumer side is asyncio."""

    url: str

    def enqueue(
        self, queue: str, messages: Sequence[Outgoing], max_backlog: int, unique_ttl_ms: int
    ) -> list[str]: ...

    async def aconnect(self) -> None: ...
    async def aclose(self) -> None: ...
    async def claim(
        self, plan: Sequence[tuple[str, int]], n: int, lease_ms: int
    ) -> list[Delivery]: ...
    async def settle(self, settlements: Sequence[Settlement], dead_ttl_ms: int) -> int: ...
    async def heartbeat(
        self, worker_id: str, info: str, held: Sequence[Delivery], lease_ms: int, ttl_ms: int
    ) -> int: ...
    async def acquire_rate(self, name: str, limit: int, window_ms: int) -> tuple[int, int]: ...

    def stats(self, queues: Sequence[str] | None, worker_ttl_ms: int) -> BrokerStats: ...
    def dlq_list(self, queue: str | None, limit: int) -> list[DeadTask]: ...
    def dlq_replay(self, dead: Sequence[DeadTask]) -> int: ...
    def dlq_purge(self, dead: Sequence[DeadTask]) -> int: ...
    def close(self) -> None: ...


def resolve_url(url: str | None) -> str:
    url = url or os.environ.get("EBBTIDE_BROKER_URL")
    if not url:
        raise UnsupportedBroker(
            "no broker URL: pass App(broker_url=...) or --broker-url, or set EBBTIDE_BROKER_URL"
        )
    check_scheme(url)
    return url


def check_scheme(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme in REDIS_SCHEMES:
        return scheme
    if scheme in ("amqp", "amqps"):
        return scheme
    raise UnsupportedBroker(
        f"unsupported broker URL scheme {scheme!r} in {redact(url)!r}: "
        "use redis://, rediss:// (TLS) or amqp://"
    )


def open_broker(url: str | None, prefix: str = "ebbtide") -> Broker:
    url = resolve_url(url)
    scheme = check_scheme(url)
    if scheme in REDIS_SCHEMES:
        from .redis_broker import RedisBroker

        return RedisBroker(url, prefix)
    try:
        from .rabbitmq_broker import RabbitMQBroker  # type: ignore[import-not-found]
    except ImportError:
        raise UnsupportedBroker(
            f"{scheme}:// brokers need the RabbitMQ support (pip install 'ebbtide[rabbitmq]')"
        ) from None
    return RabbitMQBroker(url, prefix)


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
