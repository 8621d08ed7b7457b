"""bench/cluster.py's app: one `async def` task that does nothing, so the Redis nodes'
work per task (claim, settle, heartbeat) is what the bench measures."""

from __future__ import annotations

import os

import ebbtide

# Not anchors.common: its counter client would be made from this (cluster) URL.
app = ebbtide.App(broker_url=os.environ["BENCH_BROKER_URL"])


@app.task(name="bench.nothing")
async def nothing() -> None:
    return None
