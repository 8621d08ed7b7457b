"""One of the worker's pika AsyncioConnections and its channel, kept alive.

A worker has two: one consumes and acks, one publishes (retries, dead letters,
hand-backs, heartbeats, rate tokens), so a memory alarm, which blocks connections that
publish, never blocks an ack. `Link` connects, reconnects with backoff when the
connection or the channel goes (a supervisor task), pings an idle link so a silent one
(blackholed, broker frozen) is dropped within a couple of ping periods, turns pika's
callbacks into awaitables (`rpc`), and publishes with publisher confirms (`publish`: a
future per message). Its owner (consumer.Consumer) hears of every new channel and every
loss through three hooks.

`gen` counts channels: it changes on every loss and every new channel, so whatever was
delivered on an older channel can be told apart (RabbitMQ requeued it when that channel
closed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pika
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection

from ... import causes, logs
from . import topology as topo
from .inbound import FastDeliveries
from .publish import Declared, Unconfirmed, confirmed_tags, dead_message, queue_declarations
from .publish import task_message as build_task_message
from .rpc import await_reply
from .transport import WriteThrough

CALL_TIMEOUT_S = 30.0
CONSUMER_TIMEOUT_HINT = (
    "RabbitMQ's consumer_timeout closed the channel while a task ran longer than it: "
    "raise `consumer_timeout` (ms) in rabbitmq.conf above your longest task, or at runtime "
    "`rabbitmqctl eval 'application:set_env(rabbit, consumer_timeout, <ms>).'` "
    "(RabbitMQ >= 3.12 also takes the per-queue x-consumer-timeout argument / "
    "consumer-timeout policy); the task will run again and, after max_redeliveries, "
    "go to the DLQ"
)


class BrokerDown(ConnectionError):
    """The worker's RabbitMQ connection is down; the consumer is reconnecting."""


def open_failure(exc: BaseException) -> str:
    """Why a connection did not open, in the socket's own words ("[Errno 111] Connection
    refused") where pika nests them inside its workflow's errors; logged on every retry,
    so it must read as one short line."""
    socket = causes.socket_error(exc)
    root = socket if socket is not None else list(causes.causes(exc))[-1]
    return causes.one_line(root) or type(root).__name__


class Link:
    """One supervised connection + channel on the worker's event loop.

    Hooks: `on_channel()` runs as soon as a new channel is open (reset per-channel
    state), `on_ready()` once it is in confirm mode (start consuming), and `on_lost()`
    when the connection or channel is gone; it returns how many buffered deliveries it
    dropped, for the log."""

    def __init__(
        self,
        params: pika.URLParameters,
        prefix: str,
        on_channel: Callable[[], None],
        on_ready: Callable[[], Awaitable[None]],
        on_lost: Callable[[], int],
        ping_s: float = 5.0,
        name: str = "consume",
        fast_deliveries: bool = False,
    ) -> None:
        """`fast_deliveries`: this link consumes, so its deliveries are read by
        inbound.FastDeliveries rather than pika's per-frame path."""
        self.params, self.prefix, self.ping_s, self.name = params, prefix, ping_s, name
        self.fast_deliveries = fast_deliveries
        self.inbound: FastDeliveries | None = None
        self.blocked = False  # RabbitMQ blocked this connection (an alarm: it published)
        self._on_channel, self._on_ready, self._on_lost = on_channel, on_ready, on_lost
        self.loop: asyncio.AbstractEventLoop | None = None
        self.gen = 0
        self.conn: Any = None
        self.channel: Any = None
        self.declared = Declared()
        self.channel_close_reason: str = ""
        self.writes: WriteThrough | None = None
        self._running = False
        self._down: asyncio.Future | None = None  # resolved when this connection is gone
        self._waiting: set[asyncio.Future] = set()  # RPC replies and confirms in flight
        self._confirms: dict[int, tuple[asyncio.Future, str | None]] = {}
        self._returned: set[str | None] = set()
        self._next_publish = 1
        self._supervisor: asyncio.Task | None = None
        self._pinger: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None

    # -- lifetime ------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect once; raise if that fails (the worker retries with backoff). Later
        connection losses are healed by the supervisor task."""
        self.loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._running = True
        try:
            await self._open()
        except Exception as exc:
            self._running = False
            await self.close()
            if isinstance(exc, BrokerDown):
                raise  # already says "cannot reach RabbitMQ"
            raise BrokerDown(f"cannot reach RabbitMQ: {exc}") from None
        self._supervisor = asyncio.create_task(self._supervise())
        self._pinger = asyncio.create_task(self._ping())

    @property
    def started(self) -> bool:
        return self._supervisor is not None

    async def stop_supervising(self) -> None:
        """No more reconnects (the worker is stopping); the connection stays open."""
        self._running = False
        if self._wake is not None:
            self._wake.set()
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
            self._supervisor = None

    @property
    def running(self) -> bool:
        return self._running

    @property
    def connected(self) -> bool:
        conn, channel = self.conn, self.channel
        return conn is not None and conn.is_open and channel is not None and channel.is_open

    def drop(self, reason: str) -> None:
        """Close the connection (the supervisor reconnects): RabbitMQ requeues every
        unacked delivery at once."""
        if self.conn is not None and self.conn.is_open:
            with contextlib.suppress(Exception):
                self.conn.close(320, reason)

    def abandon(self, reason: str) -> None:
        """Give up on a silent connection at once: a graceful close would wait for a
        CloseOk that never comes, so the supervisor reconnects without waiting for it
        (pika aborts the old socket when its own heartbeat check fails)."""
        logs.warn("rabbitmq link silent, reconnecting", link=self.name, reason=reason)
        self.drop(reason)
        if self._down is not None and not self._down.done():
            self._down.set_result(ConnectionError(reason))

    async def _ping(self) -> None:
        """A round trip every `ping_s` (a passive declare of amq.direct, which always
        exists) on the current channel; no answer within two periods drops the link.
        Skipped while RabbitMQ blocks the connection: blocked is not dead."""
        while self._running:
            await asyncio.sleep(self.ping_s)
            if not self.connected or self.blocked:
                continue
            channel, gen = self.channel, self.gen
            try:
                await asyncio.wait_for(self._ping_once(channel), 2 * self.ping_s)
            except TimeoutError:
                if gen == self.gen and not self.blocked:
                    self.abandon(f"no answer to a ping within {2 * self.ping_s:.0f}s")
            except Exception:  # noqa: S110 - a lost link is the supervisor's to heal
                pass

    async def _ping_once(self, channel: Any) -> None:
        await self.rpc(
            lambda done: channel.exchange_declare("amq.direct", passive=True, callback=done)
        )

    async def _supervise(self) -> None:
        delay = 0.2
        while self._running:
            assert self._down is not None
            exc = await asyncio.shield(self._down)  # stop() cancels us, not the future
            if not self._running:
                return
            self._lost(exc)
            await self.close()
            while self._running:
                assert self._wake is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                delay = min(delay * 2, 5.0)
                if not self._running:
                    return
                try:
                    await self._open()
                except Exception as exc:
                    logs.warn("rabbitmq reconnect failed", error=str(exc) or type(exc).__name__)
                    self._lost(exc)
                    await self.close()
                    continue
                delay = 0.2
                break

    async def _open(self) -> None:
        loop = self.loop
        assert loop is not None
        opened: asyncio.Future = loop.create_future()
        down: asyncio.Future = loop.create_future()
        self._down = down

        def on_open(_conn: Any) -> None:
            if not opened.done():
                opened.set_result(None)

        def on_open_error(_conn: Any, exc: BaseException) -> None:
            if not opened.done():
                where = f"{self.params.host}:{self.params.port}"
                reason = open_failure(exc)
                opened.set_exception(BrokerDown(f"cannot reach RabbitMQ at {where}: {reason}"))
            if not down.done():
                down.set_result(exc)

        def on_close(conn: Any, exc: BaseException) -> None:
            if not down.done():
                down.set_result(exc)
            if self.conn is conn:
                self._fail_waiting(BrokerDown(f"RabbitMQ connection lost: {exc}"))

        self.conn = AsyncioConnection(
            self.params,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
            custom_ioloop=loop,
        )
        await asyncio.wait_for(opened, CALL_TIMEOUT_S)
        self.blocked = False
        self.conn.add_on_connection_blocked_callback(lambda *_a: self._set_blocked(True))
        self.conn.add_on_connection_unblocked_callback(lambda *_a: self._set_blocked(False))
        self.writes = WriteThrough.install(self.conn)
        if self.fast_deliveries:
            self.inbound = FastDeliveries.install(self.conn)
        channel = await self.rpc(lambda done: self.conn.channel(on_open_callback=done))
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        self.channel = channel
        self.channel_close_reason = ""
        self.gen += 1
        self.declared.forget()
        self._on_channel()
        self._confirms, self._returned, self._next_publish = {}, set(), 1
        await self.rpc(lambda done: channel.confirm_delivery(self._on_confirm, callback=done))
        await self._on_ready()

    def _set_blocked(self, blocked: bool) -> None:
        self.blocked = blocked
        logs.warn("rabbitmq connection " + ("blocked" if blocked else "unblocked"), link=self.name)

    def _on_channel_closed(self, channel: Any, reason: Any) -> None:
        self.channel_close_reason = str(reason)
        if "acknowledgement" in str(reason) and "timed out" in str(reason):
            logs.error("consumer timeout", reason=str(reason), fix=CONSUMER_TIMEOUT_HINT)
        if channel is not self.channel:
            return
        # One channel per connection: without it the connection is useless, so drop it
        # and let the supervisor reconnect (which also requeues everything unacked).
        self._fail_waiting(BrokerDown(f"RabbitMQ channel closed: {reason}"))
        if self._down is not None and not self._down.done():
            self._down.set_result(pika.exceptions.ChannelClosed(406, str(reason)))

    def _lost(self, exc: BaseException | None) -> None:
        buffered = self._on_lost()
        error = (str(exc) or type(exc).__name__) if exc else "closed"
        logs.warn("rabbitmq connection lost", link=self.name, error=error, buffered=buffered)
        self.gen += 1  # every delivery of the old channel is stale now
        self._fail_waiting(BrokerDown(f"RabbitMQ connection lost: {error}"))

    def _fail_waiting(self, exc: BaseException) -> None:
        for fut in list(self._waiting):
            if not fut.done():
                fut.set_exception(exc)
        self._waiting.clear()
        self._confirms.clear()

    async def close(self) -> None:
        """Close the connection (closing the channel requeues anything unacked)."""
        conn, self.conn, self.channel = self.conn, None, None
        down = self._down
        if conn is None:
            return
        if not conn.is_closed and not conn.is_closing:
            with contextlib.suppress(Exception):
                conn.close()  # open: graceful; still opening: aborts the stream
        if down is not None and not down.done() and not conn.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(down), 5)

    # -- awaitable AMQP calls ------------------------------------------------------------
    async def rpc(self, start: Callable[[Callable[[Any], None]], Any]) -> Any:
        """A pika call's reply; a lost connection or channel fails it with BrokerDown."""
        assert self.loop is not None
        return await await_reply(self.loop, start, self._waiting, CALL_TIMEOUT_S, BrokerDown)

    def watch(self, fut: asyncio.Future) -> None:
        """Fail `fut` with BrokerDown too when the connection or channel goes."""
        self._waiting.add(fut)
        fut.add_done_callback(self._waiting.discard)

    def open_channel(self) -> Any:
        """The channel, or BrokerDown while reconnecting."""
        if not self.connected:
            raise BrokerDown("RabbitMQ connection is down (reconnecting)")
        return self.channel

    async def declare(self, name: str, arguments: dict, durable: bool = True) -> None:
        if not self.declared.due(name):
            return
        channel = self.open_channel()
        await self.rpc(
            lambda done: channel.queue_declare(
                name, durable=durable, arguments=arguments, callback=done
            )
        )
        self.declared.mark(name)

    async def ensure_queue(self, queue: str) -> None:
        for name, arguments in queue_declarations(self.prefix, queue):
            await self.declare(name, arguments)

    # -- publishing with confirms ----------------------------------------------------------
    def publish(self, routing: str, body: bytes, props: pika.BasicProperties) -> asyncio.Future:
        """Publish (mandatory); the future resolves when RabbitMQ confirms it and fails
        with Unconfirmed on a nack or a return, BrokerDown on a lost connection."""
        channel = self.open_channel()
        assert self.loop is not None
        fut = self.loop.create_future()
        channel.basic_publish("", routing, body, props, mandatory=True)
        self._confirms[self._next_publish] = (fut, props.message_id)
        self._next_publish += 1
        self._waiting.add(fut)
        return fut

    def _on_confirm(self, frame: Any) -> None:
        tags, nack = confirmed_tags(frame.method, self._confirms)
        for tag in tags:
            entry = self._confirms.pop(tag, None)
            if entry is None:
                continue
            fut, message_id = entry
            self._waiting.discard(fut)
            if fut.done():
                continue
            if nack:
                fut.set_exception(Unconfirmed("message nacked by RabbitMQ"))
            elif message_id in self._returned:
                self._returned.discard(message_id)
                fut.set_exception(Unconfirmed(f"message {message_id} was unroutable"))
            else:
                fut.set_result(None)

    def _on_return(self, _channel: Any, method: Any, props: Any, _body: bytes) -> None:
        # basic.return comes before the message's confirm on the same channel.
        self._returned.add(props.message_id)
        logs.warn(
            "rabbitmq returned a message", routing_key=method.routing_key, id=props.message_id
        )

    async def publish_task(
        self,
        queue: str,
        payload: bytes,
        priority: int,
        delay_ms: int,
        task_id: str,
        headers: dict | None = None,
    ) -> asyncio.Future:
        """A task, ready now or after `delay_ms` (publish.task_message)."""
        await self.ensure_queue(queue)
        routing, delay_arguments, props = build_task_message(
            self.prefix, queue, priority, delay_ms, task_id, headers
        )
        if delay_arguments is not None:
            await self.declare(routing, delay_arguments)
        return self.publish(routing, payload, props)

    async def publish_dead(
        self, queue: str, payload: bytes, task_id: str, reason: str, dead_ttl_ms: int, prio: int
    ) -> asyncio.Future:
        """A task's copy in its DLQ (publish.dead_message)."""
        await self.ensure_queue(queue)
        props = dead_message(task_id, reason, dead_ttl_ms, prio)
        return self.publish(topo.dead_queue(self.prefix, queue), payload, props)

    # -- heartbeats ----------------------------------------------------------------------
    async def publish_heartbeat(self, worker_id: str, body: bytes, ttl_ms: int) -> None:
        """Declare (which resets x-expires) and publish, confirmed: a heartbeat that
        returns proves the publishing link works, which is what /readyz reports."""
        name = topo.worker_queue(self.prefix, worker_id)
        channel = self.open_channel()

        async def beat() -> None:
            await self.rpc(
                lambda done: channel.queue_declare(
                    name, durable=True, arguments=topo.worker_args(ttl_ms), callback=done
                )
            )
            await self.publish(name, body, pika.BasicProperties(delivery_mode=1))

        await asyncio.wait_for(beat(), max(2 * self.ping_s, ttl_ms / 2000))

    async def delete_heartbeat(self, worker_id: str) -> None:
        channel = self.open_channel()
        name = topo.worker_queue(self.prefix, worker_id)
        await self.rpc(lambda done: channel.queue_delete(name, callback=done))
