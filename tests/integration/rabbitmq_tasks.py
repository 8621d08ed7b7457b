"""Tasks for the RabbitMQ runtime tests: workers import this as `rabbitmq_tasks:app`.

Every task records what it did in a real Redis (env EBBTIDE_TEST_RECORD_URL), so the
tests observe effects, not timing.
"""

from __future__ import annotations

import asyncio
import os
import time

import ebbtide
import redis

app = ebbtide.App(retry_backoff=0.05)
_client: redis.Redis | None = None


def r() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["EBBTIDE_TEST_RECORD_URL"], decode_responses=True)
    return _client


@app.task(name="record")
def record(tag: str, i: int) -> None:
    r().hincrby(f"runs:{tag}", str(i), 1)
    r().rpush(f"done:{tag}", i)


@app.task(name="stamp")
def stamp(tag: str, i: int) -> None:
    r().rpush(f"done:{tag}", f"{i}|{time.time()}")


@app.task(name="slow")
def slow(tag: str, i: int, seconds: float) -> None:
    r().hincrby(f"runs:{tag}", str(i), 1)
    r().rpush(f"started:{tag}", i)
    time.sleep(seconds)
    r().rpush(f"done:{tag}", i)


@app.task(name="flaky", max_retries=3)
def flaky(tag: str, failures: int) -> None:
    attempt = r().hincrby("attempts", tag, 1)
    if attempt <= failures:
        raise ValueError(f"failure number {attempt}")
    r().rpush(f"done:{tag}", attempt)


@app.task(name="always_fails", max_retries=2)
def always_fails(tag: str) -> None:
    r().hincrby("attempts", tag, 1)
    raise RuntimeError(f"{tag} always fails")


@app.task(name="async_timeout", timeout=0.3, max_retries=0)
async def async_timeout(tag: str) -> None:
    r().rpush(f"started:{tag}", 1)
    await asyncio.sleep(60)


@app.task(name="sync_timeout", timeout=0.3, max_retries=0)
def sync_timeout(tag: str) -> None:
    r().rpush(f"started:{tag}", 1)
    time.sleep(60)
