"""The one view of Kubernetes the operator's logic is written against.

`kube.KubeCluster` implements it on the real API server (the integration tests run it on a
real kube-apiserver + etcd); `tests/support/memory_cluster.py` implements it in memory for
unit tests of pure logic only. provision.py
(every object a TaskQueue owns) and tick.py (status, pod deletion costs) take a `Cluster`,
so neither imports the Kubernetes client. Plain dicts in and out; a missing object is None
or False, never an exception. A write that carries a `resource_version` is a precondition:
when the object has changed since that version the write is refused with `Conflict`
(the API server's 409), and nothing is written (fence.py says which version to carry).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable


class Conflict(Exception):
    """The object changed since the resourceVersion a write carried (HTTP 409): the
    decision was made from a stale view, so it is not retried as it stands."""


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

    async def scale_deployment(
        self, namespace: str, name: str, replicas: int, resource_version: str | None = None
    ) -> str | None:
        """Writes only `spec.replicas` (the scale subresource), if the Deployment is still
        at `resource_version` (else Conflict); returns the resourceVersion it wrote."""
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

    async def patch_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> str | None:
        """Merge-patch the TaskQueue's status subresource, if the TaskQueue is still at
        `resource_version` (else Conflict); returns the resourceVersion it wrote."""
        ...

    async def read_taskqueue(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The TaskQueue as stored now (after a Conflict: what changed, and by whom)."""
        ...


# An Event on the TaskQueue: (body, type, reason, message). kopf posts them in the operator
# (main.post_event); tests and the bench record them.
EventSink = Callable[[Mapping[str, Any], str, str, str], None]
