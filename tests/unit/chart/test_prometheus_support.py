"""The pure helpers of tests/support/prometheus.py and tests/support/monitors.py: the
`bool` form of comparisons, and the scrape configs made from the chart's ServiceMonitor and
PodMonitor, checked by the real promtool (`check rules`, `check config`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from support.helm import HELM, only, render
from support.kubernetes_sd import endpoints_groups, pod_groups
from support.monitors import pod_monitor_jobs, relabeling, service_monitor_jobs
from support.prometheus import (
    alert_expressions,
    dashboard_queries,
    promtool_binary,
    with_bool_comparisons,
)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("a > 5", "a > bool 5"),
        ("a>=b", "a>= boolb"),
        ("a > bool 5", "a > bool 5"),
        ('up{job="x", a!="b", c=~"d"} == 1', 'up{job="x", a!="b", c=~"d"} == bool 1'),
        (
            'label_replace(x, "a", ">", "b", "c") < 2',
            'label_replace(x, "a", ">", "b", "c") < bool 2',
        ),
        (
            "(a >= b) and on (n) (max by (n) (c - d) > 0)",
            "(a >= bool b) and on (n) (max by (n) (c - d) > bool 0)",
        ),
        ("sum(rate(x[5m]))", "sum(rate(x[5m]))"),
        ('x{a="\\"}>"} != 0', 'x{a="\\"}>"} != bool 0'),
    ],
)
def test_with_bool_comparisons(expr, expected):
    assert with_bool_comparisons(expr) == expected


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool_binary(), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.skipif(HELM is None, reason="no helm binary (run `make cluster-up`)")
def test_every_query_in_its_bool_form_parses(tmp_path: Path):
    """What e2e/tests/test_prometheus.py sends: promtool parses each as a recording rule."""
    rule = only(render("prometheusRule.enabled=true"), "PrometheusRule")
    exprs = list(dashboard_queries("ns", ".*").values()) + list(alert_expressions(rule).values())
    rules = [
        {"record": f"check:{i}", "expr": with_bool_comparisons(e)} for i, e in enumerate(exprs)
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    done = run_promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_relabeling_is_translated_and_an_unknown_field_named():
    assert relabeling({"sourceLabels": ["a"], "targetLabel": "b", "action": "Replace"}) == {
        "source_labels": ["a"],
        "target_label": "b",
        "action": "replace",
    }
    with pytest.raises(ValueError, match="sourceLabel"):
        relabeling({"sourceLabel": ["a"]})


@pytest.mark.skipif(HELM is None, reason="no helm binary (run `make cluster-up`)")
def test_the_charts_monitors_become_a_valid_prometheus_config(tmp_path: Path):
    docs = render(
        "metrics.serviceMonitor.enabled=true",
        "podMonitor.enabled=true",
        "watchNamespaces={team-a}",
        "podMonitor.relabelings[0].targetLabel=cluster",
        "podMonitor.relabelings[0].replacement=c1",
    )
    service = service_monitor_jobs(only(docs, "ServiceMonitor"), "endpoints.json", "1s")
    pods = pod_monitor_jobs(only(docs, "PodMonitor"), "pods.json", "1s")
    (operator_job,) = service
    (worker_job,) = pods
    assert operator_job["honor_labels"] is True
    assert operator_job["file_sd_configs"][0]["files"] == ["endpoints.json"]
    namespace_keep = {"source_labels": ["__meta_kubernetes_namespace"], "action": "keep"}
    assert operator_job["relabel_configs"][0] == {**namespace_keep, "regex": "ebbtide\\-system"}
    assert {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"} in (
        operator_job["relabel_configs"]
    )
    relabels = worker_job["relabel_configs"]
    assert {**namespace_keep, "regex": "team\\-a"} in relabels
    assert {
        "source_labels": ["__meta_kubernetes_pod_label_ebbtide_dev_taskqueue"],
        "target_label": "taskqueue",
    } in relabels
    assert relabels[-1] == {"target_label": "cluster", "replacement": "c1"}  # the user's, last
    assert worker_job["scrape_interval"] == worker_job["scrape_timeout"] == "1s"
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": service + pods}))
    done = run_promtool("check", "config", "--syntax-only", str(config))
    assert done.returncode == 0, done.stdout + done.stderr


POD = {
    "metadata": {"namespace": "ns", "name": "w-1", "labels": {"ebbtide.dev/taskqueue": "tq"}},
    "spec": {
        "nodeName": "n",
        "containers": [{"name": "worker", "ports": [{"name": "metrics", "containerPort": 9100}]}],
    },
    "status": {
        "podIP": "10.244.0.7",
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
    },
}


def test_pod_targets_carry_the_labels_kubernetes_discovery_sets():
    pending = {**POD, "status": {"phase": "Pending"}}  # no IP yet: no target
    (group,) = pod_groups([POD, pending])
    assert group["targets"] == ["10.244.0.7:9100"]
    labels = group["labels"]
    assert labels["__meta_kubernetes_pod_label_ebbtide_dev_taskqueue"] == "tq"
    assert labels["__meta_kubernetes_pod_labelpresent_ebbtide_dev_taskqueue"] == "true"
    assert labels["__meta_kubernetes_pod_container_port_name"] == "metrics"
    assert labels["__meta_kubernetes_pod_ready"] == "true"
    assert labels["__meta_kubernetes_namespace"] == "ns"


def test_endpoint_targets_carry_the_service_and_the_pod():
    service = {"metadata": {"namespace": "ns", "name": "svc", "labels": {"app": "a"}}}
    endpoints = {
        "metadata": {"namespace": "ns", "name": "svc"},
        "subsets": [
            {
                "addresses": [{"ip": "10.244.0.7", "targetRef": {"kind": "Pod", "name": "w-1"}}],
                "notReadyAddresses": [{"ip": "10.244.0.8"}],
                "ports": [{"name": "metrics", "port": 9100}],
            }
        ],
    }
    ready, not_ready = endpoints_groups([endpoints], [service], [POD])
    assert ready["targets"] == ["10.244.0.7:9100"]
    assert ready["labels"]["__meta_kubernetes_service_name"] == "svc"
    assert ready["labels"]["__meta_kubernetes_service_label_app"] == "a"
    assert ready["labels"]["__meta_kubernetes_endpoint_port_name"] == "metrics"
    assert ready["labels"]["__meta_kubernetes_pod_name"] == "w-1"
    assert ready["labels"]["__meta_kubernetes_pod_container_name"] == "worker"
    assert not_ready["labels"]["__meta_kubernetes_endpoint_ready"] == "false"
    assert "__meta_kubernetes_pod_name" not in not_ready["labels"]
