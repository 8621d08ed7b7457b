"""Helpers shared by the RabbitMQ runtime tests (worker processes, CLI, polling)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis

HERE = Path(__file__).parent


def wait_for(condition, timeout: float = 60, what: str = "condition"):
    """Poll until `condition()` is truthy; the deadline is generous, never an assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def worker(url: str, record_url: str, *args: str) -> Iterator[subprocess.Popen]:
    """A real `python -m ebbtide worker rabbitmq_tasks:app` process, always reaped."""
    env = {
        **os.environ,
        "EBBTIDE_BROKER_URL": url,
        "EBBTIDE_TEST_RECORD_URL": record_url,
        "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cmd = [sys.executable, "-m", "ebbtide", "worker", "rabbitmq_tasks:app", *args]
    proc = subprocess.Popen(
        cmd, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def cli(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ebbtide", "--broker-url", url, *args],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
    )


def load_tasks(rabbitmq_url: str):
    """The rabbitmq_tasks module, its app pointed at this test's vhost."""
    sys.path.insert(0, str(HERE))
    import rabbitmq_tasks

    rabbitmq_tasks.app.use_broker_url(rabbitmq_url)
    return rabbitmq_tasks


def recorder(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)
