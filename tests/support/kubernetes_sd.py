"""Kubernetes service discovery for a Prometheus built without it (Debian's): target groups
for `file_sd_configs` with the `__meta_kubernetes_*` labels that Prometheus's own
`role: pod` and `role: endpoints` discovery set (the subset the Prometheus Operator's
generated relabelings read), made from the API's objects as JSON dicts. `write()` replaces
the file atomically, so Prometheus never reads half of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from support.monitors import sanitize

Group = dict[str, Any]


def _labels(prefix: str, meta: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in (meta.get("labels") or {}).items():
        out[f"__meta_kubernetes_{prefix}_label_{sanitize(key)}"] = value
        out[f"__meta_kubernetes_{prefix}_labelpresent_{sanitize(key)}"] = "true"
    return out


def _pod_labels(pod: dict[str, Any]) -> dict[str, str]:
    meta, status = pod["metadata"], pod.get("status") or {}
    ready = any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []
    )
    return {
        "__meta_kubernetes_namespace": meta["namespace"],
        "__meta_kubernetes_pod_name": meta["name"],
        "__meta_kubernetes_pod_ip": status.get("podIP", ""),
        "__meta_kubernetes_pod_phase": status.get("phase", ""),
        "__meta_kubernetes_pod_ready": "true" if ready else "false",
        "__meta_kubernetes_pod_node_name": (pod.get("spec") or {}).get("nodeName", ""),
        **_labels("pod", meta),
    }


def _container_port_labels(container: dict[str, Any], port: dict[str, Any]) -> dict[str, str]:
    return {
        "__meta_kubernetes_pod_container_name": container["name"],
        "__meta_kubernetes_pod_container_init": "false",
        "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
        "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
        "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP"),
    }


def pod_groups(pods: list[dict[str, Any]]) -> list[Group]:
    """`role: pod`: one target per container port of every pod that has an IP."""
    groups = []
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            continue
        base = _pod_labels(pod)
        for container in pod["spec"]["containers"]:
            for port in container.get("ports") or []:
                groups.append(
                    {
                        "targets": [f"{ip}:{port['containerPort']}"],
                        "labels": {**base, **_container_port_labels(container, port)},
                    }
                )
    return groups


def endpoints_groups(
    endpoints: list[dict[str, Any]], services: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> list[Group]:
    """`role: endpoints`: one target per address and port of every Endpoints object, with
    its Service's labels and, for an address backed by a pod, that pod's labels and the
    container that declares the port."""
    by_service = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in services}
    by_pod = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
    groups = []
    for obj in endpoints:
        meta = obj["metadata"]
        namespace = meta["namespace"]
        service = by_service.get((namespace, meta["name"]))
        base = {
            "__meta_kubernetes_namespace": namespace,
            "__meta_kubernetes_endpoints_name": meta["name"],
        }
        if service is not None:
            base["__meta_kubernetes_service_name"] = service["metadata"]["name"]
            base.update(_labels("service", service["metadata"]))
        for subset in obj.get("subsets") or []:
            addresses = [(a, "true") for a in subset.get("addresses") or []]
            addresses += [(a, "false") for a in subset.get("notReadyAddresses") or []]
            for address, ready in addresses:
                for port in subset.get("ports") or []:
                    labels = {
                        **base,
                        "__meta_kubernetes_endpoint_ready": ready,
                        "__meta_kubernetes_endpoint_port_name": port.get("name", ""),
                        "__meta_kubernetes_endpoint_port_protocol": port.get("protocol", "TCP"),
                    }
                    target = address.get("targetRef") or {}
                    pod = by_pod.get((namespace, target.get("name", "")))
                    if target.get("kind") == "Pod" and pod is not None:
                        labels["__meta_kubernetes_endpoint_address_target_kind"] = "Pod"
                        labels["__meta_kubernetes_endpoint_address_target_name"] = target["name"]
                        labels.update(_pod_labels(pod))
                        for container in pod["spec"]["containers"]:
                            for declared in container.get("ports") or []:
                                if declared["containerPort"] == port["port"]:
                                    labels.update(_container_port_labels(container, declared))
                    groups.append(
                        {"targets": [f"{address['ip']}:{port['port']}"], "labels": labels}
                    )
    return groups


def write(path: Path, groups: list[Group]) -> None:
    """Replace `path` with `groups` as file_sd JSON, atomically (rename)."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(groups, indent=1, sort_keys=True))
    os.replace(partial, path)
