"""Calling a task's function: async ones on the loop under their timeout, sync ones
plainly (a thread cannot be interrupted; the pool's watchdog handles overruns)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..errors import TaskTimeout

if TYPE_CHECKING:
    from ..app import Task


def arguments(body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(args, kwargs) of a decoded payload, as sent (before the task's argument check)."""
    return body.get("args", ()), body.get("kwargs", {})


async def call_async(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Await the task; past its `timeout` it is cancelled and TaskTimeout raised (a
    TimeoutError the task raised itself stays what it is)."""
    if task.timeout is None:
        await task.fn(*args, **kwargs)
        return
    try:
        async with asyncio.timeout(task.timeout) as scope:
            await task.fn(*args, **kwargs)
    except TimeoutError:
        if scope.expired():
            raise TaskTimeout(
                f"async task cancelled after its timeout of {task.timeout}s"
            ) from None
        raise


def call_sync(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    task.fn(*args, **kwargs)
