"""Two or more operator replicas, one active: kopf peering with priorities.

Every replica runs with mandatory peering, so it starts *paused* until it has read the
peering object. Priorities are unique and older replicas outrank newer ones (`priority`),
so a replica that joins (a rollout, a reschedule) stays standby, and never ticks beside
the active one; when the active replica stops cleanly it leaves the peering at once, and
when it dies its entry expires after `lifetime` seconds (default 10), after which the
oldest standby resumes: its TaskQueue daemons start and carry on from the state each
TaskQueue's status holds. kopf pauses a replica's daemons, not just its handlers.

Environment (the chart sets these when replicaCount > 1):
  EBBTIDE_PEERING             the peering object's name; unset = one replica, standalone
  EBBTIDE_PEERING_LIFETIME    seconds without a keep-alive before a replica counts as dead
  EBBTIDE_PEERING_NAMESPACES  comma-separated: the watched namespaces (one KopfPeering in
                              each); empty = cluster-wide (one ClusterKopfPeering)
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GROUP, VERSION = "kopf.dev", "v1"
DEFAULT_LIFETIME = 10
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Priorities fall with the start time in ms; the pod name's hash breaks a tie within one.
PRIORITY_CEILING = 10**16


class PeeringConfigError(ValueError):
    """A peering setting is invalid; the message names the variable and value."""


@dataclass(frozen=True)
class Peering:
    name: str
    lifetime: int
    namespaces: tuple[str, ...]  # empty: cluster-wide

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def priority(started_at: float, pod_name: str) -> int:
    """Unique per replica, higher for the one that started first."""
    return PRIORITY_CEILING - int(started_at * 1000) * 1000 - zlib.crc32(pod_name.encode()) % 1000


def from_env(env: Mapping[str, str]) -> Peering | None:
    """The peering settings, or None for a single standalone replica."""
    name = env.get("EBBTIDE_PEERING", "").strip()
    if not name:
        return None
    if not NAME.match(name) or len(name) > 253:
        raise PeeringConfigError(f"EBBTIDE_PEERING={name!r} is not a valid object name")
    raw = env.get("EBBTIDE_PEERING_LIFETIME", "").strip() or str(DEFAULT_LIFETIME)
    try:
        lifetime = int(raw)
    except ValueError:
        raise PeeringConfigError(f"EBBTIDE_PEERING_LIFETIME={raw!r} is not an integer") from None
    if not 2 <= lifetime <= 600:
        raise PeeringConfigError(f"EBBTIDE_PEERING_LIFETIME={lifetime} must be 2..600 seconds")
    namespaces = tuple(
        ns.strip() for ns in env.get("EBBTIDE_PEERING_NAMESPACES", "").split(",") if ns.strip()
    )
    for ns in namespaces:
        if not NAME.match(ns):
            raise PeeringConfigError(f"EBBTIDE_PEERING_NAMESPACES names {ns!r}: not a namespace")
    return Peering(name, lifetime, namespaces)


def peering_object(peering: Peering, namespace: str | None) -> dict[str, Any]:
    """The (Cluster)KopfPeering kopf keeps its keep-alives in."""
    kind = "ClusterKopfPeering" if namespace is None else "KopfPeering"
    meta: dict[str, Any] = {"name": peering.name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": meta}


def ensure_peering_objects(peering: Peering, custom: Any) -> None:
    """Create the peering object(s) if missing: a replica with mandatory peering stays
    paused until it has read one. `custom` is a kubernetes CustomObjectsApi."""
    import kubernetes

    def create(call: Any, *args: Any) -> None:
        try:
            call(*args)
        except kubernetes.client.ApiException as error:
            if error.status != 409:  # already there: another replica made it
                raise

    if peering.clusterwide:
        body = peering_object(peering, None)
        create(custom.create_cluster_custom_object, GROUP, VERSION, "clusterkopfpeerings", body)
        return
    for namespace in peering.namespaces:
        body = peering_object(peering, namespace)
        create(
            custom.create_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            "kopfpeerings",
            body,
        )
