"""The sync-task threads: results reach the loop in batches; abandoned ones never do."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

from ebbtide.brokers.base import Delivery, Settlement
from ebbtide.lifecycle import Outcome
from ebbtide.worker.pool import BLOCKED_S, PARKED, WAITING, TaskThreads


def job(i: int, timeout: float | None = None):
    return (Delivery("q", f"1|0|{i}", ""), {}, SimpleNamespace(timeout=timeout), ((), {}))


async def wait_until(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


def test_every_finished_job_is_settled_on_the_loop():
    async def main():
        loop = asyncio.get_running_loop()
        settled: list[Settlement] = []
        on_loop: set[bool] = set()

        def settle(s: Settlement) -> None:
            on_loop.add(threading.current_thread() is threading.main_thread())
            settled.append(s)

        pool = TaskThreads(3, loop, lambda j: Settlement(Outcome.ACK, j[0]), settle)
        for i in range(50):
            pool.submit(job(i))
        await wait_until(lambda: len(settled) == 50)
        pool.stop()
        assert len(pool.threads) == 3 and on_loop == {True}
        assert sorted(s.delivery.entry for s in settled) == sorted(f"1|0|{i}" for i in range(50))

    asyncio.run(main())


def test_overruns_are_reported_once_abandoned_results_are_dropped_and_unstarted_come_back():
    async def main():
        loop = asyncio.get_running_loop()
        release = threading.Event()
        settled: list[Settlement] = []

        def run(j):
            release.wait(5)
            return Settlement(Outcome.ACK, j[0])

        pool = TaskThreads(1, loop, run, settled.append)
        pool.submit(job(0, timeout=0.01))
        pool.submit(job(1))
        await wait_until(lambda: "1|0|0" in pool.started)
        (overrun, seconds), *more = pool.overruns(time.monotonic() + 1)
        assert overrun[0].entry == "1|0|0" and seconds > 0.99 and not more
        pool.abandoned.add("1|0|0")
        assert pool.overruns(time.monotonic() + 1) == []
        assert [d.entry for d in pool.unstarted()] == ["1|0|1"]
        pool.stop()
        release.set()
        await wait_until(lambda: not pool.started and not pool.threads[0].is_alive())
        pool.drain()
        assert settled == []  # the abandoned job's late result is dropped

    asyncio.run(main())


def test_the_limit_counts_waiting_and_recent_threads_not_parked_or_long_running_ones():
    async def main():
        pool = TaskThreads(4, asyncio.get_running_loop(), lambda j: None, lambda s: None, 2)
        now = 1000.0
        pool._since[:] = [WAITING, now - 0.001, PARKED, PARKED]
        assert pool._active(now) == 2 and pool._active(now, but=1) == 1
        pool._since[1] = now - BLOCKED_S - 0.001  # waiting on I/O, asleep: not counted
        assert pool._active(now) == 1

    asyncio.run(main())


def test_a_task_running_long_never_holds_the_queued_ones_back():
    async def main():
        loop = asyncio.get_running_loop()
        release = threading.Event()
        settled: list[Settlement] = []

        def run(j):
            release.wait(10)
            return Settlement(Outcome.ACK, j[0])

        pool = TaskThreads(4, loop, run, settled.append, limit=1)
        for i in range(4):
            pool.submit(job(i))
        # Each task blocks; past BLOCKED_S it stops counting and the next one starts.
        await wait_until(lambda: all(s >= 0 for s in pool._since))
        release.set()
        await wait_until(lambda: len(settled) == 4)
        pool.stop()
        await wait_until(lambda: not any(t.is_alive() for t in pool.threads))

    asyncio.run(main())


def test_parked_threads_take_work_when_the_limit_rises_and_exit_on_stop():
    async def main():
        loop = asyncio.get_running_loop()
        settled: list[Settlement] = []
        pool = TaskThreads(4, loop, lambda j: Settlement(Outcome.ACK, j[0]), settled.append)
        pool.limiter.limit = 1
        for i in range(20):
            pool.submit(job(i))
        await wait_until(lambda: len(settled) == 20)
        assert PARKED in pool._since  # (all but one, unless two raced to their first job)
        pool.limiter.limit = 4
        pool._unpark_some(3)
        await wait_until(lambda: pool._since.count(WAITING) == 4)
        pool.stop()
        await wait_until(lambda: not any(t.is_alive() for t in pool.threads))

    asyncio.run(main())
