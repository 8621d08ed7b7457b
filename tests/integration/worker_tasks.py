"""The tasks of the worker-runtime integration tests, on Redis and RabbitMQ alike.

Worker subprocesses import this module as `worker_tasks:app`. Every task records what it
did in a real Redis (env EBBTIDE_TEST_RECORD_URL, else the broker URL itself when that is
a Redis), so the tests observe real effects instead of timing.
"""

from __future__ import annotations

import asyncio
import os
import time

import ebbtide
import redis

app = ebbtide.App(retry_backoff=0.05)
_client: redis.Redis | None = None
GATE_LIMIT_S = 120.0  # a gated task never waits longer than this for its gate


def r() -> redis.Redis:
    global _client
    if _client is None:
        url = os.environ.get("EBBTIDE_TEST_RECORD_URL") or os.environ["EBBTIDE_BROKER_URL"]
        _client = redis.Redis.from_url(url, decode_responses=True)
    return _client


@app.task(name="record")
def record(tag: str, i: int) -> None:
    r().hincrby(f"runs:{tag}", str(i), 1)
    r().rpush(f"done:{tag}", i)


@app.task(name="arecord")
async def arecord(tag: str, i: int) -> None:
    r().rpush(f"done:{tag}", i)


RATE_LIMIT, RATE_WINDOW_S = 10, 1.0  # `rated`: rate="10/s"


@app.task(name="rated", rate=f"{RATE_LIMIT}/s")
async def rated(tag: str, i: int) -> None:
    # async: it runs on the worker's loop right after its token, so the stamp is close
    # to the moment the token was granted (a `def` task would first wait for a thread).
    r().rpush(f"done:{tag}", f"{time.time()}|{os.getpid()}|{i}")


@app.task(name="stamp")
def stamp(tag: str, i: int) -> None:
    r().rpush(f"done:{tag}", f"{i}|{time.time()}")


@app.task(name="slow")
def slow(tag: str, i: int, seconds: float) -> None:
    r().hincrby(f"runs:{tag}", str(i), 1)
    r().rpush(f"started:{tag}", i)
    time.sleep(seconds)
    r().rpush(f"done:{tag}", i)


@app.task(name="gated")
def gated(tag: str, i: int) -> None:
    """Runs until the test opens the gate (sets `open:<tag>`), so a test decides when a
    running task ends instead of guessing how long it takes."""
    r().hincrby(f"runs:{tag}", str(i), 1)
    r().rpush(f"started:{tag}", i)
    deadline = time.monotonic() + GATE_LIMIT_S
    while not r().exists(f"open:{tag}") and time.monotonic() < deadline:
        time.sleep(0.01)
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


@app.task(name="hold_loop")
async def hold_loop(tag: str) -> None:
    """Blocks the worker's event loop (never do that in a real task) until the test opens
    the gate: meanwhile the worker claims nothing and reads nothing from its broker, so
    whatever the broker sends it piles up unread, and is then read all at once."""
    r().rpush(f"started:{tag}", 0)
    deadline = time.monotonic() + GATE_LIMIT_S
    while not r().exists(f"open:{tag}") and time.monotonic() < deadline:
        time.sleep(0.01)


@app.task(name="traced_child")
def traced_child(tag: str) -> None:
    """Starts a span of its own, which must nest under the worker's (on a task thread)."""
    from opentelemetry import trace

    with trace.get_tracer("worker_tasks").start_as_current_span(f"inner {tag}"):
        r().rpush(f"done:{tag}", 1)


@app.task(name="atraced_child")
async def atraced_child(tag: str) -> None:
    """The same on the event loop."""
    from opentelemetry import trace

    with trace.get_tracer("worker_tasks").start_as_current_span(f"inner {tag}"):
        r().rpush(f"done:{tag}", 1)


@app.task(name="otel_modules")
def otel_modules(tag: str) -> None:
    """Records which opentelemetry modules this worker process has loaded."""
    import sys

    loaded = sorted(m for m, v in sys.modules.items() if m.startswith("opentelemetry") and v)
    r().rpush(f"done:{tag}", ",".join(loaded) or "-")


@app.task(name="pid_gated")
def pid_gated(tag: str, i: int) -> None:
    """`gated`, recording which process ran it (the --processes tests)."""
    r().hincrby(f"runs:{tag}", str(i), 1)
    r().rpush(f"started:{tag}", f"{i}|{os.getpid()}")
    deadline = time.monotonic() + GATE_LIMIT_S
    while not r().exists(f"open:{tag}") and time.monotonic() < deadline:
        time.sleep(0.01)
    r().rpush(f"done:{tag}", f"{i}|{os.getpid()}")
