"""Producer API and statistics against a real Redis (no worker process)."""

from __future__ import annotations

import ebbtide
import pytest
import redis
from ebbtide.stats import read_stats

pytestmark = pytest.mark.redis


@pytest.fixture
def app(redis_db):
    application = ebbtide.App(broker_url=redis_db)
    yield application
    application.close()


def test_send_returns_id_and_stats_count_it(app, redis_db):
    @app.task(name="t", queue="q1")
    def t(x): ...

    ids = [t.send(i) for i in range(3)]
    assert len(set(ids)) == 3
    stats = read_stats(redis_db)
    q = stats.queues["q1"]
    assert (q.ready, q.enqueued_total, q.in_flight, q.delayed, q.dead) == (3, 3, 0, 0, 0)
    assert q.ready_by_priority == {0: 3}
    assert q.oldest_ready_at is not None and abs(stats.now - q.oldest_ready_at) < 60


def test_read_stats_accepts_a_client_and_a_queue_filter(app, redis_db):
    @app.task(name="t", queue="a")
    def t(): ...

    t.send()
    t.options(queue="b", priority=7).send()
    client = redis.Redis.from_url(redis_db)
    stats = read_stats(client, ["b"])
    assert set(stats.queues) == {"b"}
    assert stats.queues["b"].ready_by_priority == {7: 1}
    assert set(read_stats(redis_db).queues) == {"a", "b"}
    assert read_stats(redis_db, ["never-used"]).queues["never-used"].ready == 0


def test_send_many_is_ordered_and_accepts_args_and_kwargs(app, redis_db):
    @app.task(name="t")
    def t(a, b=0): ...

    ids = t.send_many([(1,), ((2,), {"b": 3}), 4] + [(i,) for i in range(2500)])
    assert len(ids) == 2503
    stats = read_stats(redis_db)
    assert stats.queues["default"].ready == 2503
    entries = redis.Redis.from_url(redis_db, decode_responses=True).lrange(
        "ebbtide:q:default:ready:0", 0, 2
    )
    assert [e.rsplit("|", 1)[1] for e in entries] == ids[:3]


def test_delayed_tasks_are_counted_as_delayed(app, redis_db):
    @app.task(name="t")
    def t(): ...

    t.options(delay=3600).send()
    q = read_stats(redis_db).queues["default"]
    assert (q.ready, q.delayed) == (0, 1)


def test_backlog_full(app, redis_db):
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
    assert read_stats(redis_db).queues["small2"].ready == 5


def test_oversized_and_non_json_payloads_are_refused_at_send(redis_db):
    app = ebbtide.App(broker_url=redis_db, max_payload_bytes=1000)

    @app.task(name="t")
    def t(*args, **kwargs): ...

    with pytest.raises(ebbtide.PayloadTooLarge, match="over the limit of 1000 bytes"):
        t.send("x" * 2000)
    with pytest.raises(TypeError, match="positional argument 1 is not JSON-able: set"):
        t.send(1, {1, 2})
    with pytest.raises(TypeError, match="keyword argument 'when' is not JSON-able"):
        t.send(when=object())
    assert (
        "default" not in read_stats(redis_db).queues
        or not read_stats(redis_db).queues["default"].ready
    )


def test_unique_key_dedups_while_pending(app, redis_db):
    @app.task(name="t")
    def t(i): ...

    first = t.options(key="invoice-7").send(1)
    again = t.options(key="invoice-7").send(2)
    other = t.options(key="invoice-8").send(3)
    assert again == first and other != first
    assert read_stats(redis_db).queues["default"].ready == 2


def test_unknown_scheme_and_missing_url_are_clear(monkeypatch):
    with pytest.raises(ebbtide.UnsupportedBroker, match="unsupported broker URL scheme 'http'"):
        ebbtide.App(broker_url="http://localhost")
    monkeypatch.delenv("EBBTIDE_BROKER_URL", raising=False)
    app = ebbtide.App()

    @app.task
    def t(): ...

    with pytest.raises(ebbtide.UnsupportedBroker, match="EBBTIDE_BROKER_URL"):
        t.send()


def test_calling_the_handle_runs_locally(app):
    @app.task
    def add(a, b):
        return a + b

    @app.task(queue="x")
    async def aadd(a, b):
        return a + b

    assert add(2, 3) == 5
    assert aadd.is_async and not add.is_async
