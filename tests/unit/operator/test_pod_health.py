"""Worker pods' container statuses -> why they are stuck, and when to look. Pure."""

from __future__ import annotations

from typing import Any

import pytest
from ebbtide_operator import pod_health, status
from ebbtide_operator.pod_health import PodProblem, should_look, worker_problem

IMAGE = "docker.io/ebbtide/not-built:0.0.0"
NEVER = f'Container image "{IMAGE}" is not present with pull policy of Never'


def pod(
    name: str,
    reason: str | None = None,
    message: str = "",
    *,
    image: str = IMAGE,
    init: bool = False,
    deleting: bool = False,
) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {"startedAt": "2026-12-02T00:00:00Z"}}
    if reason is not None:
        state = {"waiting": {"reason": reason, "message": message}}
    container = {"name": "worker", "image": image, "ready": reason is None, "state": state}
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    key = "initContainerStatuses" if init else "containerStatuses"
    return {"metadata": meta, "status": {"phase": "Pending", key: [container]}}


def deployment(replicas: int, ready: int, updated: int | None = None) -> dict[str, Any]:
    updated = replicas if updated is None else updated
    return {
        "spec": {"replicas": replicas},
        "status": {"readyReplicas": ready, "updatedReplicas": updated},
    }


def test_an_image_not_on_the_node_names_the_image_and_the_kubelets_words():
    problem = worker_problem([pod("q-worker-a", "ErrImageNeverPull", NEVER)])
    assert problem is not None and problem.reason == "ErrImageNeverPull"
    assert problem.message == (
        f'ErrImageNeverPull: image "{IMAGE}" of container worker is not on the node '
        f"(1/1 worker pods stuck, e.g. q-worker-a): {NEVER}"
    )


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"])
def test_image_pull_failures_name_the_image(reason):
    problem = worker_problem([pod("q-worker-a", reason, f'Back-off pulling image "{IMAGE}"')])
    assert problem is not None and problem.reason == reason
    assert problem.message.startswith(f'{reason}: image "{IMAGE}" of container worker cannot be')


def test_healthy_starting_and_deleted_pods_are_not_a_problem():
    assert worker_problem([]) is None
    assert worker_problem([pod("a"), pod("b", "ContainerCreating")]) is None
    assert worker_problem([pod("old", "ErrImagePull", deleting=True)]) is None


def test_the_image_reason_wins_and_the_count_covers_every_stuck_pod():
    pods = [
        pod("q-worker-c", "CrashLoopBackOff", "back-off 10s restarting failed container"),
        pod("q-worker-b", "ImagePullBackOff", "Back-off"),
        pod("q-worker-a"),
    ]
    problem = worker_problem(pods)
    assert problem is not None and problem.reason == "ImagePullBackOff"
    assert "(2/3 worker pods stuck, e.g. q-worker-b)" in problem.message
    # The same pods in any order give the same message: no status write every poll.
    assert worker_problem(list(reversed(pods))) == problem


def test_crash_loops_and_init_containers_and_config_errors():
    crash = worker_problem([pod("a", "CrashLoopBackOff", "back-off 40s")])
    assert crash == PodProblem(
        "CrashLoopBackOff",
        f'CrashLoopBackOff: container worker (image "{IMAGE}") keeps crashing '
        "(1/1 worker pods stuck, e.g. a): back-off 40s",
    )
    init = worker_problem([pod("a", "ErrImageNeverPull", init=True)])
    assert init is not None and init.reason == "ErrImageNeverPull"
    config = worker_problem([pod("a", "CreateContainerConfigError", 'secret "s" not found')])
    assert config is not None and "cannot be created" in config.message
    assert config.message.endswith('secret "s" not found')


def test_a_long_kubelet_message_is_cut_to_the_condition_limit():
    problem = worker_problem([pod("a", "ErrImagePull", "x" * 5000)])
    assert problem is not None and len(problem.message) == pod_health.MESSAGE_LIMIT


@pytest.mark.parametrize(
    ("found", "look"),
    [
        (None, False),
        (deployment(0, 0, 0), False),  # scaled to zero: no pods to ask
        (deployment(2, 2), False),  # all ready on the current template: no list
        (deployment(2, 1), True),
        (deployment(1, 1, 0), True),  # a rollout behind a ready old pod
        ({"spec": {"replicas": 1}}, True),  # no status yet
    ],
)
def test_the_pods_are_listed_only_while_some_are_not_ready_or_not_updated(found, look):
    assert should_look(found) is look


def conditions(**health) -> dict[str, dict[str, str]]:
    return {c["type"]: c for c in status.conditions(status.Health(**health), 1, 0)}


def test_a_stuck_worker_fails_workers_ready_and_ready_and_degrades():
    problem = worker_problem([pod("q-worker-a", "ErrImageNeverPull", NEVER)])
    c = conditions(worker_problem=problem)
    assert c["WorkersReady"]["status"] == "False"
    assert c["WorkersReady"]["reason"] == "ErrImageNeverPull"
    assert c["WorkersReady"]["message"] == f"0/1 ready; {problem.message}"
    assert c["Ready"]["reason"] == "ErrImageNeverPull" and IMAGE in c["Ready"]["message"]
    assert c["Degraded"]["status"] == "True" and c["Degraded"]["reason"] == "ErrImageNeverPull"


def test_a_stuck_rollout_behind_ready_pods_degrades_but_workers_stay_ready():
    problem = PodProblem("ImagePullBackOff", "ImagePullBackOff: image ...")
    c = {
        x["type"]: x
        for x in status.conditions(status.Health(worker_problem=problem), replicas=1, ready=1)
    }
    assert c["WorkersReady"]["status"] == "True"
    assert c["Degraded"]["status"] == "True" and c["Degraded"]["reason"] == "ImagePullBackOff"


def test_a_broker_error_still_comes_first():
    problem = PodProblem("ErrImagePull", "ErrImagePull: image ...")
    c = conditions(worker_problem=problem, broker_error="connection refused")
    assert c["Degraded"]["reason"] == "BrokerUnreachable"
    assert c["Ready"]["reason"] == "BrokerUnreachable"
    assert c["WorkersReady"]["reason"] == "ErrImagePull"
