"""The e2e worker app: every run of a task is counted in Redis (EBBTIDE_TRACK_URL), so a
test can prove that no task was lost and none ran twice across a scale-down."""

from __future__ import annotations

import os
import time

import ebbtide
import redis

if os.environ.get("EBBTIDE_E2E_HOSTS"):  # an e2e test's host process (not a worker pod)
    import host_routes

    host_routes.install_from_env()

app = ebbtide.App()  # the broker from EBBTIDE_BROKER_URL, as the operator sets it
RUNS_KEY = "e2e:runs"
RUN_LOG_KEY = "e2e:run-log"  # "<task> <pod> <start> <end>" per run: who ran a task twice
_tracker: redis.Redis | None = None


def tracker() -> redis.Redis:
    global _tracker
    if _tracker is None:
        _tracker = redis.Redis.from_url(os.environ["EBBTIDE_TRACK_URL"])
    return _tracker


@app.task(name="work")
def work(task_number: int, seconds: float) -> None:
    """Sleep like real work, then count this run (and log who ran it, and when)."""
    started = time.time()
    time.sleep(seconds)
    pod = os.environ.get("HOSTNAME", "?")
    with tracker().pipeline(transaction=False) as pipe:
        pipe.hincrby(RUNS_KEY, str(task_number), 1)
        pipe.rpush(RUN_LOG_KEY, f"{task_number} {pod} {started:.3f} {time.time():.3f}")
        pipe.execute()
