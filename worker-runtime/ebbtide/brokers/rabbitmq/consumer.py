"""The worker side of RabbitMQ: deliveries in, settlements out, on the worker's own loop.

There is no I/O thread: deliveries are decoded by the loop that dispatches them, and acks
are written by the loop that learns the task finished. Acks are owed for a few
milliseconds and go out as the fewest frames (acks.AckSender: one `multiple=True` frame
for the contiguous finished prefix, single acks for the rest), and each queue's prefetch
window follows the measured completion rate (subscriptions.py, window.py). Deliveries
land in per-queue buffers the worker claims from. The connection itself, its reconnects
and publisher confirms are connection.Link's. See docs/rabbitmq.md, "Performance".

A delivery's entry is "<ready_ms>|<priority>|<generation>.<delivery tag>" (message.Entry),
and what the consumer needs of it is kept in `pushed`, keyed by the entry, so it never
parses one. The generation changes on every reconnect: a settlement for an older
generation is skipped, because RabbitMQ already put that message back when the channel
closed (at-least-once).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Coroutine, Sequence
from typing import Any, NamedTuple

import pika

from ... import logs
from ...lifecycle import TaskState, is_final, next_state
from ..base import Delivery, Plan, Settlement
from . import topology as topo
from .acks import AckSender, Frames, batch_size
from .connection import CALL_TIMEOUT_S, CONSUMER_TIMEOUT_HINT, BrokerDown, Link
from .publish import dead_reason, with_error
from .subscriptions import Subscriptions
from .transport import corked


class Pushed(NamedTuple):
    """What the consumer keeps of one unsettled delivery, by its entry."""

    gen: int  # the channel it came on
    tag: int  # its delivery tag there
    priority: int
    task_id: str  # the message id


class Consumer:
    def __init__(self, params: pika.URLParameters, prefix: str, options: topo.Options) -> None:
        self.prefix, self.options = prefix, options
        self.link = Link(params, prefix, self._on_channel, self._on_ready, self._on_lost)
        self.buffers: dict[str, deque[Delivery]] = defaultdict(deque)
        self.arrived: asyncio.Event | None = None
        self.subs = Subscriptions(self.link, prefix, self.deliver)
        self.pushed: dict[str, Pushed] = {}  # entry -> its delivery, until settled
        self.acks = AckSender(
            self._write_acks, lambda: self.link.connected, lambda: batch_size(self.window)
        )
        self.busy_us: dict[str, int] = defaultdict(int)
        self.completed: dict[str, int] = defaultdict(int)
        self._background: set[asyncio.Task] = set()

    # -- connection ----------------------------------------------------------------------
    async def start(self) -> None:
        """Connect once; raise BrokerDown if that fails (the worker retries with backoff).
        Later connection losses are healed by the link's supervisor."""
        self.arrived = asyncio.Event()
        await self.link.start()

    async def stop(self) -> None:
        await self.link.stop_supervising()
        self.subs.stop()
        for task in self._background:
            task.cancel()
        self.flush_acks()  # written before Connection.Close, so RabbitMQ sees them first
        await self.link.close()  # closing the channel requeues anything unacked

    @property
    def connected(self) -> bool:
        return self.link.connected

    @property
    def channel_close_reason(self) -> str:
        return self.link.channel_close_reason

    def _on_channel(self) -> None:
        """A new channel: consumer tags and owed acks of the old one are void."""
        self.subs.new_channel()
        self.acks.reset()

    async def _on_ready(self) -> None:
        await self.subs.resume()

    def _on_lost(self) -> int:
        """The channel is gone and RabbitMQ requeued everything unacked: drop the
        buffered deliveries; returns how many."""
        held = sum(len(b) for b in self.buffers.values())
        for buf in self.buffers.values():
            buf.clear()
        self.pushed.clear()
        return held

    # -- consuming -----------------------------------------------------------------------
    def configure(self, concurrency: int, prefetch: int, adaptive: bool) -> None:
        """The worker's task slots and prefetch (see Subscriptions.configure)."""
        self.subs.configure(concurrency, prefetch, adaptive)

    async def subscribe(self, queues: Sequence[str], prefetch: int) -> None:
        """Start consuming `queues` (see Subscriptions.subscribe)."""
        await self.subs.subscribe(queues, prefetch)

    def take(self, plan: Plan, n: int) -> list[Delivery]:
        """Up to `n` buffered deliveries: quotas first in plan order, then fill in order."""
        out: list[Delivery] = []
        for pass_no in (0, 1):
            for queue, quota in plan:
                buf = self.buffers.get(queue)
                limit = quota if pass_no == 0 else n
                taken = 0
                while buf and len(out) < n and taken < limit:
                    d = buf.popleft()
                    if self._current(d.entry) is not None:
                        out.append(d)
                        taken += 1
        return out

    def _current(self, entry: str) -> Pushed | None:
        """The delivery behind `entry`, if it came on the current channel and is not
        settled yet (the entry itself is never parsed here)."""
        pushed = self.pushed.get(entry)
        return pushed if pushed is not None and pushed.gen == self.link.gen else None

    def deliver(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        """basic_consume callback: buffer one delivery for the worker to claim."""
        if channel is not self.link.channel:
            return  # a channel being closed: RabbitMQ requeues what it delivered
        tag = method.delivery_tag
        if self.subs.released:
            # Stopping: a delivery that crossed the cancel goes straight back.
            self.subs.cancel(channel, method.consumer_tag)
            channel.basic_nack(tag, requeue=True)
            return
        self.acks.delivered(tag)
        queue = self.subs.queue_of(method.consumer_tag)
        if method.redelivered:
            self._spawn(self._redelivered(queue, tag, props, body))
            return
        headers = props.headers
        ready_ms = headers.get(topo.READY_MS_HEADER) if headers else None
        if not isinstance(ready_ms, int):
            ready_ms = int((props.timestamp or time.time()) * 1000)
        gen, prio = self.link.gen, props.priority or 0
        entry = f"{ready_ms}|{prio}|{gen}.{tag}"  # see message.Entry
        self.pushed[entry] = Pushed(gen, tag, prio, props.message_id or "")
        self.buffers[queue].append(Delivery(queue, entry, body.decode("utf-8", "replace")))
        assert self.arrived is not None
        self.arrived.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _redelivered(self, queue: str, tag: int, props: Any, body: bytes) -> None:
        """Count unsettled deliveries, so a task that keeps killing its channel (consumer
        timeout) or its worker ends in the DLQ instead of a silent redelivery loop.
        RabbitMQ's classic queues keep no count, so the message is republished with one
        (confirmed) and only then is the original acked."""
        link = self.link
        gen = link.gen
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
                confirmed = await link.publish_dead(
                    queue, with_error(body, reason), task_id, reason, 0, prio
                )
                await confirmed
                logs.error("task redelivered too often, moved to the DLQ", queue=queue, id=task_id)
            else:
                headers[topo.REDELIVERIES_HEADER] = count
                confirmed = await link.publish_task(queue, body, prio, 0, task_id, headers)
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
            if gen == link.gen:
                link.drop("republish failed")
            return
        if gen == link.gen:
            self.acks.finish([tag])

    # -- settling --------------------------------------------------------------------------
    @property
    def window(self) -> int:
        """The current prefetch window, all queues together."""
        return self.subs.window

    def flush_acks(self) -> None:
        """Send every ack owed now (the worker is stopping)."""
        self.acks.flush()

    def _write_acks(self, frames: Frames) -> None:
        channel = self.link.channel
        with corked(self.link.writes):
            for tag, multiple in frames:
                channel.basic_ack(tag, multiple)  # one send for the whole batch

    async def settle(self, settlements: Sequence[Settlement], dead_ttl_ms: int) -> int:
        """Apply a batch. Plain acks are owed and sent in batches (_send_acks); a retry,
        postpone or DLQ copy is published and confirmed before its original is acked."""
        link = self.link
        channel = link.open_channel()
        gen = link.gen
        acks: list[int] = []
        later: list[tuple[Settlement, Pushed]] = []
        settled = 0
        for s in settlements:
            d = s.delivery
            if s.busy_us:
                self.busy_us[d.queue] += s.busy_us
            pushed = self._current(d.entry)
            if pushed is None:
                # Its channel is gone (RabbitMQ already requeued the message), or a retried
                # batch: acking a tag twice would make RabbitMQ close the channel.
                continue
            state = next_state(s.op)
            if state is None:  # ack
                del self.pushed[d.entry]
                acks.append(pushed.tag)
                self.completed[d.queue] += 1
                self.subs.completed(d.queue)
            elif state is TaskState.READY:  # requeue: handed back
                del self.pushed[d.entry]
                self.acks.forget(pushed.tag)
                channel.basic_nack(pushed.tag, requeue=True)
                self.release()
            else:
                later.append((s, pushed))
                continue
            settled += 1
        self.acks.finish(acks)
        if not later:
            return settled
        confirms = []
        for s, pushed in later:
            d = s.delivery
            task_id, prio = pushed.task_id, pushed.priority
            payload = (s.payload or d.payload).encode()
            if next_state(s.op) is TaskState.DEAD:
                reason = dead_reason(payload)
                fut = await link.publish_dead(d.queue, payload, task_id, reason, dead_ttl_ms, prio)
            else:  # retry, postpone: delayed
                fut = await link.publish_task(d.queue, payload, prio, s.delay_ms, task_id)
            confirms.append(fut)
        results = await asyncio.wait_for(
            asyncio.gather(*confirms, return_exceptions=True), CALL_TIMEOUT_S
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if link.gen != gen:
            raise BrokerDown("RabbitMQ connection lost while settling")
        tags = []
        for s, pushed in later:
            if self.pushed.pop(s.delivery.entry, None) is None:
                continue
            tags.append(pushed.tag)
            if is_final(s.op):
                self.completed[s.delivery.queue] += 1
            self.subs.completed(s.delivery.queue)
            settled += 1
        self.acks.finish(tags)
        return settled

    def release(self) -> None:
        """The worker is stopping (or handed a task back): stop consuming and give every
        buffered (never started) delivery back right away, for other workers."""
        if self.subs.released:
            return
        if not self.link.connected:
            self.subs.released = True  # a reconnect will not subscribe again
            return  # the closed channel already gave everything back
        channel = self.link.channel
        with corked(self.link.writes):
            self.subs.release(channel)  # a reconnect will not subscribe again either
            for buf in self.buffers.values():
                while buf:
                    d = buf.popleft()
                    if self._current(d.entry) is not None:
                        tag = self.pushed.pop(d.entry).tag
                        self.acks.forget(tag)
                        channel.basic_nack(tag, requeue=True)

    # -- heartbeats ----------------------------------------------------------------------
    async def publish_heartbeat(self, worker_id: str, body: bytes, ttl_ms: int) -> None:
        await self.link.publish_heartbeat(worker_id, body, ttl_ms)

    async def delete_heartbeat(self, worker_id: str) -> None:
        await self.link.delete_heartbeat(worker_id)
