"""The chart's Grafana dashboard and PrometheusRule against a real Prometheus (Debian's
`prometheus`, on the host) that scrapes the real operator pod and worker pods during a
burst: every panel query and every alert expression returns series there.

Prometheus scrapes as the Prometheus Operator would configure it: the chart's
ServiceMonitor and PodMonitor, rendered with helm, become scrape jobs with the operator's
relabelings and the monitors' own (tests/support/monitors.py). Debian's prometheus has no
Kubernetes discovery, so the test lists pods, Services and Endpoints from the API and writes
them as file_sd targets with the `__meta_kubernetes_*` labels that discovery sets
(tests/support/kubernetes_sd.py), again on every poll (worker pods come and go). The host
reaches the pod IPs over the node's bridge. Scrapes every second.

What makes each series exist: a few `work` tasks that raise (a negative sleep), run to
their end first (3 retries each, then the DLQ: retry and dead series), a burst of `work` tasks big enough to scale up (scale
events, service rate, drain time), and a second TaskQueue whose broker address has nothing listening
(`broker_up` 0 and broker reconcile errors). A comparison in a query (an alert's
threshold, the annotation's `> 0`) is evaluated in its `bool` form, so the check is that
the selectors and joins match the scraped series, not that the burst crossed a threshold
in time; the operator-down alert's `absent(...)` must be empty (the operator is up) and
the `up{...} == 1` inside it non-empty.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import kubernetes_sd
from support.helm import HELM, only, render
from support.monitors import pod_monitor_jobs, service_monitor_jobs
from support.prometheus import (
    Prometheus,
    alert_expressions,
    dashboard_queries,
    prometheus_binary,
    wait_until,
    with_bool_comparisons,
)
from support.servers import free_port

from e2e.tests.kit import (
    condition,
    create_tq,
    enqueue,
    external,
    put_secret,
    read_tq,
    taskqueue,
    tracker,
    via_cluster_ip,
)
from e2e.tests.support import wait_for

BURST, FAILING = 1500, 5
# $taskqueue as Grafana sends a multi-select of both (not `All`'s `.*`, which would also
# match series without a taskqueue label, so the PodMonitor's relabeling would go unchecked).
TASKQUEUES = ("burst", "down")


def workers_ready(custom, namespace: str, name: str) -> bool:
    tq = read_tq(custom, namespace, name)
    return (
        condition(tq, "BrokerReady").get("status") == "True"
        and condition(tq, "WorkersReady").get("status") == "True"
    )


class Discovery:
    """The file_sd targets of both roles, rewritten from the API on each `refresh()`."""

    def __init__(self, core, root: Path) -> None:
        self.core = core
        self.pods_file, self.endpoints_file = root / "pods.json", root / "endpoints.json"

    def refresh(self) -> None:
        as_dict = self.core.api_client.sanitize_for_serialization
        pods = as_dict(self.core.list_pod_for_all_namespaces())["items"]
        services = as_dict(self.core.list_service_for_all_namespaces())["items"]
        endpoints = as_dict(self.core.list_endpoints_for_all_namespaces())["items"]
        kubernetes_sd.write(self.pods_file, kubernetes_sd.pod_groups(pods))
        kubernetes_sd.write(
            self.endpoints_file, kubernetes_sd.endpoints_groups(endpoints, services, pods)
        )


def up_targets(prometheus: Prometheus, job: str, namespace: str) -> list[dict]:
    return [
        t
        for t in prometheus.targets()
        if t["labels"].get("job") == job
        and t["labels"].get("namespace") == namespace
        and t["health"] == "up"
    ]


@pytest.mark.skipif(HELM is None, reason="no helm binary (run `make cluster-up`)")
def test_every_dashboard_query_and_alert_returns_series_from_the_real_pods(
    kube_env, core, apps, custom, operator, namespace, tmp_path
):
    if not kube_env.local:
        pytest.skip("pod IPs are reachable from the host only on the suite's own node")
    binary = prometheus_binary()
    docs = render(
        "metrics.serviceMonitor.enabled=true",
        "podMonitor.enabled=true",
        "prometheusRule.enabled=true",
    )
    service_monitor, pod_monitor = only(docs, "ServiceMonitor"), only(docs, "PodMonitor")
    discovery = Discovery(core, tmp_path)
    discovery.refresh()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": service_monitor_jobs(service_monitor, str(discovery.endpoints_file), "1s")
        + pod_monitor_jobs(pod_monitor, str(discovery.pods_file), "1s"),
    }
    # The job names the Prometheus Operator gives: the metrics Service's name, and
    # NAMESPACE/NAME of the PodMonitor.
    operator_job = only(docs, "Service")["metadata"]["name"]
    system_namespace = service_monitor["metadata"]["namespace"]
    worker_job = f"{pod_monitor['metadata']['namespace']}/{pod_monitor['metadata']['name']}"

    prometheus = Prometheus(binary, tmp_path, config, free_port())
    try:
        # One plain Redis pod is the burst's broker (db 0) and counts the runs (db 1).
        broker_url = tracker(core, apps, namespace)
        put_secret(core, namespace, "broker", broker_url)
        track_url = broker_url.removesuffix("/0") + "/1"
        body = taskqueue(
            "burst", external("broker"), track_url=track_url, scaling={"maxReplicas": 3}
        )
        create_tq(custom, namespace, body)
        # Nothing listens on 6390: the operator cannot read this broker.
        put_secret(core, namespace, "nowhere", f"redis://tracker.{namespace}.svc:6390/0")
        create_tq(
            custom, namespace, taskqueue("down", external("nowhere"), scaling={"minReplicas": 0})
        )
        wait_for(lambda: workers_ready(custom, namespace, "burst"), 120, "a worker ready")
        wait_until(
            lambda: discovery.refresh() or up_targets(prometheus, operator_job, system_namespace),
            60,
            f"the operator pod scraped (job {operator_job})",
            prometheus,
        )
        wait_until(
            lambda: discovery.refresh() or up_targets(prometheus, worker_job, namespace),
            60,
            f"a worker pod scraped (job {worker_job})",
            prometheus,
        )

        host_url = via_cluster_ip(core, namespace, broker_url)
        # The failing tasks first, to their end: a retry queued behind the burst could
        # otherwise reach the DLQ only after the deadline below. `work` with a negative
        # sleep raises (ValueError) on every attempt: 3 retries (~1 + 2 + 4 s of backoff at
        # most), then the DLQ. (A task of its own would need the e2e worker image rebuilt,
        # which other checkouts' `make images` overwrite.)
        enqueue(host_url, FAILING, -1.0, first=BURST)
        dead = f'sum(ebbtide_worker_tasks_total{{namespace="{namespace}", outcome="dead"}}) >= {FAILING}'
        wait_until(
            lambda: discovery.refresh() or prometheus.query(dead),
            60,
            f"{FAILING} dead tasks scraped from the workers",
            prometheus,
        )
        enqueue(host_url, BURST, 0.05)
        wait_for(
            lambda: apps.read_namespaced_deployment("burst-worker", namespace).spec.replicas > 1,
            60,
            "a scale-up",
        )

        queries = {
            f"panel {where}": with_bool_comparisons(expr)
            for where, expr in dashboard_queries(namespace, "|".join(TASKQUEUES)).items()
        }
        rule = only(docs, "PrometheusRule")
        absent = {}
        for alert, expr in alert_expressions(rule).items():
            if expr.startswith("absent("):
                # Operator down: the operator is up, so the selector inside, as written
                # (`up{...} == 1`), has a series and absent() has none.
                absent[alert] = expr
                queries[f"alert {alert}"] = expr.removeprefix("absent(").removesuffix(")")
            else:
                queries[f"alert {alert}"] = with_bool_comparisons(expr)
        assert len(queries) >= 25, queries

        def ours(where: str, result: list[dict]) -> bool:
            """Series of this test's TaskQueues (the operator's `up` for operator-down)."""
            if not where.startswith("alert") or where.removeprefix("alert ") in absent:
                return bool(result)
            return any(
                r["metric"].get("namespace") == namespace
                and r["metric"].get("taskqueue") in TASKQUEUES
                for r in result
            )

        missing = dict(queries)

        def all_answered() -> bool:
            discovery.refresh()
            for where in list(missing):
                if ours(where, prometheus.query(missing[where])):
                    del missing[where]
            return not missing

        try:
            wait_until(all_answered, 60, "every query to return series", prometheus)
        except AssertionError as error:
            raise AssertionError(f"no series for {missing}") from error
        for alert, expr in absent.items():
            assert not prometheus.query(expr), f"{alert} fires while the operator is up: {expr}"
    finally:
        prometheus.stop()
