"""The process kubelet on a real API server: a Deployment's pods run as local processes,
a scale-down really stops the removed pods' processes with SIGTERM, and images, Secrets,
restarts and ports behave the way they would on a real kubelet.

Every wait polls the API (or the files the pods write) with a deadline.
"""

from __future__ import annotations

import json
import signal
import sys
import textwrap
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from e2e import processes
from e2e.tests.support import ROOT, tail, wait_for

HOST_PORTS_ANNOTATION = "e2e.ebbtide.dev/host-ports"

# Records its pod name and pid on start, and "<pod> got SIGTERM" when it gets SIGTERM.
SIGTERM_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    out, name = os.environ["OUT_DIR"], os.environ["POD_NAME"]

    def on_sigterm(signum, frame):
        with open(os.path.join(out, "sigterm.txt"), "a") as f:
            f.write(f"{name} got SIGTERM\\n")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    with open(os.path.join(out, "started.txt"), "a") as f:
        f.write(f"{name} {os.getpid()}\\n")
    while True:
        time.sleep(3600)
    """
)


@pytest.fixture
def process_kubelet(kubelet):
    """These tests look at the pods' processes, so they need the process kubelet."""
    if kubelet is None:
        pytest.skip("runs pods as local processes: only on the local control plane")
    return kubelet


def deployment(name: str, replicas: int, container: dict[str, Any], grace: int = 10) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"terminationGracePeriodSeconds": grace, "containers": [container]},
            },
        },
    }


def pod(name: str, container: dict[str, Any], restart_policy: str = "Never") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "main", **container}],
        },
    }


def pods_of(core, namespace: str, app: str) -> list:
    return core.list_namespaced_pod(namespace, label_selector=f"app={app}").items


def is_ready(p) -> bool:
    return p.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in p.status.conditions or []
    )


def pid_of(p) -> int:
    (status,) = p.status.container_statuses
    assert status.container_id.startswith("process://"), status.container_id
    return int(status.container_id.removeprefix("process://"))


def alive(pid: int) -> bool:
    """Running (a zombie, killed but not yet reaped by its new parent, counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def container_state(core, namespace: str, name: str):
    found = core.read_namespaced_pod(name, namespace)
    statuses = found.status.container_statuses or []
    return found, (statuses[0] if statuses else None)


def test_deployment_pods_run_as_processes_and_scale_down_sends_sigterm(
    process_kubelet, namespace, core, apps, tmp_path
):
    container = {
        "name": "app",
        "image": "python:3.11",
        "command": ["python", "-c", SIGTERM_SCRIPT],
        "env": [
            {"name": "OUT_DIR", "value": str(tmp_path)},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
    }
    apps.create_namespaced_deployment(namespace, deployment("sleeper", 3, container))

    def three_ready_processes() -> dict[str, int] | None:
        pods = pods_of(core, namespace, "sleeper")
        if len(pods) != 3 or not all(is_ready(p) for p in pods):
            return None
        assert all(p.spec.node_name == process_kubelet.node_name for p in pods)
        pids = {p.metadata.name: pid_of(p) for p in pods}
        started = dict(line.split() for line in lines(tmp_path / "started.txt"))
        if set(started) != set(pids):
            return None
        # The API's pid is the process that wrote its own POD_NAME (downward API).
        assert {name: int(pid) for name, pid in started.items()} == pids
        return pids

    pids = wait_for(three_ready_processes, 60, "3 Running+Ready pods with their processes")
    assert len(set(pids.values())) == 3
    assert all(alive(pid) for pid in pids.values())
    assert lines(tmp_path / "sigterm.txt") == []

    apps.patch_namespaced_deployment_scale("sleeper", namespace, {"spec": {"replicas": 1}})

    def one_pod_left() -> str | None:
        pods = pods_of(core, namespace, "sleeper")
        return pods[0].metadata.name if len(pods) == 1 else None

    survivor = wait_for(one_pod_left, 60, "the scale-down to leave exactly one pod")
    assert survivor in pids
    removed = set(pids) - {survivor}
    assert sorted(lines(tmp_path / "sigterm.txt")) == sorted(f"{p} got SIGTERM" for p in removed)
    wait_for(
        lambda: not any(alive(pids[p]) for p in removed), 10, "the removed pods' processes to exit"
    )
    assert alive(pids[survivor])
    (left,) = pods_of(core, namespace, "sleeper")
    assert is_ready(left) and pid_of(left) == pids[survivor]


def test_unmapped_image_waits_with_image_not_mapped(process_kubelet, namespace, core):
    image = "registry.example.com/nothing-here:1.0"
    core.create_namespaced_pod(namespace, pod("unmapped", {"image": image}))

    def waiting_reason():
        found, status = container_state(core, namespace, "unmapped")
        waiting = status and status.state.waiting
        return (found, waiting) if waiting and waiting.reason == "ImageNotMapped" else None

    found, waiting = wait_for(waiting_reason, 30, "the ImageNotMapped waiting reason")
    assert image in waiting.message and "--image-map" in waiting.message
    assert found.status.phase == "Pending"


def test_secret_env_resolves_and_a_missing_secret_waits_then_recovers(
    process_kubelet, namespace, core, tmp_path
):
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "creds"}, "stringData": {"password": "hunter2"}},
    )

    def writer(name: str, secret: str, key: str) -> dict:
        return pod(
            name,
            {
                "image": "python:3.11",
                "command": [
                    "python",
                    "-c",
                    "import os, sys; open(sys.argv[1], 'w').write(os.environ['PW'])",
                ],
                "args": [str(tmp_path / f"{name}.txt")],
                "env": [
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                ],
            },
        )

    core.create_namespaced_pod(namespace, writer("present", "creds", "password"))
    core.create_namespaced_pod(namespace, writer("late", "late-creds", "password"))
    core.create_namespaced_pod(namespace, writer("nokey", "creds", "nope"))

    def phase(name: str) -> str:
        return core.read_namespaced_pod(name, namespace).status.phase

    wait_for(lambda: phase("present") == "Succeeded", 30, "the pod with its Secret to succeed")
    assert (tmp_path / "present.txt").read_text() == "hunter2"
    _, status = container_state(core, namespace, "present")
    assert status.state.terminated.exit_code == 0
    assert status.state.terminated.reason == "Completed"

    def config_error(name: str):
        _, status = container_state(core, namespace, name)
        waiting = status and status.state.waiting
        return waiting if waiting and waiting.reason == "CreateContainerConfigError" else None

    late = wait_for(
        lambda: config_error("late"), 30, "CreateContainerConfigError for a missing Secret"
    )
    assert late.message == 'secret "late-creds" not found'
    nokey = wait_for(
        lambda: config_error("nokey"), 30, "CreateContainerConfigError for a missing key"
    )
    assert nokey.message == f"couldn't find key nope in Secret {namespace}/creds"

    # The kubelet retries: once the Secret exists, the pod runs.
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "late-creds"}, "stringData": {"password": "s3cret"}}
    )
    wait_for(lambda: phase("late") == "Succeeded", 30, "the pod to run once its Secret exists")
    assert (tmp_path / "late.txt").read_text() == "s3cret"


def test_restart_on_failure_reports_exit_codes_and_restarts(
    process_kubelet, namespace, core, tmp_path
):
    marker = tmp_path / "failed-once"
    script = (
        "import os, sys\n"
        "if not os.path.exists(sys.argv[1]):\n"
        "    open(sys.argv[1], 'w').close()\n"
        "    sys.exit(3)\n"
    )
    core.create_namespaced_pod(
        namespace,
        pod(
            "flaky",
            {"image": "python:3.11", "command": ["python", "-c", script, str(marker)]},
            restart_policy="OnFailure",
        ),
    )

    def succeeded():
        found, status = container_state(core, namespace, "flaky")
        return status if found.status.phase == "Succeeded" else None

    status = wait_for(succeeded, 30, "the OnFailure pod to succeed on its second run")
    assert status.restart_count == 1
    assert status.last_state.terminated.exit_code == 3
    assert status.state.terminated.exit_code == 0


def test_replicas_get_their_own_host_port_and_readiness_probe(
    process_kubelet, namespace, core, apps
):
    container = {
        "name": "web",
        "image": "python:3.11",
        "command": ["python", "-m", "http.server", "8080", "--bind", "127.0.0.1"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    apps.create_namespaced_deployment(namespace, deployment("web", 2, container, grace=5))

    def two_ready():
        pods = pods_of(core, namespace, "web")
        ready = len(pods) == 2 and all(is_ready(p) for p in pods)
        annotated = all(HOST_PORTS_ANNOTATION in (p.metadata.annotations or {}) for p in pods)
        return pods if ready and annotated else None

    pods = wait_for(two_ready, 60, "2 web pods Ready through their readiness probes")
    ports = [json.loads(p.metadata.annotations[HOST_PORTS_ANNOTATION])["8080"] for p in pods]
    assert len(set(ports)) == 2 and 8080 not in ports
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert response.status == 200


def test_node_is_ready_and_its_lease_is_renewed(process_kubelet, core, api_client):
    from kubernetes import client

    node = core.read_node(process_kubelet.node_name)
    ready = {c.type: c.status for c in node.status.conditions}
    assert ready["Ready"] == "True"
    assert node.status.addresses[0].address == "127.0.0.1"
    assert int(node.status.allocatable["pods"]) > 0
    assert not node.spec.taints  # the node-lifecycle controller finds nothing wrong
    leases = client.CoordinationV1Api(api_client)
    lease = leases.read_namespaced_lease(process_kubelet.node_name, "kube-node-lease")
    assert lease.spec.holder_identity == process_kubelet.node_name
    age = (datetime.now(UTC) - lease.spec.renew_time).total_seconds()
    assert age < 30, f"the lease was last renewed {age:.0f}s ago"


def test_nothing_outlives_a_sigkilled_kubelet(process_kubelet, kube_env, namespace, core, tmp_path):
    """A second kubelet (not scheduling, so it does not race the session's) runs a pod
    whose process starts children of its own; SIGKILL the kubelet: they all die."""
    node = f"e2e-sigkill-{uuid.uuid4().hex[:6]}"
    log_path = tmp_path / "kubelet.log"
    argv = [sys.executable, "-m", "e2e.kubelet", "--kubeconfig", kube_env.kubeconfig]
    argv += ["--node-name", node, "--state-dir", str(tmp_path / "state"), "--no-schedule"]
    popen = processes.spawn(argv, log_path, env={**kube_env.env, "PYTHONPATH": str(ROOT)})
    try:
        wait_for(lambda: core.read_node(node), 60, f"Node {node}")
        script = (
            "import os, subprocess, sys, time\n"
            "kids = [subprocess.Popen(['sleep', '1000']) for _ in range(2)]\n"
            "open(sys.argv[1], 'w').write(' '.join(str(p) for p in [os.getpid()] + [k.pid for k in kids]))\n"
            "time.sleep(1000)\n"
        )
        pids_file = tmp_path / "pids"
        spec = pod(
            "tree", {"image": "python:3.11", "command": ["python", "-c", script, str(pids_file)]}
        )
        spec["spec"]["nodeName"] = node  # bound by hand: this kubelet does not schedule
        core.create_namespaced_pod(namespace, spec)
        wait_for(
            lambda: pids_file.exists() and len(pids_file.read_text().split()) == 3,
            30,
            f"the pod's processes to start (kubelet log:\n{tail(log_path)})",
        )
        pids = [int(pid) for pid in pids_file.read_text().split()]
        assert all(alive(pid) for pid in pids)
        popen.send_signal(signal.SIGKILL)
        popen.wait(timeout=10)
        wait_for(lambda: not any(alive(pid) for pid in pids), 10, "every process of the pod to die")
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()
        core.delete_node(node)
        try:
            core.delete_namespaced_pod("tree", namespace, grace_period_seconds=0)
        except Exception:  # noqa: BLE001 - already gone
            pass
