"""The operator's own Prometheus metrics, per TaskQueue and per queue.

Names follow the Prometheus conventions: the `ebbtide_taskqueue_` subsystem for what a
TaskQueue looks like, `ebbtide_operator_` for the operator's own loop, base units in the
name (`_seconds`, `_tasks`, `_tasks_per_second`) and `_total` on counters. docs/metrics.md
lists them with the names they replace.

A private registry keeps them apart from anything else in the process (kopf, tests); it
also carries `ebbtide_build_info` and prometheus_client's process, platform and GC
collectors. `serve()` exposes it on the port given by EBBTIDE_OPERATOR_METRICS_PORT
(default 8081).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from ebbtide.buildinfo import register_process_metrics
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

from ebbtide_operator.policy import Decision, Observation

LABELS = ("namespace", "taskqueue")
QUEUE_LABELS = (*LABELS, "queue")
# The queue label of the one series an Observation without per-queue figures gets.
AGGREGATE_QUEUE = ""


class OperatorMetrics:
    """Every series the operator exports, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._queues: dict[tuple[str, str], frozenset[str]] = {}  # the queues with series
        r = self.registry
        register_process_metrics(r, "operator")

        def queue_gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"ebbtide_taskqueue_{name}", doc, QUEUE_LABELS, registry=r)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"ebbtide_taskqueue_{name}", doc, LABELS, registry=r)

        # Per queue: what the broker holds.
        self.backlog = queue_gauge("backlog_tasks", "Tasks ready to claim (due ones included)")
        self.in_flight = queue_gauge("in_flight_tasks", "Tasks claimed by a worker, not acked")
        self.oldest_age = queue_gauge(
            "oldest_task_age_seconds", "Seconds the oldest ready (or due) task has waited"
        )
        self.delayed = queue_gauge(
            "delayed_tasks", "Tasks scheduled for later (delay= or a retry's backoff)"
        )
        self.due = queue_gauge("due_tasks", "Delayed tasks that are due now")
        self.dead = queue_gauge("dead_tasks", "Tasks in the dead-letter queue")
        self.target = queue_gauge(
            "target_backlog_seconds", "The queue's target drain time (targetBacklogSeconds)"
        )
        self.arrival_rate = queue_gauge(
            "arrival_rate_tasks_per_second", "Lambda: tasks enqueued per second"
        )
        # Per TaskQueue: capacity and the policy.
        self.completion_rate = gauge(
            "completion_rate_tasks_per_second", "Tasks finished per second, all queues"
        )
        self.service_rate = gauge(
            "service_rate_tasks_per_second", "Mu: tasks per second per replica (smoothed)"
        )
        self.drain = gauge("drain_seconds", "Estimated seconds to drain at current capacity")
        self.desired = gauge(
            "desired_replicas", "Replicas the policy targets (within min and max replicas)"
        )
        self.min_replicas = gauge("min_replicas", "spec.scaling.minReplicas")
        self.max_replicas = gauge("max_replicas", "spec.scaling.maxReplicas")
        self.replicas = gauge("replicas", "The worker Deployment's spec.replicas")
        self.ready = gauge("ready_replicas", "Worker pods ready")
        self.broker_up = gauge("broker_up", "1 when the last statistics read succeeded")
        self.scale_events = Counter(
            "ebbtide_taskqueue_scale_events_total",
            "Replica changes, by direction",
            (*LABELS, "direction"),
            registry=r,
        )
        self.errors = Counter(
            "ebbtide_taskqueue_reconcile_errors_total",
            "Failed ticks and reconciles, by stage",
            (*LABELS, "stage"),
            registry=r,
        )
        # The operator's own loop.
        self.tick_seconds = Histogram(
            "ebbtide_operator_tick_duration_seconds",
            "Time of one tick (stats read, decision, writes)",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.tick_lateness = Histogram(
            "ebbtide_operator_tick_lateness_seconds",
            "How late a tick started versus its schedule",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.ticks_skipped = Counter(
            "ebbtide_operator_tick_slots_skipped",
            "Poll slots skipped because the previous tick overran them",
            registry=r,
        )

    def _per_queue(self) -> tuple[Gauge, ...]:
        return (
            self.backlog,
            self.in_flight,
            self.oldest_age,
            self.delayed,
            self.due,
            self.dead,
            self.target,
            self.arrival_rate,
        )

    def _per_taskqueue(self) -> tuple[Gauge, ...]:
        return (
            self.completion_rate,
            self.service_rate,
            self.drain,
            self.desired,
            self.min_replicas,
            self.max_replicas,
            self.replicas,
            self.ready,
            self.broker_up,
        )

    def observe(
        self,
        namespace: str,
        name: str,
        obs: Observation | None,
        decision: Decision | None,
        replicas: int,
        ready: int,
        broker_up: bool,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
    ) -> None:
        """One tick's figures. With the broker down the broker figures keep their last
        values (broker_up says they are stale); `desired` is clamped to min/max."""
        labels = (namespace, name)
        if obs is not None and broker_up:
            self._observe_queues(labels, obs)
            self.completion_rate.labels(*labels).set(obs.completion_rate)
            if obs.service_rate is not None:
                self.service_rate.labels(*labels).set(obs.service_rate)
        if decision is not None:
            desired = decision.replicas
            if max_replicas is not None:
                desired = min(max_replicas, desired)
            if min_replicas is not None:
                desired = max(min_replicas, desired)
            self.desired.labels(*labels).set(desired)
            if decision.drain_seconds is not None:
                self.drain.labels(*labels).set(decision.drain_seconds)
        if min_replicas is not None:
            self.min_replicas.labels(*labels).set(min_replicas)
        if max_replicas is not None:
            self.max_replicas.labels(*labels).set(max_replicas)
        self.replicas.labels(*labels).set(replicas)
        self.ready.labels(*labels).set(ready)
        self.broker_up.labels(*labels).set(1 if broker_up else 0)

    def _observe_queues(self, labels: tuple[str, str], obs: Observation) -> None:
        queues = obs.queues
        if not queues:  # an Observation described by its aggregates only
            rows = [(AGGREGATE_QUEUE, obs.backlog, obs.in_flight, obs.oldest_age_s, 0, 0, 0)]
            targets: dict[str, float | None] = {AGGREGATE_QUEUE: None}
            arrivals = {AGGREGATE_QUEUE: obs.arrival_rate}
        else:
            rows = [
                (q.name, q.backlog, q.in_flight, q.oldest_age_s, q.delayed, q.due, q.dead)
                for q in queues
            ]
            targets = {q.name: q.target_backlog_seconds for q in queues}
            arrivals = {q.name: q.arrival_rate for q in queues}
        names = frozenset(row[0] for row in rows)
        # A queue removed from the spec loses its series. Only this TaskQueue's own queues
        # are looked at: scanning every series each tick was quadratic in TaskQueues.
        for gone in self._queues.get(labels, frozenset()) - names:
            for metric in self._per_queue():
                with contextlib.suppress(KeyError):
                    metric.remove(*labels, gone)
        self._queues[labels] = names
        for queue, backlog, in_flight, oldest, delayed, due, dead in rows:
            key = (*labels, queue)
            self.backlog.labels(*key).set(backlog)
            self.in_flight.labels(*key).set(in_flight)
            self.oldest_age.labels(*key).set(oldest)
            self.delayed.labels(*key).set(delayed)
            self.due.labels(*key).set(due)
            self.dead.labels(*key).set(dead)
            self.arrival_rate.labels(*key).set(arrivals[queue])
            if targets[queue] is not None:
                self.target.labels(*key).set(targets[queue])

    def scaled(self, namespace: str, name: str, before: int, after: int) -> None:
        self.scale_events.labels(namespace, name, "up" if after > before else "down").inc()

    def error(self, namespace: str, name: str, stage: str) -> None:
        self.errors.labels(namespace, name, stage).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted TaskQueue's series."""
        self._queues.pop((namespace, name), None)
        for metric in (*self._per_queue(), *self._per_taskqueue()):
            _remove_matching(metric, (namespace, name))
        for metric in (self.scale_events, self.errors):
            _remove_matching(metric, (namespace, name))

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped in-cluster
        start_http_server(port, addr=addr, registry=self.registry)


def _remove_matching(
    metric: MetricWrapperBase, prefix: tuple[str, ...], keep: Iterable[str] = ()
) -> None:
    """Remove the children whose labels start with `prefix`, but those whose next label
    is in `keep`."""
    kept = set(keep)
    n = len(prefix)
    for labels in list(metric._metrics):  # noqa: SLF001 - no public API for prefix removal
        if labels[:n] == prefix and (len(labels) == n or labels[n] not in kept):
            metric.remove(*labels)
