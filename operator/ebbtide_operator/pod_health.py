"""Why worker pods do not start, from their container statuses. Pure.

A Deployment only counts ready replicas; the reason a pod never gets there is in its
container statuses: an image that cannot be found (`ErrImageNeverPull`, `ErrImagePull`,
`ImagePullBackOff`, `InvalidImageName`), a container the kubelet cannot build
(`CreateContainerConfigError`, `CreateContainerError`) or one that keeps crashing
(`CrashLoopBackOff`). None of these passes by waiting, so the tick copies the first one
into the TaskQueue's conditions, naming the image, instead of reporting "0/1 replicas
ready" forever. The tick lists the pods only while the Deployment is not all ready or
not all updated (`should_look`), so a healthy TaskQueue costs no pod list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The waiting reasons that mean "this pod will not become ready on its own", most
# telling first: with several pods stuck for different reasons, the image wins.
STUCK_REASONS = (
    "ErrImageNeverPull",
    "InvalidImageName",
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
)
IMAGE_REASONS = frozenset(STUCK_REASONS[:4])
MESSAGE_LIMIT = 1000


@dataclass(frozen=True)
class PodProblem:
    """One condition's worth: `reason` is the kubelet's, `message` names pod and image."""

    reason: str
    message: str


def should_look(deployment: Mapping[str, Any] | None) -> bool:
    """Whether the worker pods are worth listing: some wanted replica is not ready, or
    not yet on the current template (a rollout to a bad image behind ready old pods)."""
    if deployment is None:
        return False
    wanted = int((deployment.get("spec") or {}).get("replicas") or 0)
    status = deployment.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    return wanted > 0 and (ready < wanted or updated < wanted)


def _stuck(pod: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(reason, container, image, kubelet message) of each stuck container of one pod."""
    status = pod.get("status") or {}
    found = []
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or ():
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason") or ""
            if reason in STUCK_REASONS:
                found.append(
                    (
                        reason,
                        str(container.get("name") or "?"),
                        str(container.get("image") or "?"),
                        str(waiting.get("message") or "").strip(),
                    )
                )
    return found


def worker_problem(pods: Sequence[Mapping[str, Any]]) -> PodProblem | None:
    """The most telling stuck container among `pods` (pods being deleted are ignored:
    a rollout's old pods), or None when nothing is stuck. Deterministic: the same pods
    give the same message, so the status is not rewritten every poll."""
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    stuck: list[tuple[int, str, str, str, str, str]] = []
    for pod in live:
        name = str((pod.get("metadata") or {}).get("name") or "?")
        for reason, container, image, message in _stuck(pod):
            stuck.append((STUCK_REASONS.index(reason), name, reason, container, image, message))
    if not stuck:
        return None
    stuck.sort()
    _, pod, reason, container, image, kubelet = stuck[0]
    pods_stuck = len({entry[1] for entry in stuck})
    if reason in IMAGE_REASONS:
        what = f'image "{image}" of container {container} cannot be pulled'
        if reason == "ErrImageNeverPull":
            what = f'image "{image}" of container {container} is not on the node'
    elif reason == "CrashLoopBackOff":
        what = f'container {container} (image "{image}") keeps crashing'
    else:
        what = f'container {container} (image "{image}") cannot be created'
    message = f"{reason}: {what} ({pods_stuck}/{len(live)} worker pods stuck, e.g. {pod})"
    if kubelet:
        message += f": {kubelet}"
    return PodProblem(reason, message[:MESSAGE_LIMIT])
