"""The one view of Kubernetes the operator's logic is written against.

`kube.KubeCluster` implements it on the real API server (the integration tests run it on a
real kube-apiserver + etcd); `tests/support/memory_cluster.py` implements it in memory for
unit tests of pure logic only. provision.py
(every object a TaskQueue owns) and tick.py (status, pod deletion costs) take a `Cluster`,
so neither imports the Kubernetes client. Plain dicts in and out; a missing object is None
or False, never an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Cluster(Protocol):
    # --- the objects a TaskQueue owns (Secret, ConfigMap, Service, NetworkPolicy,
    # Deployment, StatefulSet), by kind: provision.py is the only caller that writes them.
    async def create(self, obj: Mapping[str, Any]) -> bool:
        """Create; False when it already exists."""
        ...

    async def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def patch(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """A JSON merge patch."""
        ...

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """False when it was already gone."""
        ...

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        """Writes only `spec.replicas` (the scale subresource)."""
        ...

    # --- what every tick reads, cheaply.
    async def read_secret_value(self, namespace: str, name: str, key: str) -> str | None: ...

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """With `status`; may come from a watch cache."""
        ...

    async def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        """The pods matching every label of `selector`, with `status`. The tick lists the
        worker pods only while some are not ready, for the reason (pod_health.py)."""
        ...

    # --- what the tick writes that the TaskQueue does not own.
    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> bool:
        """False when the pod is already gone."""
        ...

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the TaskQueue's status subresource."""
        ...


# An Event on the TaskQueue: (body, type, reason, message). kopf posts them in the operator
# (main.post_event); tests and the bench record them.
EventSink = Callable[[Mapping[str, Any], str, str, str], None]
