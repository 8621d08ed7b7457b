"""Create or update everything a TaskQueue owns, idempotently.

Called on create, on spec update and when the operator (re)starts. The broker Secret is
created once and never overwritten (its password is the broker's identity), unless the
managed broker changes type (a Redis URL is no use to a RabbitMQ); other objects are
created or merge-patched to the builders' output. The worker Deployment's replicas are
set only at creation; later only the tick changes them.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from ebbtide_operator import build_broker, build_rabbitmq, build_worker, naming
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
    """Everything of the managed broker but its Secret (which is made only once)."""
    managed = spec.broker.managed
    if managed is None:
        return []
    if spec.broker.type == "rabbitmq":
        return [
            build_rabbitmq.rabbitmq_config_map(body, managed),
            build_rabbitmq.rabbitmq_workload(body, managed),
            build_rabbitmq.rabbitmq_service(body),
            build_rabbitmq.rabbitmq_network_policy(body),
        ]
    return [
        build_broker.redis_workload(body, managed),
        build_broker.redis_service(body),
        build_broker.redis_network_policy(body),
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


async def ensure(objects: Objects, obj: Mapping[str, Any]) -> str:
    """'created', 'updated', or 'kept' (Secrets are never overwritten)."""
    if await objects.create(obj):
        return "created"
    if obj["kind"] == "Secret":
        return "kept"
    meta = obj["metadata"]
    await objects.patch(obj["kind"], meta["namespace"], meta["name"], _update_patch(obj))
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
    password = build_broker.generate_password()
    if broker_type == "rabbitmq":
        return build_rabbitmq.rabbitmq_secret(body, build_rabbitmq.generate_username(), password)
    return build_broker.broker_secret(body, password)


async def ensure_broker_secret(
    objects: Objects, body: Mapping[str, Any], broker_type: str = "redis"
) -> str:
    """Create the Secret with fresh credentials unless one exists already. Ours, made for
    the other broker type, is replaced; one the user made is never touched."""
    meta = body["metadata"]
    namespace, secret_name = meta["namespace"], naming.broker_secret_name(meta["name"])
    existing = await objects.read("Secret", namespace, secret_name)
    if existing is None:
        return await ensure(objects, new_broker_secret(body, broker_type))
    if not _owned_by(existing, meta.get("uid")) or secret_broker_type(existing) == broker_type:
        return "kept"
    await objects.delete("Secret", namespace, secret_name)
    await ensure(objects, new_broker_secret(body, broker_type))
    return "replaced"


async def reconcile(
    objects: Objects, body: Mapping[str, Any], spec: TaskQueueSpec
) -> dict[str, str]:
    """Bring the owned objects in line with `spec`; returns what happened to each."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    report: dict[str, str] = {}
    if spec.broker.managed is not None:
        report[f"Secret/{naming.broker_secret_name(name)}"] = await ensure_broker_secret(
            objects, body, spec.broker.type
        )
    for obj in desired_broker_objects(body, spec):
        report[f"{obj['kind']}/{obj['metadata']['name']}"] = await ensure(objects, obj)
    for kind, stale in stale_broker_objects(body, spec):
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
