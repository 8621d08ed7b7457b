"""The TaskQueue spec as typed, defaulted values.

The API server applies the CRD's defaults, but the operator must not crash on an object
written before a default existed (or on a hand-edited status-less object), so every
default is repeated here, in one place, next to the conversion to the policy's spec.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ebbtide.message import RESERVED_RULE, reserved_queue_name
from ebbtide.shards import MAX_SHARDS, shard_names

from ebbtide_operator import naming
from ebbtide_operator.policy import ScalingSpec

DEFAULT_REDIS_IMAGE = "redis:7.2-alpine"
# The last 3.x line, closest to the 3.10 the runtime is tested on. The `-management` tag
# differs from the plain one mostly in /etc/rabbitmq, which the operator mounts its own.
DEFAULT_RABBITMQ_IMAGE = "rabbitmq:3.13-management"
# The image default depends on the broker type, so it lives here, not in the CRD schema.
DEFAULT_IMAGES = {"redis": DEFAULT_REDIS_IMAGE, "rabbitmq": DEFAULT_RABBITMQ_IMAGE}
# Persistence is on by default for RabbitMQ (durable queues are why one picks it) and off
# for Redis (a cache-like broker unless asked). Also type-dependent, so also defaulted here.
DEFAULT_KEY_PREFIX = "ebbtide"
KEY_PREFIX_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

# Durable by default on both: a managed broker that forgets its tasks on a pod restart
# breaks the promise that an accepted task runs. `persistence.enabled: false` opts out,
# and the Durable condition says so.
DEFAULT_PERSISTENCE = {"redis": True, "rabbitmq": True}
# An image named like this cannot run a RabbitMQ (a stale `redis:...` default, say).
REDIS_IMAGE_PATTERN = re.compile(r"(^|/)redis(:|@|$)")
NAMESPACE_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS-1123 label


@dataclass(frozen=True)
class QueueSpec:
    name: str
    target_backlog_seconds: float
    weight: int = 1
    shards: int = 1  # broker queues it is split into (ebbtide.shards)


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str = "url"


@dataclass(frozen=True)
class PersistenceSpec:
    enabled: bool = False
    size: str = "1Gi"
    storage_class_name: str | None = None
    deletion_policy: str = "Retain"  # Retain | Delete


@dataclass(frozen=True)
class IssuerRef:
    """A cert-manager issuer (spec.broker.tls.issuerRef) that signs the broker's certificate."""

    name: str
    kind: str = "Issuer"  # Issuer | ClusterIssuer (or an external issuer's kind)
    group: str = "cert-manager.io"


@dataclass(frozen=True)
class BrokerTLSSpec:
    """spec.broker.tls. Managed brokers: TLS on unless `enabled: false`, certificates from
    the operator's own CA or from `issuer`. External brokers: TLS is the URL's scheme
    (rediss://, amqps://); `ca_secret` is the CA to verify it with (default: the system
    CAs) and `client_cert_secret` a kubernetes.io/tls Secret for brokers asking for one."""

    enabled: bool = True
    issuer: IssuerRef | None = None
    ca_secret: SecretRef | None = None  # key default ca.crt
    client_cert_secret: str | None = None  # keys tls.crt and tls.key


@dataclass(frozen=True)
class ManagedBrokerSpec:
    image: str = DEFAULT_REDIS_IMAGE
    resources: Mapping[str, Any] = field(default_factory=dict)
    persistence: PersistenceSpec = field(default_factory=PersistenceSpec)


@dataclass(frozen=True)
class BrokerSpec:
    type: str = "redis"
    managed: ManagedBrokerSpec | None = None
    external: SecretRef | None = None
    # Namespaces Ebbtide's keys (Redis) and queues (RabbitMQ) on the broker: the workers
    # get it as EBBTIDE_KEY_PREFIX and the operator reads the statistics under it.
    key_prefix: str = DEFAULT_KEY_PREFIX
    # Namespaces whose pods may reach the managed broker (its NetworkPolicy).
    allowed_namespaces: tuple[str, ...] = ()
    tls: BrokerTLSSpec = field(default_factory=BrokerTLSSpec)

    @property
    def managed_tls(self) -> bool:
        """The managed broker listens on TLS only (the default)."""
        return self.managed is not None and self.tls.enabled

    def ca_secret(self, taskqueue: str) -> SecretRef | None:
        """Where clients find the CA that verifies the broker: the generated CA's Secret,
        cert-manager's Secret (its ca.crt), the external broker's caSecretRef; None for a
        plain managed broker or an external one verified against the system CAs."""
        if self.managed is None:
            return self.tls.ca_secret
        if not self.tls.enabled:
            return None
        if self.tls.issuer is not None:
            return SecretRef(naming.broker_tls_secret_name(taskqueue), naming.CA_CERT_KEY)
        return SecretRef(naming.broker_ca_secret_name(taskqueue), naming.CA_CERT_KEY)

    def url_secret(self, taskqueue: str, role: str = "worker") -> SecretRef:
        """Where a role's broker URL lives: the user's one Secret for an external broker,
        else the role's generated `<name>-broker-<role>` (workers: "worker", the tick's
        statistics: "operator", producers: "producer")."""
        if self.external is not None:
            return self.external
        return SecretRef(naming.role_secret_name(taskqueue, role), naming.BROKER_URL_KEY)


@dataclass(frozen=True)
class WorkerSpec:
    image: str
    app: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    image_pull_policy: str | None = None
    concurrency: int = 4  # slots per worker process
    processes: int = 1  # worker processes per pod (`--processes`)
    cpu_affinity: str = "none"  # none | auto (`--cpu-affinity`)
    env: tuple[Mapping[str, Any], ...] = ()
    resources: Mapping[str, Any] = field(default_factory=dict)
    termination_grace_period_seconds: int = 60
    metrics_port: int = 9100
    service_account_name: str | None = None
    pod_template: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskQueueSpec:
    broker: BrokerSpec
    queues: tuple[QueueSpec, ...]
    worker: WorkerSpec
    scaling: ScalingSpec
    queue_order: str = "weighted"  # weighted | strict

    def shard_counts(self) -> dict[str, int]:
        return {q.name: q.shards for q in self.queues}

    def broker_queues(self, drain: Mapping[str, int] | None = None) -> list[str]:
        """Every broker queue of the spec's queues: each shard, and the shards above a
        shrunk count that `drain` ({queue: count}) says are still drained."""
        drain = drain or {}
        return [
            name
            for q in self.queues
            for name in shard_names(q.name, max(q.shards, drain.get(q.name, 1)))
        ]


class SpecError(ValueError):
    """A spec the CRD schema should have rejected; the message names the field."""


def _number(data: Mapping[str, Any], key: str, default: float, path: str) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{path}.{key} must be a number, got {value!r}")
    return float(value)


def _seconds(data: Mapping[str, Any], key: str, default: float, path: str) -> float:
    """A duration in seconds. The CRD takes whole seconds (`type: integer`, per the API
    conventions); a fractional number is still read, as TaskQueues written before that
    hold one (the API server keeps stored objects as they are)."""
    value = _number(data, key, default, path)
    if value < 0:
        raise SpecError(f"{path}.{key} must be >= 0 seconds, got {data.get(key)!r}")
    return value


def _initial_task_seconds(data: Mapping[str, Any], path: str) -> float:
    """initialTaskMilliseconds (an integer, the current field) wins; else the deprecated
    fractional initialTaskSeconds; else 1 s."""
    if data.get("initialTaskMilliseconds") is not None:
        millis = _integer(data, "initialTaskMilliseconds", 1000, path)
        if millis < 1:
            raise SpecError(f"{path}.initialTaskMilliseconds must be >= 1, got {millis}")
        return millis / 1000
    seconds = _seconds(data, "initialTaskSeconds", 1.0, path)
    if seconds <= 0:
        raise SpecError(
            f"{path}.initialTaskSeconds must be > 0, got {data.get('initialTaskSeconds')!r}"
        )
    return seconds


def _integer(data: Mapping[str, Any], key: str, default: int, path: str) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path}.{key} must be an integer, got {value!r}")
    return value


def parse_scaling(data: Mapping[str, Any], concurrency: int) -> ScalingSpec:
    path = "spec.scaling"
    fallback = data.get("fallbackReplicas")
    spec = ScalingSpec(
        min_replicas=_integer(data, "minReplicas", 0, path),
        max_replicas=_integer(data, "maxReplicas", 10, path),
        target_backlog_seconds=_seconds(data, "targetBacklogSeconds", 30.0, path),
        poll_seconds=_seconds(data, "pollSeconds", 5.0, path),
        scale_down_stabilization_seconds=_seconds(
            data, "scaleDownStabilizationSeconds", 60.0, path
        ),
        scale_to_zero_idle_seconds=_seconds(data, "scaleToZeroIdleSeconds", 0.0, path),
        max_scale_up_step=_integer(data, "maxScaleUpStep", 0, path),
        initial_task_seconds=_initial_task_seconds(data, path),
        concurrency=concurrency,
        fallback_replicas=None if fallback is None else _integer(data, "fallbackReplicas", 0, path),
        paused=bool(data.get("paused", False)),
    )
    if spec.min_replicas > spec.max_replicas:
        raise SpecError(
            f"spec.scaling.minReplicas ({spec.min_replicas}) must be <= "
            f"spec.scaling.maxReplicas ({spec.max_replicas})"
        )
    if spec.poll_seconds <= 0:
        raise SpecError(f"spec.scaling.pollSeconds must be > 0, got {spec.poll_seconds}")
    return spec


def parse_broker(data: Mapping[str, Any]) -> BrokerSpec:
    kind = data.get("type", "redis")
    if kind not in ("redis", "rabbitmq"):
        raise SpecError(f"spec.broker.type must be redis or rabbitmq, got {kind!r}")
    prefix = data.get("keyPrefix", DEFAULT_KEY_PREFIX)
    if not isinstance(prefix, str) or not KEY_PREFIX_PATTERN.match(prefix):
        raise SpecError(
            f"spec.broker.keyPrefix must be 1-32 of a-z, 0-9, '_' and '-', starting with a "
            f"letter or digit, got {prefix!r}"
        )
    managed_data, external_data = data.get("managed"), data.get("external")
    if (managed_data is None) == (external_data is None):
        raise SpecError("exactly one of spec.broker.managed and spec.broker.external must be set")
    if managed_data is not None:
        p = managed_data.get("persistence") or {}
        policy = p.get("deletionPolicy", "Retain")
        if policy not in ("Retain", "Delete"):
            raise SpecError(
                f"spec.broker.managed.persistence.deletionPolicy must be Retain or Delete, got {policy!r}"
            )
        persistence = PersistenceSpec(
            enabled=bool(p.get("enabled", DEFAULT_PERSISTENCE[kind])),
            size=str(p.get("size", "1Gi")),
            storage_class_name=p.get("storageClassName"),
            deletion_policy=policy,
        )
        image = managed_data.get("image") or DEFAULT_IMAGES[kind]
        if kind == "rabbitmq" and REDIS_IMAGE_PATTERN.search(image):
            raise SpecError(
                f"spec.broker.managed.image {image!r} is a Redis image but spec.broker.type "
                "is 'rabbitmq' (omit the image for the RabbitMQ default)"
            )
        managed = ManagedBrokerSpec(
            image=image,
            resources=dict(managed_data.get("resources") or {}),
            persistence=persistence,
        )
        return BrokerSpec(
            type=kind,
            managed=managed,
            key_prefix=prefix,
            allowed_namespaces=_allowed_namespaces(data),
            tls=parse_tls(data.get("tls"), managed=True),
        )
    if data.get("allowedNamespaces"):
        raise SpecError(
            "spec.broker.allowedNamespaces applies to a managed broker only "
            "(an external broker's network access is yours to set)"
        )
    ref = external_data.get("secretRef") or {}
    if not ref.get("name"):
        raise SpecError("spec.broker.external.secretRef.name is required")
    external = SecretRef(name=ref["name"], key=ref.get("key") or "url")
    tls = parse_tls(data.get("tls"), managed=False)
    return BrokerSpec(type=kind, external=external, key_prefix=prefix, tls=tls)


def _secret_name(data: Mapping[str, Any], field_name: str) -> str:
    ref = data.get(field_name)
    path = f"spec.broker.tls.{field_name}"
    if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str) or not ref["name"]:
        raise SpecError(f"{path}.name is required (the name of a Secret in this namespace)")
    return ref["name"]


def parse_tls(data: Any, managed: bool) -> BrokerTLSSpec:
    """spec.broker.tls; each field only where it means something (see BrokerTLSSpec)."""
    if data is None:
        return BrokerTLSSpec()
    if not isinstance(data, Mapping):
        raise SpecError(f"spec.broker.tls must be an object, got {data!r}")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SpecError(f"spec.broker.tls.enabled must be true or false, got {enabled!r}")
    if managed:
        for external_only in ("caSecretRef", "clientCertSecretRef"):
            if data.get(external_only) is not None:
                raise SpecError(
                    f"spec.broker.tls.{external_only} applies to an external broker only "
                    "(a managed broker's CA is generated, or comes from issuerRef)"
                )
        issuer = None
        if data.get("issuerRef") is not None:
            if not enabled:
                raise SpecError("spec.broker.tls.issuerRef needs spec.broker.tls.enabled: true")
            ref = data["issuerRef"]
            name = _secret_name(data, "issuerRef")
            kind = ref.get("kind") or "Issuer"
            group = ref.get("group") or "cert-manager.io"
            if not isinstance(kind, str) or not isinstance(group, str):
                raise SpecError("spec.broker.tls.issuerRef.kind and .group must be strings")
            issuer = IssuerRef(name=name, kind=kind, group=group)
        return BrokerTLSSpec(enabled=enabled, issuer=issuer)
    for managed_only in ("enabled", "issuerRef"):
        if data.get(managed_only) is not None:
            raise SpecError(
                f"spec.broker.tls.{managed_only} applies to a managed broker only (an "
                "external broker uses TLS when its URL says rediss:// or amqps://)"
            )
    ca = None
    if data.get("caSecretRef") is not None:
        key = data["caSecretRef"].get("key") or "ca.crt"
        ca = SecretRef(name=_secret_name(data, "caSecretRef"), key=str(key))
    client = None
    if data.get("clientCertSecretRef") is not None:
        client = _secret_name(data, "clientCertSecretRef")
    return BrokerTLSSpec(enabled=True, ca_secret=ca, client_cert_secret=client)


def _allowed_namespaces(data: Mapping[str, Any]) -> tuple[str, ...]:
    names = data.get("allowedNamespaces") or []
    if not isinstance(names, list):
        raise SpecError("spec.broker.allowedNamespaces must be a list of namespace names")
    for name in names:
        if not isinstance(name, str) or not NAMESPACE_PATTERN.fullmatch(name):
            raise SpecError(f"spec.broker.allowedNamespaces: {name!r} is not a namespace name")
    return tuple(sorted(set(names)))


def parse_worker(data: Mapping[str, Any]) -> WorkerSpec:
    for required in ("image", "app"):
        if not data.get(required):
            raise SpecError(f"spec.worker.{required} is required")
    app = data["app"]
    if ":" not in app:
        raise SpecError(f"spec.worker.app must be MODULE:ATTRIBUTE, got {app!r}")
    path = "spec.worker"
    return WorkerSpec(
        image=data["image"],
        app=app,
        command=tuple(data.get("command") or ()),
        args=tuple(data.get("args") or ()),
        image_pull_policy=data.get("imagePullPolicy"),
        concurrency=_integer(data, "concurrency", 4, path),
        processes=_processes(data, path),
        cpu_affinity=_cpu_affinity(data, path),
        env=tuple(data.get("env") or ()),
        resources=dict(data.get("resources") or {}),
        termination_grace_period_seconds=_integer(data, "terminationGracePeriodSeconds", 60, path),
        metrics_port=_integer(data, "metricsPort", 9100, path),
        service_account_name=data.get("serviceAccountName"),
        pod_template=dict(data.get("podTemplate") or {}),
    )


def _processes(data: Mapping[str, Any], path: str) -> int:
    value = _integer(data, "processes", 1, path)
    if not 1 <= value <= 64:
        raise SpecError(f"{path}.processes must be between 1 and 64, got {value}")
    return value


def _cpu_affinity(data: Mapping[str, Any], path: str) -> str:
    value = data.get("cpuAffinity", "none")
    if value not in ("none", "auto"):
        raise SpecError(f"{path}.cpuAffinity must be none or auto, got {value!r}")
    return value


def parse_queues(items: Any, default_target: float) -> tuple[QueueSpec, ...]:
    if not items:
        raise SpecError("spec.queues must list at least one queue")
    queues, seen = [], set()
    for index, item in enumerate(items):
        name = item.get("name") if isinstance(item, Mapping) else None
        if not name:
            raise SpecError(f"spec.queues[{index}].name is required")
        if name in seen:
            raise SpecError(f"spec.queues[{index}].name {name!r} is listed twice")
        if isinstance(name, str) and (why := reserved_queue_name(name)) is not None:
            raise SpecError(
                f"spec.queues[{index}].name {name!r} is reserved: {why}, which would collide "
                f"with Ebbtide's own queues ({RESERVED_RULE})"
            )
        seen.add(name)
        queues.append(
            QueueSpec(
                name=name,
                target_backlog_seconds=_seconds(
                    item, "targetBacklogSeconds", default_target, f"spec.queues[{index}]"
                ),
                weight=_integer(item, "weight", 1, f"spec.queues[{index}]"),
                shards=_shards(item, f"spec.queues[{index}]"),
            )
        )
    return tuple(queues)


def _shards(item: Mapping[str, Any], path: str) -> int:
    value = _integer(item, "shards", 1, path)
    if not 1 <= value <= MAX_SHARDS:
        raise SpecError(f"{path}.shards must be between 1 and {MAX_SHARDS}, got {value}")
    return value


def parse_spec(spec: Mapping[str, Any]) -> TaskQueueSpec:
    """Turn the raw `.spec` into typed values; raise SpecError naming the bad field."""
    if not isinstance(spec.get("broker"), Mapping):
        raise SpecError("spec.broker is required")
    if not isinstance(spec.get("worker"), Mapping):
        raise SpecError("spec.worker is required")
    worker = parse_worker(spec["worker"])
    # A pod's task slots: what the policy sizes replicas by and measures mu against.
    scaling = parse_scaling(spec.get("scaling") or {}, worker.concurrency * worker.processes)
    order = spec.get("queueOrder", "weighted")
    if order not in ("weighted", "strict"):
        raise SpecError(f"spec.queueOrder must be weighted or strict, got {order!r}")
    return TaskQueueSpec(
        broker=parse_broker(spec["broker"]),
        queues=parse_queues(spec.get("queues"), scaling.target_backlog_seconds),
        worker=worker,
        scaling=scaling,
        queue_order=order,
    )
