"""What a broker is: the wire types the App and the Worker exchange with it, the Broker
protocol every broker implements, and the optional capabilities some brokers add.

A third broker implements `Broker` (and any capability it can offer) in its own
subpackage and adds its URL scheme to `ebbtide.brokers.open_broker`. The Worker checks
the capabilities once, when it starts (`isinstance(broker, Exchanging)`), never per call.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from ..lifecycle import Outcome
from ..message import parse_entry

Plan = Sequence[tuple[str, int]]  # (queue, quota) in claim order, see selection.plan_claim


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to enqueue."""

    task_id: str
    priority: int
    delay_ms: int
    key: str  # '' = not unique
    payload: str


@dataclass(slots=True)
class Delivery:
    """One claimed message, held under a lease until it is settled."""

    queue: str
    entry: str  # the broker's handle, "<ready_ms>|<prio>|<broker's own id>" (message.Entry)
    payload: str | bytes  # JSON text, as stored
    recoveries: int = 0  # times a worker lost this task (lease expired, connection lost); graceful hand-backs do not count

    @property
    def ready_ms(self) -> int | None:
        """When the task became ready (unix ms), for the enqueue-to-start metric."""
        entry = parse_entry(self.entry)
        return entry.ready_ms if entry is not None else None


@dataclass(frozen=True, slots=True)
class Settlement:
    """What to do with a claimed message (see lifecycle.Outcome)."""

    op: Outcome
    delivery: Delivery
    payload: str = ""  # '' = unchanged
    delay_ms: int = 0
    busy_us: int = 0
    unique_key: str = ""


@dataclass(frozen=True, slots=True)
class DeadTask:
    queue: str
    member: str
    task_id: str
    died_at: float
    payload: str


# -- statistics (what Broker.stats returns; ebbtide.stats is their public home) ----------
@dataclass(frozen=True)
class WorkerInfo:
    """One live worker process, from its heartbeat."""

    worker_id: str
    pod: str | None  # env POD_NAME, so the operator can set pod-deletion-cost
    busy: bool  # running at least one task right now
    running: int  # tasks executing now
    concurrency: int  # task slots
    queues: tuple[str, ...]
    last_seen: float  # unix seconds (broker clock)


@dataclass(frozen=True)
class QueueStats:
    """One queue's counters. Cumulative counters only ever grow; rates are derived by
    the reader from two snapshots, so a missed poll loses no information."""

    queue: str
    ready: int  # claimable now, all priority levels
    ready_by_priority: dict[int, int] = field(default_factory=dict)
    in_flight: int = 0  # claimed under a lease, not yet acked
    delayed: int = 0  # scheduled (delay=) or waiting for a retry
    due: int = 0  # of those, how many are due now (a claim promotes them to ready)
    next_due_at: float | None = None  # unix seconds of the earliest delayed task (None = none)
    dead: int = 0  # in the dead-letter queue
    oldest_ready_at: float | None = None  # unix seconds when the oldest ready task became ready
    enqueued_total: int = 0  # cumulative, bumped atomically with every enqueue
    completed_total: int = 0  # cumulative, bumped atomically with every final ack (success or dead)
    busy_seconds_total: float = 0.0  # cumulative task-slot seconds spent executing (for mu)


@dataclass(frozen=True)
class BrokerStats:
    """A consistent snapshot of the broker, taken at broker time `now`."""

    now: float  # unix seconds, from the broker's clock (Redis TIME)
    queues: dict[str, QueueStats]
    workers: tuple[WorkerInfo, ...] = ()

    def oldest_age_s(self, queue: str) -> float:
        q = self.queues.get(queue)
        if q is None or q.oldest_ready_at is None:
            return 0.0
        return max(0.0, self.now - q.oldest_ready_at)


def worker_info(heartbeat: Mapping[str, Any], now: float) -> WorkerInfo | None:
    """A WorkerInfo from one decoded heartbeat body (both brokers write the same JSON,
    see worker.decisions.heartbeat_info); None for a foreign or corrupt one, which must never break
    the operator's poll."""
    try:
        return WorkerInfo(
            worker_id=str(heartbeat["worker_id"]),
            pod=heartbeat.get("pod"),
            busy=bool(heartbeat.get("running", 0)),
            running=int(heartbeat.get("running", 0)),
            concurrency=int(heartbeat.get("concurrency", 0)),
            queues=tuple(heartbeat.get("queues", ())),
            last_seen=float(heartbeat.get("at", now)),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


@runtime_checkable
class Broker(Protocol):
    """Producer side is synchronous (called from user code); consumer side is asyncio."""

    url: str

    def enqueue(
        self, queue: str, messages: Sequence[Outgoing], max_backlog: int, unique_ttl_ms: int
    ) -> list[str]: ...

    async def aconnect(self) -> None: ...
    async def aclose(self) -> None: ...
    async def claim(self, plan: Plan, n: int, lease_ms: int) -> list[Delivery]: ...
    async def settle(self, settlements: Sequence[Settlement], dead_ttl_ms: int) -> int: ...
    async def heartbeat(
        self, worker_id: str, info: str, held: Sequence[Delivery], lease_ms: int, ttl_ms: int
    ) -> int: ...
    async def acquire_rate(self, name: str, limit: int, window_ms: int) -> tuple[int, int]: ...

    def stats(self, queues: Sequence[str] | None, worker_ttl_ms: int) -> BrokerStats: ...
    def dlq_list(self, queue: str | None, limit: int) -> list[DeadTask]: ...
    def dlq_replay(self, dead: Sequence[DeadTask]) -> int: ...
    def dlq_purge(self, dead: Sequence[DeadTask]) -> int: ...
    def close(self) -> None: ...


@runtime_checkable
class Exchanging(Protocol):
    """A pull broker whose worker holds fenced leases (Redis): it settles a batch and
    claims the slots it frees in one round trip (exchange.lua), which halves the
    worker's calls per task; every claim gets a fresh token, so a stale worker's writes
    are refused and counted; claims record their worker, which stays alive by its
    heartbeat, and which of them started (only those count as recoveries when lost)."""

    def bind_worker(self, worker_id: str, alive_ms: int) -> None:
        """Before the first claim: whose claims these are, and how long a heartbeat keeps
        that worker alive (past it, any claim takes its tasks back)."""

    async def exchange(
        self,
        settlements: Sequence[Settlement],
        plan: Plan,
        n: int,
        lease_ms: int,
        dead_ttl_ms: int,
        run_now: int = 0,
        held: int = 0,
    ) -> tuple[int, list[Delivery]]:
        """Settle, then claim up to `n` (the first `run_now` marked started); returns how
        many settlements applied (the others were fenced out) and the claims. `held`: the
        tasks the worker still holds after the settle; a task a worker was lost with is
        claimed only by one that holds nothing, alone."""

    async def renew(
        self,
        worker_id: str,
        info: str,
        held: Sequence[Delivery],
        running: Collection[str],
        lease_ms: int,
        ttl_ms: int,
        sweep: bool = False,
    ) -> list[str]:
        """The heartbeat: renew the held leases, mark the `running` entries started, and
        with `sweep` release the claims recorded for this worker that it does not hold
        (a claim whose reply was lost); returns the held entries it no longer owns."""


@runtime_checkable
class PushWindow(Protocol):
    """A push broker (RabbitMQ) delivers up to a prefetch window before any claim: the
    worker sizes that window, may claim all of it, and returns what it never claimed
    when it stops."""

    def configure_window(self, concurrency: int, prefetch: int, adaptive: bool) -> None:
        """Before the first claim: the window is concurrency + prefetch, and grows with
        the completion rate when `adaptive` (no explicit --prefetch)."""

    def window(self) -> int:
        """The deliveries the broker may push to this worker right now."""

    async def release(self) -> None:
        """Stopping: stop deliveries and hand back every one not claimed yet."""
