"""Pure builders for a managed Redis: Secret, workload, Service, NetworkPolicy, plus
the pieces every managed broker shares (ownership, hardening, workload, Service and
NetworkPolicy shapes; build_rabbitmq.py uses them too).

Each returns a plain dict ready to send to the API server, already owned by the
TaskQueue (so deleting the TaskQueue garbage-collects it). No I/O here.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from typing import Any

import kopf

from ebbtide_operator import naming
from ebbtide_operator.spec import ManagedBrokerSpec, PersistenceSpec

REDIS_UID = 999  # the `redis` user of the official images

Body = Mapping[str, Any]


def owned(obj: dict[str, Any], owner: Body) -> dict[str, Any]:
    obj["metadata"]["namespace"] = owner["metadata"]["namespace"]
    kopf.append_owner_reference(obj, owner=owner)
    return obj


def generate_password() -> str:
    """A fresh 256-bit URL-safe password (never reused across TaskQueues)."""
    return secrets.token_urlsafe(32)


def redis_url(taskqueue: str, namespace: str, password: str) -> str:
    host = f"{naming.redis_name(taskqueue)}.{namespace}.svc"
    return f"redis://:{password}@{host}:{naming.REDIS_PORT}/0"


def broker_secret(owner: Body, password: str) -> dict[str, Any]:
    """Holds the password (for `requirepass`) and the full URL (for workers/producers)."""
    name, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return secret_object(
        owner,
        {
            naming.BROKER_PASSWORD_KEY: password,
            naming.BROKER_URL_KEY: redis_url(name, namespace, password),
        },
    )


def secret_object(owner: Body, data: Mapping[str, str]) -> dict[str, Any]:
    """The `<name>-broker` Secret with `data` (base64-encoded here)."""
    name = owner["metadata"]["name"]
    return owned(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": naming.broker_secret_name(name),
                "labels": naming.common_labels(name, "broker"),
            },
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        },
        owner,
    )


def _redis_container(managed: ManagedBrokerSpec, taskqueue: str) -> dict[str, Any]:
    args = [
        "--requirepass",
        "$(REDIS_PASSWORD)",
        "--port",
        str(naming.REDIS_PORT),
        "--dir",
        "/data",
        "--protected-mode",
        "no",
    ]
    if managed.persistence.enabled:
        args += ["--appendonly", "yes", "--appendfsync", "everysec"]
    else:
        args += ["--save", "", "--appendonly", "no"]
    probe = {"tcpSocket": {"port": "redis"}, "periodSeconds": 5}
    container: dict[str, Any] = {
        "name": "redis",
        "image": managed.image,
        "command": ["redis-server"],
        "args": args,
        "env": [
            {
                "name": "REDIS_PASSWORD",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": naming.broker_secret_name(taskqueue),
                        "key": naming.BROKER_PASSWORD_KEY,
                    }
                },
            }
        ],
        "ports": [{"name": "redis", "containerPort": naming.REDIS_PORT, "protocol": "TCP"}],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "initialDelaySeconds": 10},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "securityContext": container_security(),
    }
    if managed.resources:
        container["resources"] = dict(managed.resources)
    return container


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def redis_workload(owner: Body, managed: ManagedBrokerSpec) -> dict[str, Any]:
    """A one-replica Deployment (ephemeral) or StatefulSet with a PVC and AOF (persistent)."""
    name = owner["metadata"]["name"]
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security(REDIS_UID),
        "containers": [_redis_container(managed, name)],
    }
    return broker_workload(owner, naming.redis_name(name), pod_spec, managed.persistence)


def broker_workload(
    owner: Body,
    object_name: str,
    pod_spec: dict[str, Any],
    persistence: PersistenceSpec,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One broker pod whose `data` volume is an emptyDir in a Deployment (ephemeral) or a
    PVC from a StatefulSet's claim template (persistent)."""
    name = owner["metadata"]["name"]
    labels = naming.common_labels(name, "broker")
    template: dict[str, Any] = {"metadata": {"labels": labels}, "spec": pod_spec}
    if annotations:
        template["metadata"]["annotations"] = dict(annotations)
    meta = {"name": object_name, "labels": labels}
    selector = {"matchLabels": naming.broker_selector(name)}
    if not persistence.enabled:
        pod_spec["volumes"] = [*pod_spec.get("volumes", []), {"name": "data", "emptyDir": {}}]
        return owned(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": meta,
                "spec": {
                    "replicas": 1,
                    "strategy": {"type": "Recreate"},
                    "selector": selector,
                    "template": template,
                },
            },
            owner,
        )
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": persistence.size}},
    }
    if persistence.storage_class_name:
        claim_spec["storageClassName"] = persistence.storage_class_name
    return owned(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": meta,
            "spec": {
                "replicas": 1,
                "serviceName": object_name,
                "selector": selector,
                "template": template,
                # The PVC outlives the TaskQueue unless the user asked otherwise.
                "persistentVolumeClaimRetentionPolicy": {
                    "whenDeleted": persistence.deletion_policy,
                    "whenScaled": "Retain",
                },
                "volumeClaimTemplates": [
                    {"metadata": {"name": "data", "labels": labels}, "spec": claim_spec}
                ],
            },
        },
        owner,
    )


def redis_service(owner: Body) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return broker_service(owner, naming.redis_name(name), {"redis": naming.REDIS_PORT})


def redis_network_policy(owner: Body) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return broker_network_policy(owner, naming.redis_name(name), [naming.REDIS_PORT])


def broker_service(owner: Body, object_name: str, ports: Mapping[str, int]) -> dict[str, Any]:
    """A ClusterIP Service on the broker pod's named ports."""
    name = owner["metadata"]["name"]
    return owned(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": object_name, "labels": naming.common_labels(name, "broker")},
            "spec": {
                "selector": naming.broker_selector(name),
                "ports": [
                    {"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}
                    for port_name, port in ports.items()
                ],
            },
        },
        owner,
    )


def broker_network_policy(owner: Body, object_name: str, ports: list[int]) -> dict[str, Any]:
    """Only this TaskQueue's workers, pods labelled `ebbtide.dev/producer: <name>` (same
    namespace) and the Ebbtide operator, which reads the broker's statistics every poll
    (pods labelled `ebbtide.dev/operator: "true"` in any namespace), may reach the broker."""
    name = owner["metadata"]["name"]
    return owned(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": object_name, "labels": naming.common_labels(name, "broker")},
            "spec": {
                "podSelector": {"matchLabels": naming.broker_selector(name)},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [
                            {"podSelector": {"matchLabels": naming.worker_selector(name)}},
                            {"podSelector": {"matchLabels": {naming.PRODUCER_LABEL: name}}},
                            {
                                "namespaceSelector": {},
                                "podSelector": {"matchLabels": {naming.OPERATOR_LABEL: "true"}},
                            },
                        ],
                        "ports": [{"protocol": "TCP", "port": port} for port in ports],
                    }
                ],
            },
        },
        owner,
    )
