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
    """The stored payload of a task (after compression) is over the App's `max_payload_bytes`."""

    def __init__(self, task: str, size: int, limit: int) -> None:
        self.task, self.size, self.limit = task, size, limit
        super().__init__(
            f"payload of task {task!r} is {size} bytes, over the limit of {limit} bytes "
            f"(App(max_payload_bytes=...)); pass a reference (URL, object key) instead"
        )


class InvalidArguments(EbbtideError, TypeError, ValueError):
    """A task's arguments do not fit its signature, type hints or JSON Schema. Both a
    TypeError (wrong arity) and a ValueError (wrong value), so either `except` catches it.
    `argument` names the first bad one (None when no single argument is to blame, e.g.
    too many positional arguments); `problems` lists every (argument, reason)."""

    def __init__(self, task: str, problems: list[tuple[str | None, str]]) -> None:
        self.task, self.problems = task, problems
        self.argument = problems[0][0] if problems else None
        said = "; ".join(f"argument {name!r}: {why}" if name else why for name, why in problems)
        super().__init__(f"task {task!r}: invalid arguments: {said}")


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


class BrokerUrlFileError(EbbtideError, ValueError):
    """EBBTIDE_BROKER_URL_FILE names a file that cannot be read, or that is empty."""


class BadPayload(EbbtideError, ValueError):
    """A message read from the broker cannot be decoded; it goes to the DLQ."""


class TaskTimeout(Exception):
    """A task ran past its `timeout` (recorded as the task's error: retried or dead)."""


class BatchNotStored(EbbtideError):
    """The exit of `with app.batch():` could not store every task sent inside it.
    `stored` holds the ids that were stored and will run; `not_stored` the
    (id, task name) pairs that were not, and will never run unless sent again. The
    first broker error is the `__cause__`."""

    def __init__(
        self, stored: list[str], not_stored: list[tuple[str, str]], error: BaseException
    ) -> None:
        self.stored, self.not_stored = stored, not_stored
        named = ", ".join(f"{task_id} ({name})" for task_id, name in not_stored[:20])
        more = f" and {len(not_stored) - 20} more" if len(not_stored) > 20 else ""
        super().__init__(
            f"app.batch(): {len(not_stored)} of {len(stored) + len(not_stored)} tasks were "
            f"NOT confirmed as stored, so count them as not sent: {named}{more}; the "
            f"other {len(stored)} were stored (ids in .stored). Cause: {error}"
        )
