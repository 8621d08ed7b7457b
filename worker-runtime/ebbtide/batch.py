"""`with app.batch():` — the pipelined producer mode.

Inside the block `send()` returns its task id at once, and the messages wait in memory;
the block's exit stores them, one `enqueue` call per queue (pipelined and chunked as
`send_many` is: one round trip on Redis, one publisher-confirm wait per 500 messages on
RabbitMQ). The exit raises `BatchNotStored`, naming every task that was not stored, so
"accepted means stored" holds once the block has exited. A block left by an exception
stores nothing: the exception propagates and the buffered tasks are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .brokers.base import Broker, Outgoing
from .errors import BacklogFull, BatchNotStored, PartiallyEnqueued


@dataclass(frozen=True, slots=True)
class Pending:
    """One buffered send: the message and the task name the error report needs."""

    task_name: str
    message: Outgoing


@dataclass(slots=True)
class QueueBatch:
    queue: str
    max_backlog: int
    items: list[Pending] = field(default_factory=list)


class Batch:
    """The buffer of one `with app.batch():` block (one per thread / asyncio task)."""

    def __init__(self) -> None:
        self.queues: dict[str, QueueBatch] = {}
        self.depth = 1  # nested blocks join the outermost one

    def add(self, queue: str, max_backlog: int, task_name: str, messages: list[Outgoing]) -> None:
        group = self.queues.get(queue)
        if group is None:
            group = self.queues[queue] = QueueBatch(queue, max_backlog)
        group.max_backlog = max_backlog
        group.items.extend(Pending(task_name, m) for m in messages)

    def __len__(self) -> int:
        return sum(len(g.items) for g in self.queues.values())

    def flush(self, broker: Callable[[], Broker], unique_ttl_ms: int) -> list[str]:
        """Store every buffered task; returns the stored ids, or raises BatchNotStored
        naming the ones that were not (a broker error is its `__cause__`)."""
        stored: list[str] = []
        failed: list[Pending] = []
        errors: list[BaseException] = []
        for group in self.queues.values():
            ids, lost, error = _store(broker, group, unique_ttl_ms)
            stored.extend(ids)
            failed.extend(lost)
            if error is not None:
                errors.append(error)
        self.queues.clear()
        if failed:
            raise BatchNotStored(
                stored, [(p.message.task_id, p.task_name) for p in failed], errors[0]
            ) from errors[0]
        return stored


def _store(
    broker: Callable[[], Broker], group: QueueBatch, unique_ttl_ms: int
) -> tuple[list[str], Sequence[Pending], BaseException | None]:
    """(stored ids, not stored, the error) for one queue's buffered sends."""
    messages = [p.message for p in group.items]
    try:
        replies = broker().enqueue(group.queue, messages, group.max_backlog, unique_ttl_ms)
    except PartiallyEnqueued as exc:
        done = set(exc.accepted)
        return list(exc.accepted), [p for p in group.items if p.message.task_id not in done], exc
    except Exception as exc:  # unreachable broker, OOM: nothing of this queue was stored
        return [], group.items, exc
    ids = [r for r in replies if r != "!full"]
    if len(ids) < len(messages):
        done = set(ids)
        full = BacklogFull(group.queue, group.max_backlog, accepted=len(ids))
        return ids, [p for p in group.items if p.message.task_id not in done], full
    return ids, [], None
