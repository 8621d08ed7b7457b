"""What the worker tells about its tasks: the log lines and the Prometheus metrics of
each start and each outcome, in one place (called from the loop and the task threads)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import logs
from ..brokers.base import Delivery
from ..lifecycle import Outcome
from .decisions import EXIT_HARD_TIMEOUT, SUCCESS, enqueue_lag_s
from .metrics import NullMetrics
from .outcomes import Failure

if TYPE_CHECKING:
    import asyncio

    from ..app import Task


class Report:
    def __init__(self) -> None:
        self.metrics: Any = NullMetrics()
        self.stale_settlements = 0  # refused by the broker (fencing), metrics or not
        self.leases_lost = 0

    async def serve(
        self,
        host: str,
        port: int,
        running: Callable[[], int],
        held: Callable[[], int],
        thread_limit: Callable[[], int],
        ready: Callable[[], tuple[bool, str]],
    ) -> asyncio.Server:
        """Start recording, and serve /metrics, /healthz and /readyz on the loop."""
        from . import probes
        from .metrics import Metrics

        self.metrics = Metrics()
        self.metrics.watch(running, held, thread_limit)
        return await probes.serve(host, port, self.metrics.render, ready)

    async def serve_child(
        self, path: str, ready: Callable[[], tuple[bool, str]], record: bool
    ) -> asyncio.Server:
        """A child of --processes N: answer its probes on a Unix socket and, with
        `record` (the supervisor serves /metrics), record into PROMETHEUS_MULTIPROC_DIR's
        files, which the supervisor aggregates."""
        from . import probes
        from .metrics import Metrics

        if record:
            self.metrics = Metrics(child=True)
        return await probes.serve_unix(path, lambda: b"", ready)

    def started(self, d: Delivery) -> None:
        if self.metrics.__class__ is not NullMetrics:
            lag = enqueue_lag_s(d.ready_ms, time.time())
            if lag is not None:
                self.metrics.started(d.queue, lag)

    def succeeded(self, task: Task, seconds: float) -> None:
        self.metrics.finished(task.name, SUCCESS, seconds)

    def failed(self, task: Task, body: dict[str, Any], failed: Failure, seconds: float) -> None:
        self.metrics.finished(task.name, failed.outcome.value, seconds)
        if failed.retry_in is not None:
            logs.log(
                "task failed, will retry",
                task=task.name,
                id=body.get("id"),
                attempt=failed.attempts,
                retry_in=round(failed.retry_in, 3),
                error=failed.error,
            )
        else:
            logs.warn(
                "task failed for good, moved to the DLQ",
                task=task.name,
                id=body.get("id"),
                attempts=failed.attempts,
                error=failed.error,
            )

    def undecodable(self, d: Delivery, reason: str) -> None:
        self.metrics.finished("<undecodable>", Outcome.DEAD.value, None)
        logs.warn("undecodable payload moved to the DLQ", queue=d.queue, reason=reason)

    def rejected(self, d: Delivery, body: dict[str, Any], reason: str) -> None:
        name = str(body.get("task"))
        self.metrics.finished(name, Outcome.DEAD.value, None)
        logs.warn(
            "task rejected unrun, moved to the DLQ",
            queue=d.queue,
            task=name,
            id=body.get("id"),
            reason=reason,
        )

    def unknown_task(self, d: Delivery, name: str, op: Outcome) -> None:
        self.metrics.finished(name, op.value, None)
        if op == Outcome.DEAD:
            logs.warn("unknown task moved to the DLQ", queue=d.queue, task=name)
        else:
            logs.warn("unknown task name, retrying: a newer worker may know it", task=name)

    def lost(self, d: Delivery, name: str) -> None:
        self.metrics.finished(name, Outcome.DEAD.value, None)
        logs.warn(
            "task lost its worker too often, moved to the DLQ unrun",
            queue=d.queue,
            task=name,
            recoveries=d.recoveries,
        )

    def stale(self, settlements: int, leases: int) -> None:
        """Writes the broker refused: this worker's claim went to another worker."""
        self.stale_settlements += settlements
        self.leases_lost += leases
        self.metrics.stale(settlements, leases)
        logs.warn(
            "fenced out: claims lost to another worker", settlements=settlements, leases=leases
        )

    def hard_timeout(self, task: Task, body: dict[str, Any]) -> None:
        logs.error(
            "hard timeout: handing back other work and exiting",
            task=task.name,
            id=body.get("id"),
            exit_code=EXIT_HARD_TIMEOUT,
        )
