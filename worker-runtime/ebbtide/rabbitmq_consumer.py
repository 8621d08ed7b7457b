"""The worker side of RabbitMQ: one pika AsyncioConnection on the worker's own event loop.

There is no I/O thread: deliveries are decoded by the loop that dispatches them, and acks
are written by the loop that learns the task finished. Acks are owed for a few
milliseconds and go out as the fewest frames (rabbitmq_acks.AckBatcher: one
`multiple=True` frame for the contiguous finished prefix, single acks for the rest), and
each queue's prefetch window follows the measured completion rate (rabbitmq_window).
Deliveries land in per-queue buffers the worker claims from. See docs/rabbitmq.md,
"Performance".

A delivery's entry is "<ready_ms>|<priority>|<generation>.<delivery tag>". The generation
changes on every reconnect: a settlement for an older generation is skipped, because
RabbitMQ already put that message back when the channel closed (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Any

import pika
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection

from . import logs
from . import rabbitmq_topology as topo
from .broker import Delivery, Settlement
from .rabbitmq_acks import AckBatcher
from .rabbitmq_publish import (
    Declared,
    Unconfirmed,
    confirmed_tags,
    dead_message,
    queue_declarations,
    task_message,
)
from .rabbitmq_rpc import await_reply
from .rabbitmq_window import SAMPLE_S, Window

CALL_TIMEOUT_S = 30.0
ACK_HOLD_S = 0.005  # a finished task's ack waits about this long to join a batch
ACK_MAX_WAIT_S = 0.025  # ... and an ack above a still-running delivery at most this long
ACK_BATCH_MAX = 128  # a batch goes out when this many (at most a quarter window) are owed
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


def parse_entry(entry: str) -> tuple[int, int, int, int]:
    ready_ms, prio, rest = entry.split("|", 2)
    gen, tag = rest.split(".", 1)
    return int(ready_ms), int(prio), int(gen), int(tag)


class Consumer:
    def __init__(self, params: pika.URLParameters, prefix: str, options: topo.Options) -> None:
        self.params, self.prefix, self.options = params, prefix, options
        self.loop: asyncio.AbstractEventLoop | None = None
        self.buffers: dict[str, deque[Delivery]] = defaultdict(deque)
        self.arrived: asyncio.Event | None = None
        self.gen = 0
        self.conn: Any = None
        self.channel: Any = None
        self.declared = Declared()
        self.queues: tuple[str, ...] = ()
        self.prefetch = 0
        self.concurrency = 0  # 0: not configured, the window stays at `prefetch`
        self.adaptive = False
        self.windows: dict[str, Window] = {}
        self.consumers: dict[str, list[tuple[str, int]]] = {}  # queue -> (tag, prefetch)
        self.tag_queue: dict[str, str] = {}
        self._cancelled: set[str] = set()  # consumer tags cancelled on this channel
        self.task_ids: dict[str, str] = {}  # entry -> message_id
        self.acks = AckBatcher()
        self.busy_us: dict[str, int] = defaultdict(int)
        self.completed: dict[str, int] = defaultdict(int)
        self.released = False
        self.channel_close_reason: str = ""
        self._running = False
        self._down: asyncio.Future | None = None  # resolved when this connection is gone
        self._waiting: set[asyncio.Future] = set()  # RPC replies and confirms in flight
        self._confirms: dict[int, tuple[asyncio.Future, str | None]] = {}
        self._returned: set[str | None] = set()
        self._next_publish = 1
        self._supervisor: asyncio.Task | None = None
        self._tuner: asyncio.Task | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self._owed_since: float | None = None
        self._writes: _WriteThrough | None = None
        self._background: set[asyncio.Task] = set()
        self._wake: asyncio.Event | None = None

    # -- connection ----------------------------------------------------------------------
    async def start(self) -> None:
        """Connect once; raise if that fails (the worker retries with backoff). Later
        connection losses are healed by the supervisor task."""
        self.loop = asyncio.get_running_loop()
        self.arrived = asyncio.Event()
        self._wake = asyncio.Event()
        self._running = True
        try:
            await self._open()
        except Exception as exc:
            self._running = False
            await self._close_connection()
            raise BrokerDown(f"cannot reach RabbitMQ: {exc}") from None
        self._supervisor = asyncio.create_task(self._supervise())

    async def stop(self) -> None:
        self._running = False
        if self._wake is not None:
            self._wake.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
            self._supervisor = None
        for task in [*self._background, *([self._tuner] if self._tuner else [])]:
            task.cancel()
        self.flush_acks()  # written before Connection.Close, so RabbitMQ sees them first
        await self._close_connection()  # closing the channel requeues anything unacked

    @property
    def connected(self) -> bool:
        conn, channel = self.conn, self.channel
        return conn is not None and conn.is_open and channel is not None and channel.is_open

    async def _supervise(self) -> None:
        delay = 0.2
        while self._running:
            assert self._down is not None
            exc = await asyncio.shield(self._down)  # stop() cancels us, not the future
            if not self._running:
                return
            self._lost(exc)
            await self._close_connection()
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
                    await self._close_connection()
                    continue
                delay = 0.2
                break

    async def _open(self) -> None:
        loop = self.loop
        assert loop is not None
        opened: asyncio.Future = loop.create_future()
        down: asyncio.Future = loop.create_future()
        self._down = down

        def on_open(_conn) -> None:
            if not opened.done():
                opened.set_result(None)

        def on_open_error(_conn, exc) -> None:
            if not opened.done():
                opened.set_exception(BrokerDown(f"cannot reach RabbitMQ: {exc!r}"))
            if not down.done():
                down.set_result(exc)

        def on_close(conn, exc) -> None:
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
        self._writes = _WriteThrough.install(self.conn)
        channel = await self._rpc(lambda done: self.conn.channel(on_open_callback=done))
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        self.channel = channel
        self.channel_close_reason = ""
        self.gen += 1
        self.declared.forget()
        self.tag_queue, self._cancelled = {}, set()
        self.acks = AckBatcher()  # acks owed on the old channel are void: it requeued them
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._owed_since = None
        self._confirms, self._returned, self._next_publish = {}, set(), 1
        await self._rpc(lambda done: channel.confirm_delivery(self._on_confirm, callback=done))
        if self.queues and not self.released:
            await self._consume()

    def _on_channel_closed(self, channel, reason) -> None:
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
        held = sum(len(b) for b in self.buffers.values())
        error = (str(exc) or type(exc).__name__) if exc else "closed"
        logs.warn("rabbitmq connection lost", error=error, buffered=held)
        self.gen += 1  # every delivery of the old channel is stale now
        for buf in self.buffers.values():
            buf.clear()
        self.task_ids.clear()
        self._fail_waiting(BrokerDown(f"RabbitMQ connection lost: {error}"))

    def _fail_waiting(self, exc: BaseException) -> None:
        for fut in list(self._waiting):
            if not fut.done():
                fut.set_exception(exc)
        self._waiting.clear()
        self._confirms.clear()

    async def _close_connection(self) -> None:
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

    # -- awaitable AMQP calls --------------------------------------------------------------
    async def _rpc(self, start: Callable[[Callable[[Any], None]], Any]) -> Any:
        """A pika call's reply; a lost connection or channel fails it with BrokerDown."""
        assert self.loop is not None
        return await await_reply(self.loop, start, self._waiting, CALL_TIMEOUT_S, BrokerDown)

    def _channel(self) -> Any:
        if not self.connected:
            raise BrokerDown("RabbitMQ connection is down (reconnecting)")
        return self.channel

    async def _declare(self, name: str, arguments: dict, durable: bool = True) -> None:
        if not self.declared.due(name):
            return
        channel = self._channel()
        await self._rpc(
            lambda done: channel.queue_declare(
                name, durable=durable, arguments=arguments, callback=done
            )
        )
        self.declared.mark(name)

    async def _ensure_queue(self, queue: str) -> None:
        for name, arguments in queue_declarations(self.prefix, queue):
            await self._declare(name, arguments)

    def _publish(self, routing: str, body: bytes, props: pika.BasicProperties) -> asyncio.Future:
        """Publish (mandatory); the future resolves when RabbitMQ confirms it and fails
        with Unconfirmed on a nack or a return, BrokerDown on a lost connection."""
        channel = self._channel()
        assert self.loop is not None
        fut = self.loop.create_future()
        channel.basic_publish("", routing, body, props, mandatory=True)
        self._confirms[self._next_publish] = (fut, props.message_id)
        self._next_publish += 1
        self._waiting.add(fut)
        return fut

    def _on_confirm(self, frame) -> None:
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

    def _on_return(self, _channel, method, props, _body) -> None:
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
        await self._ensure_queue(queue)
        routing, delay_arguments, props = task_message(
            self.prefix, queue, priority, delay_ms, task_id, headers
        )
        if delay_arguments is not None:
            await self._declare(routing, delay_arguments)
        return self._publish(routing, payload, props)

    async def publish_dead(
        self, queue: str, payload: bytes, task_id: str, reason: str, dead_ttl_ms: int, prio: int
    ) -> asyncio.Future:
        await self._ensure_queue(queue)
        props = dead_message(task_id, reason, dead_ttl_ms, prio)
        return self._publish(topo.dead_queue(self.prefix, queue), payload, props)

    # -- consuming -----------------------------------------------------------------------
    def configure(self, concurrency: int, prefetch: int, adaptive: bool) -> None:
        """The worker's task slots and prefetch; `adaptive` sizes the window by time
        (rabbitmq_window), otherwise it stays at concurrency + prefetch."""
        self.concurrency, self.adaptive = concurrency, adaptive
        self.prefetch = max(1, concurrency + prefetch)

    async def subscribe(self, queues: Sequence[str], prefetch: int) -> None:
        """Start consuming. From then on every reconnect resubscribes by itself, so a
        failed first attempt drops the connection and leaves it to the supervisor."""
        self.queues = tuple(queues)
        if not self.concurrency:
            self.prefetch = max(1, prefetch)
        self.windows = {
            q: Window(self.prefetch, self.concurrency or self.prefetch, self.adaptive)
            for q in self.queues
        }
        if self.adaptive and self._tuner is None:
            self._tuner = asyncio.create_task(self._tune())
        try:
            await self._consume()
        except Exception:
            if self.conn is not None and self.conn.is_open:
                with contextlib.suppress(Exception):
                    self.conn.close(320, "subscribe failed")
            raise

    async def _consume(self) -> None:
        """One consumer per queue with the floor window (a new channel starts there)."""
        channel = self._channel()
        self.consumers = {}
        for queue in self.queues:
            self.windows[queue].reset()
            await self._ensure_queue(queue)
            await self._add_consumer(channel, queue, self.windows[queue].floor)

    async def _add_consumer(self, channel, queue: str, prefetch: int) -> None:
        # basic.qos (global=false) applies to the consumers started after it.
        await self._rpc(
            lambda done: channel.basic_qos(prefetch_count=prefetch, global_qos=False, callback=done)
        )
        tag = await asyncio.wait_for(self._start_consumer(channel, queue), CALL_TIMEOUT_S)
        if channel is not self.channel:  # reconnected meanwhile: that channel resubscribed
            raise BrokerDown("RabbitMQ channel replaced while subscribing")
        if self.released:  # stopping began meanwhile: release() did not see this one
            self._cancel(channel, tag)
            return
        self.consumers.setdefault(queue, []).append((tag, prefetch))

    async def _tune(self) -> None:
        """Resize each queue's window to the measured completion rate (see
        rabbitmq_window): grow by adding a consumer with the extra prefetch on the same
        queue, shrink by cancelling the extra consumers."""
        while self._running:
            await asyncio.sleep(SAMPLE_S)
            if self.released or not self.connected:
                continue
            now = time.monotonic()
            for queue, window in self.windows.items():
                want = window.tick(now)
                if want is None or self.released:
                    continue
                try:
                    await self._resize(queue, want)
                except BrokerDown:
                    pass  # the reconnect starts again at the floor
                except Exception as exc:
                    logs.warn("resizing the prefetch window failed", queue=queue, error=str(exc))

    async def _resize(self, queue: str, want: int) -> None:
        channel = self._channel()
        window = self.windows[queue]
        consumers = self.consumers.get(queue, [])
        if want < window.current:
            # Deliveries already pushed to a cancelled consumer stay ours (we run and
            # ack them); pika rejects (requeues) the few that cross the cancel.
            base, extra = consumers[:1], consumers[1:]
            for tag, _n in extra:
                self._cancel(channel, tag)
            self.consumers[queue] = base
            window.current = sum(n for _t, n in base)
        if want > window.current:
            await self._add_consumer(channel, queue, want - window.current)
            window.current = want
        logs.log("prefetch window", logging.DEBUG, queue=queue, window=window.current)

    def _cancel(self, channel, consumer_tag: str) -> None:
        """basic.cancel (nowait), once per consumer; pika itself requeues (rejects) the
        deliveries that cross it."""
        if consumer_tag in self._cancelled:
            return
        self._cancelled.add(consumer_tag)
        with contextlib.suppress(Exception):
            channel.basic_cancel(consumer_tag)

    def _start_consumer(self, channel, queue: str) -> asyncio.Future:
        """basic.consume; the future resolves to the consumer tag on ConsumeOk."""
        assert self.loop is not None
        fut = self.loop.create_future()
        tag = ""

        def done(_frame) -> None:
            if not fut.done():
                fut.set_result(tag)

        tag = channel.basic_consume(
            topo.ready_queue(self.prefix, queue), self._on_message, auto_ack=False, callback=done
        )
        self.tag_queue[tag] = queue  # before any delivery for it can be dispatched
        self._waiting.add(fut)
        fut.add_done_callback(self._waiting.discard)
        return fut

    def take(self, plan: Sequence[tuple[str, int]], n: int) -> list[Delivery]:
        """Up to `n` buffered deliveries: quotas first in plan order, then fill in order."""
        out: list[Delivery] = []
        prefix = f"|{self.gen}."
        for pass_no in (0, 1):
            for queue, quota in plan:
                buf = self.buffers.get(queue)
                limit = quota if pass_no == 0 else n
                taken = 0
                while buf and len(out) < n and taken < limit:
                    d = buf.popleft()
                    if prefix in d.entry:
                        out.append(d)
                        taken += 1
        return out

    def _on_message(self, channel, method, props, body: bytes) -> None:
        if channel is not self.channel:
            return  # a channel being closed: RabbitMQ requeues what it delivered
        tag = method.delivery_tag
        if self.released:
            # Stopping: a delivery that crossed the cancel goes straight back.
            self._cancel(channel, method.consumer_tag)
            channel.basic_nack(tag, requeue=True)
            return
        self.acks.delivered(tag)
        queue = self.tag_queue.get(method.consumer_tag, "")
        if method.redelivered:
            self._spawn(self._redelivered(queue, tag, props, body))
            return
        headers = props.headers
        ready_ms = headers.get(topo.READY_MS_HEADER) if headers else None
        if not isinstance(ready_ms, int):
            ready_ms = int((props.timestamp or time.time()) * 1000)
        entry = f"{ready_ms}|{props.priority or 0}|{self.gen}.{tag}"
        self.task_ids[entry] = props.message_id or ""
        self.buffers[queue].append(Delivery(queue, entry, body.decode("utf-8", "replace")))
        assert self.arrived is not None
        self.arrived.set()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _redelivered(self, queue: str, tag: int, props, body: bytes) -> None:
        """Count unsettled deliveries, so a task that keeps killing its channel (consumer
        timeout) or its worker ends in the DLQ instead of a silent redelivery loop.
        RabbitMQ's classic queues keep no count, so the message is republished with one
        (confirmed) and only then is the original acked."""
        gen = self.gen
        headers = dict(props.headers or {})
        count = int(headers.get(topo.REDELIVERIES_HEADER, 0) or 0) + 1
        task_id = props.message_id or ""
        prio = props.priority or 0
        try:
            if count > self.options.max_redeliveries:
                reason = (
                    f"delivered {count} times without being settled: its worker died or lost "
                    f"its channel mid-task each time. If the task runs long, "
                    f"{CONSUMER_TIMEOUT_HINT}"
                )
                confirmed = await self.publish_dead(
                    queue, _with_error(body, reason), task_id, reason, 0, prio
                )
                await confirmed
                logs.error("task redelivered too often, moved to the DLQ", queue=queue, id=task_id)
            else:
                headers[topo.REDELIVERIES_HEADER] = count
                confirmed = await self.publish_task(queue, body, prio, 0, task_id, headers)
                await confirmed
                logs.warn(
                    "task redelivered after an unsettled delivery",
                    queue=queue,
                    id=task_id,
                    count=count,
                )
        except Exception as exc:
            # Left unacked: RabbitMQ requeues it when this connection goes. Force that
            # now, so the message is not stuck on a channel that cannot publish.
            logs.warn("republishing a redelivered task failed", id=task_id, error=str(exc))
            if gen == self.gen and self.conn is not None and self.conn.is_open:
                with contextlib.suppress(Exception):
                    self.conn.close(320, "republish failed")
            return
        if gen == self.gen:
            self._send_acks([tag])

    # -- settling --------------------------------------------------------------------------
    def _send_acks(self, tags: Sequence[int]) -> None:
        """Owe acks for finished tasks and send them in batches (see rabbitmq_acks).

        The contiguous finished prefix goes out as one multiple ack once a quarter of
        the prefetch window is owed, or ACK_HOLD_S after the first one. Acks above a
        still-running delivery wait for it (it usually finishes within milliseconds and
        one frame then covers them all), at most ACK_MAX_WAIT_S or until another quarter
        window is owed; then they go out one frame each."""
        acks = self.acks
        if not acks.finish(tags):
            return
        if self._owed_since is None:
            assert self.loop is not None
            self._owed_since = self.loop.time()
        batch = self._ack_batch
        if acks.owed >= batch:
            self._flush_acks(everything=False)
            if acks.owed >= batch:
                self._flush_acks(everything=True)
        if acks.owed and self._ack_timer is None:
            assert self.loop is not None
            self._ack_timer = self.loop.call_later(ACK_HOLD_S, self._on_ack_timer)

    def _on_ack_timer(self) -> None:
        self._ack_timer = None
        assert self.loop is not None
        since = self._owed_since
        if not self.acks.owed or since is None:  # a full batch went out meanwhile
            self._owed_since = None
            return
        self._flush_acks(everything=self.loop.time() - since >= ACK_MAX_WAIT_S)
        if self.acks.owed:
            self._ack_timer = self.loop.call_later(ACK_HOLD_S, self._on_ack_timer)

    def _flush_acks(self, everything: bool) -> None:
        if self.connected:
            self._write_acks(self.acks.flush(everything))
        if not self.acks.owed:
            self._owed_since = None

    @property
    def window(self) -> int:
        """The current prefetch window, all queues together."""
        return sum(w.current for w in self.windows.values()) or self.prefetch

    @property
    def _ack_batch(self) -> int:
        return max(1, min(ACK_BATCH_MAX, self.window // 4))

    def flush_acks(self) -> None:
        """Send every ack owed now (the worker is stopping)."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._flush_acks(everything=True)

    def _write_acks(self, frames: list[tuple[int, bool]]) -> None:
        if not frames:
            return
        channel = self.channel
        with self._writes.corked() if self._writes else contextlib.nullcontext():
            for tag, multiple in frames:
                channel.basic_ack(tag, multiple)  # one send for the whole batch

    async def settle(self, settlements: Sequence[Settlement], dead_ttl_ms: int) -> int:
        """Apply a batch. Plain acks are owed and sent in batches (_send_acks); a retry,
        postpone or DLQ copy is published and confirmed before its original is acked."""
        self._channel()
        gen = self.gen
        acks: list[int] = []
        later: list[tuple[Settlement, int, int]] = []
        settled = 0
        for s in settlements:
            d = s.delivery
            if s.busy_us:
                self.busy_us[d.queue] += s.busy_us
            _, prio, entry_gen, tag = parse_entry(d.entry)
            if entry_gen != gen or d.entry not in self.task_ids:
                # Its channel is gone (RabbitMQ already requeued the message), or a retried
                # batch: acking a tag twice would make RabbitMQ close the channel.
                continue
            if s.op == "ack":
                del self.task_ids[d.entry]
                acks.append(tag)
                self.completed[d.queue] += 1
                self._count(d.queue)
            elif s.op == "requeue":
                del self.task_ids[d.entry]
                self.acks.forget(tag)
                self.channel.basic_nack(tag, requeue=True)
                self.release()
            else:
                later.append((s, prio, tag))
                continue
            settled += 1
        self._send_acks(acks)
        if not later:
            return settled
        confirms = []
        for s, prio, _tag in later:
            d = s.delivery
            task_id = self.task_ids[d.entry]
            payload = (s.payload or d.payload).encode()
            if s.op == "dead":
                reason = _error_of(payload)
                fut = await self.publish_dead(d.queue, payload, task_id, reason, dead_ttl_ms, prio)
            else:  # retry, postpone
                fut = await self.publish_task(d.queue, payload, prio, s.delay_ms, task_id)
            confirms.append(fut)
        results = await asyncio.wait_for(
            asyncio.gather(*confirms, return_exceptions=True), CALL_TIMEOUT_S
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if self.gen != gen:
            raise BrokerDown("RabbitMQ connection lost while settling")
        tags = []
        for s, _prio, tag in later:
            if self.task_ids.pop(s.delivery.entry, None) is None:
                continue
            tags.append(tag)
            if s.op == "dead":
                self.completed[s.delivery.queue] += 1
            self._count(s.delivery.queue)
            settled += 1
        self._send_acks(tags)
        return settled

    def _count(self, queue: str) -> None:
        window = self.windows.get(queue)
        if window is not None:
            window.completed()

    def release(self) -> None:
        """The worker is stopping (or handed a task back): stop consuming and give every
        buffered (never started) delivery back right away, for other workers."""
        if self.released:
            return
        self.released = True  # a reconnect will not subscribe again
        if not self.connected:
            return  # the closed channel already gave everything back
        channel = self.channel
        with self._writes.corked() if self._writes else contextlib.nullcontext():
            for consumers in self.consumers.values():
                for tag, _n in consumers:
                    self._cancel(channel, tag)
            prefix = f"|{self.gen}."
            for buf in self.buffers.values():
                while buf:
                    d = buf.popleft()
                    if prefix in d.entry and self.task_ids.pop(d.entry, None) is not None:
                        tag = parse_entry(d.entry)[3]
                        self.acks.forget(tag)
                        channel.basic_nack(tag, requeue=True)

    # -- heartbeats ------------------------------------------------------------------------
    async def publish_heartbeat(self, worker_id: str, body: bytes, ttl_ms: int) -> None:
        name = topo.worker_queue(self.prefix, worker_id)
        channel = self._channel()
        # Declared every time: that is what resets the queue's x-expires timer.
        await self._rpc(
            lambda done: channel.queue_declare(
                name, durable=True, arguments=topo.worker_args(ttl_ms), callback=done
            )
        )
        await self._publish(name, body, pika.BasicProperties(delivery_mode=1))

    async def delete_heartbeat(self, worker_id: str) -> None:
        channel = self._channel()
        name = topo.worker_queue(self.prefix, worker_id)
        await self._rpc(lambda done: channel.queue_delete(name, callback=done))


def _error_of(payload: bytes) -> str:
    try:
        body = json.loads(payload)
    except ValueError:
        return "undecodable payload"
    return str(body.get("error", "")) if isinstance(body, dict) else "undecodable payload"


def _with_error(body: bytes, reason: str) -> bytes:
    try:
        data = json.loads(body)
    except ValueError:
        return json.dumps({"error": reason, "raw": body.decode("utf-8", "replace")}).encode()
    if not isinstance(data, dict):
        return json.dumps({"error": reason, "raw": data}).encode()
    data["error"] = reason
    data["died_at"] = time.time()
    return json.dumps(data, separators=(",", ":")).encode()


class _WriteThrough:
    """Make the connection's writes try the socket at once, and let a batch of frames
    (`corked`) leave in one send.

    pika's own transport queues every write and sends it on the next loop iteration,
    after registering a writability watcher and before removing it again: two epoll_ctl
    calls and one send per frame, each of which releases the GIL, which a loop competing
    with task threads pays for dearly (see docs/benchmarks.md). The socket is nearly
    always writable, so send now and queue only what the kernel did not take (order is
    kept: anything already queued goes first). This leans on pika 1.x internals of the
    plaintext transport; when they are not there (TLS, another pika), `install` returns
    None and pika's own path is used unchanged."""

    def __init__(self, transport) -> None:
        self.transport = transport
        self.queued = transport._tx_buffers
        self.sock = transport._sock
        self.active = transport._STATE_ACTIVE
        self.queue_write = transport.write
        self.batch: list[bytes] | None = None
        transport._state  # noqa: B018 - must exist

    @classmethod
    def install(cls, conn) -> _WriteThrough | None:
        transport = getattr(conn, "_transport", None)
        if type(transport).__name__ != "_AsyncPlaintextTransport":
            return None
        try:
            self = cls(transport)
        except AttributeError:
            return None
        transport.write = self.write
        return self

    def write(self, data: bytes) -> None:
        if self.batch is not None:
            self.batch.append(data)
        else:
            self._send(data)

    def _send(self, data: bytes) -> None:
        if self.queued or self.transport._state != self.active:
            self.queue_write(data)
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.queue_write(data)  # pika's own path reports the failure and aborts
            return
        if sent < len(data):
            self.queue_write(data[sent:])

    @contextlib.contextmanager
    def corked(self):
        if self.batch is not None:
            yield
            return
        self.batch = []
        try:
            yield
        finally:
            batch, self.batch = self.batch, None
            if batch:
                self._send(b"".join(batch))
