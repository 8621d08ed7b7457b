"""No adoption: the operator changes only objects that carry its controller ownerReference
for this TaskQueue's uid. A user's same-named object is never patched, scaled, deleted or
given our ownerReference (which would garbage-collect it with the TaskQueue): it is
reported as a conflict, and the status says Ready=False, reason NameConflict."""

from __future__ import annotations

import asyncio
import copy
import logging

import pytest
from ebbtide_operator import provision, status
from ebbtide_operator.build import worker
from ebbtide_operator.spec import parse_spec
from support.memory_cluster import MemoryCluster


def body(uid: str = "u1") -> dict:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": "tq", "namespace": "ns", "uid": uid, "generation": 1},
        "spec": {
            "broker": {"type": "redis", "managed": {}},
            "queues": [{"name": "q"}],
            "worker": {"image": "w:1", "app": "m:app"},
            "scaling": {"minReplicas": 1, "maxReplicas": 5},
        },
    }


def users(kind: str, name: str, owner_refs: list | None = None) -> dict:
    """Someone else's object, with the name a TaskQueue `tq` needs."""
    return {
        "apiVersion": "v1" if kind in ("Service", "Secret") else "apps/v1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": {"team": "mine"},
            "ownerReferences": owner_refs or [],
        },
        "spec": {"replicas": 2, "selector": {"app": "mine"}, "template": {"spec": {}}},
    }


def run(cluster: MemoryCluster, b: dict) -> dict:
    return asyncio.run(provision.reconcile(cluster, b, parse_spec(b["spec"])))


def put(cluster: MemoryCluster, obj: dict) -> dict:
    cluster.objects[(obj["kind"], "ns", obj["metadata"]["name"])] = obj
    return copy.deepcopy(obj)


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("Deployment", "tq-worker"),
        ("Service", "tq-redis"),
        ("StatefulSet", "tq-redis"),
        ("NetworkPolicy", "tq-redis"),
        ("Secret", "tq-broker"),
    ],
)
def test_a_foreign_object_is_left_untouched_and_reported(kind, name):
    cluster = MemoryCluster()
    before = put(cluster, users(kind, name))
    report = run(cluster, body())
    assert report[f"{kind}/{name}"] == "conflict"
    assert provision.conflicts(report) == [f"{kind}/{name}"]
    assert cluster.objects[(kind, "ns", name)] == before, "not one byte written"
    assert not [p for p in cluster.patches if p[:3] == (kind, "ns", name)]
    # Everything else is still provisioned.
    others = {k: v for k, v in report.items() if k != f"{kind}/{name}"}
    assert set(others.values()) == {"created"}


def test_an_object_owned_but_not_controlled_or_by_another_uid_is_not_ours():
    cluster = MemoryCluster()
    not_controller = [{"kind": "TaskQueue", "name": "tq", "uid": "u1", "controller": False}]
    other_uid = [{"kind": "TaskQueue", "name": "tq", "uid": "u0", "controller": True}]
    put(cluster, users("Service", "tq-redis", not_controller))
    put(cluster, users("Deployment", "tq-worker", other_uid))
    report = run(cluster, body())
    assert provision.conflicts(report) == ["Deployment/tq-worker", "Service/tq-redis"]


def test_a_recreated_taskqueue_does_not_take_over_its_predecessors_leftovers():
    cluster = MemoryCluster()
    run(cluster, body(uid="old"))
    report = run(cluster, body(uid="new"))
    assert set(report.values()) == {"conflict"}
    refs = cluster.objects[("Deployment", "ns", "tq-worker")]["metadata"]["ownerReferences"]
    assert [r["uid"] for r in refs] == ["old"]


def test_stale_objects_are_deleted_only_when_controlled_by_us():
    cluster = MemoryCluster()
    # A Deployment named like the ephemeral broker, carrying a non-controller reference.
    refs = [{"kind": "TaskQueue", "name": "tq", "uid": "u1", "controller": False}]
    put(cluster, users("Deployment", "tq-redis", refs))
    report = run(cluster, body())  # persistent: the Deployment tq-redis is "stale"
    assert "Deployment/tq-redis" not in report
    assert ("Deployment", "ns", "tq-redis") in cluster.objects


def test_our_own_objects_are_still_updated():
    cluster = MemoryCluster()
    run(cluster, body())
    b = body()
    b["spec"]["worker"]["image"] = "w:2"
    report = run(cluster, b)
    assert provision.conflicts(report) == []
    assert report["Service/tq-redis"] == "updated"
    assert report["Deployment/tq-worker"] == "updated"


def sync(cluster: MemoryCluster, b: dict) -> dict | None:
    spec = parse_spec(b["spec"])
    template = worker.worker_pod_template("tq", spec)
    return asyncio.run(
        provision.sync_worker_deployment(
            cluster, b, spec, replicas=3, template=template, events=cluster.record_event
        )
    )


def test_the_tick_never_repairs_or_scales_a_foreign_worker_deployment():
    cluster = MemoryCluster()
    before = put(cluster, users("Deployment", "tq-worker"))
    with pytest.raises(provision.NameConflict) as raised:
        sync(cluster, body())
    assert raised.value.key == "Deployment/tq-worker"
    with pytest.raises(provision.NameConflict):
        asyncio.run(provision.scale_workers(cluster, body(), 5))
    assert cluster.objects[("Deployment", "ns", "tq-worker")] == before
    assert cluster.scales == [] and cluster.patches == [] and cluster.events == []


def test_once_the_foreign_object_is_gone_ours_is_created():
    cluster = MemoryCluster()
    put(cluster, users("Service", "tq-redis"))
    assert run(cluster, body())["Service/tq-redis"] == "conflict"
    del cluster.objects[("Service", "ns", "tq-redis")]
    assert run(cluster, body())["Service/tq-redis"] == "created"


def test_conflict_conditions_name_the_objects():
    health = status.Health(
        name_conflicts=("Service/tq-redis",), worker_conflict="Deployment/tq-worker"
    )
    ready, _broker, workers, scaling, degraded, *_ = status.conditions(health, 0, 0)
    assert ready["status"] == "False" and ready["reason"] == "NameConflict"
    assert "Deployment/tq-worker" in ready["message"] and "Service/tq-redis" in ready["message"]
    assert workers["reason"] == "NameConflict" and workers["status"] == "False"
    assert scaling["reason"] == "NameConflict" and scaling["status"] == "False"
    assert degraded["reason"] == "NameConflict" and degraded["status"] == "True"
    broker_only = status.conditions(status.Health(name_conflicts=("Service/tq-redis",)), 1, 1)
    assert broker_only[0]["reason"] == "NameConflict"
    assert broker_only[2]["reason"] == "AllReplicasReady", "workers are fine"


def test_creates_deletes_and_scales_are_audited(caplog):
    caplog.set_level(logging.INFO, logger="ebbtide.audit")
    cluster = MemoryCluster()
    b = body()
    run(cluster, b)
    asyncio.run(provision.scale_workers(cluster, b, 4, reason="1→4: backlog"))
    b["spec"]["broker"]["managed"] = {"persistence": {"enabled": False}}
    run(cluster, b)  # StatefulSet → Deployment
    entries = [r.audit for r in caplog.records if hasattr(r, "audit")]
    actions = [(e["action"], e["object"]) for e in entries]
    assert actions[:9] == [
        ("create", "Secret/tq-broker-producer"),
        ("create", "Secret/tq-broker-worker"),
        ("create", "Secret/tq-broker-operator"),
        ("create", "Secret/tq-broker"),
        ("create", "Secret/tq-broker-ca"),  # TLS, on by default
        ("create", "Secret/tq-broker-tls"),
        ("create", "StatefulSet/tq-redis"),
        ("create", "Service/tq-redis"),
        ("create", "NetworkPolicy/tq-redis"),
    ]
    assert ("create", "Deployment/tq-worker") in actions
    assert ("delete", "StatefulSet/tq-redis") in actions
    (scale,) = [e for e in entries if e["action"] == "scale"]
    assert scale["replicas_before"] == 1 and scale["replicas_after"] == 4 and scale["count"] == 4
    assert scale["reason"] == "1→4: backlog"
    for entry in entries:
        assert entry["who"] and entry["when"].endswith("Z") and entry["namespace"] == "ns"
        assert entry["taskqueue"] == "tq"
