"""Reading broker statistics without ever blocking the operator's event loop.

`read_stats` is synchronous (one Lua round trip on Redis; one management API request
plus a short AMQP connection on RabbitMQ), so it runs in a dedicated thread pool under
`asyncio.wait_for`. A broker that hangs costs its own TaskQueue one thread at most (a
second read is refused while the first is stuck), and never delays the ticks of other
TaskQueues. Redis clients are kept per URL with short socket timeouts, and `amqp://` URLs
get short pika timeouts, so a stuck thread is released soon too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ebbtide.brokers.tls import BrokerTLS, is_tls_url
from ebbtide.stats import BrokerStats, read_stats

SOCKET_TIMEOUT_SECONDS = 3.0
EVICTION_CHECK_SECONDS = 60.0  # how often a Redis's maxmemory-policy is read again


class BrokerUnreachable(Exception):
    """The statistics could not be read; the message says why, for the condition."""


def _redis_client(url: str, max_connections: int, tls: BrokerTLS) -> Any:
    """One client per broker URL (and TLS files), shared by every TaskQueue on that
    broker. Its pool *blocks* when all connections are busy: redis-py's default pool
    raises "Too many connections" instead, which made TaskQueues sharing a Redis look
    unreachable. A rediss:// URL verifies the server against `tls`'s CA."""
    import redis

    pool = redis.BlockingConnectionPool.from_url(
        url,
        **(tls.redis_kwargs() if is_tls_url(url) else {}),
        max_connections=max_connections,
        timeout=SOCKET_TIMEOUT_SECONDS,  # waiting for a free connection
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)


# pika's own defaults (10 s socket, 15 s stack timeout) would outlive the tick's timeout.
AMQP_TIMEOUTS = {
    "connection_attempts": "1",
    "socket_timeout": f"{SOCKET_TIMEOUT_SECONDS:g}",
    "stack_timeout": f"{SOCKET_TIMEOUT_SECONDS + 2:g}",
}


def with_amqp_timeouts(url: str) -> str:
    """The URL with short connection timeouts, unless the URL already sets them."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {key for key, _ in query}
    query += [(key, value) for key, value in AMQP_TIMEOUTS.items() if key not in present]
    return urlunsplit(parts._replace(query=urlencode(query)))


def describe(error: BaseException) -> str:
    """A short, secret-free description (URLs carry passwords: never echo them)."""
    text = str(error).split("\n", 1)[0]
    if "@" in text or "://" in text:
        text = "connection failed"
    return f"{type(error).__name__}: {text}"[:200]


def evicting_policy(client: Any) -> str | None:
    """`INFO memory`'s maxmemory_policy, when it lets Redis delete keys. INFO, unlike
    CONFIG GET, is open to a least-privileged user; a refusal reads as unknown."""
    try:
        policy = client.info("memory").get("maxmemory_policy")
    except Exception:  # noqa: BLE001 - a missing permission must not fail the statistics
        return None
    return str(policy) if policy and policy != "noeviction" else None


class BrokerReader:
    """Bounded, concurrent-safe statistics reads, one client per broker URL."""

    def __init__(
        self,
        max_threads: int = 64,
        reader: Callable[[Any, list[str], str, BrokerTLS], BrokerStats] = read_stats,
    ) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_threads, thread_name_prefix="ebbtide-broker"
        )
        # Enough connections per broker for every thread to read at once when all the
        # TaskQueues share one broker, capped so one URL cannot open hundreds.
        self._connections_per_url = max(4, min(max_threads, 32))
        self._reader = reader
        self._clients: dict[str, Any] = {}  # url -> client
        self._client_tls: dict[str, BrokerTLS] = {}  # url -> the TLS its client uses
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._eviction: dict[str, tuple[float, str | None]] = {}  # url -> (read at, policy)

    def _handle(self, url: str, tls: BrokerTLS) -> Any:
        if url.startswith(("amqp://", "amqps://")):
            return with_amqp_timeouts(url)  # read_stats opens and closes its connection
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return url
        with self._lock:
            client = self._clients.get(url)
            if client is not None and self._client_tls.get(url) != tls:
                self._clients.pop(url)  # new CA files: a new client
                client.close()
                client = None
            if client is None:
                client = self._clients[url] = _redis_client(url, self._connections_per_url, tls)
                self._client_tls[url] = tls
            return client

    def _read(self, url: str, queues: list[str], prefix: str, tls: BrokerTLS) -> BrokerStats:
        handle = self._handle(url, tls)
        stats = self._reader(handle, queues, prefix, tls)
        if not isinstance(handle, str):  # a Redis client: is it allowed to evict our keys?
            read_at, _ = self._eviction.get(url, (0.0, None))
            if time.monotonic() - read_at >= EVICTION_CHECK_SECONDS:
                self._eviction[url] = (time.monotonic(), evicting_policy(handle))
        return stats

    def eviction_policy(self, url: str) -> str | None:
        """The Redis's maxmemory-policy when it is one that deletes keys (None when it is
        noeviction, unknown, or the broker is not a Redis). Read with the statistics."""
        return self._eviction.get(url, (0.0, None))[1]

    async def read(
        self,
        key: str,
        url: str,
        queues: list[str],
        timeout: float,
        prefix: str = "ebbtide",
        tls: BrokerTLS | None = None,
    ) -> BrokerStats:
        """Stats for `queues` under the TaskQueue's key prefix (spec.broker.keyPrefix, what
        its workers use), or BrokerUnreachable within `timeout` seconds. `tls` names the
        CA (and client certificate) a rediss:// or amqps:// broker is verified with."""
        if key in self._pending:
            raise BrokerUnreachable("the previous statistics read is still hanging")
        self._pending.add(key)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._pool, self._read, url, queues, prefix, tls or BrokerTLS()
        )

        # The thread may outlive a timeout; the key stays pending until it really ends,
        # and its late exception is retrieved here so asyncio does not log it as lost.
        def finished(done: asyncio.Future) -> None:
            self._pending.discard(key)
            if not done.cancelled():
                done.exception()

        future.add_done_callback(finished)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError as error:
            raise BrokerUnreachable(f"no answer from the broker within {timeout:g}s") from error
        except BrokerUnreachable:
            raise
        except Exception as error:  # any client error means: could not read
            self.forget(url)
            raise BrokerUnreachable(describe(error)) from error

    def forget(self, url: str) -> None:
        """Drop the cached client (after an error, or when the URL changes)."""
        with self._lock:
            client = self._clients.pop(url, None)
            self._client_tls.pop(url, None)
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: S110 - closing a broken client may fail too
                pass

    def close(self) -> None:
        with self._lock:
            urls = list(self._clients)
        for url in urls:
            self.forget(url)
        self._pool.shutdown(wait=False, cancel_futures=True)
