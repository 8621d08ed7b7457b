"""The lost lane: how RabbitMQ deliveries that a lost connection gave back are counted.

RabbitMQ marks every message it requeued `redelivered`, whether the worker that held
it had started it or had merely prefetched it. Counting every redelivery as a loss
kills the innocent: the tasks prefetched beside a task that crashes its worker come
back with it, again and again, and die unrun. So a redelivery is not counted; it moves
the message (confirmed publish, then ack) into the queue's lost lane, `<q>.lost`, a
quorum queue. A worker takes from the lost lane only while it holds nothing else (no
task running, none claimed), one message at a time, and holds nothing else until it
is settled. A loss from the lost lane is therefore a loss of a worker that held that
task alone: RabbitMQ counts it in the quorum queue's `x-delivery-count`, across
crashes and restarts, and that is the task's `Delivery.recoveries` (plus the losses
carried in `x-ebbtide-recoveries` by a copy republished on a graceful hand-back, which
itself never counts).

Pure decisions only; the I/O is in consumer.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import topology as topo

CHECK_EVERY_S = 1.0  # how often a worker looks at its lost lanes while they are empty


def recoveries(headers: Mapping[str, Any] | None, from_lost_lane: bool) -> int:
    """Losses counted so far: the carried count, plus the lost lane's returns."""
    headers = headers or {}
    carried = _count(headers.get(topo.RECOVERIES_HEADER))
    return carried + (_count(headers.get(topo.DELIVERY_COUNT_HEADER)) if from_lost_lane else 0)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def carried_headers(headers: Mapping[str, Any] | None, count: int) -> dict:
    """The headers of a republished copy: the same, with the losses so far carried
    (the copy's own x-delivery-count starts again at 0) and RabbitMQ's own dropped."""
    out = {
        k: v
        for k, v in (headers or {}).items()
        if k != topo.DELIVERY_COUNT_HEADER
        and not k.startswith("x-death")
        and not k.startswith("x-first-death")
    }
    if count:
        out[topo.RECOVERIES_HEADER] = count
    else:
        out.pop(topo.RECOVERIES_HEADER, None)
    return out


def lost_reason(count: int, hint: str) -> str:
    """The DLQ reason of a task the consumer itself buries (past max_redeliveries)."""
    return (
        f"worker lost {count} times: its worker died or lost its channel while it held "
        f"this task alone each time. If the task runs long, {hint}"
    )


@dataclass
class Isolation:
    """When a worker may take from its lost lanes, and when it must hold back.

    `draining`: a lost lane had messages: take no new normal delivery; once nothing is
    held, take lost ones one at a time until the lanes are empty."""

    next_check: float = 0.0
    draining: bool = False

    def due(self, now: float) -> bool:
        """Time to look at the lost lanes (always, while draining)."""
        return self.draining or now >= self.next_check

    def found(self, waiting: int, now: float) -> None:
        """The lanes hold `waiting` messages (0: back to normal until the next check)."""
        self.draining = waiting > 0
        if not self.draining:
            self.next_check = now + CHECK_EVERY_S

    def poke(self) -> None:
        """A delivery was just moved into a lost lane: look again at once."""
        self.next_check = 0.0

    def may_fetch(self, held: int) -> bool:
        """Take one lost message now: draining and holding nothing."""
        return self.draining and held == 0

    def may_take_normal(self) -> bool:
        return not self.draining
