"""The RabbitMQ consumer without a broker: deliveries in, frames and publishes out, over a
fake connection.Link that records what would go on the wire."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pika
from ebbtide.brokers.base import Settlement
from ebbtide.brokers.rabbitmq import topology as topo
from ebbtide.brokers.rabbitmq.consumer import Consumer
from ebbtide.lifecycle import Outcome

URL = "amqp://guest:guest@127.0.0.1:1/"


class FakeChannel:
    is_open = True

    def __init__(self) -> None:
        self.frames: list[tuple[Any, ...]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.frames.append(("ack", tag, multiple))

    def basic_nack(self, tag: int, requeue: bool = True) -> None:
        self.frames.append(("nack", tag, requeue))

    def basic_cancel(self, consumer_tag: str) -> None:
        self.frames.append(("cancel", consumer_tag))


class FakeLink:
    """What Consumer uses of connection.Link; publishes are confirmed at once."""

    def __init__(self) -> None:
        self.gen, self.connected, self.running, self.writes = 1, True, True, None
        self.channel = FakeChannel()
        self.published: list[tuple[Any, ...]] = []

    def open_channel(self) -> FakeChannel:
        return self.channel

    def _confirmed(self) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def publish_task(self, queue, payload, priority, delay_ms, task_id, headers=None):
        self.published.append(("task", queue, payload, priority, delay_ms, task_id))
        return self._confirmed()

    async def publish_dead(self, queue, payload, task_id, reason, dead_ttl_ms, prio):
        self.published.append(("dead", queue, payload, task_id, reason, prio))
        return self._confirmed()

    async def ensure_queue(self, queue: str) -> None:
        pass

    def publish(self, routing: str, body: bytes, props: Any) -> asyncio.Future:
        self.published.append(("copy", routing, body, props.headers.get(topo.RECOVERIES_HEADER)))
        return self._confirmed()


def acked(frames: list[tuple[Any, ...]], delivered: int) -> set[int]:
    """The delivery tags (1..delivered) the ack frames cover."""
    out: set[int] = set()
    for frame in frames:
        if frame[0] == "ack":
            _op, tag, multiple = frame
            out |= set(range(1, tag + 1)) if multiple else {tag}
    return out & set(range(1, delivered + 1))


def consumer() -> tuple[Consumer, FakeLink]:
    """A Consumer whose consuming link and publishing link (`c.out`) are fakes; the
    publishes the tests look at are on `c.out`, the frames on the consuming channel."""
    c = Consumer(pika.URLParameters(URL), URL, "ebbtide", topo.parse_options(URL))
    c.link = c.subs.link = link = FakeLink()  # type: ignore[assignment]
    c.out = FakeLink()  # type: ignore[assignment]
    c.subs.tag_queue["ctag"] = "q"
    c.arrived = asyncio.Event()
    return c, link


def deliver(
    c: Consumer,
    tag: int,
    priority: int = 3,
    message_id: str = "",
    redelivered: bool = False,
    recoveries: int = 0,
) -> None:
    method = SimpleNamespace(delivery_tag=tag, consumer_tag="ctag", redelivered=redelivered)
    headers: dict[str, Any] = {topo.READY_MS_HEADER: 1_700_000_000_000 + tag}
    if recoveries:
        headers[topo.RECOVERIES_HEADER] = recoveries
    props = SimpleNamespace(
        headers=headers, priority=priority, message_id=message_id or f"m{tag}", timestamp=None
    )
    c.deliver(c.link.channel, method, props, b'{"task":"t","error":"E: x"}')


def test_deliveries_become_entries_the_worker_can_date_but_need_not_parse():
    async def main():
        c, _ = consumer()
        for tag in (1, 2, 3):
            deliver(c, tag)
        got = c.take([("q", 1)], 2)
        assert [d.entry for d in got] == ["1700000000001|3|1.1", "1700000000002|3|1.2"]
        assert got[0].ready_ms == 1_700_000_000_001 and got[0].queue == "q"
        assert c.arrived.is_set() and [d.entry for d in c.take([("q", 0)], 5)] == [
            "1700000000003|3|1.3"
        ]

    asyncio.run(main())


def test_acks_go_out_as_one_multiple_frame_and_stale_entries_are_skipped():
    async def main():
        c, link = consumer()
        for tag in (1, 2, 3):
            deliver(c, tag)
        got = c.take([("q", 3)], 3)
        settled = await c.settle([Settlement(Outcome.ACK, d, busy_us=5) for d in got[:2]], 0)
        assert settled == 2 and link.channel.frames == [("ack", 2, True)]
        assert c.completed["q"] == 2 and c.busy_us["q"] == 10
        again = await c.settle([Settlement(Outcome.ACK, got[0])], 0)  # a retried batch
        link.gen = 2  # reconnected: RabbitMQ already requeued tag 3
        stale = await c.settle([Settlement(Outcome.ACK, got[2])], 0)
        assert (again, stale) == (0, 0) and link.channel.frames == [("ack", 2, True)]

    asyncio.run(main())


def test_a_retry_or_a_dead_letter_is_published_before_its_original_is_acked():
    async def main():
        c, link = consumer()
        deliver(c, 1, priority=4)
        deliver(c, 2, priority=0)
        retry, dead = c.take([("q", 2)], 2)
        n = await c.settle(
            [
                Settlement(Outcome.RETRY, retry, '{"task":"t","attempt":1}', delay_ms=1500),
                Settlement(Outcome.DEAD, dead),
            ],
            dead_ttl_ms=9000,
        )
        assert n == 2 and link.channel.frames == []  # nothing acked before its copy
        await c.finish_jobs(5)
        assert c.out.published == [
            ("task", "q", b'{"task":"t","attempt":1}', 4, 1500, "m1"),
            ("dead", "q", b'{"task":"t","error":"E: x"}', "m2", "E: x", 0),
        ]
        assert link.published == []  # the consuming link never publishes
        c.flush_acks()
        assert acked(link.channel.frames, 2) == {1, 2}
        assert c.completed["q"] == 1  # only the dead one's life ended

    asyncio.run(main())


def test_a_hand_back_is_a_copy_then_an_ack_never_a_nack_and_releases_everything_buffered():
    """A nack would mark the message redelivered, which reads as a loss: a graceful
    hand-back republishes it (with the losses it carries) and acks it instead."""

    async def main():
        c, link = consumer()
        c.subs.consumers = {"q": [("ctag", 16)]}
        for tag in (1, 2, 3):
            deliver(c, tag, recoveries=2 if tag == 1 else 0)
        (first,) = c.take([("q", 1)], 1)
        assert await c.settle([Settlement(Outcome.REQUEUE, first)], 0) == 1
        assert link.channel.frames == [("cancel", "ctag")]
        await c.finish_jobs(5)
        c.flush_acks()
        assert c.out.published == [
            ("copy", "ebbtide.q", b'{"task":"t","error":"E: x"}', 2),
            ("copy", "ebbtide.q", b'{"task":"t","error":"E: x"}', None),
            ("copy", "ebbtide.q", b'{"task":"t","error":"E: x"}', None),
        ]
        assert link.channel.frames[0] == ("cancel", "ctag")
        assert acked(link.channel.frames, 3) == {1, 2, 3}
        assert not any(f[0] == "nack" for f in link.channel.frames)
        assert c.subs.released and c.take([("q", 5)], 5) == []
        deliver(c, 4)  # crossed the cancel: straight back, as a copy
        await c.finish_jobs(5)
        assert c.out.published[-1][1] == "ebbtide.q"

    asyncio.run(main())


def test_a_redelivery_moves_into_the_lost_lane_uncounted_and_is_not_run_from_the_buffer():
    """RabbitMQ cannot say whether a lost worker had started a redelivered message, so
    it is not counted here: it moves to the lost lane, where only losses of a task held
    alone count (lost.py)."""

    async def main():
        c, link = consumer()
        deliver(c, 1, redelivered=True, recoveries=1)
        deliver(c, 2)
        assert [d.entry for d in c.take([("q", 5)], 5)] == ["1700000000002|3|1.2"]
        await c.finish_jobs(5)
        assert c.out.published == [("copy", "ebbtide.q.lost", b'{"task":"t","error":"E: x"}', 1)]
        c.flush_acks()
        assert acked(link.channel.frames, 2) == {1}  # tag 2 is still running
        assert c.isolation.due(0.0)  # the lanes are looked at on the next claim

    asyncio.run(main())


def test_a_task_handed_back_twice_is_copied_once():
    """A hard timeout's exit can hand the same running task back twice (cut off, then
    left over): the entry is settled by the first, so the second is skipped."""

    async def main():
        c, link = consumer()
        deliver(c, 1)
        (d,) = c.take([("q", 1)], 1)
        assert await c.settle([Settlement(Outcome.REQUEUE, d)], 0) == 1
        assert await c.settle([Settlement(Outcome.REQUEUE, d)], 0) == 0
        await c.finish_jobs(5)
        assert [p[1] for p in c.out.published] == ["ebbtide.q"]

    asyncio.run(main())
