"""provision.ensure_tls and the reconcile with TLS: generated once, renewed only when due,
the broker restarted on a new certificate, cert-manager's Certificate instead when asked,
and everything TLS removed when it is switched off."""

from __future__ import annotations

import asyncio
import datetime as dt

from ebbtide_operator import certs, naming, provision
from ebbtide_operator.build import tls as build_tls
from ebbtide_operator.spec import parse_spec
from support.memory_cluster import MemoryCluster
from support.taskqueue import decoded


def body(broker_type: str = "redis", tls: dict | None = None) -> dict:
    broker: dict = {"type": broker_type, "managed": {}}
    if tls is not None:
        broker["tls"] = tls
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": "tq", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {
            "broker": broker,
            "queues": [{"name": "q"}],
            "worker": {"image": "w:1", "app": "m:app"},
        },
    }


def run(cluster: MemoryCluster, b: dict) -> dict[str, str]:
    return asyncio.run(provision.reconcile(cluster, b, parse_spec(b["spec"])))


def secret(cluster: MemoryCluster, name: str) -> dict[str, str]:
    return decoded(cluster.objects[("Secret", "ns", name)])


def broker_annotations(cluster: MemoryCluster, kind: str = "StatefulSet") -> dict:
    return cluster.objects[(kind, "ns", "tq-redis")]["spec"]["template"]["metadata"]["annotations"]


def test_generated_once_and_kept_while_valid():
    cluster = MemoryCluster()
    first = run(cluster, body())
    assert first["Secret/tq-broker-ca"] == first["Secret/tq-broker-tls"] == "created"
    server = secret(cluster, "tq-broker-tls")
    assert secret(cluster, "tq-broker-ca") == {"ca.crt": server["ca.crt"]}
    again = run(cluster, body())
    assert again["Secret/tq-broker-ca"] == again["Secret/tq-broker-tls"] == "kept"
    assert secret(cluster, "tq-broker-tls") == server
    assert not [p for p in cluster.patches if p[0] == "Secret" and p[2].startswith("tq-broker-")]
    assert broker_annotations(cluster)[naming.TLS_HASH_ANNOTATION]
    url = secret(cluster, "tq-broker-worker")["url"]
    assert url.startswith("rediss://ebbtide-worker:")


def test_renewal_inside_the_margin_patches_and_restarts_the_broker():
    cluster = MemoryCluster()
    b = body()
    run(cluster, b)
    before = secret(cluster, "tq-broker-tls")
    old_hash = broker_annotations(cluster)[naming.TLS_HASH_ANNOTATION]
    due = dt.datetime.now(dt.UTC) + certs.SERVER_LIFETIME - dt.timedelta(days=1)
    report, new_hash = asyncio.run(provision.ensure_tls(cluster, b, parse_spec(b["spec"]), due))
    assert report == {"Secret/tq-broker-ca": "renewed", "Secret/tq-broker-tls": "renewed"}
    after = secret(cluster, "tq-broker-tls")
    assert after["tls.crt"] != before["tls.crt"] and after["ca.key"] == before["ca.key"]
    assert new_hash != old_hash
    kept, same = asyncio.run(provision.ensure_tls(cluster, b, parse_spec(b["spec"]), due))
    assert set(kept.values()) == {"kept"} and same == new_hash
    # The reconcile writes the new hash into the broker's pod template: it restarts.
    objects = provision.desired_broker_objects(b, parse_spec(b["spec"]), tls_hash=new_hash)
    (workload,) = [o for o in objects if o["kind"] == "StatefulSet"]
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations[naming.TLS_HASH_ANNOTATION] == new_hash


def test_a_foreign_tls_secret_is_a_conflict_and_left_alone():
    cluster = MemoryCluster()
    cluster.add_secret("ns", "tq-broker-tls", {"tls.crt": "mine"})
    report = run(cluster, body())
    assert report["Secret/tq-broker-tls"] == "conflict"
    assert secret(cluster, "tq-broker-tls") == {"tls.crt": "mine"}
    assert ("Secret", "ns", "tq-broker-ca") not in cluster.objects
    assert "Secret/tq-broker-tls" in provision.conflicts(report)


def test_cert_manager_gets_a_certificate_and_no_generated_secrets():
    cluster = MemoryCluster()
    report = run(
        cluster, body("rabbitmq", {"issuerRef": {"name": "corp", "kind": "ClusterIssuer"}})
    )
    assert report["Certificate/tq-broker-tls"] == "created"
    cert = cluster.objects[("Certificate", "ns", "tq-broker-tls")]
    assert cert["spec"]["issuerRef"]["name"] == "corp"
    assert ("Secret", "ns", "tq-broker-ca") not in cluster.objects
    assert ("Secret", "ns", "tq-broker-tls") not in cluster.objects  # cert-manager's to write
    # cert-manager writes it: its hash reaches the broker pod on the next reconcile.
    made = certs.plan(None, None, None, ["tq-rabbitmq"], "x", dt.datetime.now(dt.UTC))
    assert made is not None
    cluster.add_secret("ns", "tq-broker-tls", {"tls.crt": made.server.cert_pem})
    run(cluster, body("rabbitmq", {"issuerRef": {"name": "corp", "kind": "ClusterIssuer"}}))
    pod = cluster.objects[("StatefulSet", "ns", "tq-rabbitmq")]["spec"]["template"]
    assert pod["metadata"]["annotations"][naming.TLS_HASH_ANNOTATION] == build_tls.tls_hash(
        cluster.objects[("Secret", "ns", "tq-broker-tls")]
    )


def test_switching_tls_off_and_on_keeps_credentials_and_follows_the_url():
    cluster = MemoryCluster()
    run(cluster, body())
    worker = secret(cluster, "tq-broker-worker")
    report = run(cluster, body(tls={"enabled": False}))
    assert report["Secret/tq-broker-ca"] == report["Secret/tq-broker-tls"] == "deleted"
    assert report["Secret/tq-broker-worker"] == "updated"  # a new URL, not a rotation
    plain = secret(cluster, "tq-broker-worker")
    assert plain["password"] == worker["password"]
    assert plain["url"] == worker["url"].replace("rediss://", "redis://")
    args = cluster.objects[("StatefulSet", "ns", "tq-redis")]["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert "--tls-port" not in args
    run(cluster, body())
    assert secret(cluster, "tq-broker-worker")["url"] == worker["url"]


def test_switching_rabbitmq_tls_moves_the_ports():
    cluster = MemoryCluster()
    run(cluster, body("rabbitmq"))
    assert ":5671/" in secret(cluster, "tq-broker-operator")["url"]
    run(cluster, body("rabbitmq", {"enabled": False}))
    url = secret(cluster, "tq-broker-operator")["url"]
    assert url.startswith("amqp://") and ":5672/" in url and "management_port=15672" in url
    service = cluster.objects[("Service", "ns", "tq-rabbitmq")]
    assert [p["port"] for p in service["spec"]["ports"]] == [5672, 15672]
