"""Pure builder for the worker Deployment that the tick scales (provision.py writes it).

The pod template carries a hash of itself, so any spec change that alters the pods rolls
the Deployment, and the tick can repair drift by comparing the live template with this
one. `replicas` is set only at creation; afterwards only the tick's decisions change it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ebbtide.brokers.tls import CA_FILE_ENV, CERT_FILE_ENV, KEY_FILE_ENV
from ebbtide.shards import DRAIN_SHARDS_ENV, SHARDS_ENV, format_counts

from ebbtide_operator import naming, shards
from ebbtide_operator.build.common import owned, spec_hash
from ebbtide_operator.build.merge import deep_merge
from ebbtide_operator.spec import SecretRef, TaskQueueSpec

WORKER_UID = 10001  # the non-root user of the runtime base image
GRACE_MARGIN_SECONDS = 5  # leave the runtime time to requeue before SIGKILL
BROKER_URL_VOLUME = "broker-url"
BROKER_URL_DIR = "/etc/ebbtide/broker"
BROKER_URL_FILE = f"{BROKER_URL_DIR}/url"  # EBBTIDE_BROKER_URL_FILE in the worker


def grace_seconds(termination_grace_period_seconds: int) -> int:
    """The runtime's shutdown budget: the pod's grace period minus a margin for requeueing."""
    margin = (
        GRACE_MARGIN_SECONDS if termination_grace_period_seconds > 2 * GRACE_MARGIN_SECONDS else 1
    )
    return max(1, termination_grace_period_seconds - margin)


def worker_args(spec: TaskQueueSpec) -> list[str]:
    """`ebbtide worker MODULE:APP --queues ... --concurrency N --metrics-port P --grace-seconds G`
    plus `--processes N` above one, `--cpu-affinity auto` when asked, `--strict` for strict
    order, then the user's extra args."""
    worker = spec.worker
    args = [
        "worker",
        worker.app,
        "--queues",
        queues_arg(spec),
        "--concurrency",
        str(worker.concurrency),
        "--metrics-port",
        str(worker.metrics_port),
        "--grace-seconds",
        str(grace_seconds(worker.termination_grace_period_seconds)),
    ]
    if worker.processes > 1:
        args += ["--processes", str(worker.processes)]
    if worker.cpu_affinity != "none":
        args += ["--cpu-affinity", worker.cpu_affinity]
    if spec.queue_order == "strict":
        args.append("--strict")
    return args + list(worker.args)


def queues_arg(spec: TaskQueueSpec) -> str:
    """`q1,q2` (strict order, or all weights equal) or the runtime's weighted `q1:3,q2:1`."""
    if spec.queue_order == "strict" or all(q.weight == 1 for q in spec.queues):
        return ",".join(q.name for q in spec.queues)
    return ",".join(f"{q.name}:{q.weight}" for q in spec.queues)


def broker_url_mount(secret_name: str, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The broker URL Secret as a read-only file (volume, volumeMount), not an env var:
    an env var is inherited by every subprocess a task starts. Only `key` is projected,
    readable by the pod's group (fsGroup) and nobody else."""
    volume = {
        "name": BROKER_URL_VOLUME,
        "secret": {
            "secretName": secret_name,
            "items": [{"key": key, "path": "url"}],
            "defaultMode": 0o440,
        },
    }
    mount = {"name": BROKER_URL_VOLUME, "mountPath": BROKER_URL_DIR, "readOnly": True}
    return volume, mount


def tls_pieces(
    taskqueue: str, spec: TaskQueueSpec
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, volumes, mounts) that tell the runtime how to verify the broker: the CA
    Secret's one key mounted at BROKER_CA_DIR (EBBTIDE_BROKER_CA_FILE), and an external
    broker's client certificate at BROKER_CLIENT_CERT_DIR (EBBTIDE_BROKER_CERT_FILE and
    EBBTIDE_BROKER_KEY_FILE). Files, not env values: a renewed CA reaches running pods."""
    env: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    ca = spec.broker.ca_secret(taskqueue)
    if ca is not None:
        volumes.append(
            {
                "name": "broker-ca",
                "secret": {
                    "secretName": ca.name,
                    "items": [{"key": ca.key, "path": naming.CA_CERT_KEY}],
                },
            }
        )
        mounts.append({"name": "broker-ca", "mountPath": naming.BROKER_CA_DIR, "readOnly": True})
        env.append({"name": CA_FILE_ENV, "value": f"{naming.BROKER_CA_DIR}/{naming.CA_CERT_KEY}"})
    client = spec.broker.tls.client_cert_secret if spec.broker.managed is None else None
    if client is not None:
        keys = (naming.TLS_CERT_KEY, naming.TLS_KEY_KEY)
        volumes.append(
            {
                "name": "broker-client-cert",
                "secret": {
                    "secretName": client,
                    "items": [{"key": key, "path": key} for key in keys],
                    "defaultMode": 0o400,
                },
            }
        )
        mounts.append(
            {
                "name": "broker-client-cert",
                "mountPath": naming.BROKER_CLIENT_CERT_DIR,
                "readOnly": True,
            }
        )
        directory = naming.BROKER_CLIENT_CERT_DIR
        env.append({"name": CERT_FILE_ENV, "value": f"{directory}/{naming.TLS_CERT_KEY}"})
        env.append({"name": KEY_FILE_ENV, "value": f"{directory}/{naming.TLS_KEY_KEY}"})
    return env, volumes, mounts


def worker_broker_secret(taskqueue: str, spec: TaskQueueSpec) -> SecretRef:
    """The Secret (and key) holding the URL the workers connect with: the worker role's
    `<name>-broker-worker` on a managed broker, the user's Secret on an external one."""
    return spec.broker.url_secret(taskqueue, "worker")


def _env(
    taskqueue: str, spec: TaskQueueSpec, drain: Mapping[str, int] | None = None
) -> list[dict[str, Any]]:
    # Every queue's shard count (the spec beats the app's code), and the shards a shrink
    # left that are still drained (operator shards.py). Nothing when no queue is sharded,
    # so upgrading the operator does not roll every unsharded TaskQueue's pods.
    counts = spec.shard_counts()
    sharding = []
    if any(count > 1 for count in counts.values()) or drain:
        sharding.append({"name": SHARDS_ENV, "value": format_counts(counts)})
    if drain:
        sharding.append({"name": DRAIN_SHARDS_ENV, "value": format_counts(drain)})
    ours: list[dict[str, Any]] = [
        {"name": "EBBTIDE_BROKER_URL_FILE", "value": BROKER_URL_FILE},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "EBBTIDE_TASKQUEUE", "value": taskqueue},
        {"name": "EBBTIDE_KEY_PREFIX", "value": spec.broker.key_prefix},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *sharding,
        *tls_pieces(taskqueue, spec)[0],
    ]
    taken = {item["name"] for item in ours}
    return ours + [dict(item) for item in spec.worker.env if item.get("name") not in taken]


def worker_pod_template(
    taskqueue: str,
    spec: TaskQueueSpec,
    credentials: str | None = None,
    drain: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The pod template, user override merged in, annotated with its own hash.
    `credentials` (a managed broker's worker credential version) rolls the pods when the
    worker's password is rotated: the runtime reads the URL file once, at start. `drain`:
    the queues still drained beyond their spec shard count (shards.drain_extra)."""
    worker = spec.worker
    port = worker.metrics_port
    secret = worker_broker_secret(taskqueue, spec)
    url_volume, url_mount = broker_url_mount(secret.name, secret.key)
    container: dict[str, Any] = {
        "name": "worker",
        "image": worker.image,
        "command": list(worker.command) or ["ebbtide"],
        "args": worker_args(spec),
        "env": _env(taskqueue, spec, drain),
        "ports": [{"name": "metrics", "containerPort": port, "protocol": "TCP"}],
        # 5 s, not the 1 s default, to answer: a busy node's CPU-starved Python process
        # can miss 1 s, and a missed liveness probe restarts a healthy worker mid-task.
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "metrics"},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 2,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            url_mount,
            *tls_pieces(taskqueue, spec)[2],
        ],
    }
    if worker.image_pull_policy:
        container["imagePullPolicy"] = worker.image_pull_policy
    if worker.resources:
        container["resources"] = copy.deepcopy(dict(worker.resources))
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": worker.termination_grace_period_seconds,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,  # group owner of the broker URL file
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
            url_volume,
            *tls_pieces(taskqueue, spec)[1],
        ],
    }
    if worker.service_account_name:
        pod_spec["serviceAccountName"] = worker.service_account_name
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }
    if spec.broker.type != "redis":
        # The URL file is read once, at worker start: a broker type switch (whose new
        # Secret has the same name) must roll the pods. Absent for Redis, so existing
        # Redis workers keep their template hash.
        annotations[naming.BROKER_TYPE_ANNOTATION] = spec.broker.type
    if credentials:
        annotations[naming.CREDENTIALS_ANNOTATION] = credentials
    template = {
        "metadata": {
            "labels": naming.common_labels(taskqueue, "worker"),
            "annotations": annotations,
        },
        "spec": pod_spec,
    }
    template = deep_merge(template, dict(worker.pod_template))
    # The selector labels are ours whatever the override says, or the Deployment breaks.
    template["metadata"]["labels"].update(naming.worker_selector(taskqueue))
    template["metadata"]["annotations"][naming.SPEC_HASH_ANNOTATION] = spec_hash(template)
    return template


def worker_deployment(
    owner: Mapping[str, Any], spec: TaskQueueSpec, replicas: int, credentials: str | None = None
) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    drain = shards.drain_extra(spec, shards.drained(owner.get("status"), spec))
    template = worker_pod_template(name, spec, credentials, drain)
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": naming.worker_name(name),
            "labels": naming.common_labels(name, "worker"),
            "annotations": {
                naming.SPEC_HASH_ANNOTATION: template["metadata"]["annotations"][
                    naming.SPEC_HASH_ANNOTATION
                ]
            },
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": naming.worker_selector(name)},
            # Surge so a rollout never removes capacity while a backlog waits.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "revisionHistoryLimit": 3,
            "template": template,
        },
    }
    return owned(deployment, owner)


def template_patch(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """The patch that re-applies our template and hash without touching `replicas`."""
    return {
        "metadata": {"annotations": dict(deployment["metadata"]["annotations"])},
        "spec": {"template": copy.deepcopy(deployment["spec"]["template"])},
    }
