"""e2e fixtures: the one-node cluster of `make cluster-up` (a real kubelet on containerd,
kube-proxy, CoreDNS, kube-router), the images of `make images` imported into it, the
chart's operator Deployment running from the operator image as its own ServiceAccount,
and a fresh namespace per test. Nothing of Ebbtide runs on the host: tests reach brokers
through their Services' ClusterIPs (kube-proxy routes them from the host) or from pods.

A cluster from `make cluster-up` that is already running is used and left running;
otherwise the session starts one (its processes die with it) and stops it. With
KUBECONFIG set (a kind cluster, `make e2e-kind`) the suite uses that cluster, with the
images named by EBBTIDE_E2E_OPERATOR_IMAGE and EBBTIDE_E2E_WORKER_IMAGE. In CI (CI=true)
nothing may skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.ci import pytest_runtest_makereport  # noqa: E402, F401 - the hook

from e2e import node  # noqa: E402
from e2e.controlplane import NODE_ROOT, ControlPlane, ControlPlaneError  # noqa: E402
from e2e.tests.kit import IMAGES, install_operator_chart, kubectl  # noqa: E402
from e2e.tests.support import (  # noqa: E402
    RELEASE,
    SYSTEM_NAMESPACE,
    forbidden_lines,
    tail,
    wait_for,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPLACES_OPERATOR = "replaces_operator"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{REPLACES_OPERATOR}: the test kills, stops or replaces the session's operator pod "
        "(it runs after every other test, and leaves an operator Ready)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that replace the operator pod run last, in their file order: the others may
    hold the session operator's pod name (`operator`)."""
    items.sort(key=lambda item: item.get_closest_marker(REPLACES_OPERATOR) is not None)


@dataclass
class KubeEnv:
    """How subprocesses and clients reach the cluster under test."""

    kubeconfig: str
    local: bool  # our own one-node cluster (e2e.controlplane --node)
    env: dict[str, str] = field(default_factory=dict)
    bin_dir: str = ""  # helm and kubectl built with the control plane; else from PATH
    logs: Path | None = None

    def tool(self, name: str) -> str:
        """Path of `helm` or `kubectl`: the control plane's build cache first, then PATH."""
        if self.bin_dir and (Path(self.bin_dir) / name).exists():
            return str(Path(self.bin_dir) / name)
        found = shutil.which(name)
        if found is None:
            pytest.fail(
                f"e2e: no {name} binary: run `make cluster-up` (it builds one)", pytrace=False
            )
        return found

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.tool("kubectl"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )


def _skip_or_fail(message: str) -> None:
    if IN_CI:
        pytest.fail(f"e2e: {message} (CI=true: the e2e suite may not skip)", pytrace=False)
    sys.stderr.write(f"\n{'!' * 78}\ne2e SKIPPED: {message}\n{'!' * 78}\n")
    pytest.skip(f"e2e: {message}")


@pytest.fixture(scope="session")
def kube_env() -> Iterator[KubeEnv]:
    external = os.environ.get("KUBECONFIG")
    if external:
        yield KubeEnv(kubeconfig=external, local=False, env={**os.environ, "KUBECONFIG": external})
        return
    if os.geteuid() != 0:
        _skip_or_fail("the real node needs root (containerd, iptables, a bridge)")
    plane = ControlPlane(NODE_ROOT, attached=True, with_node=True)
    try:
        plane.up()
    except ControlPlaneError as error:
        if "no Go toolchain" in str(error):
            _skip_or_fail(str(error))
        pytest.fail(f"e2e: the cluster did not start: {error}", pytrace=False)
    missing = [image for image in IMAGES if not node.image_present(image.split("@")[0])]
    if missing:
        if plane.started_here:
            plane.down()
        pytest.fail(
            f"e2e: image not built: {', '.join(missing)} not in the node's containerd: run `make images`",
            pytrace=False,
        )
    kubeconfig = str(plane.kubeconfig)
    try:
        yield KubeEnv(
            kubeconfig=kubeconfig,
            local=True,
            env={**os.environ, "KUBECONFIG": kubeconfig},
            bin_dir=plane.state.bin_dir,
            logs=plane.logs,
        )
    finally:
        if plane.started_here:
            plane.down()


@pytest.fixture(scope="session")
def api_client(kube_env: KubeEnv):
    from kubernetes import config

    api = config.new_client_from_config(config_file=kube_env.kubeconfig)
    yield api
    api.close()


@pytest.fixture(scope="session")
def core(api_client):
    from kubernetes import client

    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def apps(api_client):
    from kubernetes import client

    return client.AppsV1Api(api_client)


@pytest.fixture(scope="session")
def custom(api_client):
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


@pytest.fixture(scope="session")
def chart(kube_env: KubeEnv) -> Iterator[str]:
    """`helm upgrade --install` of charts/ebbtide (every namespace: a ClusterRole), its
    operator Deployment from the operator image; uninstalled at the end on our cluster."""
    helm = kube_env.tool("helm")
    result = install_operator_chart(kube_env)
    if result.returncode != 0:
        pods = kubectl(kube_env, "get", "pods", "-n", SYSTEM_NAMESPACE, "-o", "wide", check=False)
        kubelet_log = tail(kube_env.logs / "kubelet.log", 20) if kube_env.logs else ""
        pytest.fail(
            f"helm install failed:\n{result.stdout}\n{result.stderr}\n{pods.stdout}\n{kubelet_log}",
            pytrace=False,
        )
    yield RELEASE
    if kube_env.local:
        uninstall = [helm, "uninstall", RELEASE, "--namespace", SYSTEM_NAMESPACE, "--wait"]
        subprocess.run(uninstall, env=kube_env.env, capture_output=True, check=False)


@pytest.fixture(scope="session")
def operator(kube_env: KubeEnv, chart: str, core, request: pytest.FixtureRequest) -> Iterator[str]:
    """The chart's operator pod, Ready (kopf's liveness probe), running as the chart's
    ServiceAccount: a rule missing from the chart's RBAC fails the tests. Yields its name."""

    def operator_pod() -> str | None:
        pods = core.list_namespaced_pod(
            SYSTEM_NAMESPACE, label_selector="ebbtide.dev/operator=true"
        ).items
        for pod in pods:
            conditions = pod.status.conditions or []
            if any(c.type == "Ready" and c.status == "True" for c in conditions):
                return pod.metadata.name
        return None

    name = wait_for(operator_pod, 120, "the operator pod Ready")
    yield name
    # By label: a test may have replaced the first pod (the failover test kills it).
    logs = kubectl(
        kube_env,
        "logs",
        "-n",
        SYSTEM_NAMESPACE,
        "-l",
        "ebbtide.dev/operator=true",
        "--tail=40",
        "--prefix",
        check=False,
    )
    write_uncaptured(request.config, f"\n-- operator pod log (tail) --\n{logs.stdout}\n")
    # The operator logs and carries on after an API error, so an RBAC rule missing from
    # the chart on a path no test asserts would pass unseen: any 403 fails the run.
    denied = []
    for pod in core.list_namespaced_pod(
        SYSTEM_NAMESPACE, label_selector="ebbtide.dev/operator=true"
    ).items:
        full = kubectl(kube_env, "logs", "-n", SYSTEM_NAMESPACE, pod.metadata.name, check=False)
        denied += [f"{pod.metadata.name}: {line}" for line in forbidden_lines(full.stdout)]
    if denied:
        pytest.fail("the operator was refused by the API server (RBAC):\n" + "\n".join(denied[:10]))


def write_uncaptured(config: pytest.Config, text: str) -> None:
    """Print past pytest's capture: a fixture's teardown output is otherwise never shown."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        sys.stderr.write(text)
        sys.stderr.flush()


def dump_namespace(config: pytest.Config, kube_env: KubeEnv, namespace: str) -> None:
    """What a failed test left in its namespace: TaskQueues' status, workloads, pods,
    events and each pod's log tail, so a timeout says why without a rerun."""
    commands = [
        ("get", "taskqueues,deployments,statefulsets,pods,services", "-o", "wide"),
        (
            "get",
            "taskqueues",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}: {.status}{'\\n'}{end}",
        ),
        ("get", "events", "--sort-by=.lastTimestamp"),
        ("describe", "pods"),
    ]
    out = []
    for args in commands:
        done = kube_env.kubectl(*args, "-n", namespace, check=False)
        out.append(f"$ kubectl {' '.join(args)} -n {namespace}\n{done.stdout}{done.stderr}")
    pods = kube_env.kubectl(
        "get", "pods", "-n", namespace, "-o", "name", check=False
    ).stdout.split()
    for pod in pods[:8]:
        logs = kube_env.kubectl(
            "logs", "-n", namespace, pod, "--all-containers", "--tail=30", check=False
        )
        out.append(f"$ kubectl logs {pod} --tail=30\n{logs.stdout}{logs.stderr}")
    operator = kube_env.kubectl(
        "logs",
        "-n",
        SYSTEM_NAMESPACE,
        "-l",
        "ebbtide.dev/operator=true",
        "--tail=2000",
        check=False,
    ).stdout
    mine = [line for line in operator.splitlines() if namespace in line][-40:]
    out.append(f"operator log lines naming {namespace} (last 40):\n" + "\n".join(mine))
    text = f"\n-- namespace {namespace} after the failure --\n" + "\n".join(out) + "\n"
    write_uncaptured(config, text)


@pytest.fixture
def namespace(core, kube_env: KubeEnv, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace, with its default ServiceAccount, deleted afterwards (TaskQueues
    first, while the operator still runs: kopf's finalizers). A failed test's namespace
    is printed first (dump_namespace)."""
    from kubernetes import client

    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(
        lambda: any(
            sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items
        ),
        60,
        f"the default ServiceAccount in {name}",
    )
    yield name
    call = getattr(request.node, "rep_call", None)
    if call is not None and call.failed:
        dump_namespace(request.config, kube_env, name)
    delete_taskqueues(core, name)
    core.delete_namespace(name)


def delete_taskqueues(core, namespace: str) -> None:
    """Delete a namespace's TaskQueues and wait until they are gone, while the operator is
    still running: kopf keeps a finalizer on TaskQueues with a daemon, so a namespace
    deleted after the operator stopped would hang in Terminating."""
    from kubernetes import client

    custom = client.CustomObjectsApi(core.api_client)

    def remaining() -> list:
        try:
            return custom.list_namespaced_custom_object(
                "ebbtide.dev", "v1alpha1", namespace, "taskqueues"
            )["items"]
        except client.ApiException:
            return []  # no CRD installed: nothing to wait for

    for tq in remaining():
        custom.delete_namespaced_custom_object(
            "ebbtide.dev", "v1alpha1", namespace, "taskqueues", tq["metadata"]["name"]
        )
    wait_for(lambda: not remaining(), 60, f"the TaskQueues in {namespace} deleted")
