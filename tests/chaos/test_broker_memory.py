"""A Redis out of memory: it must refuse new tasks rather than drop queued ones."""

from __future__ import annotations

import time

import chaos_tasks
import ebbtide
import pytest
import redis
from ledger import worker
from support.servers import redis_process

pytestmark = pytest.mark.redis


def test_redis_at_maxmemory_refuses_instead_of_dropping(ledger, redis_url):
    """With noeviction (what the managed Redis runs), a full Redis refuses writes: send()
    raises, so the tasks it refused were never accepted, and every accepted one runs."""
    with redis_process("--maxmemory", "3mb", "--maxmemory-policy", "noeviction") as server:
        chaos_tasks.app.use_broker_url(server.url)
        ledger.scenario = "Redis at maxmemory (noeviction)"
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            # 500 per call is one enqueue script, so each call is stored whole or refused
            # whole (~0.25 MB a call: a dozen or so fit).
            for _ in range(200):
                ledger.send(chaos_tasks.work, 500, 0.0, "x" * 400)
        assert len(ledger.ids) > 0, "some tasks were accepted before memory ran out"
        with worker(server.url, redis_url, "--concurrency", "8"):
            row = ledger.check(server.url, since=time.monotonic())
        chaos_tasks.app.close()
    assert row.completed == len(ledger.ids)


def test_redis_that_may_evict_keys_is_refused_by_name(ledger):
    """allkeys-* policies delete any key under pressure, queued tasks included: sending
    there would break the promise, so the producer refuses, naming the policy."""
    with redis_process("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as server:
        chaos_tasks.app.use_broker_url(server.url)
        try:
            with pytest.raises(
                ebbtide.BrokerEvicts, match="maxmemory-policy allkeys-lru.*noeviction"
            ):
                chaos_tasks.work.send(ledger.tag, 0)
        finally:
            chaos_tasks.app.close()
