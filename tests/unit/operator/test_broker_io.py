"""Reading broker statistics: one kept client per URL (closed when unused, reopened after
an error), a hung URL that holds only its own threads, short timeouts for AMQP URLs, and
errors that never leak the URL (it carries the password)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from ebbtide.brokers.rabbitmq.topology import parse_options
from ebbtide.stats import BrokerStats
from ebbtide_operator.broker_io import (
    SOCKET_TIMEOUT_SECONDS,
    BrokerReader,
    BrokerUnreachable,
    RabbitMQLink,
    describe,
    open_link,
    with_amqp_timeouts,
)
from ebbtide_operator.build import rabbitmq


def test_amqp_urls_get_short_timeouts_unless_they_set_their_own():
    url = "amqp://u:p@h:5672/%2F?management_port=15672&socket_timeout=9"
    options = parse_options(with_amqp_timeouts(url))
    assert options.management_url == "http://u:p@h:15672"
    assert "socket_timeout=9" in options.amqp_url
    assert "connection_attempts=1" in options.amqp_url and "stack_timeout=5" in options.amqp_url


def test_an_amqp_link_keeps_a_broker_with_short_timeouts_and_a_management_session():
    url = rabbitmq.rabbitmq_url("tq1", "ns1", "u", "p")
    link = open_link(url, 4)  # opens nothing yet: connections come with the first read
    assert isinstance(link, RabbitMQLink)
    assert link.broker.params.connection_attempts == 1
    assert link.broker.params.socket_timeout == SOCKET_TIMEOUT_SECONDS
    assert link.broker.management is not None and link.broker.management.opened == 0
    link.close()


def test_an_unknown_scheme_is_a_clear_error():
    with pytest.raises(BrokerUnreachable, match="unsupported broker URL scheme 'http'"):
        open_link("http://h/", 4)


class FakeLink:
    """Stands in for a broker client: counts reads; `gate` (if set) holds each read."""

    def __init__(self, fail: bool = False, gate: threading.Event | None = None) -> None:
        self.reads, self.closed, self.fail, self.gate = 0, False, fail, gate

    def stats(self, queues, prefix) -> BrokerStats:
        if self.gate is not None:
            self.gate.wait(10)
        self.reads += 1
        if self.fail:
            raise ConnectionError("Error connecting to redis://:secret@h:6379")
        return BrokerStats(now=0.0, queues={}, workers=())

    def eviction_policy(self):
        return None

    def close(self) -> None:
        self.closed = True


class FakeConnect:
    def __init__(self, **link_args) -> None:
        self.opened: list[tuple[str, FakeLink]] = []
        self.link_args = link_args

    def __call__(self, url: str, connections: int, tls: object = None) -> FakeLink:
        link = FakeLink(**self.link_args.get(url, {}))
        self.opened.append((url, link))
        return link


def wait_closed(link: FakeLink) -> None:
    deadline = time.monotonic() + 5
    while not link.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert link.closed


def test_one_link_per_url_across_polls_and_taskqueues_closed_when_unused():
    connect = FakeConnect()
    reader = BrokerReader(max_threads=4, connect=connect)

    async def polls():
        for _ in range(5):
            await reader.read("ns/a", "redis://h/0", ["q"], timeout=5)
            await reader.read("ns/b", "redis://h/0", ["q"], timeout=5)

    try:
        asyncio.run(polls())
        ((url, link),) = connect.opened
        assert link.reads == 10 and reader.users(url) == 2
        reader.release("ns/a")
        assert not link.closed  # ns/b still reads it
        reader.release("ns/b")
        wait_closed(link)
        assert reader.users(url) == 0 and reader.link(url) is None
    finally:
        reader.close()


def test_a_taskqueue_moving_to_another_url_lets_go_of_the_old_one():
    connect = FakeConnect()
    reader = BrokerReader(max_threads=4, connect=connect)
    try:
        asyncio.run(reader.read("ns/a", "redis://old/0", ["q"], timeout=5))
        asyncio.run(reader.read("ns/a", "redis://new/0", ["q"], timeout=5))
        (_, old), (_, new) = connect.opened
        wait_closed(old)
        assert not new.closed and reader.users("redis://new/0") == 1
    finally:
        reader.close()


def test_a_failed_read_drops_the_link_and_the_next_read_reopens_it():
    connect = FakeConnect(**{"redis://h/0": {"fail": True}})
    reader = BrokerReader(max_threads=4, connect=connect)
    try:
        with pytest.raises(BrokerUnreachable) as error:
            asyncio.run(reader.read("ns/a", "redis://h/0", ["q"], timeout=5))
        assert "secret" not in str(error.value)
        with pytest.raises(BrokerUnreachable):
            asyncio.run(reader.read("ns/a", "redis://h/0", ["q"], timeout=5))
        assert len(connect.opened) == 2
        wait_closed(connect.opened[0][1])
    finally:
        reader.close()


def test_a_hung_url_holds_only_its_own_slots_and_the_others_keep_reading():
    """per_url is 1 here: the hung URL's second TaskQueue waits for a slot on the event
    loop and times out without taking a thread, so the healthy URL still has threads."""
    gate = threading.Event()
    connect = FakeConnect(**{"redis://hung/0": {"gate": gate}})
    reader = BrokerReader(max_threads=4, connect=connect)
    assert reader.per_url == 1

    async def scenario():
        hung = [
            asyncio.ensure_future(reader.read(f"ns/h{i}", "redis://hung/0", ["q"], timeout=0.5))
            for i in range(3)
        ]
        healthy = [await reader.read(f"ns/g{i}", "redis://ok/0", ["q"], 5) for i in range(20)]
        return await asyncio.gather(*hung, return_exceptions=True), healthy

    try:
        hung, healthy = asyncio.run(scenario())
        assert len(healthy) == 20
        assert all(isinstance(e, BrokerUnreachable) for e in hung)
        assert sum("still hanging" in str(e) for e in hung) == 2  # never got a thread
    finally:
        gate.set()
        reader.close()


def test_error_descriptions_never_contain_the_url():
    error = ConnectionError("Error connecting to redis://:hunter2@10.0.0.1:6379/0")
    text = describe(error)
    assert "hunter2" not in text and text.startswith("ConnectionError")
    assert (
        describe(TimeoutError("Timeout reading from socket"))
        == "TimeoutError: Timeout reading from socket"
    )
