"""Pod status as the kubelet reports it, built from plain data (no processes, no API).

The phase follows the kubelet's getPhase; conditions keep their lastTransitionTime while
their status does not change, so an unchanged pod produces an identical status and the
kubelet can skip the write. Init containers are not run by the process kubelet, so
Initialized is always True.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from e2e.kubelet.downward import LOOPBACK

TERMINAL_PHASES = ("Succeeded", "Failed")


def timestamp(moment: datetime | None = None) -> str:
    """A metav1.Time: RFC 3339 in UTC, second precision."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def running(started_at: str) -> dict[str, Any]:
    return {"running": {"startedAt": started_at}}


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    state: dict[str, Any] = {"reason": reason}
    if message:
        state["message"] = message
    return {"waiting": state}


def terminated(
    exit_code: int,
    started_at: str | None,
    finished_at: str,
    *,
    reason: str | None = None,
    message: str = "",
    signal: int | None = None,
    container_id: str | None = None,
) -> dict[str, Any]:
    """A terminated state; reason defaults to Completed (exit 0) or Error, like the kubelet."""
    state: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": started_at,
        "finishedAt": finished_at,
    }
    if message:
        state["message"] = message
    if signal:
        state["signal"] = signal
    if container_id:
        state["containerID"] = container_id
    return {"terminated": state}


@dataclass
class ContainerView:
    """What the status needs to know about one container."""

    name: str
    image: str
    state: dict[str, Any]
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    container_id: str | None = None
    image_id: str = ""


def container_status(view: ContainerView) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": view.name,
        "image": view.image,
        "imageID": view.image_id,
        "ready": view.ready,
        "started": view.started,
        "restartCount": view.restart_count,
        "state": view.state,
        "lastState": view.last_state,
    }
    if view.container_id:
        status["containerID"] = view.container_id
    return status


def pod_phase(
    spec: Mapping[str, Any], statuses: Sequence[Mapping[str, Any]], terminal: bool = False
) -> str:
    """The kubelet's getPhase for regular containers. `terminal`: nothing will be
    restarted whatever the restart policy (the pod is being deleted or the node stops)."""
    by_name = {status["name"]: status for status in statuses}
    unknown = running_ = waiting_ = stopped = succeeded = 0
    for container in spec.get("containers") or []:
        status = by_name.get(container["name"])
        if status is None:
            unknown += 1
            continue
        state = status.get("state") or {}
        if "running" in state:
            running_ += 1
        elif "terminated" in state:
            stopped += 1
            if state["terminated"].get("exitCode") == 0:
                succeeded += 1
        elif "waiting" in state:
            if "terminated" in (status.get("lastState") or {}):
                stopped += 1
            else:
                waiting_ += 1
        else:
            unknown += 1
    policy = spec.get("restartPolicy") or "Always"
    if waiting_ > 0:
        return "Pending"
    if running_ > 0 and unknown == 0:
        return "Running"
    if running_ == 0 and stopped > 0 and unknown == 0:
        if terminal:
            return "Succeeded" if stopped == succeeded else "Failed"
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def condition(
    kind: str,
    ok: bool,
    previous: Mapping[str, Mapping[str, Any]],
    now: str,
    reason: str = "",
    message: str = "",
) -> dict[str, Any]:
    """A pod condition whose lastTransitionTime moves only when its status changes."""
    status = "True" if ok else "False"
    before = previous.get(kind)
    since = before.get("lastTransitionTime") if before and before.get("status") == status else None
    # reason and message are always sent ("" clears them: status is a merge patch).
    return {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": since or now,
        "reason": reason,
        "message": message,
    }


def pod_conditions(
    pod: Mapping[str, Any],
    phase: str,
    statuses: Sequence[Mapping[str, Any]],
    previous: Sequence[Mapping[str, Any]],
    now: str,
) -> list[dict[str, Any]]:
    """PodReadyToStartContainers, Initialized, ContainersReady, Ready, PodScheduled."""
    before = {c["type"]: c for c in previous if "type" in c}
    unready = [s["name"] for s in statuses if not s.get("ready")]
    completed = phase in TERMINAL_PHASES
    if completed:
        ready_reason, ready_message = "PodCompleted", ""
    elif unready:
        ready_reason = "ContainersNotReady"
        ready_message = f"containers with unready status: [{' '.join(unready)}]"
    else:
        ready_reason, ready_message = "", ""
    containers_ready = not completed and not unready
    # Readiness gates: Ready also needs each gate's condition (set by someone else) True.
    gates_ok, gate_message = True, ""
    for gate in (pod.get("spec") or {}).get("readinessGates") or []:
        kind = gate.get("conditionType", "")
        if (before.get(kind) or {}).get("status") != "True":
            gates_ok = False
            gate_message = f'corresponding condition of pod readiness gate "{kind}" does not exist.'
            break
    pod_ready = containers_ready and gates_ok
    if containers_ready and not gates_ok:
        ready_reason, ready_message = "ReadinessGatesNotReady", gate_message
    return [
        condition("PodReadyToStartContainers", not completed, before, now),
        condition("Initialized", True, before, now),
        condition("ContainersReady", containers_ready, before, now, ready_reason, ready_message),
        condition("Ready", pod_ready, before, now, ready_reason, ready_message),
        condition("PodScheduled", True, before, now),
    ]


def pod_status(
    pod: Mapping[str, Any],
    views: Sequence[ContainerView],
    previous_conditions: Sequence[Mapping[str, Any]],
    start_time: str,
    now: str,
    terminal: bool = False,
) -> dict[str, Any]:
    """The fields of pod.status that the kubelet owns (sent as a strategic merge patch, so
    other writers' conditions survive)."""
    statuses = [container_status(view) for view in views]
    phase = pod_phase(pod.get("spec") or {}, statuses, terminal)
    return {
        "phase": phase,
        "conditions": pod_conditions(pod, phase, statuses, previous_conditions, now),
        "hostIP": LOOPBACK,
        "hostIPs": [{"ip": LOOPBACK}],
        "podIP": LOOPBACK,
        "podIPs": [{"ip": LOOPBACK}],
        "startTime": start_time,
        "containerStatuses": statuses,
    }
