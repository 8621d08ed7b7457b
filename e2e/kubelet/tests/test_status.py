"""Pod status building: phase (the kubelet's getPhase), conditions, container statuses."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from e2e.kubelet.podstatus import (  # noqa: E402
    ContainerView,
    container_status,
    pod_conditions,
    pod_phase,
    pod_status,
    running,
    terminated,
    waiting,
)

T0, T1, T2 = "2025-01-01T00:00:00Z", "2025-01-01T00:00:05Z", "2025-01-01T00:00:09Z"


def spec(policy="Always", names=("a",)):
    return {"restartPolicy": policy, "containers": [{"name": n} for n in names]}


def status(name, state, last=None, ready=False):
    return {"name": name, "state": state, "lastState": last or {}, "ready": ready}


DONE_OK = terminated(0, T0, T1)
DONE_BAD = terminated(3, T0, T1)
CRASHED = waiting("CrashLoopBackOff", "back-off")


@pytest.mark.parametrize(
    ("policy", "states", "expected"),
    [
        ("Always", [waiting("ContainerCreating")], "Pending"),
        ("Always", [waiting("ImageNotMapped", "x")], "Pending"),
        ("Always", [running(T0)], "Running"),
        ("Always", [DONE_OK], "Running"),
        ("Always", [DONE_BAD], "Running"),
        ("OnFailure", [DONE_OK], "Succeeded"),
        ("OnFailure", [DONE_BAD], "Running"),
        ("Never", [DONE_OK], "Succeeded"),
        ("Never", [DONE_BAD], "Failed"),
        ("Never", [running(T0), DONE_BAD], "Running"),
        ("Never", [waiting("ContainerCreating"), running(T0)], "Pending"),
        ("Never", [DONE_OK, DONE_BAD], "Failed"),
    ],
)
def test_phase(policy, states, expected):
    names = [f"c{i}" for i in range(len(states))]
    statuses = [status(n, s) for n, s in zip(names, states, strict=True)]
    assert pod_phase(spec(policy, names), statuses) == expected


def test_crash_loop_counts_as_stopped():
    statuses = [status("a", CRASHED, last=DONE_BAD)]
    assert pod_phase(spec("Always"), statuses) == "Running"
    assert pod_phase(spec("OnFailure"), statuses) == "Running"


def test_terminal_pod_phase_ignores_policy():
    assert pod_phase(spec("Always"), [status("a", DONE_OK)], terminal=True) == "Succeeded"
    assert (
        pod_phase(spec("Always"), [status("a", terminated(143, T0, T1))], terminal=True) == "Failed"
    )


def test_unknown_container_is_pending():
    assert pod_phase(spec("Always", ("a", "b")), [status("a", running(T0))]) == "Pending"


def test_terminated_reasons():
    assert DONE_OK["terminated"]["reason"] == "Completed"
    assert DONE_BAD["terminated"]["reason"] == "Error"
    killed = terminated(137, T0, T1, signal=9, container_id="process://42")["terminated"]
    assert killed["signal"] == 9 and killed["containerID"] == "process://42"


def conds(result):
    return {c["type"]: c for c in result}


def test_conditions_ready_and_transition_times_are_kept():
    pod = {"spec": spec()}
    statuses = [status("a", running(T0), ready=False)]
    first = conds(pod_conditions(pod, "Running", statuses, [], T0))
    assert first["Ready"]["status"] == "False"
    assert first["ContainersReady"]["message"] == "containers with unready status: [a]"
    assert first["PodScheduled"]["status"] == "True" and first["Initialized"]["status"] == "True"

    statuses = [status("a", running(T0), ready=True)]
    second = conds(pod_conditions(pod, "Running", statuses, list(first.values()), T1))
    assert second["Ready"]["status"] == "True" and second["Ready"]["lastTransitionTime"] == T1
    assert second["Initialized"]["lastTransitionTime"] == T0  # unchanged status, unchanged time
    assert second["Ready"]["reason"] == "" and second["Ready"]["message"] == ""

    third = conds(pod_conditions(pod, "Running", statuses, list(second.values()), T2))
    assert third == second  # nothing changed: identical, so no status write


def test_scheduled_time_from_the_binding_is_kept():
    bound = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": T0}]
    result = conds(pod_conditions({"spec": spec()}, "Pending", [], bound, T2))
    assert result["PodScheduled"]["lastTransitionTime"] == T0


def test_completed_pod_is_not_ready():
    statuses = [status("a", DONE_OK)]
    result = conds(pod_conditions({"spec": spec("Never")}, "Succeeded", statuses, [], T0))
    assert result["Ready"]["status"] == "False" and result["Ready"]["reason"] == "PodCompleted"


def test_readiness_gates():
    pod = {"spec": {**spec(), "readinessGates": [{"conditionType": "example.com/lb"}]}}
    statuses = [status("a", running(T0), ready=True)]
    result = conds(pod_conditions(pod, "Running", statuses, [], T0))
    assert result["ContainersReady"]["status"] == "True"
    assert (
        result["Ready"]["status"] == "False"
        and result["Ready"]["reason"] == "ReadinessGatesNotReady"
    )
    gate = [{"type": "example.com/lb", "status": "True"}]
    assert conds(pod_conditions(pod, "Running", statuses, gate, T0))["Ready"]["status"] == "True"


def test_pod_status_shape():
    views = [
        ContainerView(
            name="a",
            image="python:3.11",
            state=running(T0),
            last_state=DONE_BAD,
            restart_count=1,
            ready=True,
            started=True,
            container_id="process://7",
            image_id="process://python",
        )
    ]
    result = pod_status({"spec": spec()}, views, [], T0, T1)
    assert result["phase"] == "Running"
    assert result["podIP"] == result["hostIP"] == "127.0.0.1"
    assert result["podIPs"] == [{"ip": "127.0.0.1"}]
    assert result["startTime"] == T0
    (container,) = result["containerStatuses"]
    assert container == container_status(views[0])
    assert container["restartCount"] == 1 and container["lastState"] == DONE_BAD
    assert container["containerID"] == "process://7"
    assert conds(result["conditions"])["Ready"]["status"] == "True"
