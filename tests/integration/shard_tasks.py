"""The tasks of the sharded-queue integration tests (test_shards.py): a worker runs
`shard_tasks:app`, which declares no shard count, so the counts come from the
environment, as in the operator's worker pods (EBBTIDE_SHARDS, EBBTIDE_DRAIN_SHARDS)."""

from __future__ import annotations

import os

import ebbtide
import redis

app = ebbtide.App(retry_backoff=0.05)
_client: redis.Redis | None = None


def r() -> redis.Redis:
    global _client
    if _client is None:
        url = os.environ.get("EBBTIDE_TEST_RECORD_URL") or os.environ["EBBTIDE_BROKER_URL"]
        _client = redis.Redis.from_url(url, decode_responses=True)
    return _client


@app.task(name="shard.record", queue="sq")
def record(tag: str, i: int) -> None:
    r().rpush(f"done:{tag}", i)


@app.task(name="shard.record2", queue="sq2")
def record2(tag: str, i: int) -> None:
    r().rpush(f"done:{tag}", i)


@app.task(name="shard.fail", queue="sq3", max_retries=1)
def fail(tag: str, i: int) -> None:
    r().rpush(f"done:{tag}", i)
    raise RuntimeError(f"fail {i}")
