"""Publishing ready, delayed and dead tasks with publisher confirms.

The message builders (`task_message`, `dead_message`) are shared by the producer, which
publishes on a BlockingChannel from the caller's thread, and the worker, whose
connection runs on its own event loop (consumer.py). Each keeps its own channel
and declaration cache.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import pika
from pika import spec
from pika.adapters import blocking_connection

from . import topology as topo

REDECLARE_AFTER_S = 60.0  # keeps a delay queue's x-expires timer far from firing
CONFIRM_TIMEOUT_S = 30.0


class Unconfirmed(ConnectionError):
    """RabbitMQ did not confirm a publish (nack, unroutable, or no answer in time)."""


class Confirmer:
    """Publisher confirms for a whole batch: publish many, then wait once.

    pika's BlockingChannel in confirm mode waits for the broker after every message
    (hundreds per second); this drives the same channel's underlying pika Channel, so a
    batch costs one round trip. Use it on a channel NOT put in confirm mode by pika."""

    def __init__(self, connection, channel) -> None:
        self.conn, self.impl = connection, channel._impl  # the documented Channel under it
        self.next_tag = 1
        self.outstanding: set[int] = set()
        self.failed: list[str] = []
        ready: list[bool] = []
        self.impl.add_on_return_callback(self._on_return)
        self.impl.confirm_delivery(self._on_confirm, callback=lambda _frame: ready.append(True))
        self._wait_for(lambda: bool(ready))

    def _on_return(self, _channel, method, _props, _body) -> None:
        self.failed.append(f"unroutable to {method.routing_key!r}: {method.reply_text}")

    def _on_confirm(self, frame) -> None:
        method = frame.method
        tags = (
            {t for t in self.outstanding if t <= method.delivery_tag}
            if method.multiple
            else {method.delivery_tag}
        )
        if type(method).__name__ == "Nack":
            self.failed.append(f"{len(tags)} message(s) nacked by RabbitMQ")
        self.outstanding -= tags

    def publish(
        self, routing: str, body: bytes, props, exchange: str = "", mandatory: bool = True
    ) -> None:
        self.impl.basic_publish(exchange, routing, body, props, mandatory=mandatory)
        self.outstanding.add(self.next_tag)
        self.next_tag += 1

    def wait(self) -> None:
        """Return once every publish so far is confirmed; raise Unconfirmed otherwise."""
        self._wait_for(lambda: not self.outstanding)
        if self.failed:
            failed, self.failed = self.failed, []
            raise Unconfirmed("; ".join(failed[:3]))

    def _wait_for(self, done) -> None:
        # process_data_events(time_limit) always sleeps the whole limit unless a
        # BlockingChannel event is pending, so drive the ioloop until `done` like
        # BlockingChannel does internally (pika 1.3 private helpers).
        with blocking_connection._IoloopTimerContext(CONFIRM_TIMEOUT_S, self.conn._impl) as timer:
            self.conn._flush_output(timer.is_ready, done)
        if not done():
            raise Unconfirmed(f"no publisher confirm within {CONFIRM_TIMEOUT_S}s")


class Declared:
    """Queues declared on one connection, and when (delay queues must be redeclared
    now and then: declaring is what resets their x-expires timer)."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}

    def due(self, name: str) -> bool:
        return time.monotonic() - self._at.get(name, -1e9) >= REDECLARE_AFTER_S

    def mark(self, name: str) -> None:
        self._at[name] = time.monotonic()

    def ensure(self, channel, name: str, arguments: dict, durable: bool = True) -> None:
        if not self.due(name):
            return
        channel.queue_declare(name, durable=durable, arguments=arguments)
        self.mark(name)

    def forget(self) -> None:
        self._at.clear()


def queue_declarations(prefix: str, queue: str) -> list[tuple[str, dict]]:
    """The (name, arguments) of the durable queues every app queue needs."""
    return [
        (topo.ready_queue(prefix, queue), topo.ready_args(prefix, queue)),
        (topo.dead_queue(prefix, queue), {}),
        (topo.lost_queue(prefix, queue), topo.lost_args()),
    ]


def ensure_queue(channel, declared: Declared, prefix: str, queue: str) -> None:
    for name, arguments in queue_declarations(prefix, queue):
        declared.ensure(channel, name, arguments)


def task_message(
    prefix: str,
    queue: str,
    priority: int,
    delay_ms: int,
    task_id: str,
    headers: dict | None = None,
) -> tuple[str, dict | None, pika.BasicProperties]:
    """(routing key, the delay queue's arguments or None, properties) of one task, ready
    now or after `delay_ms` (via a TTL + dead-letter queue).

    The message is stamped with the time it becomes ready (timestamp property and a
    millisecond header), which is what 'oldest age' is measured from."""
    routing, delay_arguments = topo.ready_queue(prefix, queue), None
    if delay_ms > 0:
        delay_ms = topo.bucket_delay_ms(delay_ms)
        routing = topo.delay_queue(prefix, queue, delay_ms)
        delay_arguments = topo.delay_args(prefix, queue, delay_ms)
    ready_ms = int(time.time() * 1000) + max(0, delay_ms)
    props = pika.BasicProperties(
        delivery_mode=2,
        priority=priority,
        message_id=task_id,
        timestamp=ready_ms // 1000,
        content_type="application/json",
        headers={**(headers or {}), topo.READY_MS_HEADER: ready_ms},
    )
    return routing, delay_arguments, props


def dead_message(
    task_id: str, reason: str, dead_ttl_ms: int, priority: int = 0
) -> pika.BasicProperties:
    """A DLQ entry's properties: the reason in a header, expiring after dead_ttl."""
    return pika.BasicProperties(
        delivery_mode=2,
        priority=priority,  # kept for a replay; the DLQ itself is FIFO
        message_id=task_id,
        timestamp=int(time.time()),
        content_type="application/json",
        expiration=str(max(1, dead_ttl_ms)) if dead_ttl_ms > 0 else None,
        headers={
            topo.REASON_HEADER: reason[:1000],
            topo.DIED_AT_HEADER: int(time.time() * 1000),
        },
    )


def publish_task(
    channel,
    declared: Declared,
    prefix: str,
    queue: str,
    payload: bytes,
    priority: int,
    delay_ms: int,
    task_id: str,
    headers: dict | None = None,
    confirmer: Confirmer | None = None,
) -> None:
    """Publish one task on a BlockingChannel (see task_message)."""
    ensure_queue(channel, declared, prefix, queue)
    routing, delay_arguments, props = task_message(
        prefix, queue, priority, delay_ms, task_id, headers
    )
    if delay_arguments is not None:
        declared.ensure(channel, routing, delay_arguments)
    if confirmer is not None:
        confirmer.publish(routing, payload, props)  # the caller waits for the batch
    else:
        channel.basic_publish("", routing, payload, props, mandatory=True)


def confirmed_tags(method: Any, pending: Iterable[int]) -> tuple[list[int], bool]:
    """The publish tags a basic.ack/basic.nack settles (one, or with `multiple` every
    pending tag up to it), and whether it is a nack."""
    nack = isinstance(method, spec.Basic.Nack)
    if method.multiple:
        return [t for t in pending if t <= method.delivery_tag], nack
    return [method.delivery_tag], nack


def dead_reason(payload: bytes) -> str:
    """The DLQ reason header of a dead task: the error its payload carries."""
    try:
        body = json.loads(payload)
    except ValueError:
        return "undecodable payload"
    return str(body.get("error", "")) if isinstance(body, dict) else "undecodable payload"


def with_error(body: bytes, reason: str) -> bytes:
    """A payload with `error` (and the time of death) set, for a task buried by the
    consumer itself (redelivered too often); an undecodable one is kept as `raw`."""
    try:
        data = json.loads(body)
    except ValueError:
        return json.dumps({"error": reason, "raw": body.decode("utf-8", "replace")}).encode()
    if not isinstance(data, dict):
        return json.dumps({"error": reason, "raw": data}).encode()
    data["error"] = reason
    data["died_at"] = time.time()
    return json.dumps(data, separators=(",", ":")).encode()
