"""Create or update everything a TaskQueue owns, idempotently.

Called on create, on spec update and when the operator (re)starts. The broker Secret is
created once and never overwritten (its password is the broker's identity); other
objects are created or merge-patched to the builders' output. The worker Deployment's
replicas are set only at creation; later only the tick changes them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from ebbtide_operator import build_broker, build_worker, naming
from ebbtide_operator.spec import TaskQueueSpec

log = logging.getLogger(__name__)


class Objects(Protocol):
    async def create(self, obj: Mapping[str, Any]) -> bool: ...
    async def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def patch(
        self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> None: ...
    async def delete(self, kind: str, namespace: str, name: str) -> bool: ...


def desired_broker_objects(body: Mapping[str, Any], spec: TaskQueueSpec) -> list[dict[str, Any]]:
    """Workload, Service and NetworkPolicy of a managed Redis (the Secret is separate)."""
    if spec.broker.managed is None:
        return []
    return [
        build_broker.redis_workload(body, spec.broker.managed),
        build_broker.redis_service(body),
        build_broker.redis_network_policy(body),
    ]


def stale_broker_objects(name: str, spec: TaskQueueSpec) -> list[tuple[str, str]]:
    """(kind, name) of managed-broker objects the spec no longer wants."""
    redis = naming.redis_name(name)
    if spec.broker.managed is None:
        return [
            ("Deployment", redis),
            ("StatefulSet", redis),
            ("Service", redis),
            ("NetworkPolicy", redis),
            ("Secret", naming.broker_secret_name(name)),
        ]
    if spec.broker.managed.persistence.enabled:
        return [("Deployment", redis)]
    return [("StatefulSet", redis)]


def _update_patch(obj: Mapping[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {
        "metadata": {
            "labels": obj["metadata"].get("labels", {}),
            "ownerReferences": obj["metadata"].get("ownerReferences", []),
        }
    }
    if "spec" in obj:
        spec = dict(obj["spec"])
        if obj["kind"] == "StatefulSet":
            spec.pop("volumeClaimTemplates", None)  # immutable once created
            spec.pop("serviceName", None)
            spec.pop("selector", None)
        patch["spec"] = spec
    return patch


async def ensure(objects: Objects, obj: Mapping[str, Any]) -> str:
    """'created', 'updated', or 'kept' (Secrets are never overwritten)."""
    if await objects.create(obj):
        return "created"
    if obj["kind"] == "Secret":
        return "kept"
    meta = obj["metadata"]
    await objects.patch(obj["kind"], meta["namespace"], meta["name"], _update_patch(obj))
    return "updated"


async def ensure_broker_secret(objects: Objects, body: Mapping[str, Any]) -> str:
    """Create the Secret with a fresh password unless one exists already."""
    meta = body["metadata"]
    existing = await objects.read(
        "Secret", meta["namespace"], naming.broker_secret_name(meta["name"])
    )
    if existing is not None:
        return "kept"
    return await ensure(objects, build_broker.broker_secret(body, build_broker.generate_password()))


async def reconcile(
    objects: Objects, body: Mapping[str, Any], spec: TaskQueueSpec
) -> dict[str, str]:
    """Bring the owned objects in line with `spec`; returns what happened to each."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    report: dict[str, str] = {}
    if spec.broker.managed is not None:
        report[f"Secret/{naming.broker_secret_name(name)}"] = await ensure_broker_secret(
            objects, body
        )
    for obj in desired_broker_objects(body, spec):
        report[f"{obj['kind']}/{obj['metadata']['name']}"] = await ensure(objects, obj)
    for kind, stale in stale_broker_objects(name, spec):
        existing = await objects.read(kind, namespace, stale)
        if existing is not None and _owned_by(existing, meta.get("uid")):
            await objects.delete(kind, namespace, stale)
            report[f"{kind}/{stale}"] = "deleted"

    deployment = build_worker.worker_deployment(body, spec, replicas=spec.scaling.min_replicas)
    if await objects.create(deployment):
        report[f"Deployment/{deployment['metadata']['name']}"] = "created"
    else:
        await objects.patch(
            "Deployment",
            namespace,
            deployment["metadata"]["name"],
            build_worker.template_patch(deployment),
        )
        report[f"Deployment/{deployment['metadata']['name']}"] = "updated"
    return report


def _owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """Never delete an object we did not create (a user's same-named Secret, say)."""
    return any(
        ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or []
    )
