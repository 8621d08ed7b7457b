"""Fixtures of the real-pods e2e suite: the one-node cluster of `make cluster-up` (a real
kubelet on containerd, kube-proxy, CoreDNS, kube-router), the images of `make images`
imported into it, and the chart's operator Deployment running from the operator image as
its own ServiceAccount. Nothing of Ebbtide runs on the host: tests reach brokers through
their Services' ClusterIPs (kube-proxy routes them from the host) or from test pods.

A cluster from `make cluster-up` that is already running is used and left running;
otherwise the session starts one (its processes die with it) and stops it. In CI
(CI=true) nothing may skip.
"""

from __future__ import annotations

import os
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

from e2e import node  # noqa: E402
from e2e.controlplane import NODE_ROOT, ControlPlane, ControlPlaneError  # noqa: E402
from e2e.realpods.kit import IMAGES, OPERATOR_IMAGE  # noqa: E402
from e2e.tests.support import RELEASE, SYSTEM_NAMESPACE, tail, wait_for  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass
class Cluster:
    kubeconfig: str
    bin_dir: str
    logs: Path
    env: dict[str, str] = field(default_factory=dict)

    def tool(self, name: str) -> str:
        return str(Path(self.bin_dir) / name)

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
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        _skip_or_fail("the real node needs root (containerd, iptables, a bridge)")
    plane = ControlPlane(NODE_ROOT, attached=True, with_node=True)
    try:
        plane.up()
    except ControlPlaneError as error:
        if "no Go toolchain" in str(error):
            _skip_or_fail(str(error))
        pytest.fail(f"e2e: the cluster did not start: {error}", pytrace=False)
    missing = [image for image in IMAGES if not node.image_present(image)]
    if missing:
        if plane.started_here:
            plane.down()
        pytest.fail(
            f"e2e: image not built: {', '.join(missing)} not in the node's containerd: run `make images`",
            pytrace=False,
        )
    kubeconfig = str(plane.kubeconfig)
    try:
        yield Cluster(
            kubeconfig=kubeconfig,
            bin_dir=plane.state.bin_dir,
            logs=plane.logs,
            env={**os.environ, "KUBECONFIG": kubeconfig},
        )
    finally:
        if plane.started_here:
            plane.down()


@pytest.fixture(scope="session")
def api_client(cluster: Cluster):
    from kubernetes import config

    api = config.new_client_from_config(config_file=cluster.kubeconfig)
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
def operator(cluster: Cluster, core) -> Iterator[str]:
    """The chart, installed by helm, its operator Deployment running from the operator
    image with its own ServiceAccount token. Yields the operator pod's name."""
    repository, tag = OPERATOR_IMAGE.rsplit(":", 1)
    argv = [cluster.tool("helm"), "upgrade", "--install", RELEASE, str(ROOT / "charts" / "ebbtide")]
    argv += ["--namespace", SYSTEM_NAMESPACE, "--create-namespace", "--wait", "--timeout", "180s"]
    argv += ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}"]
    argv += ["--set", "image.pullPolicy=Never"]
    result = subprocess.run(argv, env=cluster.env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pods = cluster.kubectl("get", "pods", "-n", SYSTEM_NAMESPACE, "-o", "wide", check=False)
        pytest.fail(
            f"helm install failed:\n{result.stdout}\n{result.stderr}\n{pods.stdout}\n"
            f"kubelet log:\n{tail(cluster.logs / 'kubelet.log', 20)}",
            pytrace=False,
        )

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
    logs = cluster.kubectl("logs", "-n", SYSTEM_NAMESPACE, name, "--tail=60", check=False)
    sys.stderr.write(f"\n-- operator pod log (tail) --\n{logs.stdout}\n")


@pytest.fixture
def namespace(core) -> Iterator[str]:
    """A fresh namespace, with its default ServiceAccount, deleted afterwards (TaskQueues
    first, while the operator still runs: kopf's finalizers)."""
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
    from e2e.tests.conftest import delete_taskqueues

    delete_taskqueues(core, name)
    core.delete_namespace(name)
