"""Provisioning is idempotent: the Secret is made once, replicas are never reset, and
objects the spec no longer wants (and only ours) are removed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from ebbtide.brokers.rabbitmq.topology import parse_options
from ebbtide_operator import provision
from ebbtide_operator.build import worker
from ebbtide_operator.spec import parse_spec
from support.memory_cluster import MemoryCluster
from support.taskqueue import decoded, managed_spec, taskqueue

EXAMPLES = Path(__file__).parents[3] / "examples"


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
        "Secret/tq-broker-producer": "created",
        "Secret/tq-broker-worker": "created",
        "Secret/tq-broker-operator": "created",
        "Secret/tq-broker": "created",
        "Secret/tq-broker-ca": "created",  # TLS by default
        "Secret/tq-broker-tls": "created",
        "StatefulSet/tq-redis": "created",
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
    run(cluster, body(enabled=False))
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
    assert report["StatefulSet/tq-redis"] == "deleted" and report["Service/tq-redis"] == "deleted"
    assert ("Secret", "ns", "tq-broker") in cluster.objects
    volumes = cluster.objects[("Deployment", "ns", "tq-worker")]["spec"]["template"]["spec"][
        "volumes"
    ]
    (url,) = [v["secret"] for v in volumes if v["name"] == "broker-url"]
    assert url["secretName"] == "tq-broker" and url["items"] == [{"key": "url", "path": "url"}]


def rabbit_body(**managed) -> dict:
    b = body()
    b["spec"]["broker"] = {"type": "rabbitmq", "managed": managed}
    return b


def secret_url(cluster) -> str:
    return asyncio.run(cluster.read_secret_value("ns", "tq-broker", "url"))


def test_managed_rabbitmq_creates_secret_config_statefulset_service_and_policy():
    cluster = MemoryCluster()
    report = run(cluster, rabbit_body())
    assert report == {
        "Secret/tq-broker-producer": "created",
        "Secret/tq-broker-worker": "created",
        "Secret/tq-broker-operator": "created",
        "Secret/tq-broker": "created",
        "Secret/tq-broker-ca": "created",
        "Secret/tq-broker-tls": "created",
        "ConfigMap/tq-rabbitmq": "created",
        "StatefulSet/tq-rabbitmq": "created",
        "Service/tq-rabbitmq": "created",
        "NetworkPolicy/tq-rabbitmq": "created",
        "Deployment/tq-worker": "created",
    }
    assert secret_url(cluster).startswith("amqps://ebbtide-")
    for key in cluster.objects:
        refs = cluster.objects[key]["metadata"]["ownerReferences"]
        assert [ref["uid"] for ref in refs] == ["u1"], key


def test_rabbitmq_reconcile_is_idempotent_and_applies_config_changes():
    cluster = MemoryCluster()
    run(cluster, rabbit_body())
    url = secret_url(cluster)
    report = run(cluster, rabbit_body(resources={"limits": {"memory": "1Gi"}}))
    assert report["Secret/tq-broker"] == "kept" and secret_url(cluster) == url
    assert report["ConfigMap/tq-rabbitmq"] == "updated"
    conf = cluster.objects[("ConfigMap", "ns", "tq-rabbitmq")]["data"]["rabbitmq.conf"]
    assert "total_memory_available_override_value = 1073741824" in conf
    assert not any(v == "deleted" for v in report.values())


def test_switching_redis_to_rabbitmq_replaces_secret_and_broker_objects():
    cluster = MemoryCluster()
    run(cluster, body())
    assert secret_url(cluster).startswith("rediss://")
    report = run(cluster, rabbit_body())
    assert report["Secret/tq-broker"] == "replaced"
    assert secret_url(cluster).startswith("amqps://")
    for kind in ("StatefulSet", "Service", "NetworkPolicy"):
        assert report[f"{kind}/tq-redis"] == "deleted"
        assert (kind, "ns", "tq-redis") not in cluster.objects
    assert ("StatefulSet", "ns", "tq-rabbitmq") in cluster.objects
    # ...and back: the RabbitMQ objects, ConfigMap included, go.
    report = run(cluster, body())
    assert report["Secret/tq-broker"] == "replaced" and secret_url(cluster).startswith("rediss://")
    for kind in ("StatefulSet", "Service", "NetworkPolicy", "ConfigMap"):
        assert report[f"{kind}/tq-rabbitmq"] == "deleted"


def test_a_users_secret_is_never_replaced_even_for_another_type():
    cluster = MemoryCluster()
    run(cluster, body())
    cluster.objects[("Secret", "ns", "tq-broker")]["metadata"]["ownerReferences"] = []
    report = run(cluster, rabbit_body())
    assert report["Secret/tq-broker"] == "conflict"
    assert secret_url(cluster).startswith("rediss://")


def test_rabbitmq_persistence_off_is_a_deployment_and_switching_replaces_it():
    cluster = MemoryCluster()
    run(cluster, rabbit_body())
    report = run(cluster, rabbit_body(persistence={"enabled": False}))
    assert report["Deployment/tq-rabbitmq"] == "created"
    assert report["StatefulSet/tq-rabbitmq"] == "deleted"


def test_switching_rabbitmq_to_external_removes_every_owned_broker_object():
    cluster = MemoryCluster()
    run(cluster, rabbit_body())
    b = rabbit_body()
    b["spec"]["broker"] = {"type": "rabbitmq", "external": {"secretRef": {"name": "mine"}}}
    report = run(cluster, b)
    for kind in ("StatefulSet", "Service", "NetworkPolicy", "ConfigMap"):
        assert report[f"{kind}/tq-rabbitmq"] == "deleted"
    assert report["Secret/tq-broker"] == "deleted"
    assert {key[0] for key in cluster.objects} == {"Deployment"}


def test_generated_credentials_are_fresh_and_never_guest():
    secrets = []
    for _ in range(5):
        cluster = MemoryCluster()
        b = taskqueue(managed_spec("rabbitmq"))
        asyncio.run(provision.reconcile(cluster, b, parse_spec(b["spec"])))
        secrets.append(cluster.objects[("Secret", "ns1", "tq1-broker")])
    users = {decoded(s)["username"] for s in secrets}
    passwords = {decoded(s)["password"] for s in secrets}
    assert len(users) == 5 and len(passwords) == 5
    assert "guest" not in users and all(u.startswith("ebbtide-") for u in users)
    assert all(len(p) >= 40 for p in passwords)
    # URL-safe, so they go into the amqp:// URL unescaped.
    assert all(parse_options(decoded(s)["url"]).amqp_url.count("@") == 1 for s in secrets)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("taskqueue-*.yaml")), ids=lambda p: p.name)
def test_examples_build(path):
    manifest = yaml.safe_load(path.read_text())
    manifest["metadata"].update(namespace="default", uid="u")
    spec = parse_spec(manifest["spec"])
    deployment = worker.worker_deployment(manifest, spec, replicas=spec.scaling.min_replicas)
    assert deployment["metadata"]["name"] == f"{manifest['metadata']['name']}-worker"
    for obj in provision.desired_broker_objects(manifest, spec):
        assert obj["metadata"]["name"].startswith(f"{manifest['metadata']['name']}-")


# --- the worker Deployment, as the tick keeps it -------------------------------------------


def sync(cluster: MemoryCluster, b: dict, replicas: int = 3) -> dict | None:
    spec = parse_spec(b["spec"])
    template = worker.worker_pod_template(b["metadata"]["name"], spec)
    return asyncio.run(
        provision.sync_worker_deployment(
            cluster, b, spec, replicas=replicas, template=template, events=cluster.record_event
        )
    )


def test_a_missing_worker_deployment_is_recreated_at_the_replicas_the_tick_wanted():
    cluster = MemoryCluster()
    live = sync(cluster, body(), replicas=3)
    assert live is not None and live["spec"]["replicas"] == 3
    assert cluster.events == [("Normal", "Created", "worker Deployment tq-worker")]


def test_a_taskqueue_being_deleted_never_gets_its_workers_back():
    cluster = MemoryCluster()
    b = body()
    b["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert sync(cluster, b) is None
    assert cluster.objects == {} and cluster.events == []


def test_a_live_template_that_holds_ours_is_left_alone():
    cluster = MemoryCluster()
    sync(cluster, body())
    cluster.events.clear()
    sync(cluster, body())
    assert cluster.patches == [] and cluster.events == []


def test_an_edited_template_is_restored_and_a_spec_change_rolls_out():
    cluster = MemoryCluster()
    b = body()
    sync(cluster, b)
    deployment = cluster.objects[("Deployment", "ns", "tq-worker")]
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    cluster.events.clear()
    sync(cluster, b)
    assert cluster.events == [
        ("Warning", "DriftRepaired", "restored the pod template of tq-worker")
    ]
    assert (
        cluster.objects[("Deployment", "ns", "tq-worker")]["spec"]["template"]["spec"][
            "containers"
        ][0]["image"]
        == "w:1"
    )
    b["spec"]["worker"]["image"] = "w:2"
    cluster.events.clear()
    sync(cluster, b)
    assert cluster.events == [("Normal", "Rollout", "pod template of tq-worker updated")]
    assert cluster.objects[("Deployment", "ns", "tq-worker")]["spec"]["replicas"] == 3


def test_scaling_writes_only_the_replicas_of_the_worker_deployment():
    cluster = MemoryCluster()
    run(cluster, body())
    asyncio.run(provision.scale_workers(cluster, body(), 7))
    assert cluster.scales == [("ns", "tq-worker", 7)]
    assert cluster.patches == []
