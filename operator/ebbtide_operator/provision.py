"""Create, update, scale and delete what a TaskQueue owns: the only writer of those objects.

The kopf handlers call `reconcile` on create, on spec update and when the operator
(re)starts; the tick calls `sync_worker_deployment` (recreate a missing worker Deployment,
repair a drifted pod template) and `scale_workers` every poll. The objects themselves come
from the pure builders in build/; this module only decides create, patch or delete.

The broker Secret is created once and never overwritten (its password is the broker's
identity), unless the managed broker changes type (a Redis URL is no use to a RabbitMQ);
other objects are created or merge-patched to the builders' output. The worker
Deployment's replicas are set only at creation; after that only `scale_workers` (on the
tick's decision) changes them.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from typing import Any

from ebbtide_operator import naming
from ebbtide_operator.build import common, rabbitmq, redis, worker
from ebbtide_operator.build.merge import is_subset
from ebbtide_operator.cluster import Cluster, EventSink
from ebbtide_operator.spec import TaskQueueSpec

log = logging.getLogger(__name__)


def desired_broker_objects(body: Mapping[str, Any], spec: TaskQueueSpec) -> list[dict[str, Any]]:
    """Everything of the managed broker but its Secret (which is made only once)."""
    managed = spec.broker.managed
    if managed is None:
        return []
    if spec.broker.type == "rabbitmq":
        return [
            rabbitmq.rabbitmq_config_map(body, managed),
            rabbitmq.rabbitmq_workload(body, managed),
            rabbitmq.rabbitmq_service(body),
            rabbitmq.rabbitmq_network_policy(body),
        ]
    return [
        redis.redis_workload(body, managed),
        redis.redis_service(body),
        redis.redis_network_policy(body),
    ]


def possible_broker_objects(name: str) -> list[tuple[str, str]]:
    """(kind, name) of every object a managed broker of any type may have left behind."""
    objects = []
    for broker_type in ("redis", "rabbitmq"):
        object_name = naming.broker_name(name, broker_type)
        kinds = ["Deployment", "StatefulSet", "Service", "NetworkPolicy"]
        if broker_type == "rabbitmq":
            kinds.append("ConfigMap")
        objects += [(kind, object_name) for kind in kinds]
    return objects + [("Secret", naming.broker_secret_name(name))]


def stale_broker_objects(body: Mapping[str, Any], spec: TaskQueueSpec) -> list[tuple[str, str]]:
    """(kind, name) of managed-broker objects the spec no longer wants: the other type's,
    the other workload kind after a persistence switch, all of them (and the Secret) when
    the broker became external."""
    wanted = {(obj["kind"], obj["metadata"]["name"]) for obj in desired_broker_objects(body, spec)}
    name = body["metadata"]["name"]
    if spec.broker.managed is not None:
        wanted.add(("Secret", naming.broker_secret_name(name)))
    return [item for item in possible_broker_objects(name) if item not in wanted]


def _update_patch(obj: Mapping[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {
        "metadata": {
            "labels": obj["metadata"].get("labels", {}),
            "ownerReferences": obj["metadata"].get("ownerReferences", []),
        }
    }
    if "data" in obj:  # ConfigMaps (Secrets are never patched)
        patch["data"] = dict(obj["data"])
    if "spec" in obj:
        spec = dict(obj["spec"])
        if obj["kind"] == "StatefulSet":
            spec.pop("volumeClaimTemplates", None)  # immutable once created
            spec.pop("serviceName", None)
            spec.pop("selector", None)
        patch["spec"] = spec
    return patch


async def ensure(cluster: Cluster, obj: Mapping[str, Any]) -> str:
    """'created', 'updated', or 'kept' (Secrets are never overwritten)."""
    if await cluster.create(obj):
        return "created"
    if obj["kind"] == "Secret":
        return "kept"
    meta = obj["metadata"]
    await cluster.patch(obj["kind"], meta["namespace"], meta["name"], _update_patch(obj))
    return "updated"


def url_broker_type(url: str) -> str | None:
    """'redis' or 'rabbitmq' from a broker URL's scheme; None if neither."""
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return "redis"
    if scheme in ("amqp", "amqps"):
        return "rabbitmq"
    return None


def secret_broker_type(secret: Mapping[str, Any]) -> str | None:
    """The broker type the URL in one of our Secrets is for."""
    encoded = (secret.get("data") or {}).get(naming.BROKER_URL_KEY)
    if encoded is None:
        return None
    try:
        return url_broker_type(base64.b64decode(encoded).decode())
    except (binascii.Error, UnicodeDecodeError):
        return None


def new_broker_secret(body: Mapping[str, Any], broker_type: str) -> dict[str, Any]:
    """A Secret with fresh credentials (user and password for RabbitMQ, password for Redis)."""
    password = common.generate_password()
    if broker_type == "rabbitmq":
        return rabbitmq.rabbitmq_secret(body, rabbitmq.generate_username(), password)
    return redis.redis_secret(body, password)


async def ensure_broker_secret(
    cluster: Cluster, body: Mapping[str, Any], broker_type: str = "redis"
) -> str:
    """Create the Secret with fresh credentials unless one exists already. Ours, made for
    the other broker type, is replaced; one the user made is never touched."""
    meta = body["metadata"]
    namespace, secret_name = meta["namespace"], naming.broker_secret_name(meta["name"])
    existing = await cluster.read("Secret", namespace, secret_name)
    if existing is None:
        return await ensure(cluster, new_broker_secret(body, broker_type))
    if not _owned_by(existing, meta.get("uid")) or secret_broker_type(existing) == broker_type:
        return "kept"
    await cluster.delete("Secret", namespace, secret_name)
    await ensure(cluster, new_broker_secret(body, broker_type))
    return "replaced"


async def reconcile(
    cluster: Cluster, body: Mapping[str, Any], spec: TaskQueueSpec
) -> dict[str, str]:
    """Bring the owned objects in line with `spec`; returns what happened to each."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    report: dict[str, str] = {}
    if spec.broker.managed is not None:
        report[f"Secret/{naming.broker_secret_name(name)}"] = await ensure_broker_secret(
            cluster, body, spec.broker.type
        )
    for obj in desired_broker_objects(body, spec):
        report[f"{obj['kind']}/{obj['metadata']['name']}"] = await ensure(cluster, obj)
    for kind, stale in stale_broker_objects(body, spec):
        existing = await cluster.read(kind, namespace, stale)
        if existing is not None and _owned_by(existing, meta.get("uid")):
            await cluster.delete(kind, namespace, stale)
            report[f"{kind}/{stale}"] = "deleted"

    deployment = naming.worker_name(name)
    report[f"Deployment/{deployment}"] = await apply_worker_deployment(cluster, body, spec)
    return report


# --- the worker Deployment -----------------------------------------------------------------


async def apply_worker_deployment(
    cluster: Cluster, body: Mapping[str, Any], spec: TaskQueueSpec
) -> str:
    """'created' (at minReplicas) or 'updated': our pod template re-applied, replicas kept."""
    deployment = worker.worker_deployment(body, spec, replicas=spec.scaling.min_replicas)
    if await cluster.create(deployment):
        return "created"
    meta = deployment["metadata"]
    await cluster.patch(
        "Deployment", meta["namespace"], meta["name"], worker.template_patch(deployment)
    )
    return "updated"


async def sync_worker_deployment(
    cluster: Cluster,
    body: Mapping[str, Any],
    spec: TaskQueueSpec,
    replicas: int,
    template: Mapping[str, Any],
    events: EventSink,
) -> dict[str, Any] | None:
    """The live worker Deployment, as the tick needs it every poll.

    A missing one is recreated with `replicas` (what the tick last wanted), except while
    the TaskQueue is being deleted (then None: workers are never brought back). A live one
    whose pod template no longer holds `template` (API-server defaults are fine) gets it
    back: a `DriftRepaired` Warning when someone edited it, a `Rollout` when the spec changed.
    """
    meta = body["metadata"]
    namespace, deployment_name = meta["namespace"], naming.worker_name(meta["name"])
    live = await cluster.read_deployment(namespace, deployment_name)
    if live is None and meta.get("deletionTimestamp"):
        return None
    if live is None:
        await cluster.create(worker.worker_deployment(body, spec, replicas=replicas))
        events(body, "Normal", "Created", f"worker Deployment {deployment_name}")
        return await cluster.read_deployment(namespace, deployment_name)
    live_template = live.get("spec", {}).get("template", {})
    if not is_subset(template, live_template):
        wanted = worker.worker_deployment(body, spec, replicas=0)
        await cluster.patch("Deployment", namespace, deployment_name, worker.template_patch(wanted))
        hash_key = naming.SPEC_HASH_ANNOTATION
        live_hash = live_template.get("metadata", {}).get("annotations", {}).get(hash_key)
        if live_hash == template["metadata"]["annotations"][hash_key]:
            events(
                body, "Warning", "DriftRepaired", f"restored the pod template of {deployment_name}"
            )
        else:
            events(body, "Normal", "Rollout", f"pod template of {deployment_name} updated")
    return live


async def scale_workers(cluster: Cluster, namespace: str, taskqueue: str, replicas: int) -> None:
    """Set the worker Deployment's replicas, and nothing else (the scale subresource)."""
    await cluster.scale_deployment(namespace, naming.worker_name(taskqueue), replicas)


def _owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """Never delete an object we did not create (a user's same-named Secret, say)."""
    return any(
        ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or []
    )
