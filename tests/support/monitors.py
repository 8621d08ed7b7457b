"""The scrape configs the Prometheus Operator generates from the chart's ServiceMonitor and
PodMonitor, for a plain Prometheus. Debian's `prometheus` is built without
`kubernetes_sd_configs`, so targets come from a file (`file_sd_configs`) that carries the
same `__meta_kubernetes_*` labels Kubernetes discovery would (tests/support/kubernetes_sd.py
writes it from the API); the relabelings then run in Prometheus as they would under the
operator. Only what the chart's monitors use: `matchLabels`
selectors, `namespaceSelector` (`any` or `matchNames`), named ports, path, honorLabels and
relabelings; the operator's default target labels (namespace, service, pod, container, job,
endpoint) as it writes them, so `job` is the Service's name for a ServiceMonitor and
`NAMESPACE/NAME` for a PodMonitor.
"""

from __future__ import annotations

import re
from typing import Any

RELABEL_KEYS = {
    "sourceLabels": "source_labels",
    "targetLabel": "target_label",
    "separator": "separator",
    "regex": "regex",
    "replacement": "replacement",
    "modulus": "modulus",
    "action": "action",
}


def sanitize(label: str) -> str:
    """A Kubernetes label name as Prometheus's service discovery spells it in __meta_*."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def relabeling(monitor_relabel: dict[str, Any]) -> dict[str, Any]:
    """One Prometheus Operator RelabelConfig (camelCase) as a Prometheus relabel_config."""
    unknown = set(monitor_relabel) - set(RELABEL_KEYS)
    if unknown:
        raise ValueError(f"relabeling: unsupported field(s) {sorted(unknown)}")
    out = {RELABEL_KEYS[k]: v for k, v in monitor_relabel.items()}
    if "action" in out:
        out["action"] = str(out["action"]).lower()
    return out


def _keep_labels(role: str, match_labels: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "source_labels": [
                f"__meta_kubernetes_{role}_label_{sanitize(k)}",
                f"__meta_kubernetes_{role}_labelpresent_{sanitize(k)}",
            ],
            "regex": f"({v});true",
            "action": "keep",
        }
        for k, v in sorted(match_labels.items())
    ]


def _namespaces(monitor: dict[str, Any]) -> list[dict[str, Any]]:
    """What Kubernetes discovery's `namespaces` would restrict, as a keep rule."""
    selector = monitor["spec"].get("namespaceSelector") or {}
    if selector.get("any"):
        return []
    names = selector.get("matchNames") or [monitor["metadata"]["namespace"]]
    return [
        {
            "source_labels": ["__meta_kubernetes_namespace"],
            "regex": "|".join(re.escape(n) for n in names),
            "action": "keep",
        }
    ]


def _unsupported_selector(monitor: dict[str, Any]) -> None:
    selector = monitor["spec"]["selector"]
    if set(selector) - {"matchLabels"}:
        raise ValueError(f"{monitor['kind']} selector: only matchLabels is supported: {selector}")


def _endpoint_settings(endpoint: dict[str, Any], interval: str | None) -> dict[str, Any]:
    return {
        "metrics_path": endpoint.get("path", "/metrics"),
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "scrape_interval": interval or endpoint.get("interval", "30s"),
        "scrape_timeout": interval or endpoint.get("scrapeTimeout", "10s"),
    }


def service_monitor_jobs(
    monitor: dict[str, Any], targets_file: str, interval: str | None = None
) -> list[dict[str, Any]]:
    """Scrape configs for a ServiceMonitor (Kubernetes discovery's `role: endpoints`) on the
    targets of `targets_file`; `interval` overrides its interval and timeout (a test
    scrapes every second)."""
    _unsupported_selector(monitor)
    meta, spec = monitor["metadata"], monitor["spec"]
    jobs = []
    for i, endpoint in enumerate(spec["endpoints"]):
        relabels = _namespaces(monitor)
        relabels += _keep_labels("service", spec["selector"].get("matchLabels", {}))
        relabels += [
            {
                "source_labels": ["__meta_kubernetes_endpoint_port_name"],
                "regex": endpoint["port"],
                "action": "keep",
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {
                "source_labels": ["__meta_kubernetes_pod_container_name"],
                "target_label": "container",
            },
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
            {"target_label": "endpoint", "replacement": endpoint["port"]},
        ]
        relabels += [relabeling(r) for r in endpoint.get("relabelings", [])]
        job = {
            "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/{i}",
            "file_sd_configs": [{"files": [targets_file], "refresh_interval": "1s"}],
            **_endpoint_settings(endpoint, interval),
            "relabel_configs": relabels,
        }
        if endpoint.get("metricRelabelings"):
            job["metric_relabel_configs"] = [relabeling(r) for r in endpoint["metricRelabelings"]]
        jobs.append(job)
    return jobs


def pod_monitor_jobs(
    monitor: dict[str, Any], targets_file: str, interval: str | None = None
) -> list[dict[str, Any]]:
    """Scrape configs for a PodMonitor (`role: pod`) on the targets of `targets_file`;
    `interval` as for ServiceMonitors."""
    _unsupported_selector(monitor)
    meta, spec = monitor["metadata"], monitor["spec"]
    jobs = []
    for i, endpoint in enumerate(spec["podMetricsEndpoints"]):
        relabels = [
            {
                "source_labels": ["__meta_kubernetes_pod_phase"],
                "regex": "(Failed|Succeeded)",
                "action": "drop",
            }
        ]
        relabels += _namespaces(monitor)
        relabels += _keep_labels("pod", spec["selector"].get("matchLabels", {}))
        relabels += [
            {
                "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                "regex": endpoint["port"],
                "action": "keep",
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {
                "source_labels": ["__meta_kubernetes_pod_container_name"],
                "target_label": "container",
            },
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
            {"target_label": "endpoint", "replacement": endpoint["port"]},
        ]
        relabels += [relabeling(r) for r in endpoint.get("relabelings", [])]
        job = {
            "job_name": f"podMonitor/{meta['namespace']}/{meta['name']}/{i}",
            "file_sd_configs": [{"files": [targets_file], "refresh_interval": "1s"}],
            **_endpoint_settings(endpoint, interval),
            "relabel_configs": relabels,
        }
        if endpoint.get("metricRelabelings"):
            job["metric_relabel_configs"] = [relabeling(r) for r in endpoint["metricRelabelings"]]
        jobs.append(job)
    return jobs
