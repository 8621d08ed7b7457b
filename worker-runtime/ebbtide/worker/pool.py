"""The sync-task pool: `concurrency` plain threads fed by a SimpleQueue.

Threads report their settlements back in batches, so the event loop is woken once per
batch rather than once per task. A thread stuck in user code cannot be stopped: the loop
marks its task `abandoned` (handed back, or settled by the hard-timeout watchdog) and
whatever the thread reports for it later is dropped.

Only `limit` threads start tasks at once (thread_limit.py picks it; the ceiling,
`concurrency`, unless it measures fewer to be faster). The others park. A task running
for longer than BLOCKED_S is taken to be waiting, not holding the GIL, and stops
counting: a timer on the loop then unparks a thread for the tasks still queued.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import logs
from ..brokers.base import Delivery, Settlement
from .cpu_use import read_cpu_use
from .thread_limit import ThreadLimit

if TYPE_CHECKING:
    from ..app import Task

DRAIN_S = 0.002  # while task threads keep finishing, their results are settled this often
BLOCKED_S = 0.02  # a task running this long no longer counts against the thread limit
WAITING, PARKED = -1.0, -2.0  # a thread's state when it is not running a task (its start)

# (delivery, decoded payload, task, the checked (args, kwargs) to call it with)
Job = tuple[Delivery, dict[str, Any], "Task", tuple[tuple[Any, ...], dict[str, Any]]]


class TaskThreads:
    """Runs `run(job)` on the threads and hands each resulting Settlement to
    `settle` on the loop. Threads start with the first job. `limit`: a fixed number of
    threads that may start tasks, or None to measure it (thread_limit.py)."""

    def __init__(
        self,
        size: int,
        loop: asyncio.AbstractEventLoop,
        run: Callable[[Job], Settlement],
        settle: Callable[[Settlement], None],
        limit: int | None = None,
    ) -> None:
        self.size, self.loop, self._run, self._settle = size, loop, run, settle
        self.limiter = ThreadLimit(size if limit is None else limit, adaptive=limit is None)
        self._since = [PARKED] * size  # per thread: its task's start, WAITING or PARKED
        self._unpark = [threading.Event() for _ in range(size)]
        self._stopping = False
        self._blocked_timer: asyncio.TimerHandle | None = None
        self.threads: list[threading.Thread] = []
        self.started: dict[str, tuple[float, Job]] = {}  # entry -> (monotonic start, job)
        self.abandoned: set[str] = set()  # entries the loop already settled or handed back
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._done: deque[Settlement] = deque()
        self._drain_scheduled = False
        self._drain_timer: asyncio.TimerHandle | None = None

    def submit(self, job: Job) -> None:
        if not self.threads:
            for i in range(self.size):
                t = threading.Thread(
                    target=self._main, args=(i,), name=f"ebbtide-task-{i}", daemon=True
                )
                t.start()
                self.threads.append(t)
        self._jobs.put(job)
        if self.limiter.limit < self.size and self._blocked_timer is None:
            self._blocked_timer = self.loop.call_later(BLOCKED_S, self._check_blocked)

    def unstarted(self) -> list[Delivery]:
        """Take back every job no thread has picked up yet (shutdown)."""
        out: list[Delivery] = []
        try:
            while True:
                job = self._jobs.get_nowait()
                if job is not None:
                    out.append(job[0])
        except queue.Empty:
            return out

    def stop(self) -> None:
        """Each thread exits after its current task."""
        self._stopping = True
        for _ in self.threads:
            self._jobs.put(None)
        for event in self._unpark:
            event.set()

    def overruns(self, now: float) -> list[tuple[Job, float]]:
        """Running jobs past their task's timeout, not yet abandoned, with how long they
        have run (the watchdog settles them and abandons them)."""
        out = []
        for entry, (started, job) in list(self.started.items()):
            timeout = job[2].timeout
            if timeout and now - started > timeout and entry not in self.abandoned:
                out.append((job, now - started))
        return out

    def _main(self, i: int) -> None:
        get, done, since, unpark = self._jobs.get, self._done, self._since, self._unpark[i]
        while True:
            if not self._admitted(i):
                since[i] = PARKED
                unpark.wait()
                unpark.clear()
                continue
            since[i] = WAITING
            job = get()
            if job is None:
                since[i] = PARKED
                return
            since[i] = time.monotonic()
            entry = job[0].entry
            if entry in self.abandoned:
                continue  # revoked before it started: another worker owns it now
            if job[2].timeout:
                self.started[entry] = (time.monotonic(), job)
            try:
                result = self._run(job)
            finally:
                self.started.pop(entry, None)
            if entry in self.abandoned:
                continue  # already settled or handed back by the loop
            done.append(result)
            if not self._drain_scheduled:
                self._drain_scheduled = True
                try:
                    self.loop.call_soon_threadsafe(self.drain)
                except RuntimeError:
                    return  # the loop is gone: we are exiting, the lease covers this task

    # -- the thread limit ----------------------------------------------------------------
    def _active(self, now: float, but: int = -1) -> int:
        """Threads taking or running tasks, less those whose task ran past BLOCKED_S."""
        recent, n = now - BLOCKED_S, 0
        for j, s in enumerate(self._since):  # a start time, or WAITING/PARKED (< 0)
            if (s == WAITING or s > recent) and j != but:
                n += 1
        return n

    def _admitted(self, i: int) -> bool:
        """May thread i take a task? (Read without a lock: a race lets one thread too
        many run until its next task, never one too few for long, see _check_blocked.)"""
        limit = self.limiter.limit
        if limit >= self.size or self._stopping:
            return True
        return self._active(time.monotonic(), but=i) < limit

    def _unpark_some(self, n: int) -> None:
        for j, s in enumerate(self._since):
            if n <= 0:
                return
            if s == PARKED and not self._unpark[j].is_set():
                self._unpark[j].set()
                n -= 1

    def _check_blocked(self) -> None:
        """On the loop, every BLOCKED_S while tasks are queued and threads parked: unpark
        one for each thread whose task has run past BLOCKED_S (waiting on I/O, asleep)."""
        self._blocked_timer = None
        if self._stopping or self.limiter.limit >= self.size or self._jobs.qsize() == 0:
            return
        self._unpark_some(self.limiter.limit - self._active(time.monotonic()))
        self._blocked_timer = self.loop.call_later(BLOCKED_S, self._check_blocked)

    def _limit_tick(self, completed: int) -> None:
        old = self.limiter.limit
        new = self.limiter.tick(time.monotonic(), read_cpu_use, completed, self._jobs.qsize() > 0)
        if new is not None and new != old:
            used, waited = self.limiter.last_window
            logs.log(
                "thread limit",
                logging.DEBUG,
                limit=new,
                was=old,
                cpu_cores=round(used, 2),
                waited_cores=round(waited, 2),
            )
        if new is not None and new > old:
            self._unpark_some(new - old)
        if new is not None and new < self.size and self._blocked_timer is None:
            self._blocked_timer = self.loop.call_later(BLOCKED_S, self._check_blocked)

    def drain(self) -> None:
        """Settle what the threads finished. While results keep coming, drain again every
        DRAIN_S on a timer and keep `_drain_scheduled` set, so busy threads do not wake
        the loop once per task; the first result after a quiet DRAIN_S wakes it at once."""
        timer, self._drain_timer = self._drain_timer, None
        if timer is not None:
            timer.cancel()  # called directly (shutdown) while a timer was armed
        done = self._done
        if done:
            n = 0
            while done:
                self._settle(done.popleft())
                n += 1
            self._limit_tick(n)
            self._drain_timer = self.loop.call_later(DRAIN_S, self.drain)
            return
        self._drain_scheduled = False
        if done:  # appended after the check above, by a thread that saw the flag still set
            self._drain_scheduled = True
            self._drain_timer = self.loop.call_later(DRAIN_S, self.drain)
