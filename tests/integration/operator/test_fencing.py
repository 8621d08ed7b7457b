"""Two writers on the real kube-apiserver: the operator's writes carry the resourceVersion
their decision was made from, so the stale one gets a 409 and the object keeps the fresh
value; the stale tick then adopts what it finds and writes again on its next round.

The "two operators" are two `TaskQueueTicker`s with their own `status.writer`, as two
replicas would be during the few seconds in which a replica that lost the lead has not yet
noticed (kopf peering pauses it, but a tick already running finishes)."""

from __future__ import annotations

import asyncio

import pytest
import worker_tasks as rt
from ebbtide_operator import fence, naming, provision
from ebbtide_operator.broker_io import BrokerReader
from ebbtide_operator.cluster import Conflict
from ebbtide_operator.deployment_cache import DeploymentCache
from ebbtide_operator.metrics import OperatorMetrics
from ebbtide_operator.policy import PolicyState
from ebbtide_operator.spec import parse_spec
from ebbtide_operator.tick import TaskQueueTicker
from support.apiserver import Namespace, RecordingCluster

pytestmark = pytest.mark.redis
WORKER = naming.worker_name("tq1")


def taskqueue(**scaling) -> dict:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": "tq1"},
        "spec": {
            "broker": {"type": "redis", "external": {"secretRef": {"name": "tq1-url"}}},
            "queues": [{"name": "default"}],
            "worker": {"image": "w:1", "app": "worker_tasks:app", "concurrency": 1},
            "scaling": {"minReplicas": 0, "maxReplicas": 8, "pollSeconds": 1, **scaling},
        },
    }


def stored(ns: Namespace) -> dict:
    return ns.custom.get_namespaced_custom_object(
        naming.GROUP, naming.VERSION, ns.name, naming.PLURAL, "tq1"
    )


def errors(metrics: OperatorMetrics, ns: Namespace, stage: str) -> float:
    return metrics.errors.labels(ns.name, "tq1", stage)._value.get()


@pytest.fixture
def setup(redis_db, monkeypatch, kube):
    monkeypatch.setenv("EBBTIDE_BROKER_URL", redis_db)
    rt.app.use_broker_url(redis_db)
    rt._client = None
    cluster, ns = kube
    ns.add_secret("tq1-url", {"url": redis_db})
    reader = BrokerReader(max_threads=8)
    yield cluster, ns, reader
    reader.close()
    rt.app.close()


def ticker(cluster, reader, writer: str, metrics: OperatorMetrics | None = None):
    return TaskQueueTicker(
        cluster, reader, metrics or OperatorMetrics(), cluster.record_event, writer=writer
    )


def test_a_status_write_from_a_stale_version_is_refused_and_the_fresh_value_stays(setup):
    cluster, ns, _ = setup
    body = ns.create_taskqueue(taskqueue())
    seen = body["metadata"]["resourceVersion"]
    fresh = asyncio.run(cluster.patch_status(ns.name, "tq1", {"backlog": 5}, seen))
    assert fresh and fresh != seen
    with pytest.raises(Conflict):
        asyncio.run(cluster.patch_status(ns.name, "tq1", {"backlog": 1}, seen))
    assert ns.status("tq1")["backlog"] == 5
    # The precondition is what makes the difference: without one, the last write wins.
    asyncio.run(cluster.patch_status(ns.name, "tq1", {"backlog": 2}, fresh))
    assert ns.status("tq1")["backlog"] == 2


def test_a_scale_from_a_stale_version_is_refused_and_the_fresh_replicas_stay(setup):
    cluster, ns, _ = setup
    body = ns.create_taskqueue(taskqueue())
    asyncio.run(provision.reconcile(cluster, body, parse_spec(body["spec"])))
    seen = ns.deployment(WORKER)["metadata"]["resourceVersion"]
    fresh = asyncio.run(cluster.scale_deployment(ns.name, WORKER, 6, seen))
    with pytest.raises(Conflict):
        asyncio.run(cluster.scale_deployment(ns.name, WORKER, 2, seen))
    assert ns.deployment(WORKER)["spec"]["replicas"] == 6
    assert ns.deployment(WORKER)["metadata"]["resourceVersion"] == fresh


def test_a_stale_operator_is_refused_adopts_the_fresh_state_and_recovers(setup):
    """Operator A ticks; B takes over and ticks on the fresh object; A, still holding its
    old view, ticks once more: its status write gets a 409, the stored status keeps B's
    figures and writer, and A takes B's scaling state as its own. A's next tick (on the
    object as its watch now delivers it) writes again."""
    cluster, ns, reader = setup
    body = ns.create_taskqueue(taskqueue(scaleDownStabilizationSeconds=300))
    asyncio.run(provision.reconcile(cluster, body, parse_spec(body["spec"])))
    metrics_a = OperatorMetrics()
    a = ticker(cluster, reader, "op-a/1", metrics_a)
    b = ticker(cluster, reader, "op-b/1")

    rt.record.send_many(("fence", i) for i in range(40))
    assert asyncio.run(a.tick(body)).status_written
    assert fence.written_by(stored(ns)) == "op-a/1#1"

    rt.record.send_many(("fence", i) for i in range(40, 100))
    taken_over = asyncio.run(b.tick(stored(ns)))
    assert taken_over.status_written and fence.written_by(stored(ns)) == "op-b/1#1"
    fresh = stored(ns)["status"]
    assert fresh["backlog"] == 100

    rt.record.send_many(("fence", i) for i in range(100, 110))
    stale = asyncio.run(a.tick(body))  # the body A's watch last delivered: its own write

    assert not stale.status_written
    assert errors(metrics_a, ns, "status-conflict") == 1
    after = stored(ns)["status"]
    assert fence.written_by(stored(ns)) == "op-b/1#1"
    assert after["backlog"] == 100, "the stale writer did not overwrite the fresh status"
    adopted = PolicyState.from_dict(fresh["policyState"])
    assert a.memory.policy_state == adopted, "A adopted B's state"
    assert a.memory.last_scale_time == fresh["lastScaleTime"]

    recovered = asyncio.run(a.tick(stored(ns)))
    assert recovered.status_written
    assert fence.written_by(stored(ns)) == "op-a/1#2"
    assert stored(ns)["status"]["backlog"] == 110


def test_a_scale_decided_from_a_stale_deployment_is_decided_again_from_a_fresh_read(setup):
    """The tick reads replicas from the watch cache. When another writer scaled after the
    cached copy, the scale write gets a 409; the tick re-reads the Deployment and decides
    again from the fresh replicas (here: nothing left to add), never writing the stale
    decision."""
    cluster, ns, reader = setup
    body = ns.create_taskqueue(taskqueue(initialTaskSeconds=1, targetBacklogSeconds=30))
    asyncio.run(provision.reconcile(cluster, body, parse_spec(body["spec"])))
    cache = DeploymentCache()
    cache.remember(ns.deployment(WORKER))  # replicas 0, as the cache last saw it
    cached = RecordingCluster(cluster.api_client, deployments=cache)
    asyncio.run(cluster.scale_deployment(ns.name, WORKER, 8))  # the other writer: to max
    rt.record.send_many(("stale", i) for i in range(600))
    metrics = OperatorMetrics()

    outcome = asyncio.run(ticker(cached, reader, "op-a/1", metrics).tick(body))

    assert ns.deployment(WORKER)["spec"]["replicas"] == 8
    assert outcome.replicas_before == 8 == outcome.replicas_after
    assert cached.scales == [], "the stale 0 -> 8 was never written, nor re-sent"
    assert outcome.decision is not None and outcome.decision.replicas == 8
    assert errors(metrics, ns, "scale-conflict") == 1  # the one 409, then a fresh decision
