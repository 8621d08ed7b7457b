"""The brokers, and the door to them: URL checks, `open_broker`, `redact`, `read_stats`.

    brokers/base.py       wire types, the Broker protocol, optional capabilities
    brokers/redis/        redis://, rediss://, unix://  (Lua scripts, one per transition)
    brokers/rabbitmq/     amqp://, amqps://             (needs `ebbtide[rabbitmq]`: pika)

Imports point down only: this module imports base and, when a URL asks for one, a
broker subpackage; the subpackages import base and the pure modules above the package
(message, lifecycle, stats, logs), never each other or this module.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..broker_url import url_from_environment
from ..errors import UnsupportedBroker
from .base import Broker, BrokerStats, redact
from .tls import BrokerTLS

__all__ = [
    "Broker",
    "BrokerTLS",
    "check_scheme",
    "open_broker",
    "read_stats",
    "redact",
    "resolve_url",
]

REDIS_SCHEMES = ("redis", "rediss", "unix")
# A Redis Cluster or a Sentinel-watched master (brokers/redis/clients.py).
REDIS_HA_SCHEMES = ("redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")
AMQP_SCHEMES = ("amqp", "amqps")
WORKER_TTL_MS = 90_000  # read_stats: a worker whose heartbeat is older than this is gone


def resolve_url(url: str | None) -> str:
    url = url or url_from_environment()
    if not url:
        raise UnsupportedBroker(
            "no broker URL: pass App(broker_url=...) or --broker-url, or set "
            "EBBTIDE_BROKER_URL_FILE (a file holding it) or EBBTIDE_BROKER_URL"
        )
    check_scheme(url)
    return url


def check_scheme(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme in REDIS_SCHEMES or scheme in REDIS_HA_SCHEMES or scheme in AMQP_SCHEMES:
        return scheme
    raise UnsupportedBroker(
        f"unsupported broker URL scheme {scheme!r} in {redact(url)!r}: "
        "use redis://, rediss:// (TLS), redis+cluster://, redis+sentinel:// (rediss+... "
        "for TLS), amqp:// or amqps:// (TLS)"
    )


def open_broker(url: str | None, prefix: str = "ebbtide", tls: BrokerTLS | None = None) -> Broker:
    """The broker for `url`; `tls` (default: from EBBTIDE_BROKER_CA_FILE and friends)
    verifies a rediss:// or amqps:// broker."""
    url = resolve_url(url)
    scheme = check_scheme(url)
    tls = BrokerTLS.from_env() if tls is None else tls
    if scheme in REDIS_SCHEMES or scheme in REDIS_HA_SCHEMES:
        from .redis.broker import RedisBroker

        return RedisBroker(url, prefix, tls)
    try:
        from .rabbitmq.broker import RabbitMQBroker
    except ImportError:
        raise UnsupportedBroker(
            f"{scheme}:// brokers need the RabbitMQ support (pip install 'ebbtide[rabbitmq]')"
        ) from None
    return RabbitMQBroker(url, prefix, tls)


def read_stats(
    handle: Any,
    queues: list[str] | None = None,
    prefix: str = "ebbtide",
    tls: BrokerTLS | None = None,
) -> BrokerStats:
    """`ebbtide.read_stats` for any handle: a URL (opened and closed here), a Broker, or
    a `redis.Redis` client (the operator keeps one pool per Redis; decode_responses
    either way)."""
    if isinstance(handle, str):
        broker = open_broker(handle, prefix, tls)
        try:
            return broker.stats(queues, WORKER_TTL_MS)
        finally:
            broker.close()
    if isinstance(handle, Broker):
        return handle.stats(queues, WORKER_TTL_MS)
    from .redis.broker import RedisBroker

    return RedisBroker.over_client(handle, prefix).stats(queues, WORKER_TTL_MS)
