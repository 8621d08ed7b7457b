"""The sync-task pool: `concurrency` plain threads fed by a SimpleQueue.

Threads report their settlements back in batches, so the event loop is woken once per
batch rather than once per task. A thread stuck in user code cannot be stopped: the loop
marks its task `abandoned` (handed back, or settled by the hard-timeout watchdog) and
whatever the thread reports for it later is dropped.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..brokers.base import Delivery, Settlement

if TYPE_CHECKING:
    from ..app import Task

DRAIN_S = 0.002  # while task threads keep finishing, their results are settled this often

# (delivery, decoded payload, task, the checked (args, kwargs) to call it with)
Job = tuple[Delivery, dict[str, Any], "Task", tuple[tuple[Any, ...], dict[str, Any]]]


class TaskThreads:
    """Runs `run(job)` on the threads and hands each resulting Settlement to
    `settle` on the loop. Threads start with the first job."""

    def __init__(
        self,
        size: int,
        loop: asyncio.AbstractEventLoop,
        run: Callable[[Job], Settlement],
        settle: Callable[[Settlement], None],
    ) -> None:
        self.size, self.loop, self._run, self._settle = size, loop, run, settle
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
                t = threading.Thread(target=self._main, name=f"ebbtide-task-{i}", daemon=True)
                t.start()
                self.threads.append(t)
        self._jobs.put(job)

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
        for _ in self.threads:
            self._jobs.put(None)

    def overruns(self, now: float) -> list[tuple[Job, float]]:
        """Running jobs past their task's timeout, not yet abandoned, with how long they
        have run (the watchdog settles them and abandons them)."""
        out = []
        for entry, (started, job) in list(self.started.items()):
            timeout = job[2].timeout
            if timeout and now - started > timeout and entry not in self.abandoned:
                out.append((job, now - started))
        return out

    def _main(self) -> None:
        get, done = self._jobs.get, self._done
        while True:
            job = get()
            if job is None:
                return
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

    def drain(self) -> None:
        """Settle what the threads finished. While results keep coming, drain again every
        DRAIN_S on a timer and keep `_drain_scheduled` set, so busy threads do not wake
        the loop once per task; the first result after a quiet DRAIN_S wakes it at once."""
        timer, self._drain_timer = self._drain_timer, None
        if timer is not None:
            timer.cancel()  # called directly (shutdown) while a timer was armed
        done = self._done
        if done:
            while done:
                self._settle(done.popleft())
            self._drain_timer = self.loop.call_later(DRAIN_S, self.drain)
            return
        self._drain_scheduled = False
        if done:  # appended after the check above, by a thread that saw the flag still set
            self._drain_scheduled = True
            self._drain_timer = self.loop.call_later(DRAIN_S, self.drain)
