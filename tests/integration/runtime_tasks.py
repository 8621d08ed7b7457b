"""Tasks and helpers for the runtime integration tests.

Worker subprocesses import this module as `runtime_tasks:app`; every task records what
it did in Redis, so the tests observe real effects instead of timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import ebbtide
import redis

HERE = Path(__file__).parent
app = ebbtide.App(retry_backoff=0.05)
_client: redis.Redis | None = None


def r() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["EBBTIDE_BROKER_URL"], decode_responses=True)
    return _client


@app.task(name="record")
def record(tag: str, i: int) -> None:
    r().hincrby(f"runs:{tag}", str(i), 1)
    r().rpush(f"done:{tag}", i)


@app.task(name="arecord")
async def arecord(tag: str, i: int) -> None:
    r().rpush(f"done:{tag}", i)


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


@app.task(name="limited", rate="4/s")
def limited(tag: str, i: int) -> None:
    r().rpush(f"done:{tag}", f"{time.time()}")


def wait_for(condition: Callable[[], object], timeout: float = 60, what: str = "condition"):
    """Poll until `condition()` is truthy; the deadline is generous, never an assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def worker(url: str, *args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A real `python -m ebbtide worker runtime_tasks:app` process, always reaped."""
    full_env = {
        **os.environ,
        "EBBTIDE_BROKER_URL": url,
        "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **(env or {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "ebbtide",
        "worker",
        "runtime_tasks:app",
        "--lease-seconds",
        "2",
        "--grace-seconds",
        "5",
        *args,
    ]
    proc = subprocess.Popen(
        cmd, cwd=HERE, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        if proc.stderr:
            proc.stderr.close()


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EBBTIDE_BROKER_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "ebbtide", *args],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
    )
