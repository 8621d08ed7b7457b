"""Calling task functions: the async timeout becomes TaskTimeout, nothing else does."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from ebbtide.errors import TaskTimeout
from ebbtide.worker.execute import arguments, call_async, call_sync


def task(fn, timeout=None):
    return SimpleNamespace(fn=fn, timeout=timeout)


def test_arguments_come_from_the_payload():
    assert arguments({"args": [1], "kwargs": {"x": 2}}) == ([1], {"x": 2})
    assert arguments({}) == ((), {})


def test_a_sync_task_is_called_with_the_checked_arguments():
    seen = []
    call_sync(task(lambda *a, **k: seen.append((a, k))), (1,), {"x": 2})
    assert seen == [((1,), {"x": 2})]


def test_an_async_task_past_its_timeout_raises_task_timeout():
    async def slow():
        await asyncio.Event().wait()  # never set: only the timeout ends it

    with pytest.raises(TaskTimeout, match="after its timeout of 0.01s"):
        asyncio.run(call_async(task(slow, timeout=0.01), (), {}))


def test_a_timeout_error_the_task_raises_itself_is_left_alone():
    async def own():
        raise TimeoutError("mine")

    with pytest.raises(TimeoutError, match="mine"):
        asyncio.run(call_async(task(own, timeout=5), (), {}))
    with pytest.raises(TimeoutError, match="mine"):
        asyncio.run(call_async(task(own), (), {}))
