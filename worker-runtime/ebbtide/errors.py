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


class BrokerEvicts(EbbtideError):
    """The Redis may delete any key under memory pressure (an `allkeys-*`
    maxmemory-policy), queued tasks included, so the producer refuses to enqueue there."""

    def __init__(self, policy: str, where: str) -> None:
        self.policy = policy
        super().__init__(
            f"Redis at {where} runs with maxmemory-policy {policy}, which may evict queued "
            "tasks: set maxmemory-policy noeviction (a full Redis then refuses new tasks "
            "instead of dropping stored ones)"
        )


class PartiallyEnqueued(EbbtideError):
    """`send_many` failed part-way (e.g. Redis ran out of memory on a later chunk):
    `accepted` holds the ids of the tasks that were stored and will run; the others
    were not stored. The broker's error is the `__cause__`."""

    def __init__(self, queue: str, accepted: list[str], total: int, error: BaseException) -> None:
        self.queue, self.accepted, self.total = queue, accepted, total
        super().__init__(
            f"send_many to queue {queue!r} failed part-way: {len(accepted)} of {total} tasks "
            f"were stored (their ids are in .accepted), the rest were not: {error}"
        )


class PermissionDenied(EbbtideError, PermissionError):
    """The broker refused this identity an operation (a Redis ACL `NOPERM`, a RabbitMQ
    `ACCESS_REFUSED`): its role lacks that right. A managed broker gives each role its own
    Secret (producer: enqueue; worker: claim, settle, heartbeat; operator: statistics),
    so this usually means a client runs with another role's Secret."""

    def __init__(self, user: str, operation: str, detail: str) -> None:
        self.user, self.operation, self.detail = user, operation, detail
        super().__init__(
            f"broker user {user!r} lacks the right to {operation}: {detail} "
            "(each role's Secret grants only that role's operations; see docs/security.md)"
        )


class BadPayload(EbbtideError, ValueError):
    """A message read from the broker cannot be decoded; it goes to the DLQ."""


class TaskTimeout(Exception):
    """A task ran past its `timeout` (recorded as the task's error: retried or dead)."""
