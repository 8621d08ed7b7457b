"""The worker side of RabbitMQ: one pika BlockingConnection owned by a dedicated thread.

pika connections are not thread-safe and the worker core is asyncio, so every AMQP call
runs on this thread: the event loop hands work over with `add_callback_threadsafe` and
gets results back through `call_soon_threadsafe`. Deliveries land in per-queue buffers
the worker claims from.

A delivery's entry is "<ready_ms>|<priority>|<generation>.<delivery tag>". The generation
changes on every reconnect: a settlement for an older generation is skipped, because
RabbitMQ already put that message back when the channel closed (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Any

import pika
import pika.exceptions

from . import logs
from . import rabbitmq_topology as topo
from .broker import Delivery, Settlement
from .rabbitmq_publish import Declared, ensure_queue, publish_dead, publish_task

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
    """The worker's RabbitMQ connection is down; the I/O thread is reconnecting."""


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
        self.tags: list[str] = []
        self.tag_queue: dict[str, str] = {}
        self.task_ids: dict[str, str] = {}  # entry -> message_id
        self.busy_us: dict[str, int] = defaultdict(int)
        self.completed: dict[str, int] = defaultdict(int)
        self.released = False
        self.channel_close_reason: str = ""
        self._running = False
        self._wake = threading.Event()
        self._pending: set[asyncio.Future] = set()
        self._first: asyncio.Future | None = None
        self._thread: threading.Thread | None = None

    # -- asyncio side --------------------------------------------------------------------
    async def start(self) -> None:
        """Connect once; raise if that fails (the worker retries with backoff). Later
        connection losses are healed by the I/O thread itself."""
        self.loop = asyncio.get_running_loop()
        self.arrived = asyncio.Event()
        self._first = self.loop.create_future()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="ebbtide-amqp", daemon=True)
        self._thread.start()
        await self._first

    async def stop(self) -> None:
        self._running = False
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 15)
            self._thread = None

    async def call(self, fn) -> Any:
        """Run `fn()` on the I/O thread; raise BrokerDown when the connection is down."""
        assert self.loop is not None
        fut = self.loop.create_future()
        conn = self.conn
        if conn is None or not conn.is_open:
            raise BrokerDown("RabbitMQ connection is down (reconnecting)")
        self._pending.add(fut)

        def run() -> None:
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                self._resolve(fut, None, exc)
            else:
                self._resolve(fut, result, None)

        try:
            conn.add_callback_threadsafe(run)
        except Exception as exc:
            self._pending.discard(fut)
            raise BrokerDown(f"RabbitMQ connection is down: {exc}") from None
        try:
            return await asyncio.wait_for(fut, CALL_TIMEOUT_S)
        finally:
            self._pending.discard(fut)

    def _resolve(self, fut: asyncio.Future, result: Any, exc: BaseException | None) -> None:
        def settle() -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(settle)

    @property
    def connected(self) -> bool:
        conn = self.conn
        return conn is not None and conn.is_open

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

    # -- I/O thread ----------------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.2
        while self._running:
            try:
                self._open()
                if self._first is not None and not self._first.done():
                    self._resolve(self._first, None, None)
                delay = 0.2
                while self._running:
                    self.conn.process_data_events(time_limit=0.2)
                    if not self.channel.is_open:
                        raise pika.exceptions.ChannelClosed(406, self.channel_close_reason)
            except Exception as exc:
                self._lost(exc)
                if self._first is not None and not self._first.done():
                    self._resolve(self._first, None, BrokerDown(f"cannot reach RabbitMQ: {exc}"))
                    self._running = False
                    break
                self._wake.wait(delay)
                self._wake.clear()
                delay = min(delay * 2, 5.0)
        self._close_connection()

    def _open(self) -> None:
        self.conn = pika.BlockingConnection(self.params)
        self.channel = self.conn.channel()
        self.channel.confirm_delivery()
        self.channel_close_reason = ""
        self.channel._impl.add_on_close_callback(self._on_channel_closed)  # no public hook
        self.gen += 1
        self.declared.forget()
        self.tags, self.tag_queue = [], {}
        if self.queues and not self.released:
            self._consume()

    def _on_channel_closed(self, _channel, reason) -> None:
        self.channel_close_reason = str(reason)
        if "acknowledgement" in str(reason) and "timed out" in str(reason):
            logs.error("consumer timeout", reason=str(reason), fix=CONSUMER_TIMEOUT_HINT)

    def _consume(self) -> None:
        # Per-consumer prefetch: each queue's consumer holds at most `prefetch` unacked.
        self.channel.basic_qos(prefetch_count=self.prefetch, global_qos=False)
        for queue in self.queues:
            ensure_queue(self.channel, self.declared, self.prefix, queue)
            tag = self.channel.basic_consume(
                topo.ready_queue(self.prefix, queue), self._on_message, auto_ack=False
            )
            self.tags.append(tag)
            self.tag_queue[tag] = queue

    def subscribe(self, queues: Sequence[str], prefetch: int) -> None:
        """(I/O thread) Start consuming; reconnects resubscribe the same way."""
        self.queues, self.prefetch = tuple(queues), max(1, prefetch)
        self._consume()

    def _lost(self, exc: Exception) -> None:
        held = sum(len(b) for b in self.buffers.values())
        logs.warn("rabbitmq connection lost", error=str(exc) or type(exc).__name__, buffered=held)
        self.gen += 1  # every delivery of the old channel is stale now
        for buf in self.buffers.values():
            buf.clear()
        self.task_ids.clear()
        for fut in list(self._pending):
            self._resolve(fut, None, BrokerDown(f"RabbitMQ connection lost: {exc}"))
        self._close_connection()

    def _close_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _on_message(self, channel, method, props, body: bytes) -> None:
        queue = self.tag_queue.get(method.consumer_tag, "")
        headers = props.headers or {}
        task_id = props.message_id or ""
        if method.redelivered and self._redelivered(channel, queue, method, props, body):
            return
        ready_ms = headers.get(topo.READY_MS_HEADER)
        if not isinstance(ready_ms, int):
            ready_ms = int((props.timestamp or time.time()) * 1000)
        entry = f"{ready_ms}|{props.priority or 0}|{self.gen}.{method.delivery_tag}"
        self.task_ids[entry] = task_id
        self.buffers[queue].append(Delivery(queue, entry, body.decode("utf-8", "replace")))
        # Wake the loop only if it may be waiting: claim() clears the event before it
        # looks at the buffers, and this delivery was appended before this check.
        arrived = self.arrived
        if self.loop is not None and arrived is not None and not arrived.is_set():
            self.loop.call_soon_threadsafe(arrived.set)

    def _redelivered(self, channel, queue: str, method, props, body: bytes) -> bool:
        """Count unsettled deliveries, so a task that keeps killing its channel (consumer
        timeout) or its worker ends in the DLQ instead of a silent redelivery loop.
        RabbitMQ's classic queues keep no count, so the message is republished with one."""
        headers = dict(props.headers or {})
        count = int(headers.get(topo.REDELIVERIES_HEADER, 0) or 0) + 1
        task_id = props.message_id or ""
        if count > self.options.max_redeliveries:
            reason = (
                f"delivered {count} times without being settled: its worker died or lost "
                f"its channel mid-task each time. If the task runs long, {CONSUMER_TIMEOUT_HINT}"
            )
            payload = _with_error(body, reason)
            publish_dead(
                channel,
                self.declared,
                self.prefix,
                queue,
                payload,
                task_id,
                reason,
                0,
                props.priority or 0,
            )
            channel.basic_ack(method.delivery_tag)
            logs.error("task redelivered too often, moved to the DLQ", queue=queue, id=task_id)
            return True
        headers[topo.REDELIVERIES_HEADER] = count
        publish_task(
            channel,
            self.declared,
            self.prefix,
            queue,
            body,
            props.priority or 0,
            0,
            task_id,
            headers,
        )
        channel.basic_ack(method.delivery_tag)
        logs.warn(
            "task redelivered after an unsettled delivery", queue=queue, id=task_id, count=count
        )
        return True

    def settle_now(self, settlements: Sequence[Settlement], dead_ttl_ms: int) -> int:
        """(I/O thread) Apply a batch; a new copy is always confirmed before the ack."""
        settled = 0
        ch = self.channel
        for s in settlements:
            d = s.delivery
            if s.busy_us:
                self.busy_us[d.queue] += s.busy_us
            _, prio, gen, tag = parse_entry(d.entry)
            if gen != self.gen or d.entry not in self.task_ids:
                # Its channel is gone (RabbitMQ already requeued the message), or a retried
                # batch: acking a tag twice would make RabbitMQ close the channel.
                continue
            task_id = self.task_ids.pop(d.entry)
            payload = (s.payload or d.payload).encode()
            if s.op == "ack":
                # The Channel under the BlockingChannel: no socket flush per ack; the
                # I/O loop writes the whole batch when this returns.
                ch._impl.basic_ack(tag)
                self.completed[d.queue] += 1
            elif s.op in ("retry", "postpone"):
                publish_task(
                    ch, self.declared, self.prefix, d.queue, payload, prio, s.delay_ms, task_id
                )
                ch.basic_ack(tag)
            elif s.op == "dead":
                reason = _error_of(payload)
                publish_dead(
                    ch,
                    self.declared,
                    self.prefix,
                    d.queue,
                    payload,
                    task_id,
                    reason,
                    dead_ttl_ms,
                    prio,
                )
                ch.basic_ack(tag)
                self.completed[d.queue] += 1
            elif s.op == "requeue":
                ch.basic_nack(tag, requeue=True)
                self._release()
            settled += 1
        return settled

    def _release(self) -> None:
        """A hand-back means the worker is stopping: stop consuming and give every
        buffered (never started) delivery back right away, for other workers."""
        if self.released:
            return
        self.released = True
        for tag in self.tags:
            with contextlib.suppress(Exception):
                self.channel.basic_cancel(tag)
        prefix = f"|{self.gen}."
        for buf in self.buffers.values():
            while buf:
                d = buf.popleft()
                if prefix in d.entry:
                    self.channel.basic_nack(parse_entry(d.entry)[3], requeue=True)

    def publish_heartbeat(self, worker_id: str, body: bytes, ttl_ms: int) -> None:
        name = topo.worker_queue(self.prefix, worker_id)
        self.channel.queue_declare(name, durable=False, arguments=topo.worker_args(ttl_ms))
        self.channel.basic_publish("", name, body, pika.BasicProperties(delivery_mode=1))

    def delete_heartbeat(self, worker_id: str) -> None:
        self.channel.queue_delete(topo.worker_queue(self.prefix, worker_id))


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
