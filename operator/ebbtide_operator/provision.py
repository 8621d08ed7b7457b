"""Create, update, scale and delete what a TaskQueue owns: the only writer of those objects.

The kopf handlers call `reconcile` on create, on spec update and when the operator
(re)starts; the tick calls `sync_worker_deployment` (recreate a missing worker Deployment,
repair a drifted pod template) and `scale_workers` every poll. The objects themselves come
from the pure builders in build/; this module only decides create, patch or delete.

No adoption: an object is changed (patched, scaled, deleted, replaced) only when it
carries this TaskQueue's controller ownerReference. Any other object with a name the
TaskQueue needs is left exactly as it is and reported as a conflict ('conflict' in the
reconcile report, `NameConflict` raised by the tick's calls); the TaskQueue's status then
says Ready=False, reason NameConflict, naming it. Every create, delete, replace and scale
is written to the audit log (audit.py).

The managed broker's Secrets (the admin `<name>-broker` and the three role Secrets) are
credentials.py's: created once, their passwords never overwritten (a user's edit is a
rotation), replaced only when the managed broker changes type; other objects are created
or merge-patched to the builders' output. The worker
Deployment's replicas are set only at creation; after that only `scale_workers` (on the
tick's decision) changes them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from ebbtide_operator import audit, certs, credentials, naming
from ebbtide_operator.build import rabbitmq, redis, worker
from ebbtide_operator.build import tls as build_tls
from ebbtide_operator.build.common import controlled_by
from ebbtide_operator.build.merge import is_subset
from ebbtide_operator.cluster import Cluster, EventSink
from ebbtide_operator.spec import TaskQueueSpec

log = logging.getLogger(__name__)
CONFLICT = "conflict"


class NameConflict(Exception):
    """An object the TaskQueue needs by name exists, but is not controlled by it."""

    def __init__(self, kind: str, name: str) -> None:
        self.key = f"{kind}/{name}"
        super().__init__(f"{self.key} exists and is not controlled by this TaskQueue")


def _owner_uid(obj: Mapping[str, Any]) -> str | None:
    """The TaskQueue uid a built object's controller reference names."""
    refs = obj["metadata"].get("ownerReferences") or []
    return next((ref.get("uid") for ref in refs if ref.get("controller")), None)


def conflicts(report: Mapping[str, str]) -> list[str]:
    """`Kind/name` of every object the reconcile refused to touch."""
    return sorted(key for key, outcome in report.items() if outcome == CONFLICT)


def _taskqueue(obj: Mapping[str, Any]) -> str:
    return obj["metadata"].get("labels", {}).get(naming.TASKQUEUE_LABEL, "")


def desired_broker_objects(
    body: Mapping[str, Any],
    spec: TaskQueueSpec,
    operator_namespace: str | None = None,
    tls_hash: str = "",
) -> list[dict[str, Any]]:
    """Everything of the managed broker but its Secrets (the credentials are made by
    credentials.sync; the TLS ones by ensure_tls). `operator_namespace` is admitted by the
    broker's NetworkPolicy; `tls_hash` is the live certificate's (a new one restarts the
    broker)."""
    managed = spec.broker.managed
    if managed is None:
        return []
    allowed = spec.broker.allowed_namespaces
    tls = spec.broker.managed_tls
    if spec.broker.type == "rabbitmq":
        return [
            rabbitmq.rabbitmq_config_map(body, managed, tls),
            rabbitmq.rabbitmq_workload(body, managed, tls, tls_hash),
            rabbitmq.rabbitmq_service(body, tls),
            rabbitmq.rabbitmq_network_policy(body, operator_namespace, allowed, tls),
        ]
    return [
        redis.redis_workload(body, managed, tls, tls_hash),
        redis.redis_service(body),
        redis.redis_network_policy(body, operator_namespace, allowed),
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
    secrets = [naming.broker_secret_name(name)]
    secrets += [naming.role_secret_name(name, role) for role in naming.ROLES]
    return objects + [("Secret", secret) for secret in secrets] + tls_objects(name)


def tls_objects(name: str) -> list[tuple[str, str]]:
    """(kind, name) of what managed TLS may have made: both Secrets, or the Certificate."""
    tls_secret = naming.broker_tls_secret_name(name)
    return [
        ("Certificate", tls_secret),
        ("Secret", naming.broker_ca_secret_name(name)),
        ("Secret", tls_secret),
    ]


def wanted_tls_objects(name: str, spec: TaskQueueSpec) -> set[tuple[str, str]]:
    if not spec.broker.managed_tls:
        return set()
    tls_secret = naming.broker_tls_secret_name(name)
    if spec.broker.tls.issuer is not None:  # cert-manager writes <tq>-broker-tls
        return {("Certificate", tls_secret), ("Secret", tls_secret)}
    return {("Secret", naming.broker_ca_secret_name(name)), ("Secret", tls_secret)}


def stale_broker_objects(body: Mapping[str, Any], spec: TaskQueueSpec) -> list[tuple[str, str]]:
    """(kind, name) of managed-broker objects the spec no longer wants: the other type's,
    the other workload kind after a persistence switch, all of them (and the Secret) when
    the broker became external."""
    wanted = {(obj["kind"], obj["metadata"]["name"]) for obj in desired_broker_objects(body, spec)}
    name = body["metadata"]["name"]
    if spec.broker.managed is not None:
        wanted.add(("Secret", naming.broker_secret_name(name)))
        wanted |= {("Secret", naming.role_secret_name(name, role)) for role in naming.ROLES}
    wanted |= wanted_tls_objects(name, spec)
    return [item for item in possible_broker_objects(name) if item not in wanted]


def _update_patch(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Labels, data and spec; never ownerReferences (only objects already ours get here)."""
    patch: dict[str, Any] = {"metadata": {"labels": obj["metadata"].get("labels", {})}}
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


async def _create(cluster: Cluster, obj: Mapping[str, Any]) -> bool:
    """Create, and audit it; False when the name is taken."""
    if not await cluster.create(obj):
        return False
    meta = obj["metadata"]
    audit.record("create", obj["kind"], meta["namespace"], meta["name"], _taskqueue(obj))
    return True


async def _delete(cluster: Cluster, kind: str, namespace: str, name: str, taskqueue: str) -> bool:
    if not await cluster.delete(kind, namespace, name):
        return False
    audit.record("delete", kind, namespace, name, taskqueue)
    return True


async def ensure(cluster: Cluster, obj: Mapping[str, Any]) -> str:
    """'created', 'updated', 'kept' (Secrets are never overwritten), or 'conflict' (an
    object of that name that is not ours: left untouched)."""
    if await _create(cluster, obj):
        return "created"
    meta = obj["metadata"]
    kind, namespace, name = obj["kind"], meta["namespace"], meta["name"]
    existing = await cluster.read(kind, namespace, name)
    if existing is None:  # deleted between the two calls
        return "created" if await _create(cluster, obj) else "kept"
    if not controlled_by(existing, _owner_uid(obj)):
        return CONFLICT
    if kind == "Secret":
        return "kept"
    await cluster.patch(kind, namespace, name, _update_patch(obj))
    return "updated"


url_broker_type = credentials.url_broker_type  # the one definition, used by tests too


async def reconcile(
    cluster: Cluster,
    body: Mapping[str, Any],
    spec: TaskQueueSpec,
    operator_namespace: str | None = None,
) -> dict[str, str]:
    """Bring the owned objects in line with `spec`; returns what happened to each
    ('conflict' for a foreign object in the way: see `conflicts`)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    synced = await credentials.sync(cluster, body, spec)
    report: dict[str, str] = dict(synced.report)
    tls_hash = ""
    if spec.broker.managed_tls:
        tls_report, tls_hash = await ensure_tls(cluster, body, spec)
        report.update(tls_report)
    for obj in desired_broker_objects(body, spec, operator_namespace, tls_hash):
        report[f"{obj['kind']}/{obj['metadata']['name']}"] = await ensure(cluster, obj)
    for kind, stale in stale_broker_objects(body, spec):
        existing = await cluster.read(kind, namespace, stale)
        if existing is not None and controlled_by(existing, meta.get("uid")):
            if await _delete(cluster, kind, namespace, stale, name):
                report[f"{kind}/{stale}"] = "deleted"

    deployment = naming.worker_name(name)
    report[f"Deployment/{deployment}"] = await apply_worker_deployment(
        cluster, body, spec, synced.version()
    )
    return report


# --- TLS of a managed broker ------------------------------------------------------------


async def ensure_tls(
    cluster: Cluster,
    body: Mapping[str, Any],
    spec: TaskQueueSpec,
    now: dt.datetime | None = None,
) -> tuple[dict[str, str], str]:
    """The broker's certificate, and the hash of the live one (for its pod annotation).

    Generated: both Secrets are created, or patched only when certs.plan says so (missing,
    expiring within the renewal margin, wrong names or issuer): 'renewed'. Never
    regenerated while valid. With an issuerRef: the cert-manager Certificate (cert-manager
    writes and renews `<tq>-broker-tls`). Secrets of these names that are not ours are
    left alone ('conflict')."""
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid")
    tls_name = naming.broker_tls_secret_name(name)
    issuer = spec.broker.tls.issuer
    if issuer is not None:
        certificate = build_tls.certificate(body, spec.broker.type, issuer)
        report = {f"Certificate/{tls_name}": await ensure(cluster, certificate)}
        return report, build_tls.tls_hash(await cluster.read("Secret", namespace, tls_name))
    ca_name = naming.broker_ca_secret_name(name)
    live_ca = await cluster.read("Secret", namespace, ca_name)
    live_tls = await cluster.read("Secret", namespace, tls_name)
    report = {
        f"Secret/{secret}": CONFLICT
        for secret, live in ((ca_name, live_ca), (tls_name, live_tls))
        if live is not None and not controlled_by(live, uid)
    }
    if report:
        return report, ""
    material = certs.plan(
        *build_tls.current_material(live_ca, live_tls),
        build_tls.server_names(body, spec.broker.type),
        build_tls.common_name(body),
        now or dt.datetime.now(dt.UTC),
    )
    if material is None:
        kept = {f"Secret/{ca_name}": "kept", f"Secret/{tls_name}": "kept"}
        return kept, build_tls.tls_hash(live_tls)
    wanted = [
        (build_tls.ca_secret(body, material), live_ca),
        (build_tls.tls_secret(body, material), live_tls),
    ]
    for obj, live in wanted:
        key = f"Secret/{obj['metadata']['name']}"
        if live is None:
            report[key] = "created" if await _create(cluster, obj) else "kept"
            continue
        await cluster.patch("Secret", namespace, obj["metadata"]["name"], {"data": obj["data"]})
        audit.record("renew", "Secret", namespace, obj["metadata"]["name"], name)
        report[key] = "renewed"
    return report, build_tls.tls_hash(wanted[1][0])


# --- the worker Deployment -----------------------------------------------------------------


async def apply_worker_deployment(
    cluster: Cluster, body: Mapping[str, Any], spec: TaskQueueSpec, credentials: str | None
) -> str:
    """'created' (at minReplicas), 'updated' (our pod template re-applied, replicas kept),
    or 'conflict' (a Deployment of that name that is not ours). `credentials`: the worker
    credential's version (credentials.Sync.version), None for an external broker."""
    deployment = worker.worker_deployment(
        body, spec, replicas=spec.scaling.min_replicas, credentials=credentials
    )
    if await _create(cluster, deployment):
        return "created"
    meta = deployment["metadata"]
    existing = await cluster.read_deployment(meta["namespace"], meta["name"])
    if existing is not None and not controlled_by(existing, body["metadata"].get("uid")):
        return CONFLICT
    await cluster.patch(
        "Deployment", meta["namespace"], meta["name"], worker.template_patch(deployment)
    )
    return "updated"


async def sync_worker_deployment(
    cluster: Cluster,
    body: Mapping[str, Any],
    spec: TaskQueueSpec,
    replicas: int,
    template: Mapping[str, Any] | None,
    events: EventSink,
    credentials: str | None = None,
) -> dict[str, Any] | None:
    """The live worker Deployment, as the tick needs it every poll.

    A missing one is recreated with `replicas` (what the tick last wanted), except while
    the TaskQueue is being deleted (then None: workers are never brought back). A live one
    whose pod template no longer holds `template` (API-server defaults are fine) gets it
    back: a `DriftRepaired` Warning when someone edited it, a `Rollout` when the spec changed
    (`template` None: not known this poll, e.g. the worker credential unread; no repair).
    A Deployment of that name that is not ours raises NameConflict, untouched.
    """
    meta = body["metadata"]
    namespace, deployment_name = meta["namespace"], naming.worker_name(meta["name"])
    live = await cluster.read_deployment(namespace, deployment_name)
    if live is None and meta.get("deletionTimestamp"):
        return None
    if live is None:
        fresh = worker.worker_deployment(body, spec, replicas=replicas, credentials=credentials)
        if await _create(cluster, fresh):
            events(body, "Normal", "Created", f"worker Deployment {deployment_name}")
        live = await cluster.read_deployment(namespace, deployment_name)
        if live is None:
            return None
    if not controlled_by(live, meta.get("uid")):
        raise NameConflict("Deployment", deployment_name)
    live_template = live.get("spec", {}).get("template", {})
    if template is not None and not is_subset(template, live_template):
        wanted = worker.worker_deployment(body, spec, replicas=0, credentials=credentials)
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


async def scale_workers(
    cluster: Cluster,
    body: Mapping[str, Any],
    replicas: int,
    reason: str = "",
    resource_version: str | None = None,
) -> None:
    """Set the worker Deployment's replicas, and nothing else (the scale subresource);
    NameConflict, and no write, when the Deployment of that name is not ours;
    cluster.Conflict when it is no longer at `resource_version` (the decision's)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], naming.worker_name(meta["name"])
    live = await cluster.read_deployment(namespace, name)
    if live is None:
        log.warning("not scaling %s/%s: it does not exist", namespace, name)
        return
    if not controlled_by(live, meta.get("uid")):
        raise NameConflict("Deployment", name)
    before = int(live.get("spec", {}).get("replicas") or 0)
    await cluster.scale_deployment(namespace, name, replicas, resource_version)
    audit.record(
        "scale",
        "Deployment",
        namespace,
        name,
        meta["name"],
        count=replicas,
        replicas_before=before,
        replicas_after=replicas,
        reason=reason,
    )
