"""The e2e worker app: every run of a task is counted in Redis (EBBTIDE_TRACK_URL), so a
test can prove that no task was lost and none ran twice across a scale-down."""

from __future__ import annotations

import os
import time

import ebbtide
import redis

app = ebbtide.App()  # the broker from EBBTIDE_BROKER_URL, as the operator sets it
RUNS_KEY = "e2e:runs"
_tracker: redis.Redis | None = None


def tracker() -> redis.Redis:
    global _tracker
    if _tracker is None:
        _tracker = redis.Redis.from_url(os.environ["EBBTIDE_TRACK_URL"])
    return _tracker


@app.task(name="work")
def work(task_number: int, seconds: float) -> None:
    """Sleep like real work, then count this run."""
    time.sleep(seconds)
    tracker().hincrby(RUNS_KEY, str(task_number), 1)
