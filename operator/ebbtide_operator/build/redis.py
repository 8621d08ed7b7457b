"""Pure builders for a managed Redis: Secret, workload, Service, NetworkPolicy.

Each returns a plain dict ready to send to the API server, already owned by the
TaskQueue (so deleting the TaskQueue garbage-collects it). The shapes every broker shares
are in common.py. No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ebbtide_operator import naming
from ebbtide_operator.build.common import (
    Body,
    broker_network_policy,
    broker_service,
    broker_tls_volume,
    broker_workload,
    container_security,
    pod_security,
    secret_object,
)
from ebbtide_operator.spec import ManagedBrokerSpec

REDIS_UID = 999  # the `redis` user of the official images
TLS_DIR = "/tls"  # the broker's certificate, key and CA (from <tq>-broker-tls)


def redis_url(taskqueue: str, namespace: str, password: str, tls: bool = False) -> str:
    """`rediss://` (TLS, verified against the TaskQueue's CA) or `redis://`."""
    host = f"{naming.redis_name(taskqueue)}.{namespace}.svc"
    scheme = "rediss" if tls else "redis"
    return f"{scheme}://:{password}@{host}:{naming.REDIS_PORT}/0"


def redis_secret(owner: Body, password: str, tls: bool = False) -> dict[str, Any]:
    """Holds the password (for `requirepass`) and the full URL (for workers/producers)."""
    name, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return secret_object(
        owner,
        {
            naming.BROKER_PASSWORD_KEY: password,
            naming.BROKER_URL_KEY: redis_url(name, namespace, password, tls),
        },
    )


def tls_args() -> list[str]:
    """TLS only: no plain port at all; clients are not asked for certificates (they
    authenticate with their password), the server shows the TaskQueue's certificate."""
    return [
        "--port",
        "0",
        "--tls-port",
        str(naming.REDIS_PORT),
        "--tls-cert-file",
        f"{TLS_DIR}/{naming.TLS_CERT_KEY}",
        "--tls-key-file",
        f"{TLS_DIR}/{naming.TLS_KEY_KEY}",
        "--tls-ca-cert-file",
        f"{TLS_DIR}/{naming.CA_CERT_KEY}",
        "--tls-auth-clients",
        "no",
    ]


def _redis_container(managed: ManagedBrokerSpec, taskqueue: str, tls: bool) -> dict[str, Any]:
    port_args = tls_args() if tls else ["--port", str(naming.REDIS_PORT)]
    args = [
        "--requirepass",
        "$(REDIS_PASSWORD)",
        *port_args,
        "--dir",
        "/data",
        "--protected-mode",
        "no",
        # Never delete keys under memory pressure: a full broker refuses new tasks (the
        # producer sees the error) instead of silently dropping queued ones.
        "--maxmemory-policy",
        "noeviction",
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
    if tls:
        container["volumeMounts"].append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    if managed.resources:
        container["resources"] = dict(managed.resources)
    return container


def redis_workload(
    owner: Body, managed: ManagedBrokerSpec, tls: bool = False, tls_hash: str = ""
) -> dict[str, Any]:
    """A one-replica Deployment (ephemeral) or StatefulSet with a PVC and AOF (persistent).
    With `tls` it listens on TLS only; `tls_hash` (of the live certificate) restarts the
    pod when the certificate changes, since Redis reads it at start."""
    name = owner["metadata"]["name"]
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security(REDIS_UID),
        "containers": [_redis_container(managed, name, tls)],
    }
    annotations = None
    if tls:
        pod_spec["volumes"] = [broker_tls_volume(name)]
        annotations = {naming.TLS_HASH_ANNOTATION: tls_hash}
    return broker_workload(
        owner, naming.redis_name(name), pod_spec, managed.persistence, annotations=annotations
    )


def redis_service(owner: Body) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return broker_service(owner, naming.redis_name(name), {"redis": naming.REDIS_PORT})


def redis_network_policy(
    owner: Body, operator_namespace: str | None = None, allowed_namespaces: Sequence[str] = ()
) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return broker_network_policy(
        owner, naming.redis_name(name), [naming.REDIS_PORT], operator_namespace, allowed_namespaces
    )
