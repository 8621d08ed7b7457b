"""Operator paths that only a fake cluster proved before, on the real one: a worker
Deployment edited behind the operator's back is repaired, a deleted one is recreated, and
an operator pod that dies is replaced by the chart's Deployment and picks the TaskQueue up
again with its replicas held. (This file runs last: it replaces the session's operator pod.)"""

from __future__ import annotations

from e2e.tests.kit import (
    RUNTIME_IMAGE,
    WORKER_IMAGE,
    condition,
    create_tq,
    pod_ready,
    read_tq,
    taskqueue,
    tracker,
)
from e2e.tests.support import SYSTEM_NAMESPACE, wait_for


def external_taskqueue(core, apps, custom, namespace: str, name: str, replicas: int) -> None:
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
        name,
        {"type": "redis", "external": {"secretRef": {"name": "broker"}}},
        scaling={"minReplicas": replicas},
    )
    create_tq(custom, namespace, body)
    wait_for(
        lambda: condition(read_tq(custom, namespace, name), "WorkersReady").get("status") == "True",
        180,
        f"{name}'s workers ready",
    )


def worker_image(apps, namespace: str, name: str) -> str | None:
    deployment = apps.read_namespaced_deployment(f"{name}-worker", namespace)
    return deployment.spec.template.spec.containers[0].image


def test_an_edited_worker_deployment_is_repaired_and_a_deleted_one_recreated(
    core, apps, custom, operator, namespace
):
    external_taskqueue(core, apps, custom, namespace, "drift", 1)
    first_uid = apps.read_namespaced_deployment("drift-worker", namespace).metadata.uid

    # Drift: someone changes the worker image by hand.
    apps.patch_namespaced_deployment(
        "drift-worker",
        namespace,
        {
            "spec": {
                "template": {"spec": {"containers": [{"name": "worker", "image": RUNTIME_IMAGE}]}}
            }
        },
    )
    wait_for(
        lambda: worker_image(apps, namespace, "drift") == WORKER_IMAGE, 60, "the image repaired"
    )

    # Deleted: the operator creates it again, and its pods run.
    apps.delete_namespaced_deployment("drift-worker", namespace)

    def recreated() -> bool:
        found = apps.read_namespaced_deployment("drift-worker", namespace)
        return found.metadata.uid != first_uid and (found.status.ready_replicas or 0) >= 1

    wait_for(recreated, 120, "the worker Deployment recreated with a ready pod")


def test_a_killed_operator_pod_is_replaced_and_resumes(core, apps, custom, operator, namespace):
    external_taskqueue(core, apps, custom, namespace, "steady", 2)
    core.delete_namespaced_pod(operator, SYSTEM_NAMESPACE, grace_period_seconds=0)

    def replacement() -> str | None:
        pods = core.list_namespaced_pod(
            SYSTEM_NAMESPACE, label_selector="ebbtide.dev/operator=true"
        ).items
        fresh = [
            p for p in pods if p.metadata.name != operator and p.metadata.deletion_timestamp is None
        ]
        return fresh[0].metadata.name if fresh and pod_ready(fresh[0]) else None

    wait_for(replacement, 120, "a new operator pod Ready")
    # The new operator sees the TaskQueue and keeps its two replicas.
    wait_for(
        lambda: (
            condition(read_tq(custom, namespace, "steady"), "BrokerReady").get("status") == "True"
            and apps.read_namespaced_deployment("steady-worker", namespace).spec.replicas == 2
        ),
        60,
        "the TaskQueue healthy under the new operator, replicas held",
    )
