"""The managed broker's role Secrets: generated once, kept, rotated by an edit, replaced on
a type switch, never taken over; the tick applies a rotation and rolls the workers."""

from __future__ import annotations

import asyncio
import base64
import copy

import pytest
from ebbtide.stats import BrokerStats
from ebbtide_operator import broker_admin, credentials, naming, provision
from ebbtide_operator.broker_io import BrokerReader
from ebbtide_operator.metrics import OperatorMetrics
from ebbtide_operator.spec import parse_spec
from ebbtide_operator.tick import TaskQueueTicker
from support.memory_cluster import MemoryCluster


def body(broker_type: str = "redis") -> dict:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": "tq", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {
            "broker": {"type": broker_type, "managed": {}},
            "queues": [{"name": "q"}],
            "worker": {"image": "w:1", "app": "m:app"},
            "scaling": {"minReplicas": 1, "maxReplicas": 5},
        },
    }


def sync(cluster: MemoryCluster, b: dict) -> credentials.Sync:
    return asyncio.run(credentials.sync(cluster, b, parse_spec(b["spec"])))


def data(cluster: MemoryCluster, name: str) -> dict[str, str]:
    return credentials.decode(cluster.objects[("Secret", "ns", name)])


def set_password(cluster: MemoryCluster, name: str, password: str) -> None:
    secret = cluster.objects[("Secret", "ns", name)]
    secret["data"]["password"] = base64.b64encode(password.encode()).decode()


def test_three_role_secrets_then_the_admin_with_the_broker_file_from_them():
    cluster = MemoryCluster()
    first = sync(cluster, body())
    assert first.report == {
        "Secret/tq-broker-producer": "created",
        "Secret/tq-broker-worker": "created",
        "Secret/tq-broker-operator": "created",
        "Secret/tq-broker": "created",
    }
    passwords = {data(cluster, f"tq-broker-{r}")["password"] for r in naming.ROLES}
    assert len(passwords) == 3 and all(len(p) >= 40 for p in passwords)
    acl = data(cluster, "tq-broker")["users.acl"]
    assert [line.split()[1] for line in acl.splitlines()] == [
        "default",
        "ebbtide-producer",
        "ebbtide-worker",
        "ebbtide-operator",
    ]
    assert first.complete and first.urls["operator"].startswith(
        "rediss://ebbtide-operator:"
    )  # TLS default
    # Nothing changes on a second pass: same passwords, same version, nothing written.
    patches = len(cluster.patches)
    again = sync(cluster, body())
    assert set(again.report.values()) == {"kept"} and len(cluster.patches) == patches
    assert again.version() == first.version() and again.fingerprint() == first.fingerprint()
    assert not again.rendered_changed and again.rotated == ()


def test_an_edited_password_re_derives_the_url_and_the_broker_file():
    cluster = MemoryCluster()
    first = sync(cluster, body("rabbitmq"))
    admin_before = data(cluster, "tq-broker")
    set_password(cluster, "tq-broker-producer", "a-rotated-password")
    rotated = sync(cluster, body("rabbitmq"))
    assert rotated.report["Secret/tq-broker-producer"] == "rotated"
    assert rotated.report["Secret/tq-broker"] == "updated"
    assert rotated.rotated == ("producer",) and rotated.rendered_changed
    producer = data(cluster, "tq-broker-producer")
    assert producer["url"].startswith("amqps://ebbtide-producer:a-rotated-password@")
    assert "declare=passive" in producer["url"]
    admin = data(cluster, "tq-broker")
    assert admin["password"] == admin_before["password"]  # the admin stays the identity
    assert admin["definitions.json"] != admin_before["definitions.json"]
    assert "a-rotated-password" not in admin["definitions.json"]
    # Only the producer changed: the workers keep their version (no roll), the broker
    # must be told (a new fingerprint).
    assert rotated.version() == first.version()
    assert rotated.fingerprint() != first.fingerprint()


def test_a_deleted_role_secret_is_generated_again_and_a_foreign_one_is_a_conflict():
    cluster = MemoryCluster()
    first = sync(cluster, body())
    del cluster.objects[("Secret", "ns", "tq-broker-worker")]
    renewed = sync(cluster, body())
    assert renewed.report["Secret/tq-broker-worker"] == "created"
    assert renewed.version() != first.version()  # a new worker password rolls the pods

    foreign = MemoryCluster()
    foreign.add_secret("ns", "tq-broker-operator", {"url": "redis://mine"})
    result = sync(foreign, body())
    assert result.report["Secret/tq-broker-operator"] == credentials.CONFLICT
    assert not result.complete and "Secret/tq-broker" not in result.report
    assert credentials.decode(foreign.objects[("Secret", "ns", "tq-broker-operator")]) == {
        "url": "redis://mine"
    }  # untouched
    report = asyncio.run(provision.reconcile(foreign, body(), parse_spec(body()["spec"])))
    assert provision.conflicts(report) == ["Secret/tq-broker-operator"]


def test_a_broker_type_switch_replaces_every_identity():
    cluster = MemoryCluster()
    sync(cluster, body("redis"))
    switched = sync(cluster, body("rabbitmq"))
    assert set(switched.report.values()) == {"replaced"}
    for role in naming.ROLES:
        assert data(cluster, f"tq-broker-{role}")["url"].startswith("amqps://")
    assert "definitions.json" in data(cluster, "tq-broker")


def test_external_brokers_get_no_generated_secret():
    b = body()
    b["spec"]["broker"] = {"type": "redis", "external": {"secretRef": {"name": "mine"}}}
    cluster = MemoryCluster()
    result = sync(cluster, b)
    assert result.report == {} and not cluster.objects
    spec = parse_spec(b["spec"])
    assert {r: spec.broker.url_secret("tq", r).name for r in naming.ROLES} == dict.fromkeys(
        naming.ROLES, "mine"
    )


class EmptyBroker:
    """A statistics link with nothing queued (the tick's broker reads are not the point)."""

    def stats(self, queues: list[str], prefix: str) -> BrokerStats:
        return BrokerStats(now=0.0, queues={})

    def eviction_policy(self) -> str | None:
        return None

    def close(self) -> None:
        pass


def test_the_tick_applies_a_rotation_to_the_broker_and_rolls_the_workers(monkeypatch):
    applied: list[dict] = []
    monkeypatch.setattr(
        broker_admin,
        "apply",
        lambda _type, url, creds, prefix, name, queues, tls: applied.append(dict(creds)),
    )
    cluster = MemoryCluster()
    b = body()
    asyncio.run(provision.reconcile(cluster, b, parse_spec(b["spec"])))
    reader = BrokerReader(max_threads=1, connect=lambda url, _n, _tls: EmptyBroker())
    now = [1000.0]
    ticker = TaskQueueTicker(
        cluster, reader, OperatorMetrics(), cluster.record_event, clock=lambda: now[0]
    )
    deployment = ("Deployment", "ns", "tq-worker")

    def annotation() -> str:
        template = cluster.objects[deployment]["spec"]["template"]
        return template["metadata"]["annotations"][naming.CREDENTIALS_ANNOTATION]

    try:
        before = annotation()
        asyncio.run(ticker.tick(b))
        assert annotation() == before and len(applied) == 1  # set once after a start
        assert not [e for e in cluster.events if e[1] == "Rollout"]
        status = cluster.statuses[("ns", "tq")]["broker"]
        assert status == {
            "producerSecret": "tq-broker-producer",
            "workerSecret": "tq-broker-worker",
            "operatorSecret": "tq-broker-operator",
        }

        set_password(cluster, "tq-broker-worker", "rotated")
        now[0] += 10  # within the refresh period: not read yet
        asyncio.run(ticker.tick(b))
        assert annotation() == before and len(applied) == 1
        now[0] += 60
        asyncio.run(ticker.tick(b))
        assert annotation() != before  # the pods roll onto the new password
        assert applied[-1]["worker"].password == "rotated"
        reasons = [e[1] for e in cluster.events]
        assert "CredentialsRotated" in reasons and "Rollout" in reasons
        assert "rotated@" in data(cluster, "tq-broker-worker")["url"]
        # The reconcile agrees with the tick: no roll back and forth.
        template = copy.deepcopy(cluster.objects[deployment]["spec"]["template"])
        asyncio.run(provision.reconcile(cluster, b, parse_spec(b["spec"])))
        assert cluster.objects[deployment]["spec"]["template"] == template
    finally:
        reader.close()


@pytest.mark.parametrize("role", ["admin", ""])
def test_unknown_roles_are_refused_by_name(role):
    with pytest.raises(ValueError, match="unknown broker role"):
        naming.role_secret_name("tq", role)


def test_the_secret_refresh_period_comes_from_the_environment_and_is_checked():
    from ebbtide_operator.main import secret_refresh_seconds

    assert secret_refresh_seconds({}) == 60.0
    assert secret_refresh_seconds({"EBBTIDE_SECRET_REFRESH_SECONDS": "5"}) == 5.0
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(ValueError, match=f"EBBTIDE_SECRET_REFRESH_SECONDS .* got '{bad}'"):
            secret_refresh_seconds({"EBBTIDE_SECRET_REFRESH_SECONDS": bad})
