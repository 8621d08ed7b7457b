"""Worker pod start-up time, measured from the pods: creation to Ready. Pure.

The policy sizes a burst by how long a new pod takes to help (policy_demand.startup_
seconds); until the operator has measured it, it uses `spec.scaling.podStartupSeconds`.
Each pod counts once (by uid), the first time it is seen Ready, and only if it has never
restarted (a restart moves the Ready transition, which would then measure the crash,
not the start-up). The estimate is the median of the last RECENT samples, as the policy
simulator measures it (simulate/), so one slow image pull does not own it; it is kept in
the TaskQueue's status (`podStartupSeconds`) and survives an operator restart.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

RECENT = 9  # samples the median is taken over (the simulator's window too)
MAX_SAMPLE_SECONDS = 900.0  # longer is a pod that was stuck (pod_health.py), not a start-up
SEEN_LIMIT = 512  # pod uids remembered, so each pod counts once


def _time(value: Any) -> float | None:
    """An API timestamp (RFC 3339, as the client or a watch gives it) in epoch seconds."""
    if isinstance(value, datetime):
        return value.timestamp()
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def startup_of(pod: Mapping[str, Any]) -> float | None:
    """Seconds from the pod's creation to its Ready condition, or None when it is not
    Ready, has restarted, or the times are missing or implausible."""
    status = pod.get("status") or {}
    ready = next(
        (c for c in status.get("conditions") or () if c.get("type") == "Ready"),
        None,
    )
    if ready is None or ready.get("status") != "True":
        return None
    for container in status.get("containerStatuses") or ():
        if int(container.get("restartCount") or 0) > 0:
            return None
    created = _time((pod.get("metadata") or {}).get("creationTimestamp"))
    ready_at = _time(ready.get("lastTransitionTime"))
    if created is None or ready_at is None:
        return None
    seconds = ready_at - created
    return seconds if 0.0 <= seconds <= MAX_SAMPLE_SECONDS else None


@dataclass
class StartupEstimate:
    """One TaskQueue's recent samples, and the pods already counted."""

    samples: list[float] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        """The median of the recent samples; None until a pod has been measured."""
        return statistics.median(self.samples) if self.samples else None

    def resume(self, seconds: float | None) -> None:
        """Carry on from a persisted estimate (one sample's worth) after a restart."""
        if seconds is not None and not self.samples:
            self.samples = [seconds]

    def observe(self, pods: Iterable[Mapping[str, Any]]) -> list[float]:
        """Count each newly Ready pod once; the samples taken, oldest pod first."""
        known = set(self.seen)
        fresh: list[tuple[float, str, float]] = []
        for pod in pods:
            meta = pod.get("metadata") or {}
            uid = str(meta.get("uid") or meta.get("name") or "")
            if not uid or uid in known:
                continue
            seconds = startup_of(pod)
            if seconds is None:
                continue
            fresh.append((_time(meta.get("creationTimestamp")) or 0.0, uid, seconds))
        fresh.sort()
        for _, uid, seconds in fresh:
            self.samples.append(seconds)
            self.seen.append(uid)
        del self.samples[:-RECENT]
        del self.seen[:-SEEN_LIMIT]
        return [seconds for _, _, seconds in fresh]


def worth_listing(ready: int, previous_ready: int | None) -> bool:
    """More pods Ready than at the last tick: some just finished starting. (While pods
    are still starting the tick lists them anyway, for pod_health.)"""
    return previous_ready is not None and ready > previous_ready


def restored(value: Any) -> float | None:
    """The estimate from a persisted status value; None when absent or unreadable."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and 0.0 <= seconds <= MAX_SAMPLE_SECONDS else None
