"""Operator paths that only a fake cluster proved before, on the real one: a worker
Deployment edited behind the operator's back is repaired, a deleted one is recreated, and
an operator pod that dies is replaced by the chart's Deployment and picks the TaskQueue up
again with its replicas held. (That test replaces the session's operator pod: marked
`replaces_operator`, it runs after the others.)"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis

from e2e.tests.kit import (
    APPS,
    GROUP,
    PLURAL,
    RUNS,
    RUNTIME_IMAGE,
    VERSION,
    WORKER_IMAGE,
    condition,
    create_tq,
    enqueue,
    operator_pod,
    pod_ready,
    read_tq,
    secret_value,
    taskqueue,
    tracker,
    via_cluster_ip,
)
from e2e.tests.support import SYSTEM_NAMESPACE, wait_for


def external_taskqueue(
    core, apps, custom, namespace: str, name: str, replicas: int, **extra
) -> str:
    """A TaskQueue on a Redis pod standing in for an external broker; returns its URL."""
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
    scaling = {"minReplicas": replicas, **extra.pop("scaling", {})}
    body = taskqueue(
        name,
        {"type": "redis", "external": {"secretRef": {"name": "broker"}}},
        scaling=scaling,
        **extra,
    )
    create_tq(custom, namespace, body)
    wait_for(
        lambda: condition(read_tq(custom, namespace, name), "WorkersReady").get("status") == "True",
        180,
        f"{name}'s workers ready",
    )
    return url


def worker_pods(core, namespace: str, name: str) -> list:
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"ebbtide.dev/taskqueue={name},app.kubernetes.io/component=worker"
    ).items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def replicas(apps, namespace: str, name: str) -> int:
    return apps.read_namespaced_deployment(f"{name}-worker", namespace).spec.replicas or 0


def test_scaling_up_from_zero_and_back(core, apps, custom, operator, namespace):
    track_url = f"redis://external.{namespace}.svc:6379/1"  # the broker pod's database 1
    url = external_taskqueue(
        core,
        apps,
        custom,
        namespace,
        "idle",
        0,
        track_url=track_url,
        scaling={"maxReplicas": 3, "scaleDownStabilizationSeconds": 5, "scaleToZeroIdleSeconds": 5},
    )
    wait_for(
        lambda: replicas(apps, namespace, "idle") == 0 and not worker_pods(core, namespace, "idle"),
        60,
        "no worker pods while the queue is empty",
    )
    enqueue(via_cluster_ip(core, namespace, url), 200, 0.05)
    wait_for(lambda: replicas(apps, namespace, "idle") >= 1, 60, "a scale-up from zero")
    track = redis.Redis.from_url(via_cluster_ip(core, namespace, track_url))
    wait_for(lambda: track.hlen(RUNS) == 200, 180, "the 200 tasks run")
    wait_for(
        lambda: replicas(apps, namespace, "idle") == 0 and not worker_pods(core, namespace, "idle"),
        120,
        "back to zero worker pods",
    )


DELAY_S = 60


def send_delayed(broker_url: str, delay_s: int) -> None:
    """One `work` task with `options(delay=...)`, from a fresh host process, as an app
    would send it."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import tracked; "
        "tracked.app.use_broker_url(sys.argv[2]); "
        "tracked.work.options(delay=int(sys.argv[3])).send(0, 0.0)"
    )
    argv = [sys.executable, "-c", code, str(APPS), broker_url, str(delay_s)]
    subprocess.run(argv, check=True, timeout=60)


def test_a_delayed_task_wakes_a_worker_from_zero(core, apps, custom, operator, namespace):
    """minReplicas 0 and an idle queue: a task sent with a 60 s delay still runs, within
    60 s plus one poll plus a pod's start-up. The statistics say when the next delayed
    task is due, and the policy wakes one worker for it: nothing else would arrive to
    start a pod."""
    track_url = f"redis://external.{namespace}.svc:6379/1"
    url = external_taskqueue(
        core,
        apps,
        custom,
        namespace,
        "later",
        0,
        track_url=track_url,
        scaling={"maxReplicas": 2, "scaleToZeroIdleSeconds": 0},
    )
    wait_for(
        lambda: (
            replicas(apps, namespace, "later") == 0 and not worker_pods(core, namespace, "later")
        ),
        60,
        "no worker pods while the queue is empty",
    )
    track = redis.Redis.from_url(via_cluster_ip(core, namespace, track_url))
    sent = time.monotonic()
    send_delayed(via_cluster_ip(core, namespace, url), DELAY_S)
    poll_s, pod_start_budget_s = 1, 60
    wait_for(
        lambda: track.hlen(RUNS) == 1,
        DELAY_S + poll_s + pod_start_budget_s,
        "the delayed task to run, woken from zero replicas",
    )
    ran_after = time.monotonic() - sent
    assert ran_after >= DELAY_S - 1, f"ran {ran_after:.0f}s after send, before its delay"
    wait_for(lambda: replicas(apps, namespace, "later") == 0, 120, "back to zero replicas")


def test_fallback_replicas_while_the_broker_is_down(core, apps, custom, operator, namespace):
    external_taskqueue(
        core,
        apps,
        custom,
        namespace,
        "fallback",
        1,
        scaling={"maxReplicas": 3, "fallbackReplicas": 2},
    )
    # Until the broker pod answers, the fallback applies too: wait for the healthy state.
    wait_for(
        lambda: (
            condition(read_tq(custom, namespace, "fallback"), "BrokerReady").get("status") == "True"
            and replicas(apps, namespace, "fallback") == 1
        ),
        120,
        "the broker reachable and the minimum of 1 replica",
    )
    apps.delete_namespaced_deployment("external", namespace)
    wait_for(
        lambda: (
            condition(read_tq(custom, namespace, "fallback"), "Degraded").get("status") == "True"
            and replicas(apps, namespace, "fallback") == 2
        ),
        120,
        "Degraded, and fallbackReplicas (2) applied",
    )


def test_a_spec_change_rolls_the_worker_deployment(core, apps, custom, operator, namespace):
    external_taskqueue(core, apps, custom, namespace, "rolling", 1)
    [old] = [p.metadata.name for p in worker_pods(core, namespace, "rolling")]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "rolling", {"spec": {"worker": {"concurrency": 2}}}
    )

    def rolled() -> bool:
        pods = [p for p in worker_pods(core, namespace, "rolling") if pod_ready(p)]
        args = [p.spec.containers[0].args for p in pods if p.metadata.name != old]
        return bool(args) and all("2" == a[a.index("--concurrency") + 1] for a in args)

    wait_for(rolled, 120, "a new worker pod with --concurrency 2 ready")
    wait_for(
        lambda: old not in [p.metadata.name for p in worker_pods(core, namespace, "rolling")],
        90,
        "the old pod gone",
    )


def worker_image(apps, namespace: str, name: str) -> str | None:
    deployment = apps.read_namespaced_deployment(f"{name}-worker", namespace)
    return deployment.spec.template.spec.containers[0].image


def test_re_reconciling_a_managed_redis_keeps_its_secret_and_statefulset(
    core, apps, custom, operator, namespace
):
    create_tq(custom, namespace, taskqueue("kept", {"type": "redis", "managed": {}}))
    wait_for(
        lambda: (
            condition(read_tq(custom, namespace, "kept"), "BrokerReady").get("status") == "True"
        ),
        180,
        "the managed Redis ready",
    )
    password = secret_value(core, namespace, "kept-broker", "password")
    broker_uid = apps.read_namespaced_stateful_set("kept-redis", namespace).metadata.uid
    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "kept", {"spec": {"scaling": {"maxReplicas": 5}}}
    )
    generation = patched["metadata"]["generation"]
    wait_for(
        lambda: (
            read_tq(custom, namespace, "kept").get("status", {}).get("observedGeneration")
            == generation
        ),
        60,
        f"generation {generation} reconciled",
    )
    assert secret_value(core, namespace, "kept-broker", "password") == password
    assert apps.read_namespaced_stateful_set("kept-redis", namespace).metadata.uid == broker_uid
    assert condition(read_tq(custom, namespace, "kept"), "BrokerReady").get("status") == "True"


def test_a_managed_rabbitmq_is_garbage_collected(core, apps, custom, operator, namespace):
    from kubernetes import client

    create_tq(custom, namespace, taskqueue("gone", {"type": "rabbitmq", "managed": {}}))
    wait_for(
        lambda: apps.read_namespaced_stateful_set("gone-rabbitmq", namespace),
        60,
        "the RabbitMQ StatefulSet",
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone")
    net = client.NetworkingV1Api(core.api_client)

    def left() -> list[str]:
        names = [s.metadata.name for s in apps.list_namespaced_stateful_set(namespace).items]
        names += [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items]
        names += [s.metadata.name for s in core.list_namespaced_service(namespace).items]
        names += [
            c.metadata.name
            for c in core.list_namespaced_config_map(namespace).items
            if c.metadata.name.startswith("gone")
        ]
        names += [
            s.metadata.name
            for s in core.list_namespaced_secret(namespace).items
            if s.metadata.name.startswith("gone")
        ]
        names += [n.metadata.name for n in net.list_namespaced_network_policy(namespace).items]
        names += [p.metadata.name for p in core.list_namespaced_pod(namespace).items]
        return names

    wait_for(lambda: not left(), 120, "the managed RabbitMQ's objects and pods garbage-collected")


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


@pytest.mark.replaces_operator
def test_a_killed_operator_pod_is_replaced_and_resumes(core, apps, custom, operator, namespace):
    external_taskqueue(core, apps, custom, namespace, "steady", 2)
    old = operator_pod(core, SYSTEM_NAMESPACE)  # not `operator`: an earlier test replaced it
    assert old, "a Ready operator pod"
    core.delete_namespaced_pod(old, SYSTEM_NAMESPACE, grace_period_seconds=0)
    wait_for(
        lambda: operator_pod(core, SYSTEM_NAMESPACE, exclude=(old,)), 120, "a new operator pod"
    )
    # The new operator sees the TaskQueue and keeps its two replicas.
    wait_for(
        lambda: (
            condition(read_tq(custom, namespace, "steady"), "BrokerReady").get("status") == "True"
            and apps.read_namespaced_deployment("steady-worker", namespace).spec.replicas == 2
        ),
        60,
        "the TaskQueue healthy under the new operator, replicas held",
    )
