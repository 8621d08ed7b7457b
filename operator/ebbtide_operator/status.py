"""The TaskQueue's status: figures, conditions, and whether it is worth a write. Pure.

Status is written at most once per poll and only when something a human would see
changed after rounding, so 200 idle TaskQueues cost the API server nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ebbtide_operator import naming
from ebbtide_operator.pod_health import PodProblem
from ebbtide_operator.policy import Decision, Observation
from ebbtide_operator.spec import TaskQueueSpec

CONDITION_TYPES = (
    "Ready",
    "BrokerReady",
    "WorkersReady",
    "ScalingActive",
    "Degraded",
    "Durable",
    "Encrypted",
)
# How the broker connection is protected (Health.tls, the Encrypted condition's reason).
TLS_GENERATED = "GeneratedCA"  # managed, the operator's own CA
TLS_CERT_MANAGER = "CertManager"  # managed, spec.broker.tls.issuerRef
TLS_DISABLED = "TLSDisabled"  # managed, spec.broker.tls.enabled: false
TLS_EXTERNAL = "ExternalTLS"  # external, rediss:// or amqps://
TLS_EXTERNAL_PLAIN = "ExternalPlainText"  # external, redis:// or amqp://
TLS_UNKNOWN = "Unknown"  # external, its URL not read yet
POLICY_STATE_REFRESH_SECONDS = 30.0  # the stabilization window may lag this much on restart
# Policy memory that moves every poll: persisted at most every POLICY_STATE_REFRESH_SECONDS.
VOLATILE_STATE_KEYS = ("recommendations", "lastPollTime", "arrivalRateSmoothed")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_duration(seconds: float | None) -> str:
    """Short human form for `kubectl get`: 0s, 45s, 1m35s, 2h3m, ∞ (never drains), - (unknown)."""
    if seconds is None:
        return "-"
    if math.isinf(seconds) or math.isnan(seconds):
        return "∞"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def _rate(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, 2)


@dataclass(frozen=True)
class Health:
    """What went right or wrong in this poll, for the conditions."""

    spec_error: str | None = None
    broker_error: str | None = None
    policy_error: str | None = None
    deployment_exists: bool = True
    paused: bool = False
    target_seconds: float = 30.0
    # Durability: a managed broker that keeps tasks in memory only (an explicit opt-out),
    # and a broker that may evict keys (maxmemory-policy other than noeviction).
    persistence_disabled: bool = False
    eviction_policy: str | None = None
    tls: str = TLS_GENERATED  # one of the TLS_* reasons above
    external_broker: bool = False
    # No adoption: `Kind/name` of objects the TaskQueue needs by name that are not its own
    # (the reconcile's report), and the worker Deployment when the tick finds it foreign.
    name_conflicts: tuple[str, ...] = ()
    worker_conflict: str | None = None
    # A worker pod stuck on something waiting will not fix (pod_health.worker_problem):
    # the image cannot be found, the container cannot be created, or it keeps crashing.
    worker_problem: PodProblem | None = None

    def conflicts(self) -> tuple[str, ...]:
        worker = (self.worker_conflict,) if self.worker_conflict else ()
        return tuple(sorted(set(self.name_conflicts) | set(worker)))


def conflict_message(keys: Sequence[str]) -> str:
    """Names every foreign object, and what to do about it."""
    them = "them" if len(keys) > 1 else "it"
    return (
        f"not controlled by this TaskQueue, so left untouched: {', '.join(keys)}; "
        f"delete or rename {them} (or the TaskQueue) to let the operator create its own"
    )[:1000]


def _condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def conditions(health: Health, replicas: int, ready: int) -> list[dict[str, str]]:
    """The six conditions, in a fixed order, without transition times."""
    if health.broker_error:
        broker = _condition("BrokerReady", False, "BrokerUnreachable", health.broker_error)
    elif health.spec_error:
        broker = _condition("BrokerReady", False, "InvalidSpec", health.spec_error)
    else:
        broker = _condition(
            "BrokerReady", True, "BrokerReachable", "broker statistics are readable"
        )

    conflicting = health.conflicts()
    if health.worker_conflict:
        workers = _condition(
            "WorkersReady", False, "NameConflict", conflict_message((health.worker_conflict,))
        )
    elif not health.deployment_exists:
        workers = _condition(
            "WorkersReady", False, "DeploymentMissing", "the worker Deployment does not exist yet"
        )
    elif replicas == 0:
        workers = _condition("WorkersReady", True, "ScaledToZero", "no workers needed")
    elif ready >= replicas:
        workers = _condition(
            "WorkersReady", True, "AllReplicasReady", f"{ready}/{replicas} replicas ready"
        )
    elif health.worker_problem:
        problem = health.worker_problem
        workers = _condition(
            "WorkersReady", False, problem.reason, f"{ready}/{replicas} ready; {problem.message}"
        )
    else:
        workers = _condition(
            "WorkersReady", False, "ReplicasStarting", f"{ready}/{replicas} replicas ready"
        )

    if health.spec_error:
        scaling = _condition("ScalingActive", False, "InvalidSpec", health.spec_error)
    elif health.policy_error:
        scaling = _condition("ScalingActive", False, "PolicyError", health.policy_error)
    elif health.worker_conflict:
        scaling = _condition(
            "ScalingActive", False, "NameConflict", "the worker Deployment is not ours to scale"
        )
    elif health.paused:
        scaling = _condition("ScalingActive", False, "Paused", "spec.scaling.paused is true")
    elif health.broker_error:
        scaling = _condition(
            "ScalingActive", False, "BrokerUnreachable", "holding replicas until the broker is back"
        )
    else:
        scaling = _condition(
            "ScalingActive",
            True,
            "BacklogTime",
            f"scaling on backlog time, target {health.target_seconds:g}s",
        )

    if health.spec_error:
        degraded = _condition("Degraded", True, "InvalidSpec", health.spec_error)
    elif conflicting:
        degraded = _condition("Degraded", True, "NameConflict", conflict_message(conflicting))
    elif health.broker_error:
        degraded = _condition("Degraded", True, "BrokerUnreachable", health.broker_error)
    elif health.policy_error:
        degraded = _condition("Degraded", True, "PolicyError", health.policy_error)
    elif not health.deployment_exists:
        degraded = _condition(
            "Degraded", True, "DeploymentMissing", "the worker Deployment does not exist"
        )
    elif health.worker_problem:
        # Also behind ready old pods: a rollout to an image that cannot be found is stuck.
        problem = health.worker_problem
        degraded = _condition("Degraded", True, problem.reason, problem.message)
    elif health.eviction_policy:
        degraded = _condition("Degraded", True, "BrokerEvicts", evicts_message(health))
    else:
        degraded = _condition("Degraded", False, "AsExpected", "all good")

    failing = next((c for c in (broker, workers) if c["status"] != "True"), None)
    if conflicting:
        ready_condition = _condition("Ready", False, "NameConflict", conflict_message(conflicting))
    elif failing is None:
        ready_condition = _condition("Ready", True, "Ready", "broker reachable and workers ready")
    else:
        ready_condition = _condition("Ready", False, failing["reason"], failing["message"])
    return [
        ready_condition,
        broker,
        workers,
        scaling,
        degraded,
        durable_condition(health),
        encrypted_condition(health),
    ]


def encrypted_condition(health: Health) -> dict[str, str]:
    """Whether broker connections use TLS: like Durable, an opt-out is visible in
    `kubectl get -o wide` and `describe`, not discovered in a packet capture."""
    messages = {
        TLS_GENERATED: (True, "TLS only, verified against the TaskQueue's generated CA"),
        TLS_CERT_MANAGER: (
            True,
            "TLS only, certificate from cert-manager (spec.broker.tls.issuerRef)",
        ),
        TLS_DISABLED: (
            False,
            "spec.broker.tls.enabled is false: credentials and tasks cross the network "
            "in plain text",
        ),
        TLS_EXTERNAL: (True, "the external broker's URL is rediss:// or amqps://"),
        TLS_EXTERNAL_PLAIN: (
            False,
            "the external broker's URL is redis:// or amqp://: credentials and tasks "
            "cross the network in plain text",
        ),
        TLS_UNKNOWN: (False, "the external broker's URL has not been read yet"),
    }
    encrypted, message = messages[health.tls]
    return _condition("Encrypted", encrypted, health.tls, message)


def evicts_message(health: Health) -> str:
    return (
        f"the broker's maxmemory-policy is {health.eviction_policy}: under memory pressure "
        "it deletes keys, and with them queued tasks; set maxmemory-policy noeviction"
    )


def durable_condition(health: Health) -> dict[str, str]:
    """Whether accepted tasks survive a broker restart: the safe default says so, and an
    opt-out is visible in `kubectl describe` rather than discovered after a data loss."""
    if health.persistence_disabled:
        return _condition(
            "Durable",
            False,
            "PersistenceDisabled",
            "spec.broker.managed.persistence.enabled is false: the managed broker keeps "
            "tasks in memory only, and a pod restart or eviction loses every queued task",
        )
    if health.eviction_policy:
        return _condition("Durable", False, "BrokerEvicts", evicts_message(health))
    if health.external_broker:
        return _condition(
            "Durable", True, "ExternalBroker", "durability is the external broker's own setting"
        )
    return _condition(
        "Durable", True, "Persistent", "the managed broker keeps tasks on a PersistentVolume"
    )


def merge_conditions(
    old: Sequence[Mapping[str, Any]] | None, new: Sequence[Mapping[str, str]], now: str
) -> list[dict[str, Any]]:
    """Stamp lastTransitionTime: kept from `old` unless the condition's status flipped."""
    previous = {c.get("type"): c for c in old or ()}
    merged = []
    for condition in new:
        before = previous.get(condition["type"])
        same = before is not None and before.get("status") == condition["status"]
        stamp = (
            before.get("lastTransitionTime") if same and before.get("lastTransitionTime") else now
        )
        merged.append({**condition, "lastTransitionTime": stamp})
    return merged


def figures(
    obs: Observation | None,
    decision: Decision | None,
    replicas: int,
    ready: int,
) -> dict[str, Any]:
    """The numbers, rounded so that noise does not force a write."""
    desired = decision.replicas if decision else replicas
    out: dict[str, Any] = {
        "replicas": replicas,
        "readyReplicas": ready,
        "desiredReplicas": desired,
        "replicasSummary": f"{ready}/{desired}",
    }
    if obs is not None:
        oldest = round(obs.oldest_age_s)
        out.update(
            backlog=obs.backlog,
            inFlight=obs.in_flight,
            oldestAgeSeconds=float(oldest),
            oldestAge=format_duration(oldest),
            arrivalRate=_rate(obs.arrival_rate),
            serviceRate=_rate(obs.service_rate),
        )
    drain = decision.drain_seconds if decision else None
    if drain is not None and math.isfinite(drain):
        out.update(drainSeconds=float(round(drain)), drain=format_duration(drain))
    else:
        out.update(drainSeconds=None, drain=format_duration(drain))
    return out


def broker_secrets(taskqueue: str, spec: TaskQueueSpec) -> dict[str, str]:
    """`status.broker`: the Secret each role takes its broker URL from (key `url`, or the
    external Secret's key), so producers need not guess a name. One Secret for all roles
    on an external broker."""
    return {f"{role}Secret": spec.broker.url_secret(taskqueue, role).name for role in naming.ROLES}


def _stable(status: Mapping[str, Any]) -> dict[str, Any]:
    stable = dict(status)
    state = stable.get("policyState")
    if isinstance(state, Mapping):
        stable["policyState"] = {k: v for k, v in state.items() if k not in VOLATILE_STATE_KEYS}
    return stable


def needs_write(
    last_written: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    now: float,
    last_write_at: float | None,
    refresh_seconds: float = POLICY_STATE_REFRESH_SECONDS,
) -> bool:
    """Write when a visible field changed, or when only the policy's sliding window changed
    and the persisted copy is older than `refresh_seconds`."""
    if last_written is None or last_write_at is None:
        return True
    if _stable(last_written) != _stable(new):
        return True
    if dict(last_written) == dict(new):
        return False
    return now - last_write_at >= refresh_seconds
