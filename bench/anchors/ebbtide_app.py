"""Ebbtide's app for the benchmark: the same one-INCR task, as `def` and as `async def`.

The `def` task is the like-for-like row (the anchors' tasks are sync). The `async def`
one shows the runtime's native path: it runs on the worker's event loop, no threads.
"""

from __future__ import annotations

import time

import ebbtide
import redis.asyncio

from anchors.common import BROKER_URL, COUNTER_KEY, COUNTER_URL, HOLD_S, QUEUE, burn_cpu, count_one

app = ebbtide.App(broker_url=BROKER_URL)
_async_counter: redis.asyncio.Redis | None = None


@app.task(queue=QUEUE, name="bench.incr")
def incr() -> None:
    count_one()


@app.task(queue=QUEUE, name="bench.aincr")
async def aincr() -> None:
    global _async_counter
    if _async_counter is None:  # created on the worker's loop, on first use
        _async_counter = redis.asyncio.Redis.from_url(COUNTER_URL)
    await _async_counter.incr(COUNTER_KEY)


@app.task(queue=QUEUE, name="bench.burn")
def burn() -> None:
    burn_cpu()
    count_one()


@app.task(queue=QUEUE, name="bench.hold")
def hold() -> None:
    """Occupies a slot (bench/memory.py measures what the worker holds meanwhile)."""
    time.sleep(HOLD_S)
