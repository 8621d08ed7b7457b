"""The worker's decisions that are not outcomes, as pure functions: its settings, how
much to claim, what to hand back at shutdown, when it is ready, what its heartbeat says.

The Worker (loop.py) holds the state and does the I/O; everything it decides from that
state is here, so it is unit-tested without a broker or an event loop.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..brokers.base import Delivery
from ..lifecycle import rate_wait_ms

SUCCESS = "success"  # the outcome of a run that returned, in metrics and spans alike
EXIT_HARD_TIMEOUT = 3  # a sync task overran its hard timeout: the pod must restart
HEARTBEAT_MAX_S = 1.0  # heartbeat at least this often
ALIVE_S = 4.0  # a worker silent this long (at most its lease) is taken for dead


@dataclass(frozen=True, slots=True)
class Settings:
    """A worker's numbers, checked once (the CLI's flags end up here)."""

    concurrency: int
    prefetch: int
    prefetch_explicit: bool  # --prefetch given: RabbitMQ's window stays fixed
    lease_ms: int
    heartbeat_s: float
    worker_ttl_ms: int  # a heartbeat older than this means the worker is gone
    alive_ms: int  # no heartbeat for this long: the worker's claims come back (Redis)
    grace_seconds: float
    thread_limit: int | None = None  # threads that may start tasks; None: measured

    @property
    def capacity(self) -> int:
        """Tasks held at most on a pull broker: running + prefetched."""
        return self.concurrency + self.prefetch

    @classmethod
    def of(
        cls,
        concurrency: int = 8,
        prefetch: int | None = None,
        lease_seconds: float = 30.0,
        grace_seconds: float = 30.0,
        thread_limit: int | str | None = None,
    ) -> Settings:
        if concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
        limit = parse_thread_limit(thread_limit, concurrency)
        if lease_seconds < 0.5:
            raise ValueError(f"--lease-seconds must be >= 0.5, got {lease_seconds}")
        effective = concurrency if prefetch is None else prefetch
        if effective < 0:
            raise ValueError(f"--prefetch must be >= 0, got {prefetch}")
        lease_ms = int(lease_seconds * 1000)
        # Three heartbeats per lease at least, and one a second: a dead worker's tasks
        # come back when its liveness (a few heartbeats) runs out, not its lease.
        heartbeat_s = min(lease_seconds / 3, HEARTBEAT_MAX_S)
        alive_ms = int(max(3 * heartbeat_s, min(lease_seconds, ALIVE_S)) * 1000)
        return cls(
            concurrency=concurrency,
            prefetch=effective,
            prefetch_explicit=prefetch is not None,
            lease_ms=lease_ms,
            heartbeat_s=heartbeat_s,
            worker_ttl_ms=max(lease_ms, int(heartbeat_s * 3000)),
            alive_ms=alive_ms,
            grace_seconds=grace_seconds,
            thread_limit=limit,
        )


def heartbeat_late(gap_s: float, alive_s: float) -> bool:
    """Two successful heartbeats more than half the liveness window apart: a little
    longer, and the broker takes the worker's claims for a dead worker's."""
    return gap_s > alive_s / 2


def parse_thread_limit(value: int | str | None, concurrency: int) -> int | None:
    """--thread-limit: 'auto' (or None) is measured (thread_limit.py), N is 1..concurrency."""
    if value is None:
        return None
    return auto_or_count("--thread-limit", value, concurrency, f"--concurrency ({concurrency})")


def auto_or_count(flag: str, value: int | str, most: int, most_text: str) -> int | None:
    """A flag that takes 'auto' (None: the worker finds the number) or 1..`most`; a bad
    value is a ValueError naming the flag, the value and the range (a usage error)."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{flag} must be 'auto' or a number, got {value!r}") from None
    if not 1 <= n <= most:
        raise ValueError(f"{flag} must be 'auto' or 1..{most_text}, got {n}")
    return n


def default_worker_id() -> str:
    """host-pid-random: unique across pods and restarts, readable in `ebbtide stats`."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def unfinished(held: int, settling: int) -> int:
    """Held tasks not yet done. A finished task waiting for its settlement to be written
    is no longer work this worker hoards, so it does not use up capacity."""
    return held - settling


def free_slots(capacity: int, window: int | None, held: int, settling: int) -> int:
    """How many tasks to claim now. A push broker's prefetch window (`window`) is what
    the worker holds anyway (claimed or in the client's buffer), so it may claim all of
    it, even above `capacity`."""
    if window is not None:
        capacity = max(capacity, window)
    return capacity - unfinished(held, settling)


PREFETCH_RTTS = 6  # a far Redis: prefetch this many exchange round trips of work


def prefetch_hold_s(exchange_rtt_s: float, cap_s: float) -> float:
    """On Redis without --prefetch: how long a prefetched task may wait, sized by the
    measured settle+claim round trip. A slot freed during one exchange is refilled by
    the next one, so the buffer must cover a few round trips of work, or the task
    threads idle behind the runtime's own round trips (a broker 2 ms away: 1,300/s at
    the fixed 8, 2,500/s at 24). On loopback (~0.3 ms) this stays under the fixed
    prefetch, which is then what counts; never past `cap_s` (RabbitMQ's 50 ms hold)."""
    return min(cap_s, PREFETCH_RTTS * max(0.0, exchange_rtt_s))


def run_now(concurrency: int, held: int, settling: int, claimed: int) -> int:
    """Of `claimed` tasks about to be claimed, how many go straight to an idle slot:
    the claim marks those started (a crash then counts against them); the rest wait
    in the prefetch buffer, and the heartbeat marks them when they run."""
    return max(0, min(claimed, concurrency - unfinished(held, settling)))


def holds_lost(held: Iterable[Delivery], settled: Iterable[str] = ()) -> bool:
    """Whether the worker holds a task a worker was lost with (other than those being
    settled): it runs alone, so nothing more is claimed until it is settled."""
    done = set(settled)
    return any(d.recoveries > 0 and d.entry not in done for d in held)


def exchange_quota(
    capacity: int, held: int, settling: int, stopping: bool, claim_in_flight: bool
) -> int:
    """How many tasks a settle may claim in the same round trip: the slots it frees,
    unless the worker is stopping or a claim is already on its way (it would double)."""
    if stopping or claim_in_flight:
        return 0
    return max(0, capacity - unfinished(held, settling))


def cut_off(running: Mapping[str, Delivery], settling: Iterable[str]) -> list[Delivery]:
    """Shutdown, grace over: the running tasks to hand back (not those already settling)."""
    done = set(settling)
    return [d for d in running.values() if d.entry not in done]


def leftovers(
    held: Mapping[str, Delivery], settling: Iterable[str], running: Iterable[str]
) -> list[Delivery]:
    """Shutdown, last step: anything still held that is neither settling nor running
    (should be nothing) goes back too."""
    skip = set(settling) | set(running)
    return [d for e, d in held.items() if e not in skip]


def readiness(
    stopping: bool, since_broker_ok_s: float, heartbeat_s: float, stopped: Iterable[str] = ()
) -> tuple[bool, str]:
    """/readyz: not while stopping, nor when a loop the worker needs has stopped (a
    wedged pod must be restarted), nor when no broker call succeeded for a while."""
    if stopping:
        return False, "stopping"
    dead = sorted(stopped)
    if dead:
        return False, f"{', '.join(dead)} loop stopped"
    if since_broker_ok_s > max(10.0, 3 * heartbeat_s):
        return False, f"no successful broker call for {since_broker_ok_s:.0f}s"
    return True, "ready"


def heartbeat_info(
    worker_id: str,
    pod: str | None,
    running: int,
    held: int,
    concurrency: int,
    queues: Iterable[str],
    at: float,
) -> str:
    """The heartbeat JSON both brokers store and stats.worker_info reads back."""
    return json.dumps(
        {
            "worker_id": worker_id,
            "pod": pod,
            "running": running,
            "held": held,
            "concurrency": concurrency,
            "queues": list(queues),
            "at": at,
        }
    )


def enqueue_lag_s(ready_ms: int | None, now: float) -> float | None:
    """Seconds from ready to started, None when the broker's entry does not say."""
    return None if ready_ms is None else now - ready_ms / 1000


class RateDenials:
    """Rate-limit denials in a row per task since its last token (lifecycle.rate_wait_ms
    doubles the postponement with each)."""

    def __init__(self) -> None:
        self._denials: dict[str, int] = {}

    def granted(self, task: str) -> None:
        self._denials.pop(task, None)

    def denied(self, task: str, broker_wait_ms: int, window_ms: int) -> int:
        """Count a denial; returns how long to postpone the task (ms)."""
        denials = self._denials.get(task, 0)
        self._denials[task] = denials + 1
        return rate_wait_ms(broker_wait_ms, window_ms, denials)
