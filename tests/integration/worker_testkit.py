"""The kit every worker-runtime integration test uses, whatever the broker: real worker
processes (`python -m ebbtide worker worker_tasks:app`), the CLI, polling, and a
`BrokerUnderTest` that the `broker` fixture (tests/integration/conftest.py) hands to each
test, once for Redis and once for RabbitMQ."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import redis
from ebbtide.stats import BrokerStats, QueueStats, read_stats
from support.logged_process import LoggedProcess, logged_process

HERE = Path(__file__).parent
TASKS_APP = "worker_tasks:app"


def wait_for(
    condition: Callable[[], Any], timeout: float = 60, what: str | Callable[[], str] = "condition"
):
    """Poll until `condition()` is truthy; the deadline is generous, never an assertion.
    `what` may be a callable, asked at the deadline, to say how far things got."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    said = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout}s waiting for {said}")


def is_redis(url: str) -> bool:
    return urlsplit(url).scheme in ("redis", "rediss", "unix")


@contextlib.contextmanager
def worker(
    url: str,
    *args: str,
    record_url: str | None = None,
    env: dict[str, str] | None = None,
    app: str = TASKS_APP,
) -> Iterator[LoggedProcess]:
    """A real `python -m ebbtide worker worker_tasks:app` process, always reaped; its log
    is a file (`proc.log()`), printed when the test fails.

    Tasks record into `record_url` (default: `url`, when that is a Redis). The lease
    (on RabbitMQ: the heartbeat interval, a third of it) is 2 s and the grace 5 s unless
    `args` say otherwise (the last flag wins)."""
    record_url = record_url or (url if is_redis(url) else None)
    if record_url is None:
        raise ValueError("tasks need a Redis to record into: pass record_url=")
    full_env = {
        **os.environ,
        "EBBTIDE_BROKER_URL": url,
        "EBBTIDE_TEST_RECORD_URL": record_url,
        "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "ebbtide", "worker", app]
    cmd += ["--lease-seconds", "2", "--grace-seconds", "5", *args]
    with logged_process(cmd, cwd=HERE, env=full_env) as proc:
        yield proc


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m ebbtide ARGS` with EBBTIDE_BROKER_URL=url, as a pod runs it."""
    env = {**os.environ, "EBBTIDE_BROKER_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "ebbtide", *args],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,  # never a terminal: `dlq purge` would ask on it
    )


def recorder(redis_url: str) -> redis.Redis:
    """A client of the Redis the tasks record into."""
    return redis.Redis.from_url(redis_url, decode_responses=True)


@dataclass
class BrokerUnderTest:
    """One broker for one test: its URL, the shared tasks pointed at it, the Redis the
    tasks record into (`rec`), and the broker-specific bits the shared tests need."""

    name: str  # "redis" or "rabbitmq"
    url: str
    record_url: str
    rec: redis.Redis
    tasks: ModuleType  # worker_tasks, its app using `url`

    @property
    def is_redis(self) -> bool:
        return self.name == "redis"

    @property
    def is_rabbitmq(self) -> bool:
        return self.name == "rabbitmq"

    def worker(self, *args: str, env: dict[str, str] | None = None, app: str = TASKS_APP):
        return worker(self.url, *args, record_url=self.record_url, env=env, app=app)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli(self.url, *args)

    def done(self, tag: str) -> list[str]:
        return self.rec.lrange(f"done:{tag}", 0, -1)

    def started(self, tag: str) -> list[str]:
        return self.rec.lrange(f"started:{tag}", 0, -1)

    def open_gate(self, tag: str) -> None:
        """Let every `gated(tag, ...)` task finish (see worker_tasks.gated)."""
        self.rec.set(f"open:{tag}", 1)

    def stats(self, queues: list[str] | None = None) -> BrokerStats:
        return read_stats(self.url, queues)

    def queue(self, name: str = "default") -> QueueStats:
        return self.stats([name]).queues[name]

    def shows(self, read: Callable[[], Any], what: str) -> Any:
        """`read()`, which must be truthy, and is returned. Redis computes its statistics
        in the same script as every state change, so on Redis it must hold at once;
        RabbitMQ's come from the management API, sampled every collect_statistics_interval
        (0.5 s in the tests), so on RabbitMQ it is polled until it holds (docs/rabbitmq.md,
        "Statistics for the operator")."""
        if self.is_redis:
            value = read()
            assert value, f"not so at once on Redis: {what}"
            return value
        return wait_for(read, what=what)

    def queue_shows(
        self, check: Callable[[QueueStats], Any], what: str, name: str = "default"
    ) -> QueueStats:
        """One queue's statistics once `check` holds on them (see `shows`)."""
        seen: list[QueueStats] = []

        def current() -> QueueStats | None:
            q = self.queue(name)
            seen[:] = [q]
            return q if check(q) else None

        try:
            return self.shows(current, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {seen[0] if seen else None}") from None

    def dlq(self) -> list[dict]:
        """`ebbtide dlq list --json`."""
        listed = self.cli("dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        return json.loads(listed.stdout)

    def inject(self, task_id: str, payload: bytes, queue: str = "default") -> None:
        """Put a raw message on a queue's ready list behind the producer's back (bad
        input a worker must survive)."""
        if self.is_redis:
            now_ms = int(float(self.rec.time()[0]) * 1000)
            raw = redis.Redis.from_url(self.url)  # bytes: the payload may not be UTF-8
            try:
                raw.hset(f"ebbtide:q:{{{queue}}}:msgs", task_id, payload)
                raw.rpush(f"ebbtide:q:{{{queue}}}:ready:0", f"{now_ms}|0|{task_id}")
            finally:
                raw.close()
            return
        with self.amqp() as conn:
            conn.channel().basic_publish("", f"ebbtide.{queue}", payload)

    def amqp(self):
        """(RabbitMQ) A pika BlockingConnection to the test's vhost."""
        import pika

        return pika.BlockingConnection(pika.URLParameters(self.url.split("?")[0]))

    def ready_ids(self, n: int, queue: str = "default") -> list[str]:
        """The ids of the first `n` ready tasks of a queue, in delivery order, without
        consuming them."""
        if self.is_redis:
            entries = self.rec.lrange(f"ebbtide:q:{{{queue}}}:ready:0", 0, n - 1)
            return [e.rsplit("|", 1)[1] for e in entries]
        with self.amqp() as conn:
            channel = conn.channel()
            ids = []
            for _ in range(n):  # unacked gets go back, in order, when the channel closes
                method, props, _body = channel.basic_get(f"ebbtide.{queue}", auto_ack=False)
                assert method is not None
                ids.append(props.message_id)
        return ids


@contextlib.contextmanager
def under_test(name: str, url: str, record_url: str) -> Iterator[BrokerUnderTest]:
    """The shared tasks (worker_tasks) pointed at `url`, recording into `record_url`: the
    body of the `broker` fixtures, and of tests that start a broker of their own."""
    import worker_tasks

    worker_tasks.app.use_broker_url(url)
    rec = recorder(record_url)
    try:
        yield BrokerUnderTest(name, url, record_url, rec, worker_tasks)
    finally:
        rec.close()
        worker_tasks.app.close()
