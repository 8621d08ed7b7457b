"""SIGTERM stops the real operator process (`kopf run -m ebbtide_operator.main`, with
peering as the chart runs 2+ replicas) promptly, on the real kube-apiserver, with a
TaskQueue ticking on a real Redis and its wake listener subscribed: it leaves the peering
(so a standby resumes at once) and exits 0 well inside the pod's 30 s grace period, also
when its peering grant was revoked first (a `helm upgrade` to one replica, an uninstall),
where kopf's default request retries used to outlast the grace period."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import redis
import yaml
from support.apiserver import ApiServer, Namespace, new_namespace
from support.helm import render
from worker_testkit import wait_for

from e2e.kubeconfig import write_token

EXIT_DEADLINE = 10.0  # generous: a clean stop takes well under a second
FORBIDDEN_EXIT_DEADLINE = 20.0  # 7 s of retries for the forbidden leave, then the exit
PEERING = "ebbtide"


def taskqueue(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": name},
        "spec": {
            "broker": {"type": "redis", "external": {"secretRef": {"name": "broker"}}},
            "queues": [{"name": "q"}],
            "worker": {"image": "ebbtide/runtime:test", "app": "m:app"},
            "scaling": {"minReplicas": 0, "maxReplicas": 2, "pollSeconds": 1},
        },
    }


@pytest.fixture(scope="module")
def peering_crds(apiserver: ApiServer) -> None:
    """The chart's kopf peering CRDs (rendered as for two replicas), once per session."""
    with contextlib.closing(apiserver.api_client(pool=2)) as client:
        api = kubernetes.client.ApiextensionsV1Api(client)
        for doc in render("replicaCount=2"):
            if doc["kind"] == "CustomResourceDefinition" and doc["spec"]["group"] == "kopf.dev":
                with contextlib.suppress(kubernetes.client.ApiException):  # already there
                    api.create_custom_resource_definition(doc)
        custom = kubernetes.client.CustomObjectsApi(client)

        def served() -> bool:
            try:
                custom.list_cluster_custom_object("kopf.dev", "v1", "kopfpeerings")
            except kubernetes.client.ApiException as error:
                if error.status == 404:
                    return False
                raise
            return True

        wait_for(served, 30, "the kopf peering CRDs served")


@pytest.fixture
def namespace(apiserver: ApiServer, peering_crds: None) -> Iterator[Namespace]:
    with contextlib.closing(apiserver.api_client(pool=4)) as client:
        yield new_namespace(client, prefix="stop")


def start_operator(kubeconfig: str, namespace: str, log: Path) -> subprocess.Popen:
    """kopf as the chart starts it with 2+ replicas: no --standalone, peering in `namespace`."""
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "EBBTIDE_OPERATOR_METRICS_PORT": "0",
        "EBBTIDE_PEERING": PEERING,
        "EBBTIDE_PEERING_NAMESPACES": namespace,
        "POD_NAME": "operator-under-test",
    }
    argv = [
        str(Path(sys.executable).parent / "kopf"),
        "run",
        "--module=ebbtide_operator.main",
        f"--namespace={namespace}",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def peers(namespace: Namespace) -> Mapping[str, Any]:
    """The replicas in the peering ({} before the operator created it)."""
    try:
        body = namespace.custom.get_namespaced_custom_object(
            "kopf.dev", "v1", namespace.name, "kopfpeerings", PEERING
        )
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            return {}
        raise
    return body.get("status") or {}


def ticking(namespace: Namespace, redis_url: str, operator: subprocess.Popen, log: Path) -> None:
    """Until the TaskQueue has ticked (its status is written) and its wake listener is
    subscribed on the Redis, with the operator active in the peering."""
    client = redis.Redis.from_url(redis_url)

    def ready() -> bool:
        if operator.poll() is not None:
            raise AssertionError(f"the operator exited ({operator.returncode}):\n{tail(log)}")
        status = namespace.status("tq")
        listening = dict(client.pubsub_numsub("ebbtide:wake")).get(b"ebbtide:wake", 0)
        return bool(status.get("conditions")) and listening >= 1 and bool(peers(namespace))

    try:
        wait_for(ready, 60, lambda: f"a ticking, subscribed, peered operator:\n{tail(log)}")
    finally:
        client.close()


def stop(operator: subprocess.Popen, deadline: float, log: Path) -> int:
    """SIGTERM, and the exit code within `deadline` (killed, and failed, past it)."""
    sent = time.monotonic()
    operator.send_signal(signal.SIGTERM)
    try:
        code = operator.wait(timeout=deadline)
        print(f"operator exit {code} {time.monotonic() - sent:.2f}s after SIGTERM")  # for docs
        return code
    except subprocess.TimeoutExpired:
        operator.kill()
        operator.wait()
        raise AssertionError(
            f"the operator took more than {deadline:.0f}s to stop:\n{tail(log)}"
        ) from None


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.mark.redis
def test_sigterm_stops_a_ticking_operator_promptly_and_leaves_the_peering(
    apiserver: ApiServer, namespace: Namespace, redis_db: str, tmp_path: Path
):
    namespace.add_secret("broker", {"url": redis_db})
    namespace.create_taskqueue(taskqueue("tq"))
    log = tmp_path / "operator.log"
    operator = start_operator(str(apiserver.kubeconfig), namespace.name, log)
    try:
        ticking(namespace, redis_db, operator, log)
        assert stop(operator, EXIT_DEADLINE, log) == 0, tail(log)
    finally:
        if operator.poll() is None:
            operator.kill()
            operator.wait()
    assert peers(namespace) == {}, "the stopped replica is still in the peering"
    assert "Couldn't remove self from the peering" not in log.read_text()


def service_account_kubeconfig(
    apiserver: ApiServer, namespace: Namespace, rules: list[dict[str, Any]], path: Path
) -> str:
    """A ServiceAccount bound (cluster-wide) to `rules`: the operator with a grant that can
    be revoked, as the chart's RBAC is on an upgrade."""
    name = namespace.name  # one ClusterRole and binding per test namespace
    sa = {"metadata": {"name": "operator"}}
    namespace.core.create_namespaced_service_account(namespace.name, sa)
    with contextlib.closing(apiserver.api_client(pool=2)) as client:
        rbac = kubernetes.client.RbacAuthorizationV1Api(client)
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "operator", "namespace": namespace.name}
                ],
            }
        )
    token = namespace.core.create_namespaced_service_account_token(
        "operator", namespace.name, {"spec": {"audiences": [], "expirationSeconds": 3600}}
    ).status.token
    cluster = yaml.safe_load(apiserver.kubeconfig.read_text())["clusters"][0]["cluster"]
    ca = path.parent / "ca.crt"
    ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    return str(write_token(path, cluster["server"], ca, token, "operator", namespace.name))


def may_patch_peering(apiserver: ApiServer, namespace: Namespace) -> bool:
    with contextlib.closing(apiserver.api_client(pool=2)) as client:
        review = kubernetes.client.AuthorizationV1Api(client).create_subject_access_review(
            {
                "spec": {
                    "user": f"system:serviceaccount:{namespace.name}:operator",
                    "resourceAttributes": {
                        "group": "kopf.dev",
                        "resource": "kopfpeerings",
                        "verb": "patch",
                        "namespace": namespace.name,
                    },
                }
            }
        )
    return bool(review.status.allowed)


# Everything the operator touches here, broadly; the peering grant is the chart's own.
OPERATOR_RULES = [
    {
        "apiGroups": ["", "apps", "ebbtide.dev", "networking.k8s.io", "apiextensions.k8s.io"],
        "resources": ["*"],
        "verbs": ["*"],
    },
]
PEERING_RULE = {
    "apiGroups": ["kopf.dev"],
    "resources": ["kopfpeerings"],
    "verbs": ["get", "list", "watch", "patch", "create"],
}


@pytest.mark.redis
def test_sigterm_stops_promptly_when_the_peering_grant_is_already_revoked(
    apiserver: ApiServer, namespace: Namespace, redis_db: str, tmp_path: Path
):
    namespace.add_secret("broker", {"url": redis_db})
    namespace.create_taskqueue(taskqueue("tq"))
    kubeconfig = service_account_kubeconfig(
        apiserver, namespace, [*OPERATOR_RULES, PEERING_RULE], tmp_path / "operator.kubeconfig"
    )
    log = tmp_path / "operator.log"
    operator = start_operator(kubeconfig, namespace.name, log)
    try:
        ticking(namespace, redis_db, operator, log)
        # What `helm upgrade --set replicaCount=1` does before the old replicas stop.
        with contextlib.closing(apiserver.api_client(pool=2)) as client:
            kubernetes.client.RbacAuthorizationV1Api(client).patch_cluster_role(
                namespace.name, {"rules": OPERATOR_RULES}
            )
        wait_for(lambda: not may_patch_peering(apiserver, namespace), 30, "the grant revoked")
        assert stop(operator, FORBIDDEN_EXIT_DEADLINE, log) == 0, tail(log)
    finally:
        if operator.poll() is None:
            operator.kill()
            operator.wait()
        with contextlib.closing(apiserver.api_client(pool=2)) as client:
            rbac = kubernetes.client.RbacAuthorizationV1Api(client)
            with contextlib.suppress(kubernetes.client.ApiException):
                rbac.delete_cluster_role_binding(namespace.name)
            with contextlib.suppress(kubernetes.client.ApiException):
                rbac.delete_cluster_role(namespace.name)
    assert "forbidden" in log.read_text().lower()  # the leave was refused, and retried
