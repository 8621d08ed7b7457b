"""The tasks of the chaos suite. Worker subprocesses import this module as
`chaos_tasks:app`; every run is counted in the recorder Redis (env
EBBTIDE_TEST_RECORD_URL), which no fault ever touches, so the ledger sees real effects."""

from __future__ import annotations

import os
import time

import ebbtide
import redis

app = ebbtide.App(retry_backoff=0.05)
_client: redis.Redis | None = None


def recorder() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["EBBTIDE_TEST_RECORD_URL"], decode_responses=True)
    return _client


@app.task(name="work", max_retries=5)
def work(tag: str, i: int, seconds: float = 0.0, padding: str = "") -> None:
    """Count the run, then take `seconds`: the unit of work every scenario tracks
    (`padding` only makes the payload bigger)."""
    recorder().hincrby(f"runs:{tag}", str(i), 1)
    if seconds:
        time.sleep(seconds)


@app.task(name="flaky", max_retries=5)
def flaky(tag: str, i: int) -> None:
    """Fails its first attempt, so every task also takes the retry path (a publish on
    RabbitMQ, a delayed-set write on Redis)."""
    if recorder().hincrby(f"attempts:{tag}", str(i), 1) == 1:
        raise RuntimeError("first attempt fails on purpose")
    recorder().hincrby(f"runs:{tag}", str(i), 1)


@app.task(name="poison", max_retries=5)
def poison(tag: str, i: int) -> None:
    """Kills the process that runs it, as a segfault or an OOM kill would."""
    recorder().hincrby(f"attempts:{tag}", str(i), 1)
    os._exit(139)
