"""The operator's own Prometheus metrics, one series per TaskQueue.

A private registry keeps them apart from anything else in the process (kopf, tests);
`serve()` exposes it on the port given by EBBTIDE_OPERATOR_METRICS_PORT (default 8081).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ebbtide_operator.policy import Decision, Observation

LABELS = ("namespace", "taskqueue")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.backlog = Gauge("ebbtide_backlog_tasks", "Ready tasks, all queues", LABELS, registry=r)
        self.in_flight = Gauge(
            "ebbtide_in_flight_tasks", "Claimed, unacked tasks", LABELS, registry=r
        )
        self.oldest_age = Gauge(
            "ebbtide_oldest_task_age_seconds", "Age of the oldest ready task", LABELS, registry=r
        )
        self.drain = Gauge(
            "ebbtide_drain_seconds",
            "Estimated time to drain at current capacity",
            LABELS,
            registry=r,
        )
        self.arrival_rate = Gauge("ebbtide_arrival_rate", "Lambda, tasks/s", LABELS, registry=r)
        self.service_rate = Gauge(
            "ebbtide_service_rate", "Mu, tasks/s per replica (smoothed)", LABELS, registry=r
        )
        self.desired = Gauge(
            "ebbtide_desired_replicas", "Replicas the policy wants", LABELS, registry=r
        )
        self.replicas = Gauge(
            "ebbtide_replicas", "Worker Deployment spec.replicas", LABELS, registry=r
        )
        self.ready = Gauge("ebbtide_ready_replicas", "Worker pods ready", LABELS, registry=r)
        self.broker_up = Gauge(
            "ebbtide_broker_up", "1 when the last stats read succeeded", LABELS, registry=r
        )
        self.scale_events = Counter(
            "ebbtide_scale_events_total", "Replica changes", (*LABELS, "direction"), registry=r
        )
        self.errors = Counter(
            "ebbtide_reconcile_errors_total",
            "Failed ticks/reconciles by stage",
            (*LABELS, "stage"),
            registry=r,
        )
        self.tick_seconds = Histogram(
            "ebbtide_tick_duration_seconds",
            "Time of one tick (stats read, decision, writes)",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.tick_lateness = Histogram(
            "ebbtide_tick_lateness_seconds",
            "How late a tick started versus its schedule",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.ticks_skipped = Counter(
            "ebbtide_tick_slots_skipped",
            "Poll slots skipped because the previous tick overran them",
            registry=r,
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
    ) -> None:
        labels = (namespace, name)
        if obs is not None and broker_up:
            self.backlog.labels(*labels).set(obs.backlog)
            self.in_flight.labels(*labels).set(obs.in_flight)
            self.oldest_age.labels(*labels).set(obs.oldest_age_s)
            self.arrival_rate.labels(*labels).set(obs.arrival_rate)
            if obs.service_rate is not None:
                self.service_rate.labels(*labels).set(obs.service_rate)
        if decision is not None:
            self.desired.labels(*labels).set(decision.replicas)
            if decision.drain_seconds is not None:
                self.drain.labels(*labels).set(decision.drain_seconds)
        self.replicas.labels(*labels).set(replicas)
        self.ready.labels(*labels).set(ready)
        self.broker_up.labels(*labels).set(1 if broker_up else 0)

    def scaled(self, namespace: str, name: str, before: int, after: int) -> None:
        self.scale_events.labels(namespace, name, "up" if after > before else "down").inc()

    def error(self, namespace: str, name: str, stage: str) -> None:
        self.errors.labels(namespace, name, stage).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted TaskQueue's series."""
        for metric in (
            self.backlog,
            self.in_flight,
            self.oldest_age,
            self.drain,
            self.arrival_rate,
            self.service_rate,
            self.desired,
            self.replicas,
            self.ready,
            self.broker_up,
        ):
            try:
                metric.remove(namespace, name)
            except KeyError:
                pass
        for metric in (self.scale_events, self.errors):
            for labels in list(metric._metrics):  # noqa: SLF001 - no public API for prefix removal
                if labels[:2] == (namespace, name):
                    metric.remove(*labels)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped in-cluster
        start_http_server(port, addr=addr, registry=self.registry)
