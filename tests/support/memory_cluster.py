"""An in-memory stand-in for the Kubernetes API, for unit tests of pure logic only
(tests/unit/operator: what provision and adoption decide to write).

Anything that crosses the network to the API server is tested against the real one:
tests/integration/operator/ runs on a real kube-apiserver + etcd started once per session
(tests/support/apiserver.py, the operator's own `KubeCluster`), and e2e/tests on the
one-node cluster. Do not use this in an integration test or a benchmark.

It implements the operator's `Cluster` protocol (ebbtide_operator/cluster.py; the
parameters are checked against it by tests/unit/operator/test_cluster.py) with
JSON-merge-patch semantics and
records every write, so tests can assert what the operator *did*. Pods become ready the
moment a Deployment is scaled (there is no kubelet here).
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from typing import Any

from ebbtide_operator.cluster import Conflict


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class MemoryCluster:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.statuses: dict[tuple[str, str], dict[str, Any]] = {}
        self.scales: list[tuple[str, str, int]] = []
        self.pod_annotations: dict[tuple[str, str], dict[str, str]] = {}
        self.patches: list[tuple[str, str, str, dict[str, Any]]] = []
        self.status_writes = 0
        self.events: list[tuple[str, str, str]] = []
        self.ready_lag = 0  # pods that are not ready yet, per Deployment
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}  # what list_pods returns
        self.pod_lists = 0
        self.version = 0  # the last resourceVersion handed out
        self.status_meta: dict[tuple[str, str], dict[str, Any]] = {}  # the TaskQueues'

    # Cluster protocol -------------------------------------------------------------------
    async def create(self, obj: Mapping[str, Any]) -> bool:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.objects:
            return False
        self.objects[key] = copy.deepcopy(dict(obj))
        return True

    async def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def patch(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        key = (kind, namespace, name)
        if key not in self.objects:
            raise LookupError(f"{kind} {namespace}/{name} not found")
        self.objects[key] = merge_patch(self.objects[key], patch)
        self.patches.append((kind, namespace, name, copy.deepcopy(dict(patch))))

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        return self.objects.pop((kind, namespace, name), None) is not None

    async def read_secret_value(self, namespace: str, name: str, key: str) -> str | None:
        secret = self.objects.get(("Secret", namespace, name))
        if secret is None:
            return None
        if key in (secret.get("stringData") or {}):
            return secret["stringData"][key]
        value = (secret.get("data") or {}).get(key)
        return base64.b64decode(value).decode() if value is not None else None

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        deployment = await self.read("Deployment", namespace, name)
        if deployment is not None:
            replicas = deployment["spec"].get("replicas", 1)
            deployment["status"] = {
                "replicas": replicas,
                "readyReplicas": max(0, replicas - self.ready_lag),
                "updatedReplicas": replicas,
            }
        return deployment

    async def scale_deployment(
        self, namespace: str, name: str, replicas: int, resource_version: str | None = None
    ) -> str | None:
        deployment = self.objects[("Deployment", namespace, name)]
        written = self._bump(deployment.setdefault("metadata", {}), resource_version)
        deployment["spec"]["replicas"] = replicas
        self.scales.append((namespace, name, replicas))
        return written

    async def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        self.pod_lists += 1
        return [
            copy.deepcopy(pod)
            for (ns, _), pod in sorted(self.pods.items())
            if ns == namespace and selector.items() <= (pod["metadata"].get("labels") or {}).items()
        ]

    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> bool:
        self.pod_annotations.setdefault((namespace, name), {}).update(annotations)
        return True

    async def patch_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> str | None:
        key = (namespace, name)
        written = self._bump(self.status_meta.setdefault(key, {}), resource_version)
        self.statuses[key] = merge_patch(self.statuses.get(key, {}), status)
        self.status_writes += 1
        return written

    async def read_taskqueue(self, namespace: str, name: str) -> dict[str, Any] | None:
        key = (namespace, name)
        if key not in self.statuses:
            return None
        meta = {"namespace": namespace, "name": name, **self.status_meta.get(key, {})}
        return {"metadata": meta, "status": copy.deepcopy(self.statuses[key])}

    def _bump(self, meta: dict[str, Any], precondition: str | None) -> str:
        """The API server's optimistic concurrency: a precondition other than the stored
        resourceVersion is a Conflict; a write moves the version on."""
        if precondition is not None and precondition != meta.get("resourceVersion"):
            raise Conflict(f"the object is at {meta.get('resourceVersion')}, not {precondition}")
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        return meta["resourceVersion"]

    # helpers ----------------------------------------------------------------------------
    def add_secret(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        self.objects[("Secret", namespace, name)] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }

    def add_pod(self, namespace: str, pod: Mapping[str, Any]) -> None:
        """A pod as the kubelet reports it (the caller writes its status)."""
        self.pods[(namespace, pod["metadata"]["name"])] = copy.deepcopy(dict(pod))

    def record_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))
