"""e2e fixtures: a real control plane for the session, the process kubelet, a fresh
namespace per test, and the operator as a local process.

With KUBECONFIG set (a kind cluster, say) the suite uses that cluster and its real
kubelets. Otherwise it brings up the local control plane (e2e/controlplane.py), building
it on first use. In CI (CI=true) nothing here may skip: a control plane that does not
start fails the run. Outside CI, a missing Go toolchain skips loudly.
"""

from __future__ import annotations

import os
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
    KubeletProcess,
    OperatorProcess,
    wait_for,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass
class KubeEnv:
    """How subprocesses and clients reach the cluster under test."""

    kubeconfig: str
    local: bool  # our own control plane (process kubelet, loopback brokers)
    env: dict[str, str] = field(default_factory=dict)


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
        yield KubeEnv(kubeconfig=kubeconfig, local=True, env={**os.environ, "KUBECONFIG": kubeconfig})
    finally:
        if plane.started_here:
            plane.down()


@pytest.fixture(scope="session")
def api_client(kube_env: KubeEnv):
    from kubernetes import client, config

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
        return any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items)

    wait_for(has_default_sa, 60, f"the default ServiceAccount in {name}")
    yield name
    core.delete_namespace(name, propagation_policy="Foreground")


@pytest.fixture
def operator_factory(kube_env: KubeEnv, tmp_path) -> Iterator:
    """Start the operator (`kopf run`) as a local process with a given kubeconfig; stopped
    at teardown, its log printed if the test failed."""
    started: list[OperatorProcess] = []

    def start(kubeconfig: str, namespaces: list[str], **env: str) -> OperatorProcess:
        process = OperatorProcess.start(kubeconfig, namespaces, tmp_path / f"operator-{len(started)}", env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
