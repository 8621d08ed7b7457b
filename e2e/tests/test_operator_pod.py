"""The operator pod itself on the real cluster: policy state that survives a killed
operator pod while a scale-down is held, and the chart's namespaced RBAC mode (Roles in
the watched namespace only) reconciling a TaskQueue without a single 403.

Both replace the session's operator pod, so they run after every other test
(`replaces_operator`) and leave a Ready operator behind.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from kubernetes import client

from e2e.tests.kit import (
    OPERATOR_IMAGE,
    OPERATOR_SELECTOR,
    PULL_POLICY,
    condition,
    create_tq,
    enqueue,
    kubectl,
    operator_pod,
    read_tq,
    taskqueue,
    tracker,
    via_cluster_ip,
)
from e2e.tests.support import RELEASE, ROOT, SYSTEM_NAMESPACE, forbidden_lines, holds_for, wait_for

pytestmark = pytest.mark.replaces_operator
IDLE_S = 30  # scaleToZeroIdleSeconds: the held scale-down (1 -> 0)


def replicas(apps, namespace: str, name: str) -> int:
    return apps.read_namespaced_deployment(f"{name}-worker", namespace).spec.replicas or 0


def policy_state(custom, namespace: str, name: str) -> dict:
    return read_tq(custom, namespace, name).get("status", {}).get("policyState") or {}


def test_a_held_scale_down_survives_a_killed_operator_pod(core, apps, custom, operator, namespace):
    """minReplicas 0: after the queue empties, the policy holds the last pod for
    scaleToZeroIdleSeconds (the idle timer, `policyState.idleSince` in the status). The
    operator pod is killed mid-hold: the new one keeps holding, and scales to zero when
    the persisted timer ends, not a whole window after its own start."""
    url = tracker(core, apps, namespace, "external")
    core.create_namespaced_secret(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "broker"},
            "stringData": {"url": url},
        },
    )
    body = taskqueue(
        "held",
        {"type": "redis", "external": {"secretRef": {"name": "broker"}}},
        track_url=f"redis://external.{namespace}.svc:6379/1",
        scaling={"minReplicas": 0, "maxReplicas": 2, "scaleToZeroIdleSeconds": IDLE_S},
    )
    create_tq(custom, namespace, body)
    wait_for(
        lambda: (
            condition(read_tq(custom, namespace, "held"), "BrokerReady").get("status") == "True"
        ),
        120,
        "the broker reachable",
    )
    sent_at = time.time()
    enqueue(via_cluster_ip(core, namespace, url), 20, 0.01)
    wait_for(lambda: replicas(apps, namespace, "held") >= 1, 60, "a scale-up from zero")

    def idle_since() -> float | None:
        """The idle timer that began after the tasks ran (not the one from before the
        send, which the status may still show right after the scale-up)."""
        since = policy_state(custom, namespace, "held").get("idleSince")
        return since if since and since > sent_at and replicas(apps, namespace, "held") else None

    # The tasks ran and the queue is idle: the hold has begun and is in the status.
    since = float(wait_for(idle_since, 120, "the tasks run and the idle timer persisted"))
    wait_for(lambda: time.time() - since >= 8, 30, "8 s into the idle hold")
    killed_at = time.time()
    assert killed_at - since < IDLE_S - 15, "the hold must still have 15 s to run"
    old = operator_pod(core, SYSTEM_NAMESPACE)
    assert old, "the session's operator pod is Ready"
    core.delete_namespaced_pod(old, SYSTEM_NAMESPACE, grace_period_seconds=0)
    wait_for(
        lambda: operator_pod(core, SYSTEM_NAMESPACE, exclude=(old,)), 120, "a new operator pod"
    )
    # Still held by the new operator, until shortly before the persisted timer ends.
    holds_for(
        lambda: replicas(apps, namespace, "held") == 1,
        max(0.0, since + IDLE_S - 2 - time.time()),
        "the last pod held through the idle window, across the operator restart",
    )
    wait_for(lambda: replicas(apps, namespace, "held") == 0, 60, "scaled to zero")
    state = policy_state(custom, namespace, "held")
    assert state.get("idleSince") == since, "the new operator kept the persisted idle timer"
    # A fresh timer would have started at the new operator's first poll, after the kill.
    scaled_after = float(state["lastScaleTime"]) - since
    assert scaled_after < killed_at - since + IDLE_S, (
        f"scaled to zero {scaled_after:.0f}s into the hold: the timer restarted with the pod"
    )


NS_RELEASE = "ebbtide-ns"


def helm(kube_env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [kube_env.tool("helm"), *args],
        env=kube_env.env,
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )


def scale_session_operator(apps, core, replicas_wanted: int) -> None:
    apps.patch_namespaced_deployment_scale(
        RELEASE, SYSTEM_NAMESPACE, {"spec": {"replicas": replicas_wanted}}
    )
    if replicas_wanted == 0:
        wait_for(
            lambda: (
                not core.list_namespaced_pod(
                    SYSTEM_NAMESPACE, label_selector=OPERATOR_SELECTOR
                ).items
            ),
            90,
            "the session's operator pod gone",
        )
    else:
        wait_for(lambda: operator_pod(core, SYSTEM_NAMESPACE), 120, "the session's operator Ready")


def test_the_charts_namespaced_rbac_mode_reconciles_the_watched_namespace(
    kube_env, core, apps, custom, operator, namespace
):
    """`watchNamespaces: [ns]`: a Role and RoleBinding in ns only (plus read-only
    discovery). The operator, as that ServiceAccount, provisions a managed Redis and its
    worker in ns without a 403, and leaves a TaskQueue in another namespace alone. The
    session's cluster-wide operator is stopped meanwhile: two operators never overlap."""
    home = f"e2e-op-{uuid.uuid4().hex[:6]}"
    elsewhere = f"e2e-other-{uuid.uuid4().hex[:6]}"
    repository, tag = OPERATOR_IMAGE.rsplit(":", 1)
    for name in (home, elsewhere):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    scale_session_operator(apps, core, 0)
    try:
        argv = ["upgrade", "--install", NS_RELEASE, str(ROOT / "charts" / "ebbtide")]
        argv += ["--namespace", home, "--wait", "--timeout", "180s"]
        argv += ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}"]
        argv += ["--set", f"image.pullPolicy={PULL_POLICY}", "--set", "crds.install=false"]
        argv += ["--set", "rbac.aggregatedRoles=false", "--set", f"watchNamespaces={{{namespace}}}"]
        installed = helm(kube_env, *argv)
        assert installed.returncode == 0, f"{installed.stdout}\n{installed.stderr}"
        rbac = client.RbacAuthorizationV1Api(core.api_client)
        assert [r.metadata.name for r in rbac.list_namespaced_role(namespace).items] == [NS_RELEASE]
        assert not rbac.list_namespaced_role(elsewhere).items
        pod = wait_for(lambda: operator_pod(core, home), 120, "the namespaced operator Ready")

        create_tq(custom, elsewhere, taskqueue("ignored", {"type": "redis", "managed": {}}))
        create_tq(custom, namespace, taskqueue("scoped", {"type": "redis", "managed": {}}))
        wait_for(
            lambda: all(
                condition(read_tq(custom, namespace, "scoped"), kind).get("status") == "True"
                for kind in ("BrokerReady", "WorkersReady", "Ready")
            ),
            180,
            "the watched namespace's TaskQueue reconciled: broker and worker ready",
        )
        assert "status" not in read_tq(custom, elsewhere, "ignored"), "not a watched namespace"
        assert not apps.list_namespaced_stateful_set(elsewhere).items

        log = kubectl(kube_env, "logs", "-n", home, pod, check=False).stdout
        denied = forbidden_lines(log)
        assert not denied, "the namespaced operator was refused:\n" + "\n".join(denied[:10])
    finally:
        # The namespaced operator handles the watched TaskQueue's finalizer; the other
        # namespace's TaskQueue never got one. Then the session's operator comes back.
        custom.delete_collection_namespaced_custom_object(
            "ebbtide.dev", "v1alpha1", namespace, "taskqueues"
        )
        custom.delete_collection_namespaced_custom_object(
            "ebbtide.dev", "v1alpha1", elsewhere, "taskqueues"
        )
        wait_for(
            lambda: (
                not custom.list_namespaced_custom_object(
                    "ebbtide.dev", "v1alpha1", namespace, "taskqueues"
                )["items"]
            ),
            60,
            "the watched TaskQueue deleted",
        )
        helm(kube_env, "uninstall", NS_RELEASE, "--namespace", home, "--wait")
        for name in (home, elsewhere):
            core.delete_namespace(name)
        scale_session_operator(apps, core, 1)
