"""Provisioning is idempotent: the Secret is made once, replicas are never reset, and
objects the spec no longer wants (and only ours) are removed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from ebbtide_operator import provision  # noqa: E402
from ebbtide_operator.spec import parse_spec  # noqa: E402
from support.memory_cluster import MemoryCluster  # noqa: E402


def body(**persistence) -> dict:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": "tq", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {
            "broker": {"type": "redis", "managed": {"persistence": persistence}},
            "queues": [{"name": "q"}],
            "worker": {"image": "w:1", "app": "m:app"},
            "scaling": {"minReplicas": 1, "maxReplicas": 5},
        },
    }


def run(cluster, b):
    return asyncio.run(provision.reconcile(cluster, b, parse_spec(b["spec"])))


def test_first_reconcile_creates_everything():
    cluster = MemoryCluster()
    report = run(cluster, body())
    assert report == {
        "Secret/tq-broker": "created",
        "Deployment/tq-redis": "created",
        "Service/tq-redis": "created",
        "NetworkPolicy/tq-redis": "created",
        "Deployment/tq-worker": "created",
    }
    assert cluster.objects[("Deployment", "ns", "tq-worker")]["spec"]["replicas"] == 1


def test_second_reconcile_keeps_password_and_replicas():
    cluster = MemoryCluster()
    b = body()
    run(cluster, b)
    secret = dict(cluster.objects[("Secret", "ns", "tq-broker")]["data"])
    asyncio.run(cluster.scale_deployment("ns", "tq-worker", 4))
    b["spec"]["worker"]["image"] = "w:2"
    report = run(cluster, b)
    assert report["Secret/tq-broker"] == "kept"
    assert cluster.objects[("Secret", "ns", "tq-broker")]["data"] == secret
    worker = cluster.objects[("Deployment", "ns", "tq-worker")]
    assert worker["spec"]["replicas"] == 4
    assert worker["spec"]["template"]["spec"]["containers"][0]["image"] == "w:2"


def test_switching_to_persistence_replaces_the_workload():
    cluster = MemoryCluster()
    run(cluster, body())
    report = run(cluster, body(enabled=True))
    assert report["StatefulSet/tq-redis"] == "created"
    assert report["Deployment/tq-redis"] == "deleted"
    assert ("Deployment", "ns", "tq-redis") not in cluster.objects


def test_switching_to_external_removes_only_owned_broker_objects():
    cluster = MemoryCluster()
    run(cluster, body())
    b = body()
    b["spec"]["broker"] = {"type": "redis", "external": {"secretRef": {"name": "tq-broker"}}}
    cluster.objects[("Secret", "ns", "tq-broker")]["metadata"][
        "ownerReferences"
    ] = []  # now the user's
    report = run(cluster, b)
    assert report["Deployment/tq-redis"] == "deleted" and report["Service/tq-redis"] == "deleted"
    assert ("Secret", "ns", "tq-broker") in cluster.objects
    env = cluster.objects[("Deployment", "ns", "tq-worker")]["spec"]["template"]["spec"][
        "containers"
    ][0]["env"]
    assert env[0]["valueFrom"]["secretKeyRef"] == {"name": "tq-broker", "key": "url"}
