"""Keep Python's full garbage collections short, so they do not stall every tick.

At 1,000 TaskQueues the operator holds ~400 MiB of long-lived objects (kopf's bodies, each
TaskQueue's memory, the Deployment cache), and a full (generation 2) collection walks all
of them: measured 0.46-0.93 s, every 5-7 s, with the event loop stopped each time, which
made ticks up to a second late. Every FREEZE_SECONDS this collects and then freezes what
survived (`gc.freeze`: frozen objects are never walked again), so the collections in
between walk only the objects made since. A cycle that dies after being frozen is kept
until the next unfreeze, every UNFREEZE_SECONDS, which walks the whole heap once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

FREEZE_SECONDS = 60.0
UNFREEZE_SECONDS = 3600.0


def collect_and_freeze(full: bool) -> float:
    """One step; `full` first unfreezes everything. Returns the pause in seconds."""
    started = time.perf_counter()
    if full:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


async def run(
    freeze_seconds: float = FREEZE_SECONDS, unfreeze_seconds: float = UNFREEZE_SECONDS
) -> None:
    """Until cancelled (main.cleanup). The first step runs after `freeze_seconds`, when
    the TaskQueues' start-up work is mostly done."""
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(freeze_seconds)
        full = time.monotonic() - last_full >= unfreeze_seconds
        pause = collect_and_freeze(full)
        if full:
            last_full = time.monotonic()
        log.debug(
            "gc %s: %.3f s, %d objects frozen",
            "full" if full else "young",
            pause,
            gc.get_freeze_count(),
        )
