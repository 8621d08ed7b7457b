"""Provisioning on a real kube-apiserver (tests/support/apiserver.py): every object the
operator builds for a managed Redis or RabbitMQ is accepted by the API server's own
validation, owned by the stored TaskQueue's uid, and kept, replaced or removed as the spec
changes, through the operator's `KubeCluster`. The decisions themselves are unit-tested on
MemoryCluster (tests/unit/operator/test_provision.py); this proves the objects and the
merge patches are what a real API server takes. No controller-manager: nothing runs them."""

from __future__ import annotations

import asyncio

from ebbtide_operator import provision
from ebbtide_operator.spec import parse_spec
from support.taskqueue import decoded

BROKER_OBJECTS = {
    "redis": ("StatefulSet", "Service", "NetworkPolicy"),
    "rabbitmq": ("StatefulSet", "Service", "NetworkPolicy", "ConfigMap"),
}


def taskqueue(broker: dict) -> dict:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": "tq"},
        "spec": {
            "broker": broker,
            "queues": [{"name": "q"}],
            "worker": {"image": "w:1", "app": "m:app"},
            "scaling": {"minReplicas": 1, "maxReplicas": 5},
        },
    }


def with_spec(body: dict, broker: dict, image: str = "w:1") -> dict:
    """The stored TaskQueue after an edit (kopf hands the operator the new body)."""
    spec = {**body["spec"], "broker": broker, "worker": {**body["spec"]["worker"], "image": image}}
    return {**body, "spec": spec}


def reconcile(cluster, body: dict) -> dict:
    return asyncio.run(provision.reconcile(cluster, body, parse_spec(body["spec"])))


def read(cluster, kind: str, ns: str, name: str) -> dict | None:
    return asyncio.run(cluster.read(kind, ns, name))


def test_a_managed_redis_is_accepted_owned_and_kept_across_reconciles(kube):
    cluster, ns = kube
    body = ns.create_taskqueue(taskqueue({"type": "redis", "managed": {}}))
    report = reconcile(cluster, body)
    assert report == {
        "Secret/tq-broker": "created",  # the admin, and the broker's users file
        "Secret/tq-broker-producer": "created",  # one Secret per role
        "Secret/tq-broker-worker": "created",
        "Secret/tq-broker-operator": "created",
        "Secret/tq-broker-ca": "created",  # TLS by default: the CA for clients ...
        "Secret/tq-broker-tls": "created",  # ... and the server's certificate
        "StatefulSet/tq-redis": "created",
        "Service/tq-redis": "created",
        "NetworkPolicy/tq-redis": "created",
        "Deployment/tq-worker": "created",
    }
    for entry in report:
        kind, name = entry.split("/")
        stored = read(cluster, kind, ns.name, name)
        (owner,) = stored["metadata"]["ownerReferences"]
        assert (owner["uid"], owner["controller"]) == (body["metadata"]["uid"], True), entry
    password = decoded(read(cluster, "Secret", ns.name, "tq-broker"))
    assert password["url"].startswith("rediss://")  # TLS only, by default

    asyncio.run(cluster.scale_deployment(ns.name, "tq-worker", 4))
    edited = with_spec(body, body["spec"]["broker"], image="w:2")
    report = reconcile(cluster, edited)
    assert report["Secret/tq-broker"] == "kept"
    assert decoded(read(cluster, "Secret", ns.name, "tq-broker")) == password
    worker = ns.deployment("tq-worker")
    assert worker["spec"]["replicas"] == 4, "a reconcile never resets the replicas"
    assert worker["spec"]["template"]["spec"]["containers"][0]["image"] == "w:2"


def test_switching_redis_to_rabbitmq_and_then_to_external_on_the_api_server(kube):
    cluster, ns = kube
    body = ns.create_taskqueue(taskqueue({"type": "redis", "managed": {}}))
    reconcile(cluster, body)

    rabbit = with_spec(body, {"type": "rabbitmq", "managed": {}})
    report = reconcile(cluster, rabbit)
    assert report["Secret/tq-broker"] == "replaced"
    assert decoded(read(cluster, "Secret", ns.name, "tq-broker"))["url"].startswith("amqps://")
    for kind in BROKER_OBJECTS["redis"]:
        assert report[f"{kind}/tq-redis"] == "deleted"
        assert read(cluster, kind, ns.name, "tq-redis") is None
    for kind in BROKER_OBJECTS["rabbitmq"]:
        assert read(cluster, kind, ns.name, "tq-rabbitmq") is not None, kind

    ns.add_secret("mine", {"url": "amqp://user:pw@rabbit.example:5672/%2F"})
    external = with_spec(body, {"type": "rabbitmq", "external": {"secretRef": {"name": "mine"}}})
    report = reconcile(cluster, external)
    for kind in BROKER_OBJECTS["rabbitmq"]:
        assert report[f"{kind}/tq-rabbitmq"] == "deleted"
        assert read(cluster, kind, ns.name, "tq-rabbitmq") is None
    assert report["Secret/tq-broker"] == "deleted"
    assert read(cluster, "Secret", ns.name, "tq-broker") is None
    assert read(cluster, "Secret", ns.name, "mine") is not None, "the user's Secret stays"
    volumes = ns.deployment("tq-worker")["spec"]["template"]["spec"]["volumes"]
    (url,) = [v["secret"] for v in volumes if v["name"] == "broker-url"]
    assert url["secretName"] == "mine"


def test_a_users_same_named_objects_are_reported_and_never_written(kube):
    """No adoption, on the API server: the user's Service and Secret keep their
    resourceVersion (not one write), and the rest of the TaskQueue is still provisioned."""
    cluster, ns = kube
    ns.core.create_namespaced_service(
        ns.name,
        {
            "metadata": {"name": "tq-redis", "labels": {"team": "mine"}},
            "spec": {"ports": [{"port": 6379}], "selector": {"app": "mine"}},
        },
    )
    ns.add_secret("tq-broker", {"url": "redis://mine:6379/0"})
    before = {
        kind: read(cluster, kind, ns.name, name)["metadata"]["resourceVersion"]
        for kind, name in (("Service", "tq-redis"), ("Secret", "tq-broker"))
    }
    body = ns.create_taskqueue(taskqueue({"type": "redis", "managed": {}}))
    report = reconcile(cluster, body)
    assert report["Service/tq-redis"] == "conflict" and report["Secret/tq-broker"] == "conflict"
    assert report["Deployment/tq-worker"] == "created"
    for kind, name in (("Service", "tq-redis"), ("Secret", "tq-broker")):
        stored = read(cluster, kind, ns.name, name)
        assert stored["metadata"]["resourceVersion"] == before[kind], kind
        assert not stored["metadata"].get("ownerReferences"), kind
    assert decoded(read(cluster, "Secret", ns.name, "tq-broker")) == {"url": "redis://mine:6379/0"}
