"""The task ledger: what the chaos suite checks after every fault.

Every task that `send()` accepted must end in exactly one of two states, completed or
dead with a reason; nothing may be left ready, delayed or in flight. Runs beyond the
first are duplicates: at-least-once allows them after a crash or a lost lease, and the
ledger counts them so the table shows how many a fault costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from support.logged_process import LoggedProcess, logged_process

HERE = Path(__file__).parent
RESULTS: list[Row] = []  # printed as a table at the end of the session (conftest.py)


@dataclass(frozen=True)
class Row:
    scenario: str
    tasks: int
    completed: int
    dead: int
    duplicates: int
    recovery_s: float


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1):
    """Poll until `condition()` is truthy and return it; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def cli(url: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m ebbtide ARGS` against `url`, as an operator would run it."""
    env = {**os.environ, "EBBTIDE_BROKER_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "ebbtide", *args],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextmanager
def worker(
    url: str, record_url: str, *args: str, metrics_port: int | None = None
) -> Iterator[LoggedProcess]:
    """A real `python -m ebbtide worker chaos_tasks:app` process, always reaped. Its log
    goes to a file (a pipe nobody reads would fill and block the worker), and its tail is
    printed when the test fails."""
    env = {
        **os.environ,
        "EBBTIDE_BROKER_URL": url,
        "EBBTIDE_TEST_RECORD_URL": record_url,
        "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cmd = [sys.executable, "-m", "ebbtide", "worker", "chaos_tasks:app", "--grace-seconds", "5"]
    if metrics_port is not None:
        cmd += ["--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1"]
    with logged_process([*cmd, *args], cwd=HERE, env=env) as proc:
        yield proc


@contextmanager
def restarting(url: str, record_url: str, *args: str) -> Iterator[Callable[[], int]]:
    """A worker that is started again whenever it dies, as the kubelet restarts a
    container; yields a function that returns how many times it died."""
    deaths = 0
    stop = threading.Event()

    def supervise() -> None:
        nonlocal deaths
        while not stop.is_set():
            with worker(url, record_url, *args) as proc:
                while proc.poll() is None and not stop.is_set():
                    stop.wait(0.05)
                if proc.poll() is not None and not stop.is_set():
                    deaths += 1

    thread = threading.Thread(target=supervise, daemon=True)
    thread.start()
    try:
        yield lambda: deaths
    finally:
        stop.set()
        thread.join(60)


@dataclass
class Ledger:
    """The tasks one scenario sent, and what became of them."""

    scenario: str
    rec: redis.Redis  # the recorder: never faulted
    tag: str
    ids: dict[str, int] = field(default_factory=dict)  # task id -> index
    must_die: set[str] = field(default_factory=set)  # ids of bad input put on the queue
    started: float = field(default_factory=time.monotonic)

    def expect_dead(self, task_id: str) -> None:
        """A task put on the queue behind the producer's back that must end dead."""
        self.must_die.add(task_id)

    def send(self, task: Any, n: int, *extra: Any) -> None:
        """Send n tasks `task(tag, i, *extra)`, remembering the ids send() accepted."""
        start = len(self.ids)
        accepted = task.send_many((self.tag, start + i, *extra) for i in range(n))
        self.ids.update({task_id: start + i for i, task_id in enumerate(accepted)})

    def runs(self) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.rec.hgetall(f"runs:{self.tag}").items()}

    def dead(self, url: str) -> dict[str, str]:
        """Dead task id -> its reason, from `ebbtide dlq list --json`."""
        listed = cli(url, "dlq", "list", "--json", "--limit", "100000")
        if listed.returncode != 0:
            return {}  # the broker may be coming back: the caller polls
        return {
            d["id"]: str(d.get("error") or d.get("reason") or "") for d in json.loads(listed.stdout)
        }

    def leftover(self, url: str) -> int | None:
        """Tasks still ready, delayed or in flight (None while the broker cannot say)."""
        shown = cli(url, "stats", "--json")
        if shown.returncode != 0:
            return None
        queues = json.loads(shown.stdout)["queues"].values()
        return sum(q["ready"] + q["delayed"] + q["in_flight"] for q in queues)

    def settled(self, url: str) -> tuple[dict[int, int], dict[str, str]] | None:
        """(runs, dead) once every task is completed or dead and nothing is left."""
        runs, dead = self.runs(), self.dead(url)
        if any(i not in runs and task_id not in dead for task_id, i in self.ids.items()):
            return None
        if not self.must_die <= set(dead):
            return None
        return (runs, dead) if self.leftover(url) == 0 else None

    def check(self, url: str, *, since: float, timeout: float = 180, dead_ok: bool = False) -> Row:
        """Wait until the ledger settles, assert the invariant, record the table row.

        Recovery is the time from `since` (the moment the fault ended) until then."""
        runs, dead = wait_for(
            lambda: self.settled(url), timeout, f"{self.scenario}: every task completed or dead"
        )
        recovery = time.monotonic() - since
        dead_ids = (set(self.ids) | self.must_die) & set(dead)
        assert all(dead[d] for d in dead_ids), "every dead task carries a reason"
        if not dead_ok:
            assert not dead_ids, f"{len(dead_ids)} tasks dead: {[dead[d] for d in dead_ids][:3]}"
        completed = [i for task_id, i in self.ids.items() if task_id not in dead_ids]
        assert all(runs.get(i, 0) >= 1 for i in completed)
        duplicates = sum(runs.get(i, 0) - 1 for i in completed if runs.get(i, 0) > 1)
        tasks = len(self.ids) + len(self.must_die)
        row = Row(self.scenario, tasks, len(completed), len(dead_ids), duplicates, recovery)
        RESULTS.append(row)
        return row
