"""`with app.batch():` on each broker: ids at once, stored at the exit, and an exit that
names every task it could not store."""

from __future__ import annotations

import ebbtide
import pytest
from ebbtide.stats import read_stats


@pytest.fixture
def app(broker):
    application = ebbtide.App(broker_url=broker.url)
    yield application
    application.close()


def test_sends_in_a_batch_are_stored_at_the_exit(app, broker):
    @app.task(name="t", queue="b1")
    def t(x): ...

    @app.task(name="u", queue="b2")
    def u(x): ...

    with app.batch() as batch:
        ids = [t.send(i) for i in range(50)]
        ids += t.send_many((i,) for i in range(20))
        with app.batch():  # a nested block joins the outer one
            other = u.options(priority=3).send(1)
        assert len(batch) == 71
        assert "b1" not in read_stats(broker.url).queues  # nothing stored yet
    assert len(set(ids)) == 70
    broker.queue_shows(lambda q: q.ready == 70, "70 ready in b1", "b1")
    broker.queue_shows(lambda q: q.ready == 1, "1 ready in b2", "b2")
    assert other not in ids


def test_a_block_left_by_an_exception_stores_nothing(app, broker):
    @app.task(name="t", queue="b3")
    def t(x): ...

    t.send(0)  # the queue exists, holding one task
    with pytest.raises(RuntimeError, match="boom"), app.batch():
        t.send(1)
        raise RuntimeError("boom")
    broker.queue_shows(lambda q: q.ready == 1, "only the task sent outside", "b3")


def test_broker_down_at_exit_names_every_task(broker):
    url = "redis://127.0.0.1:1/0" if broker.is_redis else "amqp://guest:guest@127.0.0.1:1/"
    down = ebbtide.App(broker_url=url)

    @down.task(name="emails.send", queue="b4")
    def send_email(to): ...

    with pytest.raises(ebbtide.BatchNotStored) as info, down.batch():
        ids = [send_email.send(f"{i}@example.com") for i in range(3)]
    assert info.value.stored == []
    assert info.value.not_stored == [(i, "emails.send") for i in ids]
    message = str(info.value)
    assert "3 of 3 tasks were NOT confirmed as stored" in message
    assert all(f"{i} (emails.send)" in message for i in ids)
    assert isinstance(info.value.__cause__, ConnectionError)


def test_a_full_queue_at_exit_names_the_tasks_left_out(app, broker):
    app.queue("small", max_backlog=3)

    @app.task(name="t", queue="small")
    def t(i): ...

    with pytest.raises(ebbtide.BatchNotStored) as info, app.batch():
        ids = [t.send(i) for i in range(5)]
    assert info.value.stored == ids[:3]
    assert info.value.not_stored == [(ids[3], "t"), (ids[4], "t")]
    assert isinstance(info.value.__cause__, ebbtide.BacklogFull)
    broker.queue_shows(lambda q: q.ready == 3, "exactly the 3 stored", "small")


def test_keyed_sends_are_refused_in_a_batch(app, broker):
    @app.task(name="t")
    def t(i): ...

    with pytest.raises(ValueError, match="keyed send.*cannot go in app.batch"), app.batch():
        t.options(key="k").send(1)
