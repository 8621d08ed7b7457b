"""Window resizing as consumers: grow by a consumer with the extra prefetch, shrink by
cancelling the extras, all on a fake channel."""

from __future__ import annotations

import asyncio
from typing import Any

from ebbtide.brokers.rabbitmq.subscriptions import Subscriptions


class FakeChannel:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._tags = 0

    def basic_qos(self, prefetch_count: int, global_qos: bool, callback) -> None:
        self.calls.append(("qos", prefetch_count, global_qos))
        callback(None)

    def basic_consume(self, queue: str, on_message, auto_ack: bool, callback) -> str:
        self._tags += 1
        tag = f"t{self._tags}"
        self.calls.append(("consume", queue, tag, auto_ack))
        asyncio.get_running_loop().call_soon(callback, None)  # ConsumeOk comes later
        return tag

    def basic_cancel(self, consumer_tag: str) -> None:
        self.calls.append(("cancel", consumer_tag))


class FakeLink:
    def __init__(self) -> None:
        self.channel, self.connected, self.running = FakeChannel(), True, True
        self.loop = asyncio.get_running_loop()
        self.declared: list[str] = []

    def open_channel(self) -> FakeChannel:
        return self.channel

    async def rpc(self, start):
        fut = self.loop.create_future()
        start(fut.set_result)
        return await fut

    def watch(self, fut: asyncio.Future) -> None:
        pass

    async def ensure_queue(self, queue: str) -> None:
        self.declared.append(queue)


def test_the_window_grows_and_shrinks_by_consumers():
    async def main():
        link = FakeLink()
        subs = Subscriptions(link, "ebbtide", lambda *a: None)  # type: ignore[arg-type]
        subs.configure(concurrency=2, prefetch=2, adaptive=False)
        await subs.subscribe(["q"], 99)  # the configured window wins over the claim size
        assert link.declared == ["q"] and subs.window == 4
        assert subs.consumers == {"q": [("t1", 4)]} and subs.queue_of("t1") == "q"
        await subs.resize("q", 10)
        assert subs.consumers == {"q": [("t1", 4), ("t2", 6)]} and subs.window == 10
        await subs.resize("q", 5)
        assert subs.consumers == {"q": [("t1", 4), ("t3", 1)]} and subs.window == 5
        subs.release(link.channel)
        assert subs.released
        assert [c for c in link.channel.calls if c[0] != "consume"] == [
            ("qos", 4, False),
            ("qos", 6, False),
            ("cancel", "t2"),
            ("qos", 1, False),
            ("cancel", "t1"),
            ("cancel", "t3"),
        ]
        subs.release(link.channel)  # each consumer is cancelled once
        assert link.channel.calls[-1] == ("cancel", "t3")

    asyncio.run(main())


def test_without_configure_the_claim_size_is_the_window():
    async def main():
        link = FakeLink()
        subs = Subscriptions(link, "ebbtide", lambda *a: None)  # type: ignore[arg-type]
        await subs.subscribe(["a", "b"], 7)
        assert subs.window == 14 and subs.consumers == {"a": [("t1", 7)], "b": [("t2", 7)]}
        subs.new_channel()
        assert subs.queue_of("t1") == ""  # tags of an old channel mean nothing

    asyncio.run(main())
