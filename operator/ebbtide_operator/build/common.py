"""What every builder shares: ownership, the broker Secret's shape, pod hardening, the
one-pod broker workload, its Service and NetworkPolicy, and the content hash that rolls
pods on a change. Broker- and worker-specific builders compose these, so a third broker
type would only add its container and config. Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from ebbtide_operator import naming
from ebbtide_operator.spec import PersistenceSpec

Body = Mapping[str, Any]


def owned(obj: dict[str, Any], owner: Body) -> dict[str, Any]:
    obj["metadata"]["namespace"] = owner["metadata"]["namespace"]
    kopf.append_owner_reference(obj, owner=owner)
    return obj


def controlled_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """Ours: a controller ownerReference to this TaskQueue's uid (not merely any owner
    reference, and never a name match alone)."""
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return uid is not None and any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def generate_password() -> str:
    """A fresh 256-bit URL-safe password (never reused across TaskQueues)."""
    return secrets.token_urlsafe(32)


def encoded(data: Mapping[str, str]) -> dict[str, str]:
    """A Secret's `data`: every value base64-encoded."""
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


def secret_object(owner: Body, data: Mapping[str, str], role: str | None = None) -> dict[str, Any]:
    """The `<name>-broker` Secret (the admin identity), or with `role` the role's own
    `<name>-broker-<role>`, with `data` (base64-encoded here)."""
    name = owner["metadata"]["name"]
    labels = naming.common_labels(name, "broker")
    if role is None:
        secret_name = naming.broker_secret_name(name)
    else:
        secret_name = naming.role_secret_name(name, role)
        labels[naming.ROLE_LABEL] = role
    return owned(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": secret_name, "labels": labels},
            "data": encoded(data),
        },
        owner,
    )


def role_secret(owner: Body, role: str, username: str, password: str, url: str) -> dict[str, Any]:
    """One role's Secret: `url` (what clients use), `username` and `password` (what a
    rotation edits; the operator derives the URL and the broker's files from them)."""
    return secret_object(
        owner,
        {
            naming.BROKER_URL_KEY: url,
            naming.BROKER_USERNAME_KEY: username,
            naming.BROKER_PASSWORD_KEY: password,
        },
        role=role,
    )


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


def broker_tls_volume(taskqueue: str) -> dict[str, Any]:
    """The broker's certificate, key and CA from `<tq>-broker-tls` (never the generated
    CA's key, which is there too), readable by the broker's group (fsGroup) only."""
    return {
        "name": "tls",
        "secret": {
            "secretName": naming.broker_tls_secret_name(taskqueue),
            "items": [
                {"key": key, "path": key}
                for key in (naming.TLS_CERT_KEY, naming.TLS_KEY_KEY, naming.CA_CERT_KEY)
            ],
            "defaultMode": 0o440,
        },
    }


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


def broker_network_policy(
    owner: Body,
    object_name: str,
    ports: list[int],
    operator_namespace: str | None = None,
    allowed_namespaces: Sequence[str] = (),
) -> dict[str, Any]:
    """Who may reach the managed broker, and nobody else:
    - this TaskQueue's worker pods and pods labelled `ebbtide.dev/producer: <name>`, both
      in the TaskQueue's namespace only (a podSelector without namespaceSelector);
    - every pod of the namespaces in `spec.broker.allowedNamespaces`;
    - the operator, which reads the broker's statistics every poll: pods labelled
      `ebbtide.dev/operator: "true"` in the operator's namespace (None: unknown, e.g. an
      operator run outside the cluster, and then no such rule).
    Namespaces are matched by `kubernetes.io/metadata.name`, which the API server sets and
    nobody can forge; a pod label alone is never trusted across namespaces, since any pod
    can set it on itself."""
    name = owner["metadata"]["name"]
    peers: list[dict[str, Any]] = [
        {"podSelector": {"matchLabels": naming.worker_selector(name)}},
        {"podSelector": {"matchLabels": {naming.PRODUCER_LABEL: name}}},
    ]
    peers += [
        {"namespaceSelector": {"matchLabels": {naming.NAMESPACE_NAME_LABEL: namespace}}}
        for namespace in sorted(set(allowed_namespaces))
    ]
    if operator_namespace:
        peers.append(
            {
                "namespaceSelector": {
                    "matchLabels": {naming.NAMESPACE_NAME_LABEL: operator_namespace}
                },
                "podSelector": {"matchLabels": {naming.OPERATOR_LABEL: "true"}},
            }
        )
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
                        "from": peers,
                        "ports": [{"protocol": "TCP", "port": port} for port in ports],
                    }
                ],
            },
        },
        owner,
    )


def spec_hash(obj: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able object (key order does not matter)."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
