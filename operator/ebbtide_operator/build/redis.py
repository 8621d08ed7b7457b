"""Pure builders for a managed Redis: Secrets, workload, Service, NetworkPolicy.

The broker runs with an ACL file (`--aclfile`) mounted from the `<name>-broker` Secret's
`users.acl` key: the `default` user is the admin (that Secret's password), and each role
(roles.py) has its own user, password and rights. The file holds SHA-256 hashes only, and
no password ever appears in the Deployment.

Each returns a plain dict ready to send to the API server, already owned by the
TaskQueue (so deleting the TaskQueue garbage-collects it). The shapes every broker shares
are in common.py. No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ebbtide_operator import naming
from ebbtide_operator.build.common import (
    Body,
    broker_network_policy,
    broker_service,
    broker_tls_volume,
    broker_workload,
    container_security,
    pod_security,
    role_secret,
    secret_object,
)
from ebbtide_operator.build.roles import Credential, redis_acl_file
from ebbtide_operator.spec import ManagedBrokerSpec

REDIS_UID = 999  # the `redis` user of the official images
ACL_DIR = "/etc/redis"
TLS_DIR = "/tls"  # the broker's certificate, key and CA (from <tq>-broker-tls)


def scheme(tls: bool) -> str:
    return "rediss" if tls else "redis"


def redis_url(
    taskqueue: str,
    namespace: str,
    password: str,
    username: str | None = None,
    scheme: str = "redis",
) -> str:
    """The in-cluster URL, built from its parts (`scheme` is where TLS says `rediss`);
    no `username` means the `default` user (the admin)."""
    host = f"{naming.redis_name(taskqueue)}.{namespace}.svc"
    user = quote(username, safe="") if username else ""
    return f"{scheme}://{user}:{quote(password, safe='')}@{host}:{naming.REDIS_PORT}/0"


def redis_secret(
    owner: Body,
    password: str,
    credentials: Mapping[str, Credential],
    prefix: str,
    tls: bool = False,
) -> dict[str, Any]:
    """The admin Secret: the `default` user's password and URL (rediss:// with `tls`),
    and the ACL file the broker loads at boot (built from `credentials`, the three role
    identities)."""
    name, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return secret_object(
        owner,
        {
            naming.BROKER_PASSWORD_KEY: password,
            naming.BROKER_URL_KEY: redis_url(name, namespace, password, scheme=scheme(tls)),
            naming.BROKER_ACL_KEY: redis_acl_file(password, credentials, prefix),
        },
    )


def redis_role_secret(
    owner: Body, role: str, credential: Credential, tls: bool = False
) -> dict[str, Any]:
    """`<name>-broker-<role>`: that role's user, password and URL (rediss:// with `tls`)."""
    name, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    url = redis_url(name, namespace, credential.password, credential.username, scheme(tls))
    return role_secret(owner, role, credential.username, credential.password, url)


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


def _redis_container(managed: ManagedBrokerSpec, tls: bool) -> dict[str, Any]:
    args = [
        # Users and passwords (hashed) from the Secret: no `requirepass`, no password in
        # the pod spec. Read-only: rotations are applied live (ACL SETUSER) as well.
        "--aclfile",
        f"{ACL_DIR}/{naming.BROKER_ACL_KEY}",
        *(tls_args() if tls else ["--port", str(naming.REDIS_PORT)]),
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
        "ports": [{"name": "redis", "containerPort": naming.REDIS_PORT, "protocol": "TCP"}],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "initialDelaySeconds": 10},
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "acl", "mountPath": ACL_DIR, "readOnly": True},
        ],
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
        "containers": [_redis_container(managed, tls)],
        "volumes": [
            {
                "name": "acl",
                "secret": {
                    "secretName": naming.broker_secret_name(name),
                    "items": [{"key": naming.BROKER_ACL_KEY, "path": naming.BROKER_ACL_KEY}],
                    "defaultMode": 0o440,  # readable by the redis group (fsGroup) only
                },
            }
        ],
    }
    annotations = None
    if tls:
        pod_spec["volumes"].append(broker_tls_volume(name))
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
