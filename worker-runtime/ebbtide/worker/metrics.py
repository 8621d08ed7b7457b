"""Prometheus metrics of one worker. prometheus_client is imported only when a worker
serves metrics, so producers never pay for it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..lifecycle import Outcome

LAG_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)


class NullMetrics:
    """What a worker without --metrics-port records: nothing, at no cost."""

    def finished(self, task: str, outcome: str, seconds: float | None) -> None: ...
    def started(self, queue: str, lag_seconds: float) -> None: ...
    def stale(self, settlements: int, leases: int) -> None: ...


class Metrics:
    """Per-task label children are cached, so recording costs a dict lookup and an add.

    Names follow the Prometheus conventions: the `ebbtide_worker_` subsystem, base units
    in the name, `_total` on counters (docs/metrics.md has the names they replace). The
    registry also carries `ebbtide_build_info{component="worker"}` and the process,
    platform and GC collectors."""

    def __init__(self, child: bool = False) -> None:
        """`child`: a process of --processes N, whose supervisor exports the build info
        and its own process metrics once for the pod (files hold only the task metrics)."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from ..buildinfo import register_process_metrics

        self.registry = CollectorRegistry()
        r = self.registry
        if not child:
            register_process_metrics(r, "worker")
        self.tasks = Counter(
            "ebbtide_worker_tasks",
            "Task attempts finished, by outcome",
            ["task", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "ebbtide_worker_task_duration_seconds",
            "Task run time",
            ["task"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.lag = Histogram(
            "ebbtide_worker_enqueue_to_start_seconds",
            "Time from ready to started",
            ["queue"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        # livesum: under --processes N the supervisor shows the sum over live children.
        self.in_flight = Gauge(
            "ebbtide_worker_running_tasks",
            "Tasks running now in this worker",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.held = Gauge(
            "ebbtide_worker_held_tasks",
            "Tasks held by this worker (running and prefetched)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.thread_limit = Gauge(
            "ebbtide_worker_thread_limit",
            "Task threads that may start sync tasks at once (--thread-limit; auto measures it)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.retries = Counter("ebbtide_worker_retries", "Retries scheduled", ["task"], registry=r)
        self.stale_settlements = Counter(
            "ebbtide_worker_stale_settlements",
            "Settlements the broker refused: the claim had gone to another worker (fencing)",
            registry=r,
        )
        self.leases_lost = Counter(
            "ebbtide_worker_leases_lost",
            "Held claims the heartbeat found given away",
            registry=r,
        )
        self._children: dict[tuple[str, ...], Any] = {}

    def watch(
        self, running: Callable[[], int], held: Callable[[], int], thread_limit: Callable[[], int]
    ) -> None:
        """Gauges read at scrape time: nothing to update on the hot path."""
        self.in_flight.set_function(running)
        self.held.set_function(held)
        self.thread_limit.set_function(thread_limit)

    def sample(self, running: int, held: int, thread_limit: int) -> None:
        """A child of --processes N writes its gauges to the shared files instead (a
        function gauge cannot be read across processes); its loop calls this often."""
        self.in_flight.set(running)
        self.held.set(held)
        self.thread_limit.set(thread_limit)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def finished(self, task: str, outcome: str, seconds: float | None) -> None:
        self._child(self.tasks, task, outcome).inc()
        if seconds is not None:
            self._child(self.duration, task).observe(seconds)
        if outcome == Outcome.RETRY:
            self._child(self.retries, task).inc()

    def started(self, queue: str, lag_seconds: float) -> None:
        self._child(self.lag, queue).observe(max(0.0, lag_seconds))

    def stale(self, settlements: int, leases: int) -> None:
        if settlements:
            self.stale_settlements.inc(settlements)
        if leases:
            self.leases_lost.inc(leases)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
