"""The key layout before hash tags: refused with how to migrate, then `ebbtide migrate`
moves every task (ready, delayed, in flight, dead, unique keys, counters) and the claim
epoch, and a worker completes them."""

from __future__ import annotations

import json

import pytest
from worker_testkit import wait_for

pytestmark = pytest.mark.redis


def old_layout(rec, queue: str = "default") -> list[str]:
    """What the old scripts left: two ready tasks, one delayed, one in flight (an
    expired lease), one dead, a unique key, counters and the global epoch."""
    ids = ["t-ready-1", "t-ready-2", "t-delayed", "t-inflight"]
    for n, task_id in enumerate(ids):
        body = {"id": task_id, "task": "record", "args": ["migrated", n], "kwargs": {}}
        rec.hset(f"ebbtide:q:{queue}:msgs", task_id, json.dumps(body))
    rec.rpush(f"ebbtide:q:{queue}:ready:0", "1|0|t-ready-1", "1|0|t-ready-2")
    rec.zadd(f"ebbtide:q:{queue}:delayed", {"0|t-delayed": 1})
    rec.zadd(f"ebbtide:q:{queue}:inflight", {"1|0|41.t-inflight": 1})
    rec.hset(f"ebbtide:q:{queue}:claims", "1|0|41.t-inflight", "1|gone-worker")
    rec.zadd(f"ebbtide:q:{queue}:dead", {"0|t-dead": 5})
    rec.hset(f"ebbtide:q:{queue}:msgs", "t-dead", '{"id":"t-dead","error":"boom"}')
    rec.set(f"ebbtide:q:{queue}:uniq:k1", "t-ready-1", px=600_000)
    rec.hset(f"ebbtide:q:{queue}:counters", mapping={"enqueued": 5, "completed": 1})
    rec.sadd("ebbtide:queues", queue)
    rec.set("ebbtide:epoch", 41)
    return ids


def test_old_layout_is_refused_then_migrated_and_every_task_completes(redis_broker):
    broker = redis_broker
    ids = old_layout(broker.rec)
    with pytest.raises(Exception, match="ebbtide migrate --broker-url <url> --key-prefix ebbtide"):
        broker.tasks.record.send("new", 1)
    done = broker.cli("migrate")
    assert done.returncode == 0, done.stderr
    assert "migrated 1 queue(s)" in done.stdout
    assert not broker.rec.exists("ebbtide:queues", "ebbtide:epoch", "ebbtide:q:default:msgs")
    assert broker.rec.get("ebbtide:q:{default}:epoch") == "41"  # fencing tokens go on
    assert broker.rec.get("ebbtide:q:{default}:uniq:k1") == "t-ready-1"
    q = broker.queue()
    assert (q.ready, q.delayed, q.in_flight, q.dead, q.enqueued_total) == (2, 1, 1, 1, 5)
    broker.tasks.record.send("new", 1)  # accepted now
    with broker.worker("--lease-seconds", "2"):
        wait_for(lambda: len(broker.done("migrated")) == len(ids), what="the old tasks done")
        wait_for(lambda: broker.done("new"), what="the new task done")
    assert broker.queue().dead == 1 and broker.cli("migrate").returncode == 0  # idempotent
