"""The operator's tick against a real Redis fed by the real runtime (producers and worker
processes). Kubernetes is the in-memory MemoryCluster; the API server itself is covered
by e2e/tests/test_operator.py. Conditions are polled, never slept on."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
import redis
import worker_tasks as rt
from ebbtide.stats import read_stats
from ebbtide_operator import naming, provision
from ebbtide_operator.broker_io import BrokerReader
from ebbtide_operator.metrics import OperatorMetrics
from ebbtide_operator.policy import Decision, PolicyState, decide
from ebbtide_operator.spec import parse_spec
from ebbtide_operator.tick import TaskQueueTicker
from support.memory_cluster import MemoryCluster
from support.servers import free_port
from worker_testkit import wait_for, worker

pytestmark = pytest.mark.redis
NS = "apps"


def taskqueue(name: str = "tq1", **scaling) -> dict:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 3},
        "spec": {
            "broker": {"type": "redis", "external": {"secretRef": {"name": f"{name}-url"}}},
            "queues": [{"name": "default"}],
            "worker": {"image": "w:1", "app": "worker_tasks:app", "concurrency": 1},
            "scaling": {"minReplicas": 0, "maxReplicas": 8, "pollSeconds": 1, **scaling},
        },
    }


@pytest.fixture
def env(redis_db, monkeypatch):
    monkeypatch.setenv("EBBTIDE_BROKER_URL", redis_db)
    rt.app.use_broker_url(redis_db)
    rt._client = None
    cluster = MemoryCluster()
    reader = BrokerReader(max_threads=8)
    yield cluster, reader, redis_db
    reader.close()
    rt.app.close()


def make_ticker(cluster, reader, body, url, policy=None) -> TaskQueueTicker:
    cluster.add_secret(NS, body["spec"]["broker"]["external"]["secretRef"]["name"], {"url": url})
    asyncio.run(provision.reconcile(cluster, body, parse_spec(body["spec"])))
    kwargs = {"policy": policy} if policy else {}
    return TaskQueueTicker(cluster, reader, OperatorMetrics(), cluster.record_event, **kwargs)


def replicas(cluster, name="tq1") -> int:
    return cluster.objects[("Deployment", NS, naming.worker_name(name))]["spec"]["replicas"]


def condition(cluster, kind, name="tq1") -> dict:
    return next(c for c in cluster.statuses[(NS, name)]["conditions"] if c["type"] == kind)


def test_burst_scales_up_from_zero_in_one_tick(env):
    cluster, reader, url = env
    body = taskqueue(initialTaskSeconds=1, targetBacklogSeconds=30)
    ticker = make_ticker(cluster, reader, body, url)
    assert replicas(cluster) == 0
    rt.record.send_many(("burst", i) for i in range(600))

    outcome = asyncio.run(ticker.tick(body))

    assert outcome.broker_error is None
    assert outcome.replicas_before == 0 and outcome.replicas_after == 8 == replicas(cluster)
    ((kind, reason, message),) = [e for e in cluster.events if e[1].startswith("Scaled")]
    assert (kind, reason) == ("Normal", "ScaledUp") and message.startswith("0→8: ")
    status = cluster.statuses[(NS, "tq1")]
    assert status["backlog"] == 600 and status["desiredReplicas"] == 8
    assert (
        status["observedGeneration"] == 3 and status["replicasSummary"] == "0/8"
    )  # none ready yet
    assert status["lastScaleReason"].startswith("ScaledUp 0→8")
    assert condition(cluster, "BrokerReady")["status"] == "True"
    assert condition(cluster, "Degraded")["status"] == "False"
    assert condition(cluster, "WorkersReady")["reason"] == "ReplicasStarting"
    asyncio.run(ticker.tick(body))  # the next poll sees the pods ready
    assert cluster.statuses[(NS, "tq1")]["replicasSummary"] == "8/8"
    assert condition(cluster, "Ready")["status"] == "True"


def test_the_backlog_is_read_under_the_taskqueues_key_prefix(env, monkeypatch):
    """Workers of a TaskQueue with spec.broker.keyPrefix get EBBTIDE_KEY_PREFIX, so their
    App writes under it: the operator must read the statistics there too."""
    import ebbtide

    cluster, reader, url = env
    body = taskqueue(initialTaskSeconds=1, targetBacklogSeconds=30)
    body["spec"]["broker"]["keyPrefix"] = "tenant-b"
    ticker = make_ticker(cluster, reader, body, url)
    monkeypatch.setenv("EBBTIDE_KEY_PREFIX", "tenant-b")
    app = ebbtide.App(broker_url=url)  # as a producer in the workers' environment
    try:
        app.task(lambda i: None, name="record").send_many(range(300))
    finally:
        app.close()
    assert redis.Redis.from_url(url).exists("tenant-b:q:default:msgs")

    outcome = asyncio.run(ticker.tick(body))

    assert outcome.broker_error is None
    assert cluster.statuses[(NS, "tq1")]["backlog"] == 300
    assert outcome.replicas_after > 0


def test_rates_and_service_rate_come_from_a_real_worker(env):
    cluster, reader, url = env
    body = taskqueue(minReplicas=1)
    ticker = make_ticker(cluster, reader, body, url)
    asyncio.run(ticker.tick(body))
    # 2 ms each: 400 of them are 0.8 s of busy slot-time, well past the floor below which
    # mu is not sampled (observe.MIN_BUSY_SECONDS); near-instant tasks could fall under it.
    rt.slow.send_many(("rates", i, 0.002) for i in range(400))
    with worker(url, "--concurrency", "2", env={"POD_NAME": "tq1-worker-a-1"}):
        wait_for(
            lambda: read_stats(url, ["default"]).queues["default"].completed_total == 400,
            what="400 tasks completed",
        )
        asyncio.run(ticker.tick(body))
    rates = ticker.memory.rates
    assert rates.service_rate is not None and rates.service_rate > 0
    assert rates.arrival_rate > 0 and rates.completion_rate > 0
    status = cluster.statuses[(NS, "tq1")]
    assert status["serviceRate"] > 0 and status["backlog"] == 0


def test_scale_down_marks_idle_pods_cheapest(env):
    cluster, reader, url = env
    body = taskqueue(minReplicas=0)

    def shrink_to_one(obs, spec, state):  # the decision itself is the policy's business
        return Decision(replicas=1, reason="test scale-down", state=state)

    ticker = make_ticker(cluster, reader, body, url, policy=shrink_to_one)
    asyncio.run(cluster.scale_deployment(NS, naming.worker_name("tq1"), 2))
    r = redis.Redis.from_url(url)
    with worker(url, "--concurrency", "1", env={"POD_NAME": "tq1-worker-x-busy"}):
        rt.slow.send("drain", 0, 20.0)
        wait_for(lambda: r.lrange("started:drain", 0, -1) or _busy(url), what="slow task started")
        wait_for(lambda: _busy(url), what="busy heartbeat")
        with worker(url, "--concurrency", "1", env={"POD_NAME": "tq1-worker-x-idle"}):
            wait_for(lambda: len(read_stats(url).workers) == 2, what="two heartbeats")
            outcome = asyncio.run(ticker.tick(body))
    r.close()
    assert outcome.replicas_after == 1 == replicas(cluster)
    costs = {
        pod: int(a[naming.DELETION_COST_ANNOTATION])
        for (_, pod), a in cluster.pod_annotations.items()
    }
    assert costs["tq1-worker-x-idle"] < costs["tq1-worker-x-busy"]
    assert ("Normal", "ScaledDown", "2→1: test scale-down") in cluster.events


def _busy(url: str) -> bool:
    return any(w.running > 0 for w in read_stats(url).workers)


def test_unreachable_broker_holds_replicas_and_reports_degraded(env):
    cluster, reader, _ = env
    body = taskqueue()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    ticker = make_ticker(cluster, reader, body, dead)
    asyncio.run(cluster.scale_deployment(NS, naming.worker_name("tq1"), 3))
    for _ in range(3):
        outcome = asyncio.run(ticker.tick(body))
        assert outcome.broker_error and outcome.replicas_after == 3
    assert replicas(cluster) == 3
    degraded = condition(cluster, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "BrokerUnreachable"
    assert "ConnectionError" in degraded["message"] and "redis://" not in degraded["message"]
    assert condition(cluster, "Ready")["status"] == "False"


def test_fallback_replicas_apply_while_unreachable(env):
    cluster, reader, _ = env
    body = taskqueue(fallbackReplicas=2)
    ticker = make_ticker(cluster, reader, body, f"redis://127.0.0.1:{free_port()}/0")
    asyncio.run(cluster.scale_deployment(NS, naming.worker_name("tq1"), 5))
    outcome = asyncio.run(ticker.tick(body))
    assert outcome.broker_error and replicas(cluster) == 2


@contextlib.contextmanager
def silent_server():
    """Accepts TCP connections and never answers: a hung broker."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    finally:
        sock.close()


def test_a_hung_broker_does_not_hold_up_other_taskqueues(env):
    cluster, reader, url = env
    healthy_body, hung_body = taskqueue("good"), taskqueue("hung")
    rt.record.send_many(("other", i) for i in range(50))
    healthy = make_ticker(cluster, reader, healthy_body, url)
    with silent_server() as hung_url:
        hung = make_ticker(cluster, reader, hung_body, hung_url)

        async def both():
            return await asyncio.gather(hung.tick(hung_body), healthy.tick(healthy_body))

        hung_outcome, healthy_outcome = asyncio.run(both())
        again = asyncio.run(hung.tick(hung_body))
    assert "no answer from the broker" in hung_outcome.broker_error
    assert again.broker_error  # still hanging or refused, never a crash
    assert healthy_outcome.broker_error is None
    assert cluster.statuses[(NS, "good")]["backlog"] == 50


def test_unchanged_status_is_not_rewritten(env):
    cluster, reader, url = env
    body = taskqueue(minReplicas=1)
    ticker = make_ticker(cluster, reader, body, url)
    first = asyncio.run(ticker.tick(body))
    second = asyncio.run(ticker.tick(body))
    assert first.status_written and not second.status_written
    assert cluster.status_writes == 1


def test_policy_state_survives_an_operator_restart(env):
    cluster, reader, url = env
    body = taskqueue(scaleDownStabilizationSeconds=300)
    ticker = make_ticker(cluster, reader, body, url)
    rt.record.send_many(("restart", i) for i in range(100))
    asyncio.run(ticker.tick(body))
    persisted = cluster.statuses[(NS, "tq1")]
    assert PolicyState.from_dict(persisted["policyState"]) == ticker.memory.policy_state
    restarted = TaskQueueTicker(cluster, reader, OperatorMetrics(), cluster.record_event)
    asyncio.run(restarted.tick({**body, "status": persisted}))
    assert restarted.memory.last_scale_time == persisted["lastScaleTime"]
    assert (
        restarted.memory.policy_state.last_scale_time
        == PolicyState.from_dict(persisted["policyState"]).last_scale_time
    )


def test_template_drift_is_repaired_without_touching_replicas(env):
    cluster, reader, url = env
    body = taskqueue(minReplicas=2)
    ticker = make_ticker(cluster, reader, body, url)
    key = ("Deployment", NS, naming.worker_name("tq1"))
    cluster.objects[key]["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    asyncio.run(ticker.tick(body))
    assert cluster.objects[key]["spec"]["template"]["spec"]["containers"][0]["image"] == "w:1"
    assert any(e[1] == "DriftRepaired" for e in cluster.events)
    assert all("replicas" not in p[3].get("spec", {}) for p in cluster.patches)


def test_missing_secret_is_reported_not_crashed(env):
    cluster, reader, _ = env
    body = taskqueue()
    ticker = TaskQueueTicker(cluster, reader, OperatorMetrics(), cluster.record_event)
    asyncio.run(provision.reconcile(cluster, body, parse_spec(body["spec"])))
    outcome = asyncio.run(ticker.tick(body))
    assert "Secret tq1-url" in outcome.broker_error
    assert condition(cluster, "BrokerReady")["reason"] == "BrokerUnreachable"


def test_invalid_spec_is_reported_in_conditions(env):
    cluster, reader, url = env
    body = taskqueue()
    ticker = make_ticker(cluster, reader, body, url)
    body["spec"]["scaling"]["minReplicas"] = 9  # > maxReplicas: the CRD would reject this
    asyncio.run(ticker.tick(body))
    degraded = condition(cluster, "Degraded")
    assert degraded["reason"] == "InvalidSpec" and "spec.scaling.minReplicas" in degraded["message"]


def test_a_deleted_deployment_is_recreated_but_not_while_the_taskqueue_is_deleted(env):
    cluster, reader, url = env
    body = taskqueue(minReplicas=1)
    ticker = make_ticker(cluster, reader, body, url)
    key = ("Deployment", NS, naming.worker_name("tq1"))
    del cluster.objects[key]
    asyncio.run(ticker.tick(body))
    assert key in cluster.objects, "a missing worker Deployment is recreated"

    del cluster.objects[key]
    body["metadata"]["deletionTimestamp"] = "2026-11-23T18:00:00Z"
    asyncio.run(ticker.tick(body))
    assert key not in cluster.objects, "a TaskQueue being deleted gets no new workers"


def test_a_redis_that_evicts_keys_is_degraded_broker_evicts(env):
    """An external Redis whose maxmemory-policy may delete queued tasks: the status says
    so at once (Degraded, and not Durable), naming the policy; scaling carries on."""
    cluster, reader, url = env
    body = taskqueue()
    ticker = make_ticker(cluster, reader, body, url)
    admin = redis.Redis.from_url(url)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    try:
        asyncio.run(ticker.tick(body))
        degraded = condition(cluster, "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", "BrokerEvicts")
        assert "allkeys-lru" in degraded["message"]
        assert condition(cluster, "Durable")["reason"] == "BrokerEvicts"
        assert condition(cluster, "ScalingActive")["status"] == "True"
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.close()


def test_a_redis_with_noeviction_is_not_degraded(env):
    cluster, reader, url = env
    body = taskqueue()
    ticker = make_ticker(cluster, reader, body, url)
    asyncio.run(ticker.tick(body))
    assert condition(cluster, "Degraded")["reason"] == "AsExpected"
    assert condition(cluster, "Durable")["reason"] == "ExternalBroker"


def test_a_foreign_worker_deployment_is_never_scaled_and_shows_as_name_conflict(env):
    cluster, reader, url = env
    body = taskqueue(initialTaskSeconds=1, targetBacklogSeconds=30)
    mine = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "tq1-worker", "namespace": NS, "labels": {"team": "mine"}},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"image": "mine:1"}]}}},
    }
    cluster.objects[("Deployment", NS, "tq1-worker")] = dict(mine)
    cluster.add_secret(NS, "tq1-url", {"url": url})
    ticker = TaskQueueTicker(
        cluster,
        reader,
        OperatorMetrics(),
        cluster.record_event,
        conflicts=lambda _body: ["Service/tq1-redis", "Deployment/tq1-worker"],
    )
    rt.record.send_many(("burst", i) for i in range(600))

    for _ in range(2):
        outcome = asyncio.run(ticker.tick(body))
        assert outcome.replicas_after == outcome.replicas_before == 0

    assert cluster.objects[("Deployment", NS, "tq1-worker")] == mine
    assert cluster.scales == [] and cluster.patches == []
    ready = condition(cluster, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NameConflict")
    assert "Deployment/tq1-worker" in ready["message"] and "Service/tq1-redis" in ready["message"]
    assert condition(cluster, "WorkersReady")["reason"] == "NameConflict"
    warnings = [e for e in cluster.events if e[1] == "NameConflict"]
    assert len(warnings) == 1 and warnings[0][0] == "Warning", "one Event, not one per poll"

    # The user deletes theirs: the next tick creates ours and the worker conflict clears.
    del cluster.objects[("Deployment", NS, "tq1-worker")]
    asyncio.run(ticker.tick(body))
    assert condition(cluster, "WorkersReady")["reason"] != "NameConflict"
    assert condition(cluster, "Ready")["message"].count("Deployment/tq1-worker") == 0


def test_a_worker_pod_whose_image_cannot_be_found_shows_in_the_conditions(env):
    """The tick lists the worker pods while one is not ready and copies the kubelet's
    waiting reason, naming the image; once all are ready it stops listing them."""
    cluster, reader, url = env
    body = taskqueue(minReplicas=1)
    ticker = make_ticker(cluster, reader, body, url)
    image = "registry.example/missing:1"
    cluster.ready_lag = 1
    cluster.add_pod(
        NS,
        {
            "metadata": {"name": "tq1-worker-x", "labels": naming.worker_selector("tq1")},
            "status": {
                "containerStatuses": [
                    {
                        "name": "worker",
                        "image": image,
                        "state": {
                            "waiting": {
                                "reason": "ErrImagePull",
                                "message": f'failed to pull "{image}": not found',
                            }
                        },
                    }
                ]
            },
        },
    )
    cluster.add_pod(  # another TaskQueue's pod: not ours to report
        NS, {"metadata": {"name": "other-worker-y", "labels": naming.worker_selector("other")}}
    )
    asyncio.run(ticker.tick(body))
    workers = condition(cluster, "WorkersReady")
    assert workers["status"] == "False" and workers["reason"] == "ErrImagePull"
    assert f'image "{image}"' in workers["message"] and "tq1-worker-x" in workers["message"]
    assert condition(cluster, "Degraded")["reason"] == "ErrImagePull"
    assert cluster.pod_lists == 1

    cluster.ready_lag = 0
    del cluster.pods[(NS, "tq1-worker-x")]
    asyncio.run(ticker.tick(body))
    assert condition(cluster, "WorkersReady")["reason"] == "AllReplicasReady"
    assert condition(cluster, "Degraded")["status"] == "False"
    assert cluster.pod_lists == 2, "the ready count rose: listed once, for pod start-up"
    asyncio.run(ticker.tick(body))
    assert cluster.pod_lists == 2, "all ready, none new: the pods are not listed"


def test_observed_pod_startup_feeds_the_policy_and_is_kept_in_status(env):
    cluster, reader, url = env
    seen: list = []

    def policy(obs, spec, state):
        seen.append(obs.pod_startup_s)
        return decide(obs, spec, state)

    body = taskqueue(minReplicas=2)
    ticker = make_ticker(cluster, reader, body, url, policy=policy)
    cluster.ready_lag = 2
    asyncio.run(ticker.tick(body))  # two pods starting
    for i, ready_after in enumerate((7, 9)):
        cluster.add_pod(
            NS,
            {
                "metadata": {
                    "name": f"tq1-worker-{i}",
                    "uid": f"pod-{i}",
                    "labels": naming.worker_selector("tq1"),
                    "creationTimestamp": "2026-12-01T10:00:00Z",
                },
                "status": {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "lastTransitionTime": f"2026-12-01T10:00:0{ready_after}Z",
                        }
                    ],
                    "containerStatuses": [{"name": "worker", "restartCount": 0}],
                },
            },
        )
    cluster.ready_lag = 0
    asyncio.run(ticker.tick(body))  # both ready: listed once, measured
    asyncio.run(ticker.tick(body))
    assert seen == [None, 8.0, 8.0]
    assert cluster.statuses[(NS, "tq1")]["podStartupSeconds"] == 8.0

    restarted = make_ticker(cluster, reader, body, url, policy=policy)  # a new operator
    asyncio.run(restarted.tick({**body, "status": cluster.statuses[(NS, "tq1")]}))
    assert seen[-1] == 8.0


def test_a_switch_to_another_secret_is_read_at_once_not_after_the_url_cache(env):
    """The broker URL is cached for a minute; a spec naming another Secret (managed ->
    external) is read on the next poll."""
    cluster, reader, url = env
    body = taskqueue(minReplicas=1)
    ticker = make_ticker(cluster, reader, body, url)
    assert asyncio.run(ticker.tick(body)).broker_error is None
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"  # nothing listens once closed
    cluster.add_secret(NS, "other-url", {"url": dead})
    switched = {
        **body,
        "spec": {
            **body["spec"],
            "broker": {"type": "redis", "external": {"secretRef": {"name": "other-url"}}},
        },
    }
    assert asyncio.run(ticker.tick(switched)).broker_error is not None
    assert ticker.memory.url == dead
