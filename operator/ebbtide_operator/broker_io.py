"""Reading broker statistics without ever blocking the operator's event loop.

One kept client per broker URL, shared by every TaskQueue on it and reused across polls:
a Redis connection pool, or for RabbitMQ one AMQP connection plus one keep-alive HTTP
session to the management API (`StatsLink`). A URL's client is closed when the last
TaskQueue using it lets go (`release`), and dropped after an error so the next read
opens a fresh one.

Reads are synchronous client calls, so they run in one shared thread pool under a
per-read deadline (`asyncio.wait_for`). Isolation: a TaskQueue has at most one read in
flight (a second is refused while the first hangs), and one URL holds at most
`per_url` threads at a time; its other reads wait for a slot *on the event loop*, under
their own deadline. So a broker that hangs can hold a quarter of the pool at most, and
never delays the other brokers' TaskQueues. Short socket timeouts release stuck
threads soon too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ebbtide.brokers import AMQP_SCHEMES, REDIS_HA_SCHEMES, REDIS_SCHEMES, WORKER_TTL_MS
from ebbtide.brokers.tls import BrokerTLS, is_tls_url
from ebbtide.stats import BrokerStats

SOCKET_TIMEOUT_SECONDS = 3.0
EVICTION_CHECK_SECONDS = 60.0  # how often a Redis's maxmemory-policy is read again


class BrokerUnreachable(Exception):
    """The statistics could not be read; the message says why, for the condition."""


class StatsLink(Protocol):
    """A kept, thread-safe statistics client for one broker URL."""

    def stats(self, queues: list[str], prefix: str) -> BrokerStats: ...

    def eviction_policy(self) -> str | None: ...

    def close(self) -> None: ...


def _redis_client(url: str, max_connections: int, tls: BrokerTLS) -> Any:
    """A client whose pool *blocks* when all connections are busy: redis-py's default
    pool raises "Too many connections" instead, which made TaskQueues sharing a Redis
    look unreachable. A rediss:// URL verifies the server against `tls`'s CA. A
    redis+cluster:// or redis+sentinel:// URL gets redis-py's cluster or Sentinel client
    (brokers/redis/clients.py; a cluster keeps one pool per node)."""
    import redis
    from ebbtide.brokers.redis import clients

    target = clients.parse_url(url)
    if target.kind != "single":
        return clients.sync_client(
            target,
            tls,
            max_connections=max_connections,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
        )
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


class RedisLink:
    """One connection pool per Redis URL; the stats script object per key prefix."""

    def __init__(self, url: str, max_connections: int, tls: BrokerTLS) -> None:
        from ebbtide.brokers.redis.broker import RedisBroker

        self.client = _redis_client(url, max_connections, tls)
        self._over_client = RedisBroker.over_client
        self._brokers: dict[str, Any] = {}

    def stats(self, queues: list[str], prefix: str) -> BrokerStats:
        broker = self._brokers.get(prefix)
        if broker is None:
            broker = self._brokers[prefix] = self._over_client(self.client, prefix)
        return broker.stats(queues, WORKER_TTL_MS)

    def eviction_policy(self) -> str | None:
        return evicting_policy(self.client)

    def close(self) -> None:
        import redis

        if isinstance(self.client, redis.Redis):
            self.client.connection_pool.disconnect()  # the pool the client does not own
        else:
            self.client.close()  # a RedisCluster's node pools


class RabbitMQLink:
    """One RabbitMQBroker per URL: it keeps its AMQP connection and its management HTTP
    session between reads (reopening either when the server has closed it)."""

    def __init__(self, url: str, tls: BrokerTLS) -> None:
        from ebbtide.brokers.rabbitmq.broker import RabbitMQBroker

        self.broker = RabbitMQBroker(with_amqp_timeouts(url), tls=tls)

    def stats(self, queues: list[str], prefix: str) -> BrokerStats:
        return self.broker.stats(queues, WORKER_TTL_MS, prefix=prefix)

    def eviction_policy(self) -> str | None:
        return None  # RabbitMQ never deletes queued messages on its own

    def close(self) -> None:
        self.broker.close()


def open_link(url: str, max_connections: int, tls: BrokerTLS | None = None) -> StatsLink:
    """The kept client for `url`, by scheme; an unknown scheme is a clear error. `tls`
    verifies a rediss:// or amqps:// broker (and its https management API)."""
    tls = BrokerTLS() if tls is None else tls
    scheme = urlsplit(url).scheme.lower()
    if scheme in REDIS_SCHEMES or scheme in REDIS_HA_SCHEMES:
        return RedisLink(url, max_connections, tls)
    if scheme in AMQP_SCHEMES:
        return RabbitMQLink(url, tls)
    raise BrokerUnreachable(
        f"unsupported broker URL scheme {scheme!r}: use redis://, rediss://, amqp:// or amqps://"
    )


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
    """`INFO memory`'s maxmemory_policy, when it lets Redis delete keys (the first such
    primary's, on a cluster). INFO, unlike CONFIG GET, is open to a least-privileged
    user; a refusal reads as unknown."""
    from ebbtide.brokers.redis.clients import nodes_of

    for node in nodes_of(client):
        try:
            policy = node.info("memory").get("maxmemory_policy")
        except Exception:  # noqa: BLE001 - a missing permission must not fail the statistics
            continue
        if policy and policy != "noeviction":
            return str(policy)
    return None


@dataclass
class _Url:
    """One broker URL: its kept link (None until needed, or after an error), the
    TaskQueues using it, and the reads running on it."""

    users: set[str] = field(default_factory=set)
    link: StatsLink | None = None
    tls: BrokerTLS | None = None  # the CA files `link` was opened with
    running: int = 0
    waiting: list[asyncio.Future] = field(default_factory=list)


class BrokerReader:
    """Bounded, concurrent-safe statistics reads, one kept client per broker URL."""

    def __init__(
        self,
        max_threads: int = 64,
        connect: Callable[[str, int, BrokerTLS], StatsLink] = open_link,
    ) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_threads, thread_name_prefix="ebbtide-broker"
        )
        # One URL may hold this many threads (and Redis connections) at once: enough for
        # many TaskQueues sharing one healthy broker, and a hung one leaves the rest.
        self.per_url = max(1, max_threads // 4)
        self._connect = connect
        self._urls: dict[str, _Url] = {}
        self._user_url: dict[str, str] = {}  # TaskQueue key -> the URL it reads
        self._pending: set[str] = set()
        self._lock = threading.Lock()  # guards each _Url's link (threads open them)
        self._eviction: dict[str, tuple[float, str | None]] = {}  # url -> (read at, policy)

    # --- who uses which URL ---------------------------------------------------------------

    def _use(self, key: str, url: str) -> _Url:
        previous = self._user_url.get(key)
        if previous is not None and previous != url:
            self.release(key)
        self._user_url[key] = url
        entry = self._urls.setdefault(url, _Url())
        entry.users.add(key)
        return entry

    def release(self, key: str) -> None:
        """`key` (a TaskQueue) reads no broker any more; a URL nobody uses is closed."""
        url = self._user_url.pop(key, None)
        entry = self._urls.get(url) if url is not None else None
        if entry is None:
            return
        entry.users.discard(key)
        if not entry.users and entry.running == 0:
            self._urls.pop(url, None)
            self._eviction.pop(url, None)
            self._close_link(entry)

    def users(self, url: str) -> int:
        entry = self._urls.get(url)
        return len(entry.users) if entry else 0

    def link(self, url: str) -> StatsLink | None:
        """The kept client for `url`, if one is open (for tests and diagnostics)."""
        entry = self._urls.get(url)
        return entry.link if entry else None

    # --- reading ----------------------------------------------------------------------------

    def _read(
        self, url: str, entry: _Url, queues: list[str], prefix: str, tls: BrokerTLS
    ) -> BrokerStats:
        with self._lock:
            link = entry.link
            if link is not None and entry.tls != tls:  # new CA files: a new client
                entry.link = None
                link.close()
                link = None
            if link is None:
                link = entry.link = self._connect(url, self.per_url, tls)
                entry.tls = tls
        stats = link.stats(queues, prefix)
        read_at, _ = self._eviction.get(url, (0.0, None))
        if time.monotonic() - read_at >= EVICTION_CHECK_SECONDS:
            self._eviction[url] = (time.monotonic(), link.eviction_policy())
        return stats

    def eviction_policy(self, url: str) -> str | None:
        """The Redis's maxmemory-policy when it is one that deletes keys (None when it is
        noeviction, unknown, or the broker is not a Redis). Read with the statistics."""
        return self._eviction.get(url, (0.0, None))[1]

    async def _slot(self, entry: _Url) -> None:
        """Wait on the event loop (not in a thread) until the URL has a free thread."""
        while entry.running >= self.per_url:
            waiter = asyncio.get_running_loop().create_future()
            entry.waiting.append(waiter)
            try:
                await waiter
            finally:
                if waiter in entry.waiting:
                    entry.waiting.remove(waiter)
        entry.running += 1

    def _finished(self, url: str, entry: _Url) -> None:
        entry.running -= 1
        for waiter in entry.waiting:
            if not waiter.done():
                waiter.set_result(None)
                break
        if not entry.users and entry.running == 0 and self._urls.get(url) is entry:
            self._urls.pop(url, None)  # released while this read was running
            self._close_link(entry)

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
        entry = self._use(key, url)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._pending.add(key)
        try:
            await asyncio.wait_for(self._slot(entry), timeout)
        except TimeoutError as error:
            self._pending.discard(key)
            raise BrokerUnreachable(
                f"no answer from the broker within {timeout:g}s (all {self.per_url} reads "
                "of this broker are still hanging)"
            ) from error
        future = loop.run_in_executor(
            self._pool, self._read, url, entry, queues, prefix, tls or BrokerTLS()
        )

        # The thread may outlive a timeout; the key stays pending and the URL's slot taken
        # until it really ends, and its late exception is retrieved here so asyncio does
        # not log it as lost.
        def finished(done: asyncio.Future) -> None:
            self._pending.discard(key)
            self._finished(url, entry)
            if not done.cancelled():
                done.exception()

        future.add_done_callback(finished)
        try:
            return await asyncio.wait_for(asyncio.shield(future), deadline - loop.time())
        except TimeoutError as error:
            raise BrokerUnreachable(f"no answer from the broker within {timeout:g}s") from error
        except BrokerUnreachable:
            raise
        except Exception as error:  # any client error means: could not read
            self.forget(url)
            raise BrokerUnreachable(describe(error)) from error

    def forget(self, url: str) -> None:
        """Drop the URL's kept client (after an error): the next read opens a new one."""
        entry = self._urls.get(url)
        if entry is not None:
            self._close_link(entry)

    def _close_link(self, entry: _Url) -> None:
        with self._lock:
            link, entry.link = entry.link, None
        if link is not None:
            # Closing may talk to the broker (AMQP Close): never on the event loop.
            try:
                self._pool.submit(_close_quietly, link)
            except RuntimeError:  # the pool is shut down: close here
                _close_quietly(link)

    def close(self, wait: bool = False) -> None:
        """Close every link; `wait` for the closes to finish (tests: never on the loop)."""
        entries = list(self._urls.values())
        self._urls.clear()
        self._user_url.clear()
        for entry in entries:
            self._close_link(entry)
        self._pool.shutdown(wait=wait, cancel_futures=False)


def _close_quietly(link: StatsLink) -> None:
    try:
        link.close()
    except Exception:  # noqa: S110 - closing a broken client may fail too
        pass
