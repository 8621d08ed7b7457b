"""The trivial scheduler: there is no kube-scheduler on the local control plane, so the
process kubelet binds unscheduled pods to its own node through the pods/binding subresource
(what kube-scheduler does). It binds a pod when its schedulerName is one it serves
(default-scheduler) and its nodeSelector matches the node's labels; affinity, taints,
tolerations and resources are not considered. With several process kubelets, the first
binding wins and the others get a conflict, which they ignore.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

DEFAULT_SCHEDULER = "default-scheduler"


def wants_binding(
    pod: Mapping[str, Any],
    node_labels: Mapping[str, str],
    scheduler_names: Collection[str] = (DEFAULT_SCHEDULER,),
) -> bool:
    """Unbound, not being deleted, not finished, ours to schedule, and fits the node."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    if spec.get("nodeName") or meta.get("deletionTimestamp"):
        return False
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    if (spec.get("schedulerName") or DEFAULT_SCHEDULER) not in scheduler_names:
        return False
    selector = spec.get("nodeSelector") or {}
    return all(node_labels.get(key) == value for key, value in selector.items())


def binding_body(pod: Mapping[str, Any], node_name: str) -> dict[str, Any]:
    """A Binding for pods/binding; its uid makes the API server refuse a recreated pod."""
    meta = pod["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node_name},
    }
