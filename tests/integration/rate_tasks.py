"""Tasks for the rate-limit tests (tests/integration/test_rate_limit.py): workers import
this as `rate_tasks:app`, on Redis or RabbitMQ alike.

Each run records when it started and in which worker process, in a real Redis (env
EBBTIDE_TEST_RECORD_URL), so the test reads effects, not logs.
"""

from __future__ import annotations

import os
import time

import ebbtide
import redis

LIMIT, WINDOW_S = 10, 1.0  # rate="10/s"
app = ebbtide.App(retry_backoff=0.05)
_client: redis.Redis | None = None


def r() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["EBBTIDE_TEST_RECORD_URL"], decode_responses=True)
    return _client


@app.task(name="rated", rate=f"{LIMIT}/s")
async def rated(tag: str, i: int) -> None:
    # async: it runs on the worker's loop right after its token, so the stamp is close
    # to the moment the token was granted (a `def` task would first wait for a thread).
    started = time.time()
    r().rpush(f"done:{tag}", f"{started}|{os.getpid()}|{i}")
