"""The producer API and statistics on each broker (no worker process): every test that
takes `broker` runs as `[redis]` and as `[rabbitmq]`. RabbitMQ's statistics come from the
management API and lag a little, so they are polled there (BrokerUnderTest.shows)."""

from __future__ import annotations

import json

import ebbtide
import pytest
import redis
from ebbtide.stats import read_stats


@pytest.fixture
def app(broker):
    application = ebbtide.App(broker_url=broker.url)
    yield application
    application.close()


def test_send_returns_id_and_stats_count_it(app, broker):
    @app.task(name="t", queue="q1")
    def t(x): ...

    ids = [t.send(i) for i in range(3)]
    assert len(set(ids)) == 3
    stats = broker.shows(
        lambda: (s := broker.stats()).queues["q1"].oldest_ready_at is not None and s,
        "q1 and its oldest task in the stats",
    )
    q = stats.queues["q1"]
    assert (q.ready, q.enqueued_total, q.in_flight, q.delayed, q.dead) == (3, 3, 0, 0, 0)
    # RabbitMQ does not report the depth per priority (docs/rabbitmq.md)
    assert q.ready_by_priority == ({0: 3} if broker.is_redis else {})
    assert q.oldest_ready_at is not None and abs(stats.now - q.oldest_ready_at) < 60


def test_read_stats_accepts_a_client_and_a_queue_filter(app, broker):
    @app.task(name="t", queue="a")
    def t(): ...

    t.send()
    t.options(queue="b", priority=7).send()
    # Redis: a redis.Redis client; either broker: a Broker.
    client = redis.Redis.from_url(broker.url) if broker.is_redis else app.broker
    stats = broker.shows(
        lambda: (s := read_stats(client, ["b"])).queues["b"].ready == 1 and s, "b's task"
    )
    assert set(stats.queues) == {"b"}
    assert stats.queues["b"].ready_by_priority == ({7: 1} if broker.is_redis else {})
    assert set(read_stats(broker.url).queues) == {"a", "b"}
    assert read_stats(broker.url, ["never-used"]).queues["never-used"].ready == 0


def test_send_many_is_ordered_and_accepts_args_and_kwargs(app, broker):
    @app.task(name="t")
    def t(a, b=0): ...

    items = [(1,), ((2,), {"b": 3}), 4] + [(i,) for i in range(2500)]
    ids = t.send_many(items)
    assert len(ids) == 2503 and len(set(ids)) == 2503
    broker.queue_shows(lambda q: q.ready == 2503, "2503 ready")
    # Every id, so the order holds across the 1,000-message chunks of the pipeline too.
    assert broker.ready_ids(2503) == ids
    if broker.is_redis:  # and each id is the task of its item, at the chunk boundaries too
        client = redis.Redis.from_url(broker.url, decode_responses=True)
        for k in (0, 1, 2, 999, 1000, 1001, 1999, 2000, 2502):
            body = json.loads(client.hget("ebbtide:q:{default}:msgs", ids[k]))
            want = [2] if k == 1 else [items[k]] if k == 2 else list(items[k])
            assert body["args"] == want, k
        client.close()


def test_delayed_tasks_are_counted_as_delayed(app, broker):
    @app.task(name="t")
    def t(): ...

    t.options(delay=3600).send()
    broker.queue_shows(lambda q: (q.ready, q.delayed) == (0, 1), "one delayed, none ready")


def test_backlog_full(app, broker):
    app.queue("small", max_backlog=3)

    @app.task(name="t", queue="small")
    def t(i): ...

    for i in range(3):
        t.send(i)
    with pytest.raises(ebbtide.BacklogFull, match="'small' is full.*max_backlog=3"):
        t.send(4)
    app.queue("small2", max_backlog=5)
    with pytest.raises(ebbtide.BacklogFull) as info:
        t.options(queue="small2").send_many((i,) for i in range(8))
    assert info.value.accepted == 5
    broker.queue_shows(lambda q: q.ready == 5, "5 ready in small2", "small2")


def test_oversized_and_non_json_payloads_are_refused_at_send(broker):
    app = ebbtide.App(broker_url=broker.url, max_payload_bytes=1000)

    @app.task(name="t")
    def t(*args, **kwargs): ...

    with pytest.raises(ebbtide.PayloadTooLarge, match="over the limit of 1000 bytes"):
        t.send("x" * 2000)
    with pytest.raises(TypeError, match="positional argument 1 is not JSON-able: set"):
        t.send(1, {1, 2})
    with pytest.raises(TypeError, match="keyword argument 'when' is not JSON-able"):
        t.send(when=object())
    app.close()
    assert (
        "default" not in read_stats(broker.url).queues
        or not read_stats(broker.url).queues["default"].ready
    )


def test_unique_key_dedups_while_pending(app, broker):
    @app.task(name="t")
    def t(i): ...

    if broker.is_rabbitmq:
        # docs/rabbitmq.md, "Differences from Redis": refused with a clear error, since
        # RabbitMQ has no atomic de-duplication.
        with pytest.raises(ValueError, match="key=.*redis://"):
            t.options(key="invoice-7").send(1)
        return
    first = t.options(key="invoice-7").send(1)
    again = t.options(key="invoice-7").send(2)
    other = t.options(key="invoice-8").send(3)
    assert again == first and other != first
    assert read_stats(broker.url).queues["default"].ready == 2


def test_unreachable_broker_is_a_clear_error(broker):
    url = "redis://127.0.0.1:1/0" if broker.is_redis else "amqp://guest:guest@127.0.0.1:1/"
    down = ebbtide.App(broker_url=url)

    @down.task(name="t")
    def t(): ...

    with pytest.raises(ConnectionError, match="127.0.0.1:1"):
        t.send()


def test_unknown_scheme_and_missing_url_are_clear(monkeypatch):
    with pytest.raises(ebbtide.UnsupportedBroker, match="unsupported broker URL scheme 'http'"):
        ebbtide.App(broker_url="http://localhost")
    monkeypatch.delenv("EBBTIDE_BROKER_URL", raising=False)
    app = ebbtide.App()

    @app.task
    def t(): ...

    with pytest.raises(ebbtide.UnsupportedBroker, match="EBBTIDE_BROKER_URL"):
        t.send()


def test_calling_the_handle_runs_locally():
    app = ebbtide.App()  # no broker needed

    @app.task
    def add(a, b):
        return a + b

    @app.task(queue="x")
    async def aadd(a, b):
        return a + b

    assert add(2, 3) == 5
    assert aadd.is_async and not add.is_async
