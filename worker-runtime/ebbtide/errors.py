"""Errors a producer or operator can catch by name."""

from __future__ import annotations


class EbbtideError(Exception):
    """Base class of every error Ebbtide raises on purpose."""


class BacklogFull(EbbtideError):
    """`send()` was refused because the queue already holds `max_backlog` tasks."""

    def __init__(self, queue: str, max_backlog: int, accepted: int = 0) -> None:
        self.queue, self.max_backlog, self.accepted = queue, max_backlog, accepted
        extra = f" ({accepted} of the batch were enqueued before it filled)" if accepted else ""
        super().__init__(
            f"queue {queue!r} is full: it already holds max_backlog={max_backlog} "
            f"ready or delayed tasks{extra}; slow down or add workers"
        )


class PayloadTooLarge(EbbtideError, ValueError):
    """The JSON payload of a task is over the App's `max_payload_bytes`."""

    def __init__(self, task: str, size: int, limit: int) -> None:
        self.task, self.size, self.limit = task, size, limit
        super().__init__(
            f"payload of task {task!r} is {size} bytes, over the limit of {limit} bytes "
            f"(App(max_payload_bytes=...)); pass a reference (URL, object key) instead"
        )


class UnsupportedBroker(EbbtideError, ValueError):
    """The broker URL's scheme is not one Ebbtide speaks."""


class BadPayload(EbbtideError, ValueError):
    """A message read from the broker cannot be decoded; it goes to the DLQ."""


class TaskTimeout(Exception):
    """A task ran past its `timeout` (recorded as the task's error: retried or dead)."""
