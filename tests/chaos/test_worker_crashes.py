"""Faults of the worker process itself: SIGKILL mid-batch, SIGSTOP past the lease, a
stalled node (every worker and the broker frozen together)."""

from __future__ import annotations

import signal
import time

import chaos_tasks
import pytest
from ledger import restarting, wait_for, worker

N = 2000


def test_sigkill_mid_batch(broker, ledger, redis_url):
    """A worker dies holding a full batch; another finishes everything it held."""
    ledger.scenario = f"SIGKILL mid-batch ({broker.name})"
    ledger.send(chaos_tasks.work, N, 0.002)
    with worker(broker.url, redis_url, "--concurrency", "8") as victim:
        wait_for(lambda: len(ledger.runs()) >= N // 10, 60, "a tenth of the tasks run")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed_at = time.monotonic()
        with worker(broker.url, redis_url, "--concurrency", "8"):
            row = ledger.check(broker.url, since=killed_at)
    assert row.completed == N


def test_sigstop_past_the_lease(broker, ledger, redis_url):
    """A worker frozen past its lease (a long GC pause, a stopped VM) wakes up holding
    tasks another worker took over. Both may run a task; none is lost or left behind."""
    ledger.scenario = f"SIGSTOP past the lease ({broker.name})"
    ledger.send(chaos_tasks.work, 200, 0.05)
    lease = ("--lease-seconds", "2")
    with worker(broker.url, redis_url, "--concurrency", "4", *lease) as frozen:
        wait_for(lambda: ledger.runs(), 60, "the first tasks to run")
        frozen.send_signal(signal.SIGSTOP)
        try:
            with worker(broker.url, redis_url, "--concurrency", "4", *lease):
                # Every task run once means the frozen worker's were taken over too.
                wait_for(
                    lambda: len(ledger.runs()) == 200,
                    120,
                    "another worker to take over what the frozen one held",
                )
                frozen.send_signal(signal.SIGCONT)
                resumed = time.monotonic()
                row = ledger.check(broker.url, since=resumed)
        finally:
            frozen.send_signal(signal.SIGCONT)
    assert row.completed == 200


def test_poison_task_that_kills_its_worker(broker, ledger, redis_url):
    """A task that takes its process down (a segfault, an OOM kill) runs again after each
    restart only until `max_recoveries` (3): then it is dead, with the reason, and the
    good tasks around it all ran. The pod's restarts are played by `restarting`."""
    ledger.scenario = f"poison task kills its worker ({broker.name})"
    ledger.send(chaos_tasks.poison, 2)
    ledger.send(chaos_tasks.work, 100)
    with restarting(broker.url, redis_url, "--concurrency", "2", "--lease-seconds", "2") as crashes:
        row = ledger.check(broker.url, since=ledger.started, timeout=120, dead_ok=True)
    assert row.completed == 100 and row.dead == 2
    dead = ledger.dead(broker.url)
    assert all("worker lost" in dead[task_id] for task_id in dead), dead
    assert crashes() >= 2


@pytest.mark.parametrize("broker", [pytest.param("redis", marks=pytest.mark.redis)], indirect=True)
@pytest.mark.parametrize("with_broker", [True, False], ids=["broker-too", "workers-only"])
def test_a_stalled_node_runs_no_task_twice(broker, ledger, redis_url, with_broker):
    """Every worker (and the broker, or not) frozen together past the workers' liveness
    (4 s), as a node starving its BestEffort pods or a paused VM does, then thawed
    together. No worker is taken for dead, so no task runs twice, and none is lost."""
    stalled = "broker too" if with_broker else "broker running"
    ledger.scenario = f"every worker stalled, {stalled} ({broker.name})"
    ledger.send(chaos_tasks.work, 400, 0.05)
    with (
        worker(broker.url, redis_url, "--concurrency", "4") as one,
        worker(broker.url, redis_url, "--concurrency", "4") as two,
    ):
        wait_for(lambda: len(ledger.runs()) >= 40, 60, "the workers running tasks")
        frozen = [broker.server.proc, one, two] if with_broker else [one, two]
        for proc in frozen:
            proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(6)  # the fault itself: 1.5 liveness windows without a sound
        finally:
            for proc in frozen:
                proc.send_signal(signal.SIGCONT)
        row = ledger.check(broker.url, since=time.monotonic())
    assert row.completed == 400 and row.duplicates == 0, row
