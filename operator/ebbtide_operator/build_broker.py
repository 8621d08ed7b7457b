"""Pure builders for a managed Redis: Secret, workload, Service, NetworkPolicy.

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
from ebbtide_operator.spec import ManagedBrokerSpec

REDIS_UID = 999  # the `redis` user of the official images

Body = Mapping[str, Any]


def _owned(obj: dict[str, Any], owner: Body) -> dict[str, Any]:
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
    data = {
        naming.BROKER_PASSWORD_KEY: password,
        naming.BROKER_URL_KEY: redis_url(name, namespace, password),
    }
    return _owned(
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
        "securityContext": _container_security(),
    }
    if managed.resources:
        container["resources"] = dict(managed.resources)
    return container


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security(uid: int) -> dict[str, Any]:
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
    labels = naming.common_labels(name, "broker")
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(REDIS_UID),
        "containers": [_redis_container(managed, name)],
    }
    template = {"metadata": {"labels": labels}, "spec": pod_spec}
    meta = {"name": naming.redis_name(name), "labels": labels}
    selector = {"matchLabels": naming.redis_selector(name)}
    persistence = managed.persistence
    if not persistence.enabled:
        pod_spec["volumes"] = [{"name": "data", "emptyDir": {}}]
        return _owned(
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
    return _owned(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": meta,
            "spec": {
                "replicas": 1,
                "serviceName": naming.redis_name(name),
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
    return _owned(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": naming.redis_name(name),
                "labels": naming.common_labels(name, "broker"),
            },
            "spec": {
                "selector": naming.redis_selector(name),
                "ports": [
                    {
                        "name": "redis",
                        "port": naming.REDIS_PORT,
                        "targetPort": "redis",
                        "protocol": "TCP",
                    }
                ],
            },
        },
        owner,
    )


def redis_network_policy(owner: Body) -> dict[str, Any]:
    """Only this TaskQueue's workers and pods labelled `ebbtide.dev/producer: <name>`
    (in the same namespace) may reach the broker."""
    name = owner["metadata"]["name"]
    return _owned(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": naming.redis_name(name),
                "labels": naming.common_labels(name, "broker"),
            },
            "spec": {
                "podSelector": {"matchLabels": naming.redis_selector(name)},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [
                            {"podSelector": {"matchLabels": naming.worker_selector(name)}},
                            {"podSelector": {"matchLabels": {naming.PRODUCER_LABEL: name}}},
                        ],
                        "ports": [{"protocol": "TCP", "port": naming.REDIS_PORT}],
                    }
                ],
            },
        },
        owner,
    )
