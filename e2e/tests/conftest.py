"""e2e fixtures: a real control plane for the session, the process kubelet, a fresh
namespace per test, and the operator as a local process.

With KUBECONFIG set (a kind cluster, say) the suite uses that cluster and its real
kubelets. Otherwise it brings up the local control plane (e2e/controlplane.py), building
it on first use. In CI (CI=true) nothing here may skip: a control plane that does not
start fails the run. Outside CI, a missing Go toolchain skips loudly.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from e2e.controlplane import ControlPlane, ControlPlaneError  # noqa: E402
from e2e.tests.support import (  # noqa: E402
    RELEASE,
    KubeletProcess,
    OperatorProcess,
    install_chart,
    service_account_kubeconfig,
    uninstall_chart,
    wait_for,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass
class KubeEnv:
    """How subprocesses and clients reach the cluster under test."""

    kubeconfig: str
    local: bool  # our own control plane (process kubelet, loopback brokers)
    env: dict[str, str] = field(default_factory=dict)
    bin_dir: str = ""  # helm and kubectl built with the control plane; else from PATH

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
    plane = ControlPlane(attached=True)
    try:
        plane.up()
    except ControlPlaneError as error:
        if "no Go toolchain" in str(error):
            _skip_or_fail(str(error))
        pytest.fail(f"e2e: the control plane did not start: {error}", pytrace=False)
    kubeconfig = str(plane.kubeconfig)
    try:
        yield KubeEnv(
            kubeconfig=kubeconfig,
            local=True,
            env={**os.environ, "KUBECONFIG": kubeconfig},
            bin_dir=plane.state.bin_dir,
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
def kubelet(kube_env: KubeEnv, core, tmp_path_factory) -> Iterator[KubeletProcess | None]:
    """The process kubelet on our own control plane; real kubelets elsewhere (None)."""
    if not kube_env.local:
        yield None
        return
    process = KubeletProcess.start(kube_env, tmp_path_factory.mktemp("kubelet"))
    try:
        process.wait_node_ready(core)
        yield process
    finally:
        process.stop()


@pytest.fixture
def namespace(kube_env: KubeEnv, core) -> Iterator[str]:
    """A fresh namespace, with its default ServiceAccount, deleted afterwards."""
    from kubernetes import client

    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def has_default_sa() -> bool:
        return any(
            sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items
        )

    wait_for(has_default_sa, 60, f"the default ServiceAccount in {name}")
    yield name
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


@pytest.fixture(scope="session")
def chart(kube_env: KubeEnv) -> Iterator[str]:
    """`helm install` of charts/ebbtide (every namespace: a ClusterRole). On our control
    plane images cannot run, so the chart's operator Deployment gets 0 replicas and the
    `operator` fixture runs the same code as a local process instead."""
    helm = kube_env.tool("helm")
    install_chart(helm, kube_env.env, operator_replicas=0 if kube_env.local else None)
    yield RELEASE
    if kube_env.local:
        uninstall_chart(helm, kube_env.env)


@pytest.fixture(scope="session")
def operator(
    kube_env: KubeEnv, chart: str, core, kubelet, tmp_path_factory
) -> Iterator[OperatorProcess | None]:
    """The operator, watching every namespace as the chart's ServiceAccount. On another
    cluster the chart's own Deployment runs it (None here)."""
    if not kube_env.local:
        yield None
        return
    workdir = tmp_path_factory.mktemp("operator")
    kubeconfig = service_account_kubeconfig(
        kube_env.kubeconfig, core, workdir / "operator.kubeconfig"
    )
    process = OperatorProcess.start(kubeconfig, [], workdir, {})
    try:
        yield process
    finally:
        process.stop()
