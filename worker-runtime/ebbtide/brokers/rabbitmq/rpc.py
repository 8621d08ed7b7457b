"""Await a pika call that answers through a callback, on the worker's event loop.

pika's AsyncioConnection reports every reply (queue declared, channel open, qos set) to a
callback. The consumer and the rate-limit tokens both need those replies as awaitables
that fail cleanly when the connection is gone, so they share this one helper.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def await_reply(
    loop: asyncio.AbstractEventLoop,
    start: Callable[[Callable[[Any], None]], Any],
    waiting: set[asyncio.Future],
    timeout: float,
    down: type[Exception],
) -> Any:
    """Call `start(done)` and await the reply passed to `done`.

    The pending future sits in `waiting` meanwhile, so whoever sees the connection or
    channel close can fail every waiter at once. A `start` that raises (the connection
    is already closed) becomes `down`; no reply within `timeout` is a TimeoutError."""
    fut = loop.create_future()

    def done(reply: Any) -> None:
        if not fut.done():
            fut.set_result(reply)

    waiting.add(fut)
    try:
        try:
            start(done)
        except Exception as exc:
            raise down(f"RabbitMQ connection is down: {exc!r}") from None
        return await asyncio.wait_for(fut, timeout)
    finally:
        waiting.discard(fut)
