"""Ebbtide through Redis Sentinel (one master, one replica, one sentinel): a failover
in the middle of a run loses no task."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import worker_tasks
from support.servers import redis_sentinel, sentinel_failover
from worker_testkit import BrokerUnderTest, recorder, wait_for

pytestmark = pytest.mark.redis


@pytest.fixture
def on_sentinel(redis_db) -> Iterator[tuple[BrokerUnderTest, dict]]:
    with redis_sentinel() as info:
        worker_tasks.app.use_broker_url(info["url"])
        rec = recorder(redis_db)
        yield BrokerUnderTest("redis", info["url"], redis_db, rec, worker_tasks), info
        rec.close()
        worker_tasks.app.close()


def test_every_task_completes_across_a_sentinel_failover(on_sentinel):
    """SENTINEL FAILOVER with a worker running: sends made while the old master is
    being demoted raise NotReplicated (no replica confirms them) and are sent again, so
    every accepted task is on the new master and runs; settlements the demoted master
    took are lost with it and their tasks run again (at least once)."""
    broker, info = on_sentinel
    broker.tasks.record.send_many([("before", i) for i in range(50)])
    sentinel = redis.Redis(port=info["sentinel_port"], decode_responses=True)
    old = sentinel.sentinel_get_master_addr_by_name(info["service"])
    with broker.worker("--concurrency", "4"):
        wait_for(lambda: len(broker.done("before")) == 50, what="the first tasks")
        wait_for(
            lambda: sentinel_failover(sentinel, info["service"]), what="SENTINEL FAILOVER taken"
        )
        wait_for(lambda: sentinel.sentinel_get_master_addr_by_name(info["service"]) != old,
                 what="the replica promoted")  # fmt: skip
        wait_for(lambda: _sent_after(broker), 30, what="sends confirmed by a replica")
        wait_for(lambda: set(broker.done("after")) == {str(i) for i in range(50)}, 60,
                 what="every task sent after it")  # fmt: skip

        def settled() -> bool:
            q = broker.queue()  # on the new master
            return q.ready == 0 and q.in_flight == 0 and q.enqueued_total >= 100

        wait_for(settled, 60, what="nothing left on the new master")
    assert broker.queue().dead == 0
    sentinel.close()


def _sent_after(broker: BrokerUnderTest) -> bool:
    try:
        broker.tasks.record.send_many([("after", i) for i in range(50)])
    except (ConnectionError, redis.exceptions.RedisError):
        # NotReplicated (the old master, cut off), READONLY (it turned replica), or the
        # link dropped: send again.
        return False
    return True
