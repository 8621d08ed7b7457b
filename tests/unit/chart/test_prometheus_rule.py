"""The chart's PrometheusRule, rendered by the real helm and tested by the real promtool:
every alert fires on synthetic series that should page, and stays quiet on series that
should not (`promtool test rules`, Debian's `prometheus` package).

Without promtool the module skips, but with CI=true it fails: the alerts are then untested.
The alert annotations are checked by `promtool check rules` (template syntax) and left out
of the unit tests, which compare labels.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.helm import CHART, HELM, KUBE_VERSION, NAMESPACE, RELEASE, helm, only, render
from support.prometheus import promtool_binary

pytestmark = pytest.mark.skipif(HELM is None, reason="no helm binary (run `make cluster-up`)")

NS = "team-a"  # the TaskQueues' namespace in the synthetic series


def rule_groups(*sets: str, json_sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The rendered rule's groups; `json_sets` are --set-json items (numbers that --set
    would pass as strings)."""
    if json_sets:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        args += ["--kube-version", KUBE_VERSION, "--set", "prometheusRule.enabled=true"]
        for item in sets:
            args += ["--set", item]
        for item in json_sets:
            args += ["--set-json", item]
        done = helm(*args)
        assert done.returncode == 0, done.stderr
        docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    else:
        docs = render("prometheusRule.enabled=true", *sets)
    rule = only(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    return rule["spec"]["groups"]


def alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"]}


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    """One promtool input series, in namespace NS unless told."""
    labels = {"namespace": NS, **labels}
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{inner}}}", "values": values}


def fires(
    alert: str, at: str, *label_sets: dict[str, str], severity: str = "warning"
) -> dict[str, Any]:
    """An alert_rule_test: exactly these instances of `alert` fire at `at` (none: quiet)."""
    expected = [{"exp_labels": {"namespace": NS, **ls, "severity": severity}} for ls in label_sets]
    return {"eval_time": at, "alertname": alert, "exp_alerts": expected}


def quiet(alert: str, at: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


Q = "ebbtide_taskqueue_"
HOT = {"taskqueue": "hot", "queue": "q"}
SLOW = {"taskqueue": "slow", "queue": "q"}
CAPPED = {"taskqueue": "capped"}

# One test group per alert: (input series, checks). Every alert has a firing and a quiet
# check; test_every_alert_is_tested_both_ways holds that.
TESTS: dict[str, tuple[list[dict[str, str]], list[dict[str, Any]]]] = {
    "EbbtideBacklogHigh": (
        [
            series(Q + "backlog_tasks", "20000x10", **HOT),
            # Dips below the threshold at 3m: pending again, not firing at 7m.
            series(Q + "backlog_tasks", "20000 20000 20000 5 20000x6", taskqueue="dip", queue="q"),
            series(Q + "backlog_tasks", "100x10", taskqueue="calm", queue="q"),
        ],
        [
            quiet("EbbtideBacklogHigh", "4m"),  # above for 4 minutes: still pending
            fires("EbbtideBacklogHigh", "7m", HOT),
        ],
    ),
    "EbbtideOldestTaskAboveTarget": (
        [
            series(Q + "oldest_task_age_seconds", "0+60x10", **SLOW),
            series(Q + "target_backlog_seconds", "30x10", **SLOW),
            series(Q + "oldest_task_age_seconds", "10x10", taskqueue="fine", queue="q"),
            series(Q + "target_backlog_seconds", "30x10", taskqueue="fine", queue="q"),
        ],
        [
            quiet("EbbtideOldestTaskAboveTarget", "3m"),
            fires("EbbtideOldestTaskAboveTarget", "8m", SLOW),
        ],
    ),
    "EbbtideRetryRateHigh": (
        [
            # flaky: 10 retries in 100 attempts a minute (10 %); steady: 1 in 100 (1 %).
            series("ebbtide_worker_retries_total", "0+10x30", taskqueue="flaky", task="t", pod="p"),
            series(
                "ebbtide_worker_tasks_total",
                "0+90x30",
                taskqueue="flaky",
                task="t",
                outcome="success",
            ),
            series(
                "ebbtide_worker_tasks_total",
                "0+10x30",
                taskqueue="flaky",
                task="t",
                outcome="retry",
            ),
            series("ebbtide_worker_retries_total", "0+1x30", taskqueue="steady", task="t", pod="p"),
            series(
                "ebbtide_worker_tasks_total",
                "0+99x30",
                taskqueue="steady",
                task="t",
                outcome="success",
            ),
            series(
                "ebbtide_worker_tasks_total",
                "0+1x30",
                taskqueue="steady",
                task="t",
                outcome="retry",
            ),
            # No traffic at all: 0/0 is no ratio, never an alert.
            series("ebbtide_worker_retries_total", "0x30", taskqueue="idle", task="t", pod="p"),
            series(
                "ebbtide_worker_tasks_total", "0x30", taskqueue="idle", task="t", outcome="success"
            ),
        ],
        [
            quiet("EbbtideRetryRateHigh", "5m"),  # above 5 % but not for 10 minutes yet
            fires("EbbtideRetryRateHigh", "15m", {"taskqueue": "flaky"}),
        ],
    ),
    "EbbtideDeadLetterGrowing": (
        [
            series(Q + "dead_tasks", "0 0 1 2 3 3x30", taskqueue="leaky", queue="q"),
            series(Q + "dead_tasks", "5x35", taskqueue="stuck", queue="q"),  # old dead tasks
        ],
        [
            fires("EbbtideDeadLetterGrowing", "5m", {"taskqueue": "leaky", "queue": "q"}),
            quiet("EbbtideDeadLetterGrowing", "30m"),  # grew long ago, not in the window
        ],
    ),
    "EbbtideBrokerUnreachable": (
        [
            series(Q + "broker_up", "0x10", taskqueue="down"),
            series(Q + "broker_up", "1 0 1x8", taskqueue="blip"),
            series(Q + "broker_up", "1x10", taskqueue="fine"),
        ],
        [
            quiet("EbbtideBrokerUnreachable", "1m"),
            fires("EbbtideBrokerUnreachable", "5m", {"taskqueue": "down"}, severity="critical"),
        ],
    ),
    "EbbtideAtMaxReplicasWhileBehind": (
        [
            # capped: at max (10) and 100 s behind a 30 s target: the cap holds it back.
            series(Q + "replicas", "10x20", **CAPPED),
            series(Q + "max_replicas", "10x20", **CAPPED),
            series(Q + "oldest_task_age_seconds", "100x20", **CAPPED, queue="q"),
            series(Q + "target_backlog_seconds", "30x20", **CAPPED, queue="q"),
            series(Q + "oldest_task_age_seconds", "1x20", **CAPPED, queue="other"),
            series(Q + "target_backlog_seconds", "30x20", **CAPPED, queue="other"),
            # roomy: behind but below max (the policy is still scaling up).
            series(Q + "replicas", "5x20", taskqueue="roomy"),
            series(Q + "max_replicas", "10x20", taskqueue="roomy"),
            series(Q + "oldest_task_age_seconds", "100x20", taskqueue="roomy", queue="q"),
            series(Q + "target_backlog_seconds", "30x20", taskqueue="roomy", queue="q"),
            # keeping-up: at max and on target.
            series(Q + "replicas", "10x20", taskqueue="keeping-up"),
            series(Q + "max_replicas", "10x20", taskqueue="keeping-up"),
            series(Q + "oldest_task_age_seconds", "5x20", taskqueue="keeping-up", queue="q"),
            series(Q + "target_backlog_seconds", "30x20", taskqueue="keeping-up", queue="q"),
        ],
        [
            quiet("EbbtideAtMaxReplicasWhileBehind", "5m"),
            fires("EbbtideAtMaxReplicasWhileBehind", "15m", CAPPED),
        ],
    ),
    "EbbtideOperatorDown": (
        [
            {
                "series": 'up{job="ebbtide-metrics",namespace="ebbtide-system",instance="10.0.0.1:8081"}',
                "values": "1x5 0x15",
            }
        ],
        [
            quiet("EbbtideOperatorDown", "3m"),
            quiet("EbbtideOperatorDown", "8m"),  # down for 3 minutes: pending
            {
                "eval_time": "15m",
                "alertname": "EbbtideOperatorDown",
                "exp_alerts": [
                    # absent() of a filtered vector carries no labels of its own.
                    {"exp_labels": {"severity": "critical"}}
                ],
            },
        ],
    ),
}


def write_rules(tmp_path: Path, groups: list[dict[str, Any]], annotations: bool) -> Path:
    if not annotations:
        groups = [
            {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
            for g in groups
        ]
    path = tmp_path / ("rules.yaml" if annotations else "rules-bare.yaml")
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool_binary(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_rules_are_valid_prometheus_rules(tmp_path):
    done = run("check", "rules", str(write_rules(tmp_path, rule_groups(), annotations=True)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts(rule_groups()))} rules found" in done.stdout, done.stdout


def test_every_alert_fires_and_stays_quiet_as_it_should(tmp_path):
    rules = write_rules(tmp_path, rule_groups(), annotations=False)
    tests = {
        "rule_files": [rules.name],
        "evaluation_interval": "1m",
        "tests": [
            {"name": name, "interval": "1m", "input_series": inputs, "alert_rule_test": checks}
            for name, (inputs, checks) in TESTS.items()
        ],
    }
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    done = subprocess.run(
        [promtool_binary(), "test", "rules", test_file.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_every_alert_is_tested_both_ways():
    assert set(TESTS) == set(alerts(rule_groups()))
    for name, (_, checks) in TESTS.items():
        outcomes = {bool(c["exp_alerts"]) for c in checks if c["alertname"] == name}
        assert outcomes == {True, False}, name


def test_thresholds_and_severities_are_values():
    groups = rule_groups(
        "prometheusRule.alerts.backlogHigh.threshold=500",
        "prometheusRule.alerts.backlogHigh.for=15m",
        "prometheusRule.alerts.oldestTaskAboveTarget.factor=2",
        "prometheusRule.alerts.brokerUnreachable.severity=page",
        "prometheusRule.alerts.deadLetterGrowing.enabled=false",
        "prometheusRule.additionalAlertLabels.team=payments",
        "prometheusRule.alerts.operatorDown.job=my-operator",
        json_sets=("prometheusRule.alerts.retryRateHigh.ratio=0.2",),
    )
    by_name = alerts(groups)
    assert by_name["EbbtideBacklogHigh"]["expr"].endswith("> 500")
    assert by_name["EbbtideBacklogHigh"]["for"] == "15m"
    assert "> 0.2" in by_name["EbbtideRetryRateHigh"]["expr"]
    assert "> 2 * " in by_name["EbbtideOldestTaskAboveTarget"]["expr"]
    assert by_name["EbbtideBrokerUnreachable"]["labels"]["severity"] == "page"
    assert 'job="my-operator"' in by_name["EbbtideOperatorDown"]["expr"]
    assert "EbbtideDeadLetterGrowing" not in by_name
    assert all(rule["labels"]["team"] == "payments" for rule in by_name.values())


def test_off_by_default():
    from support.helm import by_kind

    assert not by_kind(render(), "PrometheusRule")
