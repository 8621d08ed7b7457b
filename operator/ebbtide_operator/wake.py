"""Push activation: the brokers tell the operator that a queue got tasks, so a TaskQueue
scaled to zero ticks at once instead of at its next poll (polls stay the safety net).

    Redis     the enqueue script PUBLISHes the queue's name on `<prefix>:wake` when ready
              work lands on an idle queue or no worker is registered (enqueue.lua); the
              operator SUBSCRIBEs on one node (wake_redis.py): the one Redis, any online
              node of a Redis Cluster (the cluster bus carries a PUBLISH to every
              node; another node when that one fails), or the master Sentinel names
              (the new one after a failover)
    RabbitMQ  producers publish the queue's name to the fanout exchange `<prefix>.wake`,
              at most once a second per queue (topology.wake_exchange); the operator
              binds a private, short-lived queue to it

`WakeHub` keeps one listener per (broker URL, key prefix, TLS files) that some TaskQueue
watches, and stops it when the last one stops watching. TLS brokers are verified with the
same CA (and client certificate) as the statistics reads. A listener that loses its
broker reconnects with backoff; a Redis subscription is also checked every
CHECK_SECONDS (a PING it must answer within STALE_SECONDS, and on Sentinel whether its
node is still the master). While a listener is down, polls carry on as before. Listeners
never block the event loop: Redis is read with redis.asyncio, RabbitMQ in a thread of
its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from ebbtide.brokers import AMQP_SCHEMES, REDIS_HA_SCHEMES, REDIS_SCHEMES
from ebbtide.brokers.redis.clients import BadRedisUrl
from ebbtide.brokers.tls import BrokerTLS

from ebbtide_operator.broker_io import with_amqp_timeouts
from ebbtide_operator.wake_redis import Node, Place, close_quietly, place_for

log = logging.getLogger(__name__)

RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)  # reconnect backoff of a listener
CHECK_SECONDS = 5.0  # how often a live Redis subscription is checked
STALE_SECONDS = 15.0  # no reply for this long (not even to the PING): the node hangs
PING_TEXT = "ebbtide-wake"
Deliver = Callable[[str], None]  # called on the event loop with a queue name


class Listener(Protocol):
    def stop(self) -> None: ...


def redis_channel(prefix: str) -> str:
    return f"{prefix}:wake"


def retry_delay(failures: int) -> float:
    """The pause before reconnect attempt number `failures` (0: the first)."""
    return RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]


class NodeChanged(ConnectionError):
    """The subscribed node no longer hears the wake-ups (Sentinel named a new master)."""


@dataclass
class Liveness:
    """When a live subscription is checked, and when its silence means a hung node."""

    heard: float  # when the node last said anything (a message, a PONG)
    checked: float

    def due(self, now: float) -> bool:
        if now - self.checked < CHECK_SECONDS:
            return False
        self.checked = now
        return True

    def stale(self, now: float) -> bool:
        return now - self.heard >= STALE_SECONDS


class RedisListener:
    """SUBSCRIBE `<prefix>:wake` on the node its Place names, as an asyncio task."""

    def __init__(
        self, url: str, prefix: str, deliver: Deliver, tls: BrokerTLS | None = None
    ) -> None:
        self.url, self.channel, self.deliver = url, redis_channel(prefix), deliver
        self.place: Place = place_for(url, tls or BrokerTLS())
        self.node: Node | None = None  # where the live subscription is (for tests)
        self.subscribed = asyncio.Event()  # set while a subscription is live (for tests)
        self._failures = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                try:
                    await self._listen()
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - any failure: reconnect later
                    log.debug("wake listener on %s lost: %s", self.channel, type(error).__name__)
                finally:
                    self.subscribed.clear()
                    self.node = None
                await asyncio.sleep(retry_delay(self._failures))
                self._failures += 1
        finally:
            await self.place.aclose()

    async def _listen(self) -> None:
        """Subscribe and deliver until the connection fails or goes stale (raises)."""
        client, node = await self.place.connect()
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(self.channel)
                loop = asyncio.get_running_loop()
                alive = Liveness(heard=loop.time(), checked=loop.time())
                while True:
                    message = await pubsub.get_message(timeout=CHECK_SECONDS)
                    now = loop.time()
                    if message is not None:
                        alive.heard = now
                        self._received(message, node)
                    if alive.due(now):
                        if alive.stale(now):
                            raise TimeoutError(f"no reply for {STALE_SECONDS:g}s")
                        if not await self.place.still_current(node):
                            raise NodeChanged(f"{self.channel}: the node changed")
                        await pubsub.ping(PING_TEXT)
        finally:
            await close_quietly(client)

    def _received(self, message: dict[str, Any], node: Node | None) -> None:
        kind = message.get("type")
        if kind == "subscribe":  # confirmed: a PUBLISH from now on is heard
            self.node, self._failures = node, 0
            self.subscribed.set()
        elif kind == "message":
            data = message["data"]
            self.deliver(data.decode() if isinstance(data, bytes) else str(data))

    def stop(self) -> None:
        self._task.cancel()


class RabbitMQListener:
    """A private queue bound to `<prefix>.wake`, consumed by a thread of its own (pika's
    BlockingConnection); deliveries are handed to the event loop."""

    def __init__(
        self, url: str, prefix: str, deliver: Deliver, tls: BrokerTLS | None = None
    ) -> None:
        from ebbtide.brokers.rabbitmq import topology as topo

        self._topo = topo
        self.exchange = topo.wake_exchange(prefix)
        self.amqp_url = topo.parse_options(with_amqp_timeouts(url)).amqp_url
        self.tls = tls or BrokerTLS()
        self._loop = asyncio.get_running_loop()
        self._deliver = deliver
        self._stopped = threading.Event()
        self.subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ebbtide-wake", daemon=True)
        self._thread.start()

    def _on_message(self, _channel, _method, _props, body: bytes) -> None:
        queue = body.decode(errors="replace")
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._deliver, queue)

    def _run(self) -> None:
        import pika
        from ebbtide.brokers.rabbitmq.broker import verify_server

        failures = 0
        while not self._stopped.is_set():
            connection = None
            try:
                params = pika.URLParameters(self.amqp_url)
                if params.ssl_options is not None:  # amqps://: the operator's CA
                    verify_server(params, self.amqp_url, self.tls.context())
                connection = pika.BlockingConnection(params)
                channel = connection.channel()
                channel.exchange_declare(self.exchange, "fanout", durable=True)
                declared = channel.queue_declare(
                    "", exclusive=True, auto_delete=True, arguments=self._topo.WAKE_ARGS
                )
                queue = declared.method.queue
                channel.queue_bind(queue, self.exchange)
                channel.basic_consume(queue, self._on_message, auto_ack=True)
                self.subscribed.set()
                failures = 0
                while not self._stopped.is_set():
                    connection.process_data_events(time_limit=0.5)
            except Exception as error:  # noqa: BLE001 - any failure: reconnect later
                log.debug("wake listener on %s lost: %s", self.exchange, type(error).__name__)
            finally:
                self.subscribed.clear()
                if connection is not None:
                    with contextlib.suppress(Exception):
                        connection.close()
            self._stopped.wait(retry_delay(failures))
            failures += 1

    def stop(self) -> None:
        self._stopped.set()

    def join(self, timeout: float) -> None:
        """Wait for the thread to close its connection (tests; never on the loop)."""
        self._thread.join(timeout)


def open_listener(url: str, prefix: str, deliver: Deliver, tls: BrokerTLS) -> Listener | None:
    """The listener for `url`'s broker, or None for a scheme with no push (or a Redis URL
    that cannot be used: the statistics read reports it)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in REDIS_SCHEMES or scheme in REDIS_HA_SCHEMES:
        try:
            return RedisListener(url, prefix, deliver, tls)
        except BadRedisUrl:
            return None
    if scheme in AMQP_SCHEMES:
        return RabbitMQListener(url, prefix, deliver, tls)
    return None


Source = tuple[str, str, BrokerTLS]  # (url, prefix, TLS files): one listener each


@dataclass
class _Watch:
    source: Source
    queues: frozenset[str]
    wake: Callable[[], None]


@dataclass
class _Source:
    listener: Listener | None
    keys: set[str] = field(default_factory=set)


class WakeHub:
    """Routes each broker wake-up to the TaskQueues that read that queue there."""

    def __init__(
        self, listen: Callable[[str, str, Deliver, BrokerTLS], Listener | None] = open_listener
    ) -> None:
        self._listen = listen
        self._watches: dict[str, _Watch] = {}
        self._sources: dict[Source, _Source] = {}

    def watch(
        self,
        key: str,
        url: str,
        prefix: str,
        queues: Iterable[str],
        wake: Callable[[], None],
        tls: BrokerTLS | None = None,
    ) -> None:
        """`wake()` runs (on the event loop) when one of `queues` at `url` gets tasks;
        `tls`: the CA (and client certificate) the statistics reads verify `url` with.
        Called after every tick: cheap when nothing changed."""
        source = (url, prefix, tls or BrokerTLS())
        old = self._watches.get(key)
        if old is not None and old.source != source:
            self.unwatch(key)
        self._watches[key] = _Watch(source, frozenset(queues), wake)
        entry = self._sources.get(source)
        if entry is None:
            listener = self._listen(
                url, prefix, lambda queue: self._deliver(source, queue), source[2]
            )
            entry = self._sources[source] = _Source(listener)
        entry.keys.add(key)

    def unwatch(self, key: str) -> None:
        watch = self._watches.pop(key, None)
        if watch is None:
            return
        entry = self._sources.get(watch.source)
        if entry is None:
            return
        entry.keys.discard(key)
        if not entry.keys:
            del self._sources[watch.source]
            if entry.listener is not None:
                entry.listener.stop()

    def listener(self, url: str, prefix: str, tls: BrokerTLS | None = None) -> Listener | None:
        entry = self._sources.get((url, prefix, tls or BrokerTLS()))
        return entry.listener if entry else None

    def _deliver(self, source: Source, queue: str) -> None:
        entry = self._sources.get(source)
        for key in list(entry.keys if entry else ()):
            watch = self._watches.get(key)
            if watch is not None and queue in watch.queues:
                watch.wake()

    def close(self) -> None:
        for key in list(self._watches):
            self.unwatch(key)
