"""The basic.consume side of the worker's consumer: which consumers exist, and the
prefetch window each queue's consumers add up to.

Each queue starts with one consumer at the floor window (concurrency + prefetch). While
the window grows (window.py, by the measured completion rate) another consumer joins the
same queue with the extra prefetch, since basic.qos only applies to consumers started
after it; a shrink cancels the extra consumers. A new channel starts again at the floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ... import logs
from . import topology as topo
from .connection import CALL_TIMEOUT_S, BrokerDown, Link
from .window import SAMPLE_S, Window

Deliver = Callable[[Any, Any, Any, bytes], None]  # pika's on_message_callback


class Subscriptions:
    def __init__(self, link: Link, prefix: str, deliver: Deliver) -> None:
        self.link, self.prefix, self._deliver = link, prefix, deliver
        self.queues: tuple[str, ...] = ()
        self.prefetch = 0
        self.concurrency = 0  # 0: not configured, the window stays at `prefetch`
        self.adaptive = False
        self.windows: dict[str, Window] = {}
        self.consumers: dict[str, list[tuple[str, int]]] = {}  # queue -> (tag, prefetch)
        self.tag_queue: dict[str, str] = {}
        self._cancelled: set[str] = set()  # consumer tags cancelled on this channel
        self.released = False  # stopping: no consumer is started or resized any more
        self._tuner: asyncio.Task | None = None

    @property
    def window(self) -> int:
        """The current prefetch window, all queues together."""
        return sum(w.current for w in self.windows.values()) or self.prefetch

    def queue_of(self, consumer_tag: str) -> str:
        return self.tag_queue.get(consumer_tag, "")

    def completed(self, queue: str) -> None:
        """A delivery of `queue` was settled: the window's rate sample counts it."""
        window = self.windows.get(queue)
        if window is not None:
            window.completed()

    def new_channel(self) -> None:
        """Consumer tags of the old channel are void."""
        self.tag_queue, self._cancelled = {}, set()

    async def resume(self) -> None:
        """On a new channel: subscribe again, unless stopping or never subscribed."""
        if self.queues and not self.released:
            await self._consume()

    def release(self, channel: Any) -> None:
        """Stopping: cancel every consumer (nowait)."""
        self.released = True
        for consumers in self.consumers.values():
            for tag, _n in consumers:
                self.cancel(channel, tag)

    def stop(self) -> None:
        if self._tuner is not None:
            self._tuner.cancel()

    def configure(self, concurrency: int, prefetch: int, adaptive: bool) -> None:
        """The worker's task slots and prefetch; `adaptive` sizes the window by time
        (window.py), otherwise it stays at concurrency + prefetch."""
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
            self.link.drop("subscribe failed")
            raise

    async def _consume(self) -> None:
        """One consumer per queue with the floor window (a new channel starts there)."""
        channel = self.link.open_channel()
        self.consumers = {}
        for queue in self.queues:
            self.windows[queue].reset()
            await self.link.ensure_queue(queue)
            await self._add_consumer(channel, queue, self.windows[queue].floor)

    async def _add_consumer(self, channel: Any, queue: str, prefetch: int) -> None:
        # basic.qos (global=false) applies to the consumers started after it.
        await self.link.rpc(
            lambda done: channel.basic_qos(prefetch_count=prefetch, global_qos=False, callback=done)
        )
        tag = await asyncio.wait_for(self._start_consumer(channel, queue), CALL_TIMEOUT_S)
        if channel is not self.link.channel:  # reconnected meanwhile: that channel resubscribed
            raise BrokerDown("RabbitMQ channel replaced while subscribing")
        if self.released:  # stopping began meanwhile: release() did not see this one
            self.cancel(channel, tag)
            return
        self.consumers.setdefault(queue, []).append((tag, prefetch))

    async def _tune(self) -> None:
        """Resize each queue's window to the measured completion rate (see
        window.py): grow by adding a consumer with the extra prefetch on the same
        queue, shrink by cancelling the extra consumers."""
        while self.link.running:
            await asyncio.sleep(
                min((w.sample_s() for w in self.windows.values()), default=SAMPLE_S)
            )
            if self.released or not self.link.connected:
                continue
            now = time.monotonic()
            for queue, window in self.windows.items():
                want = window.tick(now)
                if want is None or self.released:
                    continue
                try:
                    await self.resize(queue, want)
                except BrokerDown:
                    pass  # the reconnect starts again at the floor
                except Exception as exc:
                    logs.warn("resizing the prefetch window failed", queue=queue, error=str(exc))

    async def resize(self, queue: str, want: int) -> None:
        """Make `queue`'s consumers add up to a window of `want`."""
        channel = self.link.open_channel()
        window = self.windows[queue]
        consumers = self.consumers.get(queue, [])
        if want < window.current:
            # Deliveries already pushed to a cancelled consumer stay ours (we run and
            # ack them); pika rejects (requeues) the few that cross the cancel.
            base, extra = consumers[:1], consumers[1:]
            for tag, _n in extra:
                self.cancel(channel, tag)
            self.consumers[queue] = base
            window.current = sum(n for _t, n in base)
        if want > window.current:
            await self._add_consumer(channel, queue, want - window.current)
            window.current = want
        logs.log("prefetch window", logging.DEBUG, queue=queue, window=window.current)

    def cancel(self, channel: Any, consumer_tag: str) -> None:
        """basic.cancel (nowait), once per consumer; pika itself requeues (rejects) the
        deliveries that cross it."""
        if consumer_tag in self._cancelled:
            return
        self._cancelled.add(consumer_tag)
        with contextlib.suppress(Exception):
            channel.basic_cancel(consumer_tag)

    def _start_consumer(self, channel: Any, queue: str) -> asyncio.Future:
        """basic.consume; the future resolves to the consumer tag on ConsumeOk."""
        assert self.link.loop is not None
        fut = self.link.loop.create_future()
        tag = ""

        def done(_frame) -> None:
            if not fut.done():
                fut.set_result(tag)

        tag = channel.basic_consume(
            topo.ready_queue(self.prefix, queue), self._deliver, auto_ack=False, callback=done
        )
        self.tag_queue[tag] = queue  # before any delivery for it can be dispatched
        self.link.watch(fut)
        return fut
