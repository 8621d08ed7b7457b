"""The trivial scheduler's choices, the Node/Lease bodies and the log line format."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from e2e.kubelet.handlers import static_env  # noqa: E402
from e2e.kubelet.log import log  # noqa: E402
from e2e.kubelet.node import (  # noqa: E402
    lease_body,
    micro_time,
    node_labels,
    node_status,
    preserve_transitions,
)
from e2e.kubelet.scheduler import binding_body, wants_binding  # noqa: E402

LABELS = node_labels("node-a")


def unbound(**spec):
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": spec, "status": {}}


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (unbound(), True),
        (unbound(schedulerName="default-scheduler"), True),
        (unbound(nodeSelector={"kubernetes.io/os": "linux"}), True),
        (unbound(nodeSelector={"kubernetes.io/hostname": "node-b"}), False),
        (unbound(schedulerName="custom"), False),
        (unbound(nodeName="node-b"), False),
        ({**unbound(), "metadata": {"name": "p", "deletionTimestamp": "x"}}, False),
        ({**unbound(), "status": {"phase": "Succeeded"}}, False),
    ],
)
def test_wants_binding(pod, expected):
    assert wants_binding(pod, LABELS) is expected


def test_binding_body_carries_the_uid():
    body = binding_body(unbound(), "node-a")
    assert body["metadata"] == {"name": "p", "namespace": "ns", "uid": "u1"}
    assert body["target"] == {"apiVersion": "v1", "kind": "Node", "name": "node-a"}


def test_node_status_keeps_transition_times():
    capacity = {"cpu": "4", "memory": "1Ki", "pods": "110"}
    first = node_status(capacity, "v1.36.3", "2025-01-01T00:00:00Z")
    second = preserve_transitions(node_status(capacity, "v1.36.3", "2025-01-01T00:00:10Z"), first)
    ready = next(c for c in second["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    assert ready["lastHeartbeatTime"] == "2025-01-01T00:00:10Z"
    assert second["addresses"][0] == {"type": "InternalIP", "address": "127.0.0.1"}
    assert second["allocatable"] == capacity and second["nodeInfo"]["kubeletVersion"] == "v1.36.3"
    stopping = preserve_transitions(
        node_status(capacity, "v1", "2025-01-01T00:00:20Z", False), second
    )
    ready = next(c for c in stopping["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["lastTransitionTime"] == "2025-01-01T00:00:20Z"


def test_lease_body():
    lease = lease_body("node-a", "uid-1", micro_time())
    assert lease["metadata"]["namespace"] == "kube-node-lease"
    assert lease["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", lease["spec"]["renewTime"])


def test_static_env_for_exec_handlers():
    container = {"env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"x": {}}}]}
    assert static_env(container) == {"A": "1", "B": ""}


def test_log_line_format(capsys):
    log("started", "ns/pod", container="app", pid=42, message="two words", skipped=None)
    line = capsys.readouterr().err
    assert re.fullmatch(
        r'kubelet: started ns/pod container=app pid=42 message="two words" t=\d\d:\d\d:\d\d\.\d{3}\n',
        line,
    )
