"""RabbitMQ broker (`amqp://`): the same Broker interface and guarantees as Redis.

Durable queues, persistent messages, publisher confirms on every publish (a new copy of
a task is always confirmed before the old one is acked), acks after completion, delays
and retries in TTL + dead-letter queues (never held unacked by a worker). The producer
and admin side is a BlockingConnection used from the caller's thread; the worker side
is consumer.Consumer, an AsyncioConnection on the worker's own event loop.
See docs/rabbitmq.md.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pika
import pika.exceptions

from ... import logs
from ...errors import PermissionDenied
from ...message import replayed_payload
from ..base import BrokerStats, DeadTask, Delivery, Outgoing, Plan, Settlement, redact
from ..tls import BrokerTLS, explain
from . import topology as topo
from .connection import BrokerDown
from .consumer import Consumer
from .management import ManagementSession
from .publish import Confirmer, Declared, ensure_queue, publish_task
from .rate import UNAVAILABLE_WAIT_MS, RateTokens
from .stats import build_stats, build_stats_without_management, parse_workers


def refusal(
    exc: pika.exceptions.ChannelClosedByBroker, user: str, operation: str
) -> PermissionDenied | None:
    """RabbitMQ's ACCESS_REFUSED (403, which names the right, the object and the user)
    as PermissionDenied; a passive check of a missing queue (404) too, since a
    passive-declaring producer cannot create one."""
    if exc.reply_code == 403:
        return PermissionDenied(user, operation, f"RabbitMQ refused it ({exc.reply_text})")
    if exc.reply_code == 404 and "queue" in str(exc.reply_text):
        detail = (
            f"{exc.reply_text}: this identity only checks that the queue exists "
            "(declare=passive), and a managed broker pre-declares spec.queues"
        )
        return PermissionDenied(user, operation, detail)
    return None


CLAIM_WAIT_S = 0.1  # claim() waits this long for a first delivery before returning []
PUBLISH_ATTEMPTS = 3
CONFIRM_BATCH = 500  # publishes per publisher-confirm wait
WAKE_INTERVAL_S = 1.0  # a producer wakes the operator about one queue at most this often
WAKE_REFUSED_BACKOFF_S = 600.0  # after a refused wake-up exchange, try again this much later
# What a kept connection that RabbitMQ closed meanwhile raises on its next use.
STALE_LINK_ERRORS = (
    pika.exceptions.StreamLostError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.ChannelWrongStateError,
    ConnectionResetError,
    BrokenPipeError,
)


def verify_server(
    params: pika.URLParameters, amqp_url: str, context: ssl.SSLContext | None
) -> None:
    """An amqps:// connection verifies the server against `context`'s CA and its host
    name (pika's own default context would skip the name: no server_hostname), unless
    the URL brings its own ssl_options. Plain amqp:// is left as it is."""
    if params.ssl_options is not None and "ssl_options" not in amqp_url and context is not None:
        params.ssl_options = pika.SSLOptions(context, params.host)


class RabbitMQBroker:
    """The Broker protocol, plus the PushWindow capability (a prefetch window)."""

    def __init__(self, url: str, prefix: str = "ebbtide", tls: BrokerTLS | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.tls = BrokerTLS.from_env() if tls is None else tls  # amqps:// verification
        self.options = topo.parse_options(url)
        self.vhost = topo.vhost_of(self.options.amqp_url)
        try:
            self.params = pika.URLParameters(self.options.amqp_url)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"bad RabbitMQ URL {redact(url)!r}: {exc}") from None
        # amqps:// verifies the server (verify_server); an https management API
        # verifies the same way.
        self._context: ssl.SSLContext | None = None
        management = self.options.management_url
        https = management is not None and management.lower().startswith("https://")
        if self.params.ssl_options is not None or https:
            self._context = self.tls.context()
        verify_server(self.params, self.options.amqp_url, self._context)
        self._lock = threading.RLock()
        self._conn: Any = None
        self._channel: Any = None
        self._declared = Declared()
        self._confirmer: Confirmer | None = None
        self._consumer: Consumer | None = None
        self._subscribed = False
        self._rate: RateTokens | None = None
        self._woken: dict[str, float] = {}  # queue -> when a wake-up was last published
        self.management = (
            ManagementSession(management, context=self._context if https else None)
            if management
            else None
        )

    # -- producer / admin (sync) ---------------------------------------------------------
    def _open_channel(self) -> Any:
        if self._conn is None or not self._conn.is_open:
            try:
                self._conn = pika.BlockingConnection(self.params)
            except (pika.exceptions.AMQPError, ssl.SSLError) as exc:  # SSL: a bad certificate
                self._conn = None
                raise ConnectionError(
                    f"cannot reach RabbitMQ at {redact(self.url)}: {explain(exc, self.tls)}"
                ) from None
            self._channel = None
            self._declared.forget()
        if self._channel is None or not self._channel.is_open:
            self._channel = self._conn.channel()
            self._confirmer = Confirmer(self._conn, self._channel)
            self._declared.forget()
        return self._channel

    def _retrying(self, step: Callable[[Any], bool]) -> None:
        """Run `step(channel)` until it returns True; a lost connection is reopened and
        the step resumed (steps keep their own progress, so nothing is published twice
        unless a confirm itself was lost: at-least-once)."""
        delay = 0.2
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                with self._lock:
                    if step(self._open_channel()):
                        return
            except (
                pika.exceptions.AMQPConnectionError,
                pika.exceptions.StreamLostError,
                pika.exceptions.ConnectionClosed,
                ConnectionError,
            ) as exc:
                self._reset()
                if attempt == PUBLISH_ATTEMPTS - 1:
                    raise ConnectionError(
                        f"RabbitMQ at {redact(self.url)} unreachable: {exc!r}"
                    ) from None
                time.sleep(delay)
                delay *= 2

    def _reset(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: S110 - already broken
                pass

    def enqueue(
        self, queue: str, messages: Sequence[Outgoing], max_backlog: int, unique_ttl_ms: int
    ) -> list[str]:
        if any(m.key for m in messages):
            raise ValueError(
                "unique tasks (key=...) need a redis:// broker: RabbitMQ has no atomic "
                "de-duplication, so Ebbtide does not pretend to offer it there"
            )
        replies: list[str] = []

        def step(channel: Any) -> bool:
            ensure_queue(channel, self._declared, self.prefix, queue, self.options.passive_declare)
            room = None
            if max_backlog:
                depth = channel.queue_declare(
                    topo.ready_queue(self.prefix, queue), passive=True
                ).method.message_count
                room = max_backlog - depth
            assert self._confirmer is not None
            todo = list(messages[len(replies) :])
            full = room is not None and room < len(todo)
            if room is not None:
                todo = todo[: max(0, room)]
            for start in range(0, len(todo), CONFIRM_BATCH):
                chunk = todo[start : start + CONFIRM_BATCH]
                for m in chunk:
                    publish_task(
                        channel,
                        self._declared,
                        self.prefix,
                        queue,
                        m.payload.encode(),
                        m.priority,
                        m.delay_ms,
                        m.task_id,
                        confirmer=self._confirmer,
                        passive=self.options.passive_declare,
                    )
                if start + CONFIRM_BATCH >= len(todo) and any(m.delay_ms <= 0 for m in todo):
                    self._wake(channel, queue)  # after the tasks: they are routed first
                self._confirmer.wait()  # only confirmed ids are reported as sent
                replies.extend(m.task_id for m in chunk)
            if full:
                replies.append("!full")
            return True

        try:
            self._retrying(step)
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._channel = None  # closed by the refusal; the next call opens another
            refused = refusal(exc, self.params.credentials.username, f"enqueue to {queue!r}")
            if refused is not None:
                raise refused from exc
            raise
        return replies

    def _wake(self, channel: Any, queue: str) -> None:
        """Tell the operator the queue got tasks (topology.wake_exchange), at most once
        per WAKE_INTERVAL_S per queue: a producer cannot tell cheaply whether the queue
        has a consumer, so it always tells, rate-limited; the operator acts only on
        TaskQueues with no ready worker. Not mandatory: with no operator bound it is
        simply dropped. Confirmed with the tasks' batch (no extra round trip)."""
        now = time.monotonic()
        if now - self._woken.get(queue, -WAKE_INTERVAL_S) < WAKE_INTERVAL_S:
            return
        assert self._confirmer is not None
        exchange = topo.wake_exchange(self.prefix)
        if self._declared.due(exchange):
            # On a channel of its own: a refused declaration (permissions) closes that
            # channel, never the one the tasks were just published on.
            side = channel.connection.channel()
            try:
                side.exchange_declare(exchange, "fanout", durable=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._woken[queue] = now + WAKE_REFUSED_BACKOFF_S
                logs.warn("rabbitmq wake-up exchange refused (the operator sees new tasks at "
                          "its next poll instead)", exchange=exchange, error=str(exc))  # fmt: skip
                return
            finally:
                if side.is_open:
                    side.close()
            self._declared.mark(exchange)
        self._confirmer.publish("", queue.encode(), None, exchange=exchange, mandatory=False)
        self._woken[queue] = now

    def stats(
        self, queues: Sequence[str] | None, worker_ttl_ms: int, prefix: str | None = None
    ) -> BrokerStats:
        """Statistics under `prefix` (default: this broker's). A kept broker reuses its
        AMQP connection and its management HTTP connection across calls; an AMQP
        connection the server dropped while idle is reopened once, within the call."""
        prefix = prefix or self.prefix
        now = time.time()
        queue_list = None
        if self.management is not None:
            try:
                queue_list = self.management.queues(self.vhost)
            except Exception as exc:  # unreachable plugin: fall back to AMQP + heartbeats
                logs.warn("rabbitmq management API unavailable", error=str(exc))
        names = [
            q["name"]
            for q in queue_list or ()
            if (kind := topo.classify(prefix, str(q.get("name", "")))) and kind.kind == "worker"
        ]
        try:
            bodies = self._peek_all(names)
            live = self._depths(queues or (), prefix) if queue_list is not None else {}
        except STALE_LINK_ERRORS:
            with self._lock:
                self._reset()
            bodies = self._peek_all(names)
            live = self._depths(queues or (), prefix) if queue_list is not None else {}
        heartbeats = parse_workers(bodies, now, worker_ttl_ms / 1000)
        if queue_list is not None:
            return build_stats(prefix, now, queue_list, heartbeats, queues, live_ready=live)
        if not queues:  # nothing to read over AMQP: still, an unreachable broker raises
            with self._lock:
                self._open_channel()
        ready = {q: self._depth(q, prefix) for q in queues or ()}
        return build_stats_without_management(now, ready, heartbeats)

    def _depths(self, queues: Sequence[str], prefix: str) -> dict[str, int]:
        """Ready counts now, from passive declares on one channel: the management API's
        figures are samples up to collect_statistics_interval old, too stale to see the
        task that just woke the operator."""
        if not queues:
            return {}
        depths: dict[str, int] = {}
        with self._lock:
            channel = self._open_channel().connection.channel()
            try:
                for queue in queues:
                    try:
                        ok = channel.queue_declare(topo.ready_queue(prefix, queue), passive=True)
                    except pika.exceptions.ChannelClosedByBroker:
                        channel = self._open_channel().connection.channel()  # never declared
                        continue
                    depths[queue] = ok.method.message_count
            finally:
                if channel.is_open:
                    channel.close()
        return depths

    def _depth(self, queue: str, prefix: str) -> int:
        with self._lock:
            channel = self._open_channel().connection.channel()
            try:
                ok = channel.queue_declare(topo.ready_queue(prefix, queue), passive=True)
                return ok.method.message_count
            except pika.exceptions.ChannelClosedByBroker:
                return 0  # never declared yet
            finally:
                if channel.is_open:
                    channel.close()

    def _peek_all(self, queue_names: Sequence[str]) -> list[bytes]:
        """Read each queue's messages without consuming them (closing the channel
        requeues every unacked basic.get)."""
        if not queue_names:
            return []
        bodies: list[bytes] = []
        with self._lock:
            channel = self._open_channel().connection.channel()
            try:
                for name in queue_names:
                    try:
                        method, _, body = channel.basic_get(name, auto_ack=False)
                    except pika.exceptions.ChannelClosedByBroker:
                        channel = self._open_channel().connection.channel()  # queue expired
                        continue
                    if method is not None:
                        bodies.append(body)
            finally:
                if channel.is_open:
                    channel.close()
        return bodies

    def _known_queues(self) -> list[str]:
        if self.management is None:
            return []
        try:
            listing = self.management.queues(self.vhost)
        except Exception as exc:
            raise ConnectionError(
                f"listing queues needs the RabbitMQ management API ({exc}); pass --queue"
            ) from None
        names = set()
        for q in listing:
            kind = topo.classify(self.prefix, str(q.get("name", "")))
            if kind is not None and kind.kind == "dead":
                names.add(kind.queue)
        return sorted(names)

    def _walk_dead(self, queue: str, visit: Callable[[Any, Any, Any, bytes], bool]) -> int:
        """basic.get every message of one DLQ; `visit` returns True to ack it. The rest
        go back (unacked, then the channel closes) in their order."""
        done = 0
        with self._lock:
            channel = self._open_channel().connection.channel()
            channel.confirm_delivery()
            try:
                name = topo.dead_queue(self.prefix, queue)
                try:
                    depth = channel.queue_declare(name, passive=True).method.message_count
                except pika.exceptions.ChannelClosedByBroker:
                    return 0
                for _ in range(depth):
                    method, props, body = channel.basic_get(name, auto_ack=False)
                    if method is None:
                        break
                    if visit(channel, method, props, body):
                        channel.basic_ack(method.delivery_tag)
                        done += 1
            finally:
                if channel.is_open:
                    channel.close()
        return done

    def dlq_list(self, queue: str | None, limit: int) -> list[DeadTask]:
        out: list[DeadTask] = []
        for name in [queue] if queue else self._known_queues():

            def visit(_ch: Any, _m: Any, props: Any, body: bytes, name: str = name) -> bool:
                if len(out) < limit:
                    out.append(_dead_task(name, props, body))
                return False

            self._walk_dead(name, visit)
        return out

    def dlq_replay(self, dead: Sequence[DeadTask]) -> int:
        done = 0
        for queue, ids in _ids_by_queue(dead).items():

            def visit(ch: Any, _m: Any, props: Any, body: bytes, q: str = queue, ids=ids) -> bool:
                task = _dead_task(q, props, body)
                if task.member not in ids:
                    return False
                fresh = replayed_payload(task.payload).encode()
                prio = props.priority or 0
                publish_task(ch, Declared(), self.prefix, q, fresh, prio, 0, task.task_id)
                return True

            done += self._walk_dead(queue, visit)
        return done

    def dlq_purge(self, dead: Sequence[DeadTask]) -> int:
        done = 0
        for queue, ids in _ids_by_queue(dead).items():

            def visit(_c: Any, _m: Any, props: Any, body: bytes, q: str = queue, ids=ids) -> bool:
                return _dead_task(q, props, body).member in ids

            done += self._walk_dead(queue, visit)
        return done

    def close(self) -> None:
        with self._lock:
            self._reset()
        if self.management is not None:
            self.management.close()

    # -- worker (asyncio) ----------------------------------------------------------------
    async def aconnect(self) -> None:
        """Open the publishing link (the consuming one opens on the first claim, whose
        lease sets its heartbeat)."""
        self._consumer = Consumer(self.params, self.options.amqp_url, self.prefix, self.options)
        self._subscribed = False
        try:
            await self._consumer.start()
        except BaseException:
            await self._consumer.stop()
            self._consumer = None
            raise
        self._rate = RateTokens(self._consumer.out, self.prefix)

    async def aclose(self) -> None:
        self._rate = None
        if self._consumer is not None:
            await self._consumer.stop()  # closing the channel requeues anything unacked
            self._consumer = None

    def configure_window(self, concurrency: int, prefetch: int, adaptive: bool) -> None:
        """(Worker, before the first claim) The prefetch window: concurrency + prefetch,
        sized by time above that when `adaptive` (no explicit --prefetch); see
        window.py."""
        self._worker_side().configure(concurrency, prefetch, adaptive)

    def window(self) -> int:
        """The unacked deliveries RabbitMQ may push to this worker right now."""
        consumer = self._consumer
        return consumer.window if consumer is not None else 0

    async def release(self) -> None:
        """(Worker, stopping) Cancel the consumers and nack every delivery not handed to
        the worker yet, with requeue, at once."""
        self._worker_side().release()

    def _worker_side(self) -> Consumer:
        if self._consumer is None:
            raise ConnectionError("RabbitMQ worker connection is not open (aconnect first)")
        return self._consumer

    async def claim(self, plan: Plan, n: int, lease_ms: int) -> list[Delivery]:
        """Deliveries RabbitMQ pushed to us, in plan order. The first claim subscribes
        with basic_qos prefetch = n (the worker's capacity: concurrency + prefetch).
        `lease_ms` has no AMQP equivalent: a delivery is ours until acked or the channel
        closes (see consumer_timeout in docs/rabbitmq.md)."""
        consumer = self._worker_side()
        if not consumer.link.started:
            try:
                await consumer.open(lease_ms)
            except BrokerDown:
                raise
            except Exception as exc:
                raise BrokerDown(f"cannot reach RabbitMQ: {exc}") from None
        if not self._subscribed:
            self._subscribed = True  # a failed attempt is retried by the reconnect
            await consumer.subscribe([q for q, _ in plan], n)
        if not consumer.connected:
            raise BrokerDown("RabbitMQ connection is down (reconnecting)")
        lost = await consumer.take_lost(consumer.subs.queues)
        if lost is not None:
            return lost  # a lost task alone, or nothing while others are still held
        got = consumer.take(plan, n)
        if got:
            return got
        assert consumer.arrived is not None
        consumer.arrived.clear()
        got = consumer.take(plan, n)
        if not got:
            try:
                await asyncio.wait_for(consumer.arrived.wait(), CLAIM_WAIT_S)
            except TimeoutError:
                return []
            got = consumer.take(plan, n)
        return got

    async def settle(self, settlements: Sequence[Settlement], dead_ttl_ms: int) -> int:
        consumer = self._worker_side()
        return await consumer.settle(settlements, dead_ttl_ms)

    async def heartbeat(
        self, worker_id: str, info: str, held: Sequence[Delivery], lease_ms: int, ttl_ms: int
    ) -> int:
        """Publish this worker's latest state (plus its own cumulative counters) to its
        own last-value queue; an empty `info` deregisters the worker."""
        consumer = self._worker_side()
        if not info:
            await consumer.delete_heartbeat(worker_id)
            return 0
        body = json.loads(info)
        by_queue: dict[str, int] = {}
        for d in held:
            by_queue[d.queue] = by_queue.get(d.queue, 0) + 1
        body["busy_us"] = dict(consumer.busy_us)
        body["completed"] = dict(consumer.completed)
        body["held_by_queue"] = by_queue
        raw = json.dumps(body).encode()
        await consumer.publish_heartbeat(worker_id, raw, ttl_ms)
        return len(held)

    async def acquire_rate(self, name: str, limit: int, window_ms: int) -> tuple[int, int]:
        """Sliding-window rate limit shared by every worker: a token is a confirmed
        publish into a length-limited TTL queue (see rate.py). Without a
        connection it is (0, a short wait), never an exception."""
        rate = self._rate
        if rate is None:
            return 0, UNAVAILABLE_WAIT_MS
        return await rate.acquire(name, limit, window_ms)


def _dead_task(queue: str, props: Any, body: bytes) -> DeadTask:
    headers = props.headers or {}
    payload = body.decode("utf-8", "replace")
    task_id = props.message_id or ""
    if not task_id:
        try:
            task_id = str(json.loads(payload).get("id", ""))
        except (ValueError, AttributeError):
            task_id = ""
    died = headers.get(topo.DIED_AT_HEADER)
    died_at = died / 1000 if isinstance(died, int) else float(props.timestamp or 0)
    return DeadTask(queue, task_id, task_id, died_at, payload)


def _ids_by_queue(dead: Sequence[DeadTask]) -> dict[str, set[str]]:
    grouped: dict[str, set[str]] = {}
    for item in dead:
        grouped.setdefault(item.queue, set()).add(item.member)
    return grouped
