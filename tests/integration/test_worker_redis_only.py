"""Worker behaviour that is Redis's alone (the shared behaviours: test_worker.py).

The rate limit stays here as it was: a both-brokers version lives in test_rate_limit.py.
"""

from __future__ import annotations

import pytest
import redis
import worker_tasks as rt
from worker_testkit import wait_for, worker

pytestmark = pytest.mark.redis


@pytest.fixture
def r(redis_db, monkeypatch):
    monkeypatch.setenv("EBBTIDE_BROKER_URL", redis_db)
    rt.app.use_broker_url(redis_db)
    rt._client = None
    client = redis.Redis.from_url(redis_db, decode_responses=True)
    yield client
    client.close()
    rt.app.close()


def done(r, tag):
    return r.lrange(f"done:{tag}", 0, -1)


def test_rate_limit_holds_across_workers(r, redis_db):
    rt.limited.send_many(("rate", i) for i in range(12))
    with worker(redis_db, "--concurrency", "4"), worker(redis_db, "--concurrency", "4"):
        wait_for(lambda: len(done(r, "rate")) == 12)
    stamps = sorted(float(x) for x in done(r, "rate"))
    # 4 per 1 s window: 12 tasks need 3 windows, so they cannot all run at once (unlimited,
    # 8 slots finish 12 such tasks within milliseconds).
    assert stamps[-1] - stamps[0] > 0.5
