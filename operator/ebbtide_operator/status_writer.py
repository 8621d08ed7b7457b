"""Write-behind for TaskQueue statuses, so a tick never waits for the API server's write.

At 1,000 TaskQueues the API server answers a status PATCH in tens to hundreds of
milliseconds, and a tick that awaited its own write was late for its next slot (and held
up a broker wake-up that came meanwhile). The tick hands its new status to the
TaskQueue's `StatusWriter` and goes on. For one TaskQueue, writes never overlap nor
reorder, and only the newest waiting status is kept (an older one is superseded, never
sent). All TaskQueues together keep at most `slots` writes in the API threads (one shared
semaphore), so the ticks' own reads (Secrets, pods) never queue behind hundreds of
writes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class StatusWriter:
    def __init__(self, slots: asyncio.Semaphore, failed: Callable[[dict[str, Any]], None]):
        """`failed(status)` hears a write that raised (logged here), so the tick can
        write again on its next poll."""
        self._slots = slots
        self._failed = failed
        self._pending: tuple[Send, dict[str, Any]] | None = None
        self._task: asyncio.Task | None = None

    def submit(self, send: Send, status: dict[str, Any]) -> None:
        """Write `status` with `send` soon; replaces a status not sent yet."""
        self._pending = (send, status)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._pending is not None:
            async with self._slots:
                if self._pending is None:
                    return
                send, status = self._pending
                self._pending = None
                try:
                    await send(status)
                except Exception:
                    log.warning("status write failed", exc_info=True)
                    self._failed(status)

    async def flush(self) -> None:
        """Until nothing is waiting or being written (tests; the daemon's exit)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()
