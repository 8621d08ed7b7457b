"""The operator's tick against a real Redis fed by the real runtime (producers and worker
processes), and a real kube-apiserver (tests/support/apiserver.py): the TaskQueue, its
Secret and worker Deployment are stored objects; the tick reads and writes them through
the operator's own `KubeCluster`. There is no controller-manager and no kubelet, so a
Deployment's ready count and the worker pods are written by the test, as those would
write them. Conditions are polled, never slept on."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import time
from dataclasses import dataclass

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
from support.apiserver import Namespace, RecordingCluster, worker_labels
from support.servers import free_port
from worker_testkit import wait_for, worker

pytestmark = pytest.mark.redis
WORKER = naming.worker_name("tq1")


def taskqueue(name: str = "tq1", **scaling) -> dict:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": name},
        "spec": {
            "broker": {"type": "redis", "external": {"secretRef": {"name": f"{name}-url"}}},
            "queues": [{"name": "default"}],
            "worker": {"image": "w:1", "app": "worker_tasks:app", "concurrency": 1},
            "scaling": {"minReplicas": 0, "maxReplicas": 8, "pollSeconds": 1, **scaling},
        },
    }


@dataclass
class Env:
    cluster: RecordingCluster
    ns: Namespace
    reader: BrokerReader
    url: str

    def stored(self, name: str = "tq1", **scaling) -> dict:
        """The TaskQueue as the API server stored it (uid, generation, CRD defaults)."""
        return self.ns.create_taskqueue(taskqueue(name, **scaling))

    def ticker(self, body: dict, url: str | None = None, policy=None) -> TaskQueueTicker:
        """The broker URL Secret and every object the TaskQueue owns, then a ticker."""
        secret = body["spec"]["broker"]["external"]["secretRef"]["name"]
        self.ns.add_secret(secret, {"url": url or self.url})
        asyncio.run(provision.reconcile(self.cluster, body, parse_spec(body["spec"])))
        return self.bare_ticker(policy)

    def bare_ticker(self, policy=None, **kwargs) -> TaskQueueTicker:
        if policy:
            kwargs["policy"] = policy
        return TaskQueueTicker(
            self.cluster, self.reader, OperatorMetrics(), self.cluster.record_event, **kwargs
        )

    def replicas(self, name: str = WORKER) -> int:
        return self.ns.deployment(name)["spec"]["replicas"]

    def status(self, name: str = "tq1") -> dict:
        return self.ns.status(name)

    def condition(self, kind: str, name: str = "tq1") -> dict:
        return next(c for c in self.status(name)["conditions"] if c["type"] == kind)

    def scale(self, replicas: int) -> None:
        asyncio.run(self.cluster.scale_deployment(self.ns.name, WORKER, replicas))


@pytest.fixture
def env(redis_db, monkeypatch, kube):
    monkeypatch.setenv("EBBTIDE_BROKER_URL", redis_db)
    rt.app.use_broker_url(redis_db)
    rt._client = None
    cluster, ns = kube
    reader = BrokerReader(max_threads=8)
    yield Env(cluster, ns, reader, redis_db)
    reader.close()
    rt.app.close()


def test_burst_scales_up_from_zero_in_one_tick(env):
    body = env.stored(initialTaskSeconds=1, targetBacklogSeconds=30)
    ticker = env.ticker(body)
    assert env.replicas() == 0
    rt.record.send_many(("burst", i) for i in range(600))

    outcome = asyncio.run(ticker.tick(body))

    assert outcome.broker_error is None
    assert outcome.replicas_before == 0 and outcome.replicas_after == 8 == env.replicas()
    ((kind, reason, message),) = [e for e in env.cluster.events if e[1].startswith("Scaled")]
    assert (kind, reason) == ("Normal", "ScaledUp") and message.startswith("0→8: ")
    status = env.status()
    assert status["backlog"] == 600 and status["desiredReplicas"] == 8
    assert status["observedGeneration"] == body["metadata"]["generation"]
    assert status["replicasSummary"] == "0/8"  # none ready yet
    assert status["lastScaleReason"].startswith("ScaledUp 0→8")
    assert env.condition("BrokerReady")["status"] == "True"
    assert env.condition("Degraded")["status"] == "False"
    assert env.condition("WorkersReady")["reason"] == "ReplicasStarting"
    env.ns.set_deployment_status(WORKER, ready=8)  # the Deployment controller's report
    asyncio.run(ticker.tick(body))  # the next poll sees the pods ready
    assert env.status()["replicasSummary"] == "8/8"
    assert env.condition("Ready")["status"] == "True"


def test_the_backlog_is_read_under_the_taskqueues_key_prefix(env, monkeypatch):
    """Workers of a TaskQueue with spec.broker.keyPrefix get EBBTIDE_KEY_PREFIX, so their
    App writes under it: the operator must read the statistics there too."""
    import ebbtide

    prefixed = taskqueue(initialTaskSeconds=1, targetBacklogSeconds=30)
    prefixed["spec"]["broker"]["keyPrefix"] = "tenant-b"
    body = env.ns.create_taskqueue(prefixed)
    ticker = env.ticker(body)
    monkeypatch.setenv("EBBTIDE_KEY_PREFIX", "tenant-b")
    app = ebbtide.App(broker_url=env.url)  # as a producer in the workers' environment
    try:
        app.task(lambda i: None, name="record").send_many(range(300))
    finally:
        app.close()
    assert redis.Redis.from_url(env.url).exists("tenant-b:q:{default}:msgs")

    outcome = asyncio.run(ticker.tick(body))

    assert outcome.broker_error is None
    assert env.status()["backlog"] == 300
    assert outcome.replicas_after > 0


def test_rates_and_service_rate_come_from_a_real_worker(env):
    body = env.stored(minReplicas=1)
    ticker = env.ticker(body)
    asyncio.run(ticker.tick(body))
    # 2 ms each: 400 of them are 0.8 s of busy slot-time, well past the floor below which
    # mu is not sampled (observe.MIN_BUSY_SECONDS); near-instant tasks could fall under it.
    rt.slow.send_many(("rates", i, 0.002) for i in range(400))
    with worker(env.url, "--concurrency", "2", env={"POD_NAME": "tq1-worker-a-1"}):
        wait_for(
            lambda: read_stats(env.url, ["default"]).queues["default"].completed_total == 400,
            what="400 tasks completed",
        )
        asyncio.run(ticker.tick(body))
    rates = ticker.memory.rates
    assert rates.service_rate is not None and rates.service_rate > 0
    assert rates.arrival_rate > 0 and rates.completion_rate > 0
    status = env.status()
    assert status["serviceRate"] > 0 and status["backlog"] == 0


def test_scale_down_marks_idle_pods_cheapest(env):
    """The deletion costs land on the pods as stored (made here: no kubelet), named by the
    workers' heartbeats."""
    body = env.stored(minReplicas=0)

    def shrink_to_one(obs, spec, state):  # the decision itself is the policy's business
        return Decision(replicas=1, reason="test scale-down", state=state)

    ticker = env.ticker(body, policy=shrink_to_one)
    env.scale(2)
    for pod in ("tq1-worker-x-busy", "tq1-worker-x-idle"):
        env.ns.create_pod(pod, worker_labels("tq1"))
    r = redis.Redis.from_url(env.url)
    with worker(env.url, "--concurrency", "1", env={"POD_NAME": "tq1-worker-x-busy"}):
        rt.slow.send("drain", 0, 20.0)
        wait_for(
            lambda: r.lrange("started:drain", 0, -1) or _busy(env.url), what="slow task started"
        )
        wait_for(lambda: _busy(env.url), what="busy heartbeat")
        with worker(env.url, "--concurrency", "1", env={"POD_NAME": "tq1-worker-x-idle"}):
            wait_for(lambda: len(read_stats(env.url).workers) == 2, what="two heartbeats")
            outcome = asyncio.run(ticker.tick(body))
    r.close()
    assert outcome.replicas_after == 1 == env.replicas()
    costs = {
        pod: int(env.ns.pod_annotations(pod)[naming.DELETION_COST_ANNOTATION])
        for pod in ("tq1-worker-x-busy", "tq1-worker-x-idle")
    }
    assert costs["tq1-worker-x-idle"] < costs["tq1-worker-x-busy"]
    assert ("Normal", "ScaledDown", "2→1: test scale-down") in env.cluster.events


def _busy(url: str) -> bool:
    return any(w.running > 0 for w in read_stats(url).workers)


def test_unreachable_broker_holds_replicas_and_reports_degraded(env):
    body = env.stored()
    ticker = env.ticker(body, f"redis://127.0.0.1:{free_port()}/0")
    env.scale(3)
    for _ in range(3):
        outcome = asyncio.run(ticker.tick(body))
        assert outcome.broker_error and outcome.replicas_after == 3
    assert env.replicas() == 3
    degraded = env.condition("Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "BrokerUnreachable"
    assert "ConnectionError" in degraded["message"] and "redis://" not in degraded["message"]
    assert env.condition("Ready")["status"] == "False"


def test_fallback_replicas_apply_while_unreachable(env):
    body = env.stored(fallbackReplicas=2)
    ticker = env.ticker(body, f"redis://127.0.0.1:{free_port()}/0")
    env.scale(5)
    outcome = asyncio.run(ticker.tick(body))
    assert outcome.broker_error and env.replicas() == 2


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
    healthy_body, hung_body = env.stored("good"), env.stored("hung")
    rt.record.send_many(("other", i) for i in range(50))
    healthy = env.ticker(healthy_body)
    with silent_server() as hung_url:
        hung = env.ticker(hung_body, hung_url)

        async def both():
            return await asyncio.gather(hung.tick(hung_body), healthy.tick(healthy_body))

        hung_outcome, healthy_outcome = asyncio.run(both())
        again = asyncio.run(hung.tick(hung_body))
    assert "no answer from the broker" in hung_outcome.broker_error
    assert again.broker_error  # still hanging or refused, never a crash
    assert healthy_outcome.broker_error is None
    assert env.status("good")["backlog"] == 50


def test_unchanged_status_is_not_rewritten(env):
    body = env.stored(minReplicas=1)
    ticker = env.ticker(body)
    first = asyncio.run(ticker.tick(body))
    second = asyncio.run(ticker.tick(body))
    assert first.status_written and not second.status_written
    assert env.cluster.status_writes == 1


def test_policy_state_survives_an_operator_restart(env):
    body = env.stored(scaleDownStabilizationSeconds=300)
    ticker = env.ticker(body)
    rt.record.send_many(("restart", i) for i in range(100))
    asyncio.run(ticker.tick(body))
    persisted = env.status()
    assert PolicyState.from_dict(persisted["policyState"]) == ticker.memory.policy_state
    restarted = env.bare_ticker()
    asyncio.run(restarted.tick({**body, "status": persisted}))
    assert restarted.memory.last_scale_time == persisted["lastScaleTime"]
    assert (
        restarted.memory.policy_state.last_scale_time
        == PolicyState.from_dict(persisted["policyState"]).last_scale_time
    )


def test_a_forecast_learnt_before_a_restart_prewarms_the_next_burst(env):
    """The forecast of periodic bursts runs in the operator's tick: the record of three
    bursts 300 s apart, as the last operator left it in the status, makes a restarted
    operator's first (idle) tick start the pods for the next one, and the record is
    written back."""
    body = env.stored()
    ticker = env.ticker(body)
    onset = time.time() + 5.0  # the window is (onset - 10 s - half a poll, onset + a poll]
    record = [(onset - 300.0 * k, 300, 2.0) for k in (3, 2, 1)]
    left = PolicyState(bursts=record, idle_since=onset - 200.0).to_dict()

    outcome = asyncio.run(ticker.tick({**body, "status": {"policyState": left}}))

    assert outcome.decision is not None
    assert outcome.decision.reason.startswith("forecast: a burst of 300 tasks every 300s is due")
    # 300 tasks on pods Ready from the onset: 1 task/s x 30 s + 1 slot = 31 each -> 10, max 8.
    assert outcome.replicas_after == env.replicas() == 8
    assert PolicyState.from_dict(env.status()["policyState"]).bursts == record


def test_template_drift_is_repaired_without_touching_replicas(env):
    body = env.stored(minReplicas=2)
    ticker = env.ticker(body)
    edited = env.ns.deployment(WORKER)["spec"]["template"]["spec"]["containers"]
    edited[0]["image"] = "evil:latest"
    env.ns.apps.patch_namespaced_deployment(
        WORKER, env.ns.name, {"spec": {"template": {"spec": {"containers": edited}}}}
    )  # a strategic merge patch, by container name, as `kubectl edit` makes
    env.cluster.patches.clear()
    asyncio.run(ticker.tick(body))
    image = env.ns.deployment(WORKER)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "w:1"
    assert any(e[1] == "DriftRepaired" for e in env.cluster.events)
    assert env.cluster.patches, "the repair is a patch"
    assert all("replicas" not in p[3].get("spec", {}) for p in env.cluster.patches)
    assert env.replicas() == 2


def test_missing_secret_is_reported_not_crashed(env):
    body = env.stored()
    ticker = env.bare_ticker()
    asyncio.run(provision.reconcile(env.cluster, body, parse_spec(body["spec"])))
    outcome = asyncio.run(ticker.tick(body))
    assert "Secret tq1-url" in outcome.broker_error
    assert env.condition("BrokerReady")["reason"] == "BrokerUnreachable"


def test_invalid_spec_is_reported_in_conditions(env):
    """A spec the CRD would reject (an older CRD let it in): the API server stores the
    valid one, the tick is handed the invalid one."""
    body = env.stored()
    ticker = env.ticker(body)
    body["spec"]["scaling"]["minReplicas"] = 9  # > maxReplicas
    asyncio.run(ticker.tick(body))
    degraded = env.condition("Degraded")
    assert degraded["reason"] == "InvalidSpec" and "spec.scaling.minReplicas" in degraded["message"]


def test_a_deleted_deployment_is_recreated_but_not_while_the_taskqueue_is_deleted(env):
    body = env.stored(minReplicas=1)
    ticker = env.ticker(body)
    assert asyncio.run(env.cluster.delete("Deployment", env.ns.name, WORKER))
    asyncio.run(ticker.tick(body))
    assert env.ns.deployment(WORKER) is not None, "a missing worker Deployment is recreated"

    assert asyncio.run(env.cluster.delete("Deployment", env.ns.name, WORKER))
    body["metadata"]["deletionTimestamp"] = "2026-11-23T18:00:00Z"
    asyncio.run(ticker.tick(body))
    assert env.ns.deployment(WORKER) is None, "a TaskQueue being deleted gets no new workers"


def test_a_redis_that_evicts_keys_is_degraded_broker_evicts(env):
    """An external Redis whose maxmemory-policy may delete queued tasks: the status says
    so at once (Degraded, and not Durable), naming the policy; scaling carries on."""
    body = env.stored()
    ticker = env.ticker(body)
    admin = redis.Redis.from_url(env.url)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    try:
        asyncio.run(ticker.tick(body))
        degraded = env.condition("Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", "BrokerEvicts")
        assert "allkeys-lru" in degraded["message"]
        assert env.condition("Durable")["reason"] == "BrokerEvicts"
        assert env.condition("ScalingActive")["status"] == "True"
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.close()


def test_a_redis_with_noeviction_is_not_degraded(env):
    body = env.stored()
    ticker = env.ticker(body)
    asyncio.run(ticker.tick(body))
    assert env.condition("Degraded")["reason"] == "AsExpected"
    assert env.condition("Durable")["reason"] == "ExternalBroker"


def test_a_foreign_worker_deployment_is_never_scaled_and_shows_as_name_conflict(env):
    body = env.stored(initialTaskSeconds=1, targetBacklogSeconds=30)
    labels = {"team": "mine"}
    env.ns.apps.create_namespaced_deployment(
        env.ns.name,
        {
            "metadata": {"name": WORKER, "labels": labels},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "mine", "image": "mine:1"}]},
                },
            },
        },
    )
    mine = env.ns.deployment(WORKER)
    env.ns.add_secret("tq1-url", {"url": env.url})
    ticker = env.bare_ticker(conflicts=lambda _body: ["Service/tq1-redis", "Deployment/tq1-worker"])
    rt.record.send_many(("burst", i) for i in range(600))

    for _ in range(2):
        outcome = asyncio.run(ticker.tick(body))
        assert outcome.replicas_after == outcome.replicas_before == 0

    after = env.ns.deployment(WORKER)
    assert after["metadata"]["resourceVersion"] == mine["metadata"]["resourceVersion"]
    assert after["spec"] == mine["spec"]
    assert env.cluster.scales == [] and env.cluster.patches == []
    ready = env.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NameConflict")
    assert "Deployment/tq1-worker" in ready["message"] and "Service/tq1-redis" in ready["message"]
    assert env.condition("WorkersReady")["reason"] == "NameConflict"
    warnings = [e for e in env.cluster.events if e[1] == "NameConflict"]
    assert len(warnings) == 1 and warnings[0][0] == "Warning", "one Event, not one per poll"

    # The user deletes theirs: the next tick creates ours and the worker conflict clears.
    env.ns.apps.delete_namespaced_deployment(WORKER, env.ns.name)
    asyncio.run(ticker.tick(body))
    assert env.condition("WorkersReady")["reason"] != "NameConflict"
    assert env.condition("Ready")["message"].count("Deployment/tq1-worker") == 0


def test_a_worker_pod_whose_image_cannot_be_found_shows_in_the_conditions(env):
    """The tick lists the worker pods while one is not ready and copies the kubelet's
    waiting reason, naming the image; once all are ready it stops listing them. The pods
    and the Deployment's ready count are written here, as the kubelet and the Deployment
    controller would write them."""
    body = env.stored(minReplicas=1)
    ticker = env.ticker(body)
    image = "registry.example/missing:1"
    env.scale(1)
    env.ns.set_deployment_status(WORKER, ready=0)
    waiting = {"reason": "ErrImagePull", "message": f'failed to pull "{image}": not found'}
    env.ns.create_pod(
        "tq1-worker-x",
        worker_labels("tq1"),
        {
            "containerStatuses": [
                {
                    "name": "worker",
                    "image": image,
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": waiting},
                }
            ]
        },
    )
    env.ns.create_pod("other-worker-y", worker_labels("other"))  # another TaskQueue's pod
    env.cluster.pod_lists = 0
    asyncio.run(ticker.tick(body))
    workers = env.condition("WorkersReady")
    assert workers["status"] == "False" and workers["reason"] == "ErrImagePull"
    assert f'image "{image}"' in workers["message"] and "tq1-worker-x" in workers["message"]
    assert env.condition("Degraded")["reason"] == "ErrImagePull"
    assert env.cluster.pod_lists == 1

    env.ns.set_deployment_status(WORKER, ready=1)
    env.ns.core.delete_namespaced_pod("tq1-worker-x", env.ns.name, grace_period_seconds=0)
    asyncio.run(ticker.tick(body))
    assert env.condition("WorkersReady")["reason"] == "AllReplicasReady"
    assert env.condition("Degraded")["status"] == "False"
    assert env.cluster.pod_lists == 2, "the ready count rose: listed once, for pod start-up"
    asyncio.run(ticker.tick(body))
    assert env.cluster.pod_lists == 2, "all ready, none new: the pods are not listed"


def test_observed_pod_startup_feeds_the_policy_and_is_kept_in_status(env):
    """Start-up is Ready's lastTransitionTime minus the pod's creationTimestamp (which the
    API server sets): the test writes Ready 7 s and 9 s after it."""
    seen: list = []

    def policy(obs, spec, state):
        seen.append(obs.pod_startup_s)
        return decide(obs, spec, state)

    body = env.stored(minReplicas=2)
    ticker = env.ticker(body, policy=policy)
    env.scale(2)
    env.ns.set_deployment_status(WORKER, ready=0)
    asyncio.run(ticker.tick(body))  # two pods starting
    for i, ready_after in enumerate((7, 9)):
        name = f"tq1-worker-{i}"
        created = env.ns.create_pod(name, worker_labels("tq1"))["metadata"]["creationTimestamp"]
        at = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
        ready_at = (at + dt.timedelta(seconds=ready_after)).strftime("%Y-%m-%dT%H:%M:%SZ")
        env.ns.core.patch_namespaced_pod_status(
            name,
            env.ns.name,
            {
                "status": {
                    "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": ready_at}
                    ],
                    "containerStatuses": [
                        {
                            "name": "worker",
                            "image": "w:1",
                            "imageID": "",
                            "ready": True,
                            "restartCount": 0,
                            "state": {"running": {"startedAt": ready_at}},
                        }
                    ],
                }
            },
        )
    env.ns.set_deployment_status(WORKER, ready=2)
    asyncio.run(ticker.tick(body))  # both ready: listed once, measured
    asyncio.run(ticker.tick(body))
    assert seen == [None, 8.0, 8.0]
    assert env.status()["podStartupSeconds"] == 8.0

    restarted = env.bare_ticker(policy=policy)  # a new operator
    asyncio.run(restarted.tick({**body, "status": env.status()}))
    assert seen[-1] == 8.0


def test_a_switch_to_another_secret_is_read_at_once_not_after_the_url_cache(env):
    """The broker URL is cached for a minute; a spec naming another Secret (managed ->
    external) is read on the next poll."""
    body = env.stored(minReplicas=1)
    ticker = env.ticker(body)
    assert asyncio.run(ticker.tick(body)).broker_error is None
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"  # nothing listens once closed
    env.ns.add_secret("other-url", {"url": dead})
    switched = {
        **body,
        "spec": {
            **body["spec"],
            "broker": {"type": "redis", "external": {"secretRef": {"name": "other-url"}}},
        },
    }
    assert asyncio.run(ticker.tick(switched)).broker_error is not None
    assert ticker.memory.url == dead


def test_a_woken_tick_writes_through_the_scaler_and_the_status_behind_the_tick(env, apiserver):
    """As main.poll runs it: the broker-woken tick's scale and status go through the
    scale threads, and the status is written behind the tick (status_writer.py)."""
    body = env.stored()
    env.ticker(body)  # the Secret and the worker Deployment
    scaler = RecordingCluster(apiserver.api_client(pool=2), deployments=env.cluster.deployments)
    ticker = env.bare_ticker(scaler=scaler, write_slots=asyncio.Semaphore(1))
    rt.record.send_many(("woken", i) for i in range(40))

    async def ticks():
        woken = await ticker.tick(body, urgent=True)
        await ticker.flush()
        routine = await ticker.tick(body)
        await ticker.flush()
        return woken, routine

    try:
        woken, routine = asyncio.run(ticks())
    finally:
        scaler.close()
    assert woken.replicas_after > 0 and woken.status_written
    assert [s[2] for s in scaler.scales] == [woken.replicas_after] and not env.cluster.scales
    assert scaler.status_writes == 1
    assert env.status()["backlog"] == 40 and env.replicas() == woken.replicas_after
    assert not routine.status_written or env.cluster.status_writes == 1  # routine lane


def test_a_status_write_that_fails_behind_the_tick_is_written_again(env):
    body = env.stored()
    ticker = env.ticker(body)
    ticker.write_slots = asyncio.Semaphore(1)
    env.ns.custom.delete_namespaced_custom_object(
        naming.GROUP, naming.VERSION, env.ns.name, naming.PLURAL, "tq1"
    )

    async def tick_and_flush():
        outcome = await ticker.tick(body)
        await ticker.flush()
        return outcome

    outcome = asyncio.run(tick_and_flush())
    assert outcome.status_written  # handed to the writer; the API server said 404
    assert ticker.memory.written is not None and ticker.memory.written_at is None


def _worker_env(env: Env) -> dict[str, str]:
    container = env.ns.deployment(WORKER)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_a_sharded_queue_is_summed_and_a_shrink_drained_before_it_applies(env):
    """4 shards summed into the backlog; the spec lowered to 2 while shards 2 and 3 hold
    tasks: the workers keep draining 4 (status.shards, EBBTIDE_DRAIN_SHARDS) until a real
    worker has emptied them, then the count comes down and the workers roll."""
    import ebbtide

    raw = taskqueue()
    raw["spec"]["queues"] = [{"name": "default", "shards": 4}]
    body = env.ns.create_taskqueue(raw)
    ticker = env.ticker(body)
    producer = ebbtide.App(broker_url=env.url, shards={"default": 4})
    producer.task(name="record", queue="default")(lambda tag, i: None).send_many(
        ("sharded", i) for i in range(40)
    )
    asyncio.run(ticker.tick(body))
    status = env.status()
    assert status["backlog"] == 40 and status["shards"] == {"default": 4}
    assert _worker_env(env)["EBBTIDE_SHARDS"] == "default=4"

    # Each tick gets the TaskQueue as stored, as kopf hands it over (the writes are
    # fenced on its resourceVersion).
    asyncio.run(ticker.flush())
    env.ns.patch_spec("tq1", {"queues": [{"name": "default", "shards": 2}]})
    asyncio.run(ticker.tick(env.ns.taskqueue("tq1")))
    assert env.status()["shards"] == {"default": 4} and env.status()["backlog"] == 40
    drained = _worker_env(env)
    assert drained["EBBTIDE_SHARDS"] == "default=2"
    assert drained["EBBTIDE_DRAIN_SHARDS"] == "default=4"

    pod_env = {"EBBTIDE_SHARDS": "default=2", "EBBTIDE_DRAIN_SHARDS": "default=4"}
    with worker(env.url, "--concurrency", "4", env=pod_env):
        wait_for(lambda: rt.r().llen("done:sharded") == 40, 30, "40 tasks done")
    producer.close()
    asyncio.run(ticker.tick(env.ns.taskqueue("tq1")))
    assert env.status()["shards"] == {"default": 2}  # let go: the shards above 2 are empty
    asyncio.run(ticker.tick(env.ns.taskqueue("tq1")))
    assert "EBBTIDE_DRAIN_SHARDS" not in _worker_env(env)
    env.ns.patch_spec("tq1", {"queues": [{"name": "default"}]})
    asyncio.run(ticker.tick(env.ns.taskqueue("tq1")))
    assert env.status().get("shards") is None  # unsharded again: the field is removed
