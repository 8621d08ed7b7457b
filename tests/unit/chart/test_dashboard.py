"""The Grafana dashboard (charts/ebbtide/dashboards/ebbtide.json) and the PrometheusRule
ask only for series Ebbtide really exports: every metric name in every query is one a
scrape of a real `OperatorMetrics` or a real worker `Metrics` registry contains.

A name check, not a data check: tests/integration/chart/test_prometheus_queries.py runs the
queries on a real Prometheus; during the e2e burst, with real pods, they are not run yet.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from ebbtide.worker.metrics import Metrics as WorkerMetrics
from ebbtide_operator.metrics import OperatorMetrics
from ebbtide_operator.policy import Decision, Observation, PolicyState, QueueObservation
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.helm import HELM, only, render

ROOT = Path(__file__).parents[3]
DASHBOARD = ROOT / "charts" / "ebbtide" / "dashboards" / "ebbtide.json"
# Series Prometheus makes itself, not an exporter.
SYNTHETIC = {"up"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}


def sample_names(registry_text: bytes) -> set[str]:
    return {
        sample.name
        for family in text_string_to_metric_families(registry_text.decode())
        for sample in family.samples
    }


def exported() -> set[str]:
    """Every sample name of a scrape of both registries, each metric touched once."""
    operator = OperatorMetrics()
    queue = QueueObservation("q", 5, 1, 3.0, 1.0, 30.0, delayed=1, due=1, dead=1)
    obs = Observation(0, 5, 1, 3.0, 1.0, 1.0, 1, 1, service_rate=0.5, queues=(queue,))
    decision = Decision(replicas=2, reason="r", state=PolicyState(), drain_seconds=5.0)
    operator.observe("ns", "tq", obs, decision, 2, 1, True, min_replicas=0, max_replicas=4)
    operator.scaled("ns", "tq", 1, 2)
    operator.error("ns", "tq", "broker")
    operator.tick_seconds.observe(0.01)
    operator.tick_lateness.observe(0.01)
    operator.ticks_skipped.inc()
    worker = WorkerMetrics()
    worker.watch(lambda: 1, lambda: 2, lambda: 8)
    for outcome in ("success", "retry", "dead"):
        worker.finished("t", outcome, 0.1)
    worker.started("q", 0.2)
    return sample_names(generate_latest(operator.registry)) | sample_names(worker.render())


EXPORTED = exported()


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names in
    grouping clauses and matchers left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\blabel_values\(([^,()]+),[^)]*\)", r"\1", expr)  # Grafana's helper
    names = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """{where: expr} for every panel target, annotation and template variable."""
    queries = {}

    def panels(items: list[dict[str, Any]]):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            queries[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            queries[f"annotation {annotation['name']!r}"] = annotation["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries[f"variable {variable['name']}"] = variable["query"]["query"]
    return queries


def test_the_name_parser_sees_through_promql():
    expr = (
        "histogram_quantile(0.95, sum by (le, queue) (rate(ebbtide_worker_task_duration_seconds_bucket"
        '{outcome="dead", x=~"$a"}[$__rate_interval]))) / on (namespace) group_left '
        "max without (queue) (ebbtide_taskqueue_replicas offset 5m) > bool 1e3"
    )
    assert metric_names(expr) == {
        "ebbtide_worker_task_duration_seconds_bucket",
        "ebbtide_taskqueue_replicas",
    }
    assert metric_names('label_values(ebbtide_x{namespace=~"$ns"}, taskqueue)') == {"ebbtide_x"}


def test_the_exported_names_come_from_both_registries():
    assert "ebbtide_taskqueue_backlog_tasks" in EXPORTED  # operator
    assert "ebbtide_worker_tasks_total" in EXPORTED  # worker
    assert "ebbtide_worker_task_duration_seconds_bucket" in EXPORTED


def test_every_dashboard_query_names_exported_metrics():
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 15
    for where, expr in queries.items():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - EXPORTED
        assert not unknown, f"{where}: {sorted(unknown)} not exported (in {expr!r})"


def test_the_dashboard_has_the_panels_the_issue_asks_for():
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dashboard)
    used = set().union(*(metric_names(e) for e in queries.values()))
    wanted = {
        # backlog and oldest age against the target
        "ebbtide_taskqueue_backlog_tasks",
        "ebbtide_taskqueue_oldest_task_age_seconds",
        "ebbtide_taskqueue_target_backlog_seconds",
        # replicas (desired and ready) against the backlog
        "ebbtide_taskqueue_desired_replicas",
        "ebbtide_taskqueue_ready_replicas",
        # throughput and mu
        "ebbtide_taskqueue_completion_rate_tasks_per_second",
        "ebbtide_taskqueue_service_rate_tasks_per_second",
        "ebbtide_worker_tasks_total",
        # retries and dead tasks
        "ebbtide_worker_retries_total",
        "ebbtide_taskqueue_dead_tasks",
        # scale events
        "ebbtide_taskqueue_scale_events_total",
    }
    assert wanted <= used, sorted(wanted - used)
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.skipif(HELM is None, reason="no helm binary (run `make cluster-up`)")
def test_every_alert_names_exported_metrics():
    rule = only(render("prometheusRule.enabled=true"), "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            names = metric_names(alert["expr"])
            assert names, alert["alert"]
            assert not names - EXPORTED - SYNTHETIC, (alert["alert"], names - EXPORTED)


@pytest.mark.skipif(HELM is None, reason="no helm binary (run `make cluster-up`)")
def test_dashboard_configmap_carries_the_file_for_the_grafana_sidecar():
    from support.helm import by_kind

    assert not [
        cm
        for cm in by_kind(render(), "ConfigMap")
        if "grafana_dashboard" in cm["metadata"]["labels"]
    ]
    configmap = only(render("dashboards.enabled=true"), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["name"] == "ebbtide-dashboard-ebbtide"
    assert json.loads(configmap["data"]["ebbtide.json"]) == json.loads(DASHBOARD.read_text())
