"""The worker side of RabbitMQ: deliveries in, settlements out, on the worker's own loop.

There is no I/O thread: deliveries are decoded by the loop that dispatches them, and acks
are written by the loop that learns the task finished. Acks are owed for a few
milliseconds and go out as the fewest frames (acks.AckSender: one `multiple=True` frame
for the contiguous finished prefix, single acks for the rest), and each queue's prefetch
window follows the measured completion rate (subscriptions.py, window.py). Deliveries
land in per-queue buffers the worker claims from. The connection itself, its reconnects
and publisher confirms are connection.Link's. See docs/rabbitmq.md, "Performance".

Two links: `link` consumes and acks, `out` publishes (retries, dead letters, hand-backs,
moves into the lost lane, heartbeats). A copy is always confirmed on `out` before its
original is acked on `link`, in a background job, so a publish that a memory alarm
holds back never holds back the acks of other tasks. Redeliveries go to the lost lane
(lost.py), which is how only the losses of a task held alone are counted.

A delivery's entry is "<ready_ms>|<priority>|<generation>.<delivery tag>" (message.Entry),
and what the consumer needs of it is kept in `pushed`, keyed by the entry, so it never
parses one. The generation changes on every reconnect: a settlement for an older
generation is skipped, because RabbitMQ already put that message back when the channel
closed (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, NamedTuple

import pika

from ... import logs
from ...lifecycle import TaskState, is_final, next_state
from ..base import Delivery, Plan, Settlement
from . import topology as topo
from .acks import AckSender, Frames, batch_size
from .connection import CONSUMER_TIMEOUT_HINT, Link
from .lost import Isolation, carried_headers, lost_reason, recoveries
from .publish import dead_reason, with_error
from .subscriptions import Subscriptions
from .transport import corked


class Pushed(NamedTuple):
    """What the consumer keeps of one unsettled delivery, by its entry."""

    gen: int  # the channel it came on
    tag: int  # its delivery tag there
    priority: int
    task_id: str  # the message id
    lost: bool  # taken from the lost lane (held alone, see lost.py)
    recoveries: int  # losses counted so far
    headers: dict | None  # as delivered, for a hand-back's copy


JOB_WAIT_S = 10.0  # stopping: how long the republish jobs get before the links close


class Consumer:
    def __init__(
        self, params: pika.URLParameters, url: str, prefix: str, options: topo.Options
    ) -> None:
        self.prefix, self.options, self.url, self.params = prefix, options, url, params
        self.link = Link(
            params, prefix, self._on_channel, self._on_ready, self._on_lost, fast_deliveries=True
        )
        self.out = Link(
            topo.tuned(params, topo.link_tuning(30_000), url),
            prefix,
            lambda: None,
            _nothing,
            lambda: 0,
            name="publish",
        )
        self.buffers: dict[str, deque[Delivery]] = defaultdict(deque)
        self.arrived: asyncio.Event | None = None
        self.subs = Subscriptions(self.link, prefix, self.deliver)
        self.pushed: dict[str, Pushed] = {}  # entry -> its delivery, until settled
        self.taken: set[str] = set()  # entries handed to the worker, not settled yet
        self.isolation = Isolation()
        self.acks = AckSender(
            self._write_acks, lambda: self.link.connected, lambda: batch_size(self.window)
        )
        self.busy_us: dict[str, int] = defaultdict(int)
        self.completed: dict[str, int] = defaultdict(int)
        self._background: set[asyncio.Task] = set()

    # -- connection ----------------------------------------------------------------------
    async def start(self) -> None:
        """Connect the publishing link; raise BrokerDown if that fails (the worker
        retries with backoff). The consuming link opens on the first claim, when the
        lease that sets its timeouts is known (`open`)."""
        self.arrived = asyncio.Event()
        await self.out.start()

    async def open(self, lease_ms: int) -> None:
        """Connect the consuming link, its heartbeat and ping derived from the lease."""
        tuning = topo.link_tuning(lease_ms)
        self.link.params = topo.tuned(self.params, tuning, self.url)
        self.link.ping_s = tuning.ping_s
        await self.link.start()

    async def stop(self) -> None:
        await self.link.stop_supervising()
        self.subs.stop()
        await self.finish_jobs(JOB_WAIT_S)
        for task in self._background:
            task.cancel()
        self.flush_acks()  # written before Connection.Close, so RabbitMQ sees them first
        if self.link.inbound is not None:  # that pika's internals still fit inbound.py
            logs.log("deliveries read in one pass", logging.DEBUG, n=self.link.inbound.decoded)
        await self.link.close()  # closing the channel requeues anything unacked
        await self.out.stop_supervising()
        await self.out.close()

    async def finish_jobs(self, timeout: float) -> None:
        """Wait for the republish jobs (hand-backs, retries, dead letters, moves into
        the lost lane): their copies confirmed, their originals acked."""
        jobs = [t for t in self._background if not t.done()]
        if jobs:
            await asyncio.wait(jobs, timeout=timeout)

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
        self.taken.clear()
        return held

    # -- consuming -----------------------------------------------------------------------
    def configure(self, concurrency: int, prefetch: int, adaptive: bool) -> None:
        """The worker's task slots and prefetch (see Subscriptions.configure)."""
        self.subs.configure(concurrency, prefetch, adaptive)

    async def subscribe(self, queues: Sequence[str], prefetch: int) -> None:
        """Start consuming `queues` (see Subscriptions.subscribe)."""
        await self.subs.subscribe(queues, prefetch)

    def take(self, plan: Plan, n: int) -> list[Delivery]:
        """Up to `n` buffered deliveries: quotas first in plan order, then fill in order.
        None while the lost lanes are being drained (lost.Isolation)."""
        out: list[Delivery] = []
        if not self.isolation.may_take_normal():
            return out
        for pass_no in (0, 1):
            for queue, quota in plan:
                buf = self.buffers.get(queue)
                limit = quota if pass_no == 0 else n
                taken = 0
                while buf and len(out) < n and taken < limit:
                    d = buf.popleft()
                    if self._current(d.entry) is not None:
                        out.append(d)
                        self.taken.add(d.entry)
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
        self.acks.delivered(tag)
        queue = self.subs.queue_of(method.consumer_tag)
        entry, pushed = self._remember(
            tag, props, lost=False, count=recoveries(props.headers, False)
        )
        if self.subs.released or method.redelivered:
            # Stopping: a delivery that crossed the cancel goes straight back, uncounted.
            # Redelivered: a lost worker held it, started or not: into the lost lane.
            if self.subs.released:
                self.subs.cancel(channel, method.consumer_tag)
            self._republish(queue, entry, body, lost=True if method.redelivered else None)
            return
        self.buffers[queue].append(Delivery(queue, entry, body.decode("utf-8", "replace")))
        assert self.arrived is not None
        self.arrived.set()

    def _remember(self, tag: int, props: Any, lost: bool, count: int) -> tuple[str, Pushed]:
        headers = props.headers
        ready_ms = headers.get(topo.READY_MS_HEADER) if headers else None
        if not isinstance(ready_ms, int):
            ready_ms = int((props.timestamp or time.time()) * 1000)
        gen, prio = self.link.gen, props.priority or 0
        entry = f"{ready_ms}|{prio}|{gen}.{tag}"  # see message.Entry
        pushed = Pushed(gen, tag, prio, props.message_id or "", lost, count, headers)
        self.pushed[entry] = pushed
        return entry, pushed

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the lost lane ---------------------------------------------------------------------
    async def take_lost(self, queues: Sequence[str]) -> list[Delivery] | None:
        """A lost-lane delivery to run alone ([d]), nothing for now while the worker
        still holds other tasks ([]), or None: no lost lane has work, take normally."""
        iso, now = self.isolation, time.monotonic()
        if not iso.due(now):
            return None
        channel = self.link.open_channel()
        if not iso.draining:
            waiting = 0
            for queue in queues:
                name = topo.lost_queue(self.prefix, queue)
                ok = await self.link.rpc(
                    lambda done, name=name: channel.queue_declare(name, passive=True, callback=done)
                )
                waiting += ok.method.message_count
            iso.found(waiting, now)
            if not iso.draining:
                return None
        if not iso.may_fetch(len(self.taken)):
            return []
        for queue in queues:
            got = await self._get_lost(channel, queue)
            if got is not None:
                return got
        iso.found(0, now)
        return None

    async def _get_lost(self, channel: Any, queue: str) -> list[Delivery] | None:
        """basic.get one message of `queue`'s lost lane (None: empty)."""
        assert self.link.loop is not None
        fut: asyncio.Future = self.link.loop.create_future()

        def got(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            if not fut.done():
                fut.set_result((method, props, body))

        def empty(_frame: Any) -> None:
            if not fut.done():
                fut.set_result(None)

        channel.add_callback(empty, [pika.spec.Basic.GetEmpty], one_shot=True)
        channel.basic_get(topo.lost_queue(self.prefix, queue), got, auto_ack=False)
        self.link.watch(fut)
        reply = await fut
        if reply is None:
            return None
        method, props, body = reply
        self.acks.delivered(method.delivery_tag)
        count = recoveries(props.headers, True)
        entry, pushed = self._remember(method.delivery_tag, props, lost=True, count=count)
        if count > self.options.max_redeliveries:
            reason = lost_reason(count, CONSUMER_TIMEOUT_HINT)
            payload = with_error(body, reason)
            logs.error("task lost too often, moved to the DLQ", queue=queue, id=pushed.task_id)
            self._replace(queue, entry, lambda: self._publish_dead(queue, payload, pushed))
            return []
        self.taken.add(entry)
        return [Delivery(queue, entry, body.decode("utf-8", "replace"), recoveries=count)]

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
        """Apply a batch. Plain acks are owed and sent in batches; a retry, postpone,
        DLQ copy or hand-back is published on `out` and confirmed before its original
        is acked, in a background job (_replace), so nothing here waits for a publish."""
        self.link.open_channel()
        acks: list[int] = []
        settled = 0
        for s in settlements:
            d = s.delivery
            if s.busy_us:
                self.busy_us[d.queue] += s.busy_us
            pushed = self._current(d.entry)
            self.taken.discard(d.entry)
            if pushed is None:
                # Its channel is gone (RabbitMQ already requeued the message), or a retried
                # batch: acking a tag twice would make RabbitMQ close the channel.
                continue
            state = next_state(s.op)
            settled += 1
            if state is None:  # ack
                del self.pushed[d.entry]
                acks.append(pushed.tag)
                self.completed[d.queue] += 1
                self.subs.completed(d.queue)
            elif state is TaskState.READY:  # requeue: handed back, never counted
                self._republish(d.queue, d.entry, _raw(d.payload), lost=None)
                self.release()
            else:
                payload = _raw(s.payload or d.payload)
                if state is TaskState.DEAD:
                    job = self._dead_job(d.queue, payload, pushed, dead_ttl_ms)
                else:  # retry, postpone: delayed, the losses so far carried
                    job = self._delayed_job(d.queue, payload, pushed, s.delay_ms)
                self._replace(d.queue, d.entry, job, final=is_final(s.op))
        self.acks.finish(acks)
        return settled

    def _dead_job(
        self, queue: str, payload: bytes, pushed: Pushed, dead_ttl_ms: int
    ) -> Callable[[], Awaitable[asyncio.Future]]:
        reason = dead_reason(payload)
        return lambda: self.out.publish_dead(
            queue, payload, pushed.task_id, reason, dead_ttl_ms, pushed.priority
        )

    def _delayed_job(
        self, queue: str, payload: bytes, pushed: Pushed, delay_ms: int
    ) -> Callable[[], Awaitable[asyncio.Future]]:
        headers = carried_headers(None, pushed.recoveries) or None
        return lambda: self.out.publish_task(
            queue, payload, pushed.priority, delay_ms, pushed.task_id, headers
        )

    def _publish_dead(
        self, queue: str, payload: bytes, pushed: Pushed
    ) -> Awaitable[asyncio.Future]:
        reason = dead_reason(payload)
        return self.out.publish_dead(queue, payload, pushed.task_id, reason, 0, pushed.priority)

    def _republish(self, queue: str, entry: str, body: bytes, lost: bool | None) -> None:
        """Hand a delivery back as a copy (confirmed), then ack it: a nack would mark
        it redelivered, which is a loss. `lost`: True into the lost lane, None back to
        the lane it came from."""
        pushed = self.pushed[entry]
        into_lost = pushed.lost if lost is None else lost
        routing = (topo.lost_queue if into_lost else topo.ready_queue)(self.prefix, queue)
        props = pika.BasicProperties(
            delivery_mode=2,
            priority=pushed.priority,
            message_id=pushed.task_id,
            timestamp=int(entry.split("|", 1)[0]) // 1000,
            content_type="application/json",
            headers=carried_headers(pushed.headers, pushed.recoveries),
        )
        if into_lost:
            self.isolation.poke()

        async def publish() -> asyncio.Future:
            await self.out.ensure_queue(queue)
            return self.out.publish(routing, body, props)

        self._replace(queue, entry, publish, final=False)

    def _replace(
        self,
        queue: str,
        entry: str,
        publish: Callable[[], Awaitable[asyncio.Future]],
        final: bool = True,
    ) -> None:
        """Replace a delivery by a new copy, in a background job (_copy_then_ack). The
        entry is settled from now on: a second settlement of it is skipped, so a task
        handed back twice (a hard timeout's exit) is not copied twice."""
        pushed = self.pushed.pop(entry, None)
        if pushed is not None:
            self._spawn(self._copy_then_ack(queue, pushed, publish, final))

    async def _copy_then_ack(
        self,
        queue: str,
        pushed: Pushed,
        publish: Callable[[], Awaitable[asyncio.Future]],
        final: bool,
    ) -> None:
        """Publish the new copy until RabbitMQ confirms it, then ack the original; give
        up only when the original's channel is gone (RabbitMQ then requeued it). A copy
        held back by a memory alarm waits for the alarm, alone."""
        delay = 0.2
        while pushed.gen == self.link.gen:
            try:
                confirmed = await publish()
                await confirmed
                break
            except Exception as exc:
                logs.warn("republishing a task failed", id=pushed.task_id, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if pushed.gen != self.link.gen:
            return
        self.acks.finish([pushed.tag])
        if final:
            self.completed[queue] += 1
            self.subs.completed(queue)

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
        for queue, buf in self.buffers.items():
            while buf:
                d = buf.popleft()
                if self._current(d.entry) is not None:
                    self._republish(queue, d.entry, _raw(d.payload), lost=None)

    # -- heartbeats ----------------------------------------------------------------------
    async def publish_heartbeat(self, worker_id: str, body: bytes, ttl_ms: int) -> None:
        await self.out.publish_heartbeat(worker_id, body, ttl_ms)

    async def delete_heartbeat(self, worker_id: str) -> None:
        await self.out.delete_heartbeat(worker_id)


async def _nothing() -> None:
    """The publishing link consumes nothing, so it has nothing to start."""


def _raw(payload: str | bytes) -> bytes:
    return payload if isinstance(payload, bytes) else payload.encode()
