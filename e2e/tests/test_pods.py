"""The operator as a user runs it: the chart's Deployment from the operator image, its
ServiceAccount token, managed brokers from their images with the Secret's password and a
PVC, worker pods from an image built FROM the runtime image. Tests reach the brokers
through their Services (ClusterIP from the host, through kube-proxy) or from test pods.

Every wait polls with a deadline; none is a sleep used as synchronisation.
"""

from __future__ import annotations

import time

import pytest
import redis

from e2e.tests.kit import (
    OPERATOR_IMAGE,
    RUNS,
    broker_client,
    condition,
    create_tq,
    enqueue,
    kubectl,
    read_tq,
    ready_pods,
    run_pod,
    runs_of,
    secret_value,
    taskqueue,
    tracker,
    via_cluster_ip,
)
from e2e.tests.support import RELEASE, SYSTEM_NAMESPACE, wait_for

WORKERS = "app.kubernetes.io/component=worker"
COST = "controller.kubernetes.io/pod-deletion-cost"


def workers_ready(custom, namespace: str, name: str) -> bool:
    tq = read_tq(custom, namespace, name)
    return (
        condition(tq, "BrokerReady").get("status") == "True"
        and condition(tq, "WorkersReady").get("status") == "True"
    )


def worker_replicas(apps, namespace: str, name: str) -> int:
    return apps.read_namespaced_deployment(f"{name}-worker", namespace).spec.replicas or 0


def counts(track: redis.Redis) -> dict[int, int]:
    return {int(k): int(v) for k, v in track.hgetall(RUNS).items()}


def host_tracker(core, apps, namespace: str) -> tuple[str, redis.Redis]:
    url = tracker(core, apps, namespace)
    return url, redis.Redis.from_url(via_cluster_ip(core, namespace, url))


def one_worker_on_managed_redis(
    core, apps, custom, namespace: str, name: str, worker: dict
) -> tuple[redis.Redis, str]:
    """A TaskQueue `name` with one worker pod (`worker` fields on top) on a managed
    Redis, ready: the tracker's client and the broker's URL from the host."""
    track_url, track = host_tracker(core, apps, namespace)
    scaling = {"minReplicas": 1, "maxReplicas": 1}
    body = taskqueue(
        name, {"type": "redis", "managed": {}}, track_url=track_url, scaling=scaling, worker=worker
    )
    create_tq(custom, namespace, body)
    wait_for(lambda: workers_ready(custom, namespace, name), 180, "the worker ready")
    url = secret_value(core, namespace, f"{name}-broker", "url")
    return track, via_cluster_ip(core, namespace, url)


def test_operator_runs_from_its_image_as_its_service_account(core, kube_env, operator):
    pod = core.read_namespaced_pod(operator, SYSTEM_NAMESPACE)
    container = pod.spec.containers[0]
    assert container.image == OPERATOR_IMAGE
    assert pod.spec.service_account_name == RELEASE
    assert container.security_context.read_only_root_filesystem is True
    status = pod.status.container_statuses[0]
    assert status.ready and status.image_id, status
    uid = kubectl(kube_env, "exec", "-n", SYSTEM_NAMESPACE, operator, "--", "id", "-u")
    assert uid.stdout.strip() == "10001"
    # The in-cluster credentials are the ServiceAccount's token, not an admin's.
    whoami = kubectl(
        kube_env,
        "exec",
        "-n",
        SYSTEM_NAMESPACE,
        operator,
        "--",
        "python3",
        "-c",
        "import json,base64;t=open('/var/run/secrets/kubernetes.io/serviceaccount/token').read();"
        "p=t.split('.')[1];print(json.loads(base64.urlsafe_b64decode(p+'=='))['sub'])",
    )
    assert whoami.stdout.strip() == f"system:serviceaccount:{SYSTEM_NAMESPACE}:{RELEASE}"


def test_managed_redis_burst_scales_real_pods_and_runs_each_task_once(
    core, apps, custom, operator, namespace
):
    burst = 1500
    track_url, track = host_tracker(core, apps, namespace)
    create_tq(
        custom, namespace, taskqueue("burst", {"type": "redis", "managed": {}}, track_url=track_url)
    )
    wait_for(
        lambda: workers_ready(custom, namespace, "burst"), 180, "the broker and a worker ready"
    )
    wait_for(lambda: worker_replicas(apps, namespace, "burst") == 1, 60, "1 replica at rest")

    # The broker runs from its image with the Secret's password.
    broker_url = secret_value(core, namespace, "burst-broker", "url")
    password = secret_value(core, namespace, "burst-broker", "password")
    host_url = via_cluster_ip(core, namespace, broker_url)
    assert host_url.startswith("rediss://")  # TLS, on by default, verified against the CA
    with pytest.raises(redis.AuthenticationError):
        broker_client(host_url.replace(password, "wrong-password")).ping()
    assert broker_client(host_url).ping()

    # Each role's Secret does its own job only (the broker's ACL file from the Secret).
    producer_url = via_cluster_ip(
        core, namespace, secret_value(core, namespace, "burst-broker-producer", "url")
    )
    worker_url = via_cluster_ip(
        core, namespace, secret_value(core, namespace, "burst-broker-worker", "url")
    )
    assert_producer_cannot_claim(producer_url)
    assert_worker_cannot_flush(worker_url)

    enqueue(producer_url, burst, 0.05)
    wait_for(lambda: worker_replicas(apps, namespace, "burst") > 1, 60, "a scale-up")
    costs_seen: set[str] = set()

    def note_costs() -> None:
        for pod in core.list_namespaced_pod(namespace, label_selector=WORKERS).items:
            if COST in (pod.metadata.annotations or {}):
                costs_seen.add(pod.metadata.name)

    def drained() -> bool:
        status = read_tq(custom, namespace, "burst").get("status", {})
        return (
            status.get("backlog") == 0 and status.get("inFlight") == 0 and track.hlen(RUNS) == burst
        )

    def back_to_one() -> bool:
        note_costs()  # written just before the operator scales down
        return (
            worker_replicas(apps, namespace, "burst") == 1
            and len(ready_pods(core, namespace, WORKERS)) == 1
        )

    wait_for(drained, 300, "the backlog drained")
    wait_for(back_to_one, 180, "back to one worker")
    assert costs_seen, "the operator annotated the worker pods with their deletion cost"
    runs = counts(track)
    assert len(runs) == burst, f"{burst - len(runs)} tasks lost"
    twice = {k: v for k, v in runs.items() if v != 1}
    assert not twice, (
        f"tasks run more than once: {sorted(twice.items())[:10]}\n{runs_of(track, set(twice))}"
    )


def assert_producer_cannot_claim(producer_url: str) -> None:
    """The producer Secret enqueues, but the claim script is refused (NOPERM), naming
    the user and the operation; nothing is taken."""
    import asyncio

    from ebbtide import PermissionDenied
    from ebbtide.brokers.redis.broker import RedisBroker

    async def claim() -> list:
        broker = RedisBroker(producer_url)
        await broker.aconnect()
        try:
            return await broker.claim([("default", 1)], 1, lease_ms=30_000, run_now=1)
        finally:
            await broker.aclose()

    with pytest.raises(PermissionDenied, match="'ebbtide-producer' lacks the right to claim"):
        asyncio.run(claim())
    with pytest.raises(redis.exceptions.NoPermissionError):
        broker_client(producer_url).execute_command("LPOP", "ebbtide:q:{default}:ready:0")


def assert_worker_cannot_flush(worker_url: str) -> None:
    worker = broker_client(worker_url)
    assert worker.ping()
    for command in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*")):
        with pytest.raises(redis.exceptions.NoPermissionError, match=command[0].lower()):
            worker.execute_command(*command)


def test_a_pod_without_the_producer_label_cannot_reach_the_managed_broker(
    core, apps, custom, operator, namespace
):
    create_tq(custom, namespace, taskqueue("guarded", {"type": "redis", "managed": {}}))
    wait_for(lambda: workers_ready(custom, namespace, "guarded"), 180, "the broker ready")
    # kube-router adds a new pod's address to the policy's ipsets on the pod's event, a
    # moment after the pod starts: each probe tries for 20 s. The intruder must fail every
    # time, the producer must get through.
    probe = (
        "import socket, sys, time\n"
        "deadline, error = time.monotonic() + 20, None\n"
        "while time.monotonic() < deadline:\n"
        "    try:\n"
        f"        socket.create_connection(('guarded-redis.{namespace}.svc', 6379), timeout=2).close()\n"
        "    except OSError as e:\n"
        "        error = e\n"
        "        time.sleep(0.5)\n"
        "    else:\n"
        "        print('connected', flush=True); sys.exit(0)\n"
        "print('blocked:', error, flush=True); sys.exit(3)\n"
    )
    phase, log = run_pod(
        core, namespace, "producer", probe, labels={"ebbtide.dev/producer": "guarded"}
    )
    assert phase == "Succeeded" and "connected" in log, log
    phase, log = run_pod(core, namespace, "intruder", probe)
    assert phase == "Failed" and "blocked" in log, log


def test_managed_rabbitmq_runs_from_its_image_with_a_pvc(core, apps, custom, operator, namespace):
    track_url, track = host_tracker(core, apps, namespace)
    body = taskqueue("rabbit", {"type": "rabbitmq", "managed": {}}, track_url=track_url)
    create_tq(custom, namespace, body)
    wait_for(lambda: workers_ready(custom, namespace, "rabbit"), 240, "RabbitMQ and a worker ready")
    claims = core.list_namespaced_persistent_volume_claim(namespace).items
    assert claims and all(c.status.phase == "Bound" for c in claims), claims
    username = secret_value(core, namespace, "rabbit-broker", "username")
    assert username != "guest"
    producer = secret_value(core, namespace, "rabbit-broker-producer", "url")
    assert "declare=passive" in producer  # the queues are the definitions' own
    enqueue(via_cluster_ip(core, namespace, producer), 200, 0.01)
    wait_for(lambda: track.hlen(RUNS) == 200, 120, "200 tasks run through the managed RabbitMQ")
    assert set(counts(track).values()) == {1}


def test_sigterm_with_the_real_grace_period_hands_back_unstarted_tasks(
    core, apps, custom, operator, namespace
):
    track, host_url = one_worker_on_managed_redis(
        core, apps, custom, namespace, "graceful", {"concurrency": 1}
    )
    tasks, seconds = 6, 3.0
    enqueue(host_url, tasks, seconds)
    wait_for(lambda: track.hlen(RUNS) >= 1, 60, "the first task done")
    [pod] = ready_pods(core, namespace, WORKERS)
    name = pod.metadata.name
    started = time.monotonic()
    core.delete_namespaced_pod(name, namespace)
    deleting = core.read_namespaced_pod(name, namespace)
    assert deleting.metadata.deletion_grace_period_seconds == 30

    def gone() -> bool:
        return name not in [p.metadata.name for p in core.list_namespaced_pod(namespace).items]

    wait_for(gone, 40, f"pod {name} gone")
    elapsed = time.monotonic() - started
    # It finished its one running task and exited by itself, well inside the grace period:
    # the kubelet did not have to SIGKILL it, and it had not taken the remaining tasks.
    assert elapsed < 25, f"the worker took {elapsed:.1f}s to stop: SIGKILLed at the grace period?"
    assert track.hlen(RUNS) < tasks, "the deleted worker ran every task before exiting"
    wait_for(lambda: track.hlen(RUNS) == tasks, 120, "the replacement ran the handed-back tasks")
    assert set(counts(track).values()) == {1}, counts(track)


def test_two_worker_processes_forked_in_a_real_pod_run_each_task_once(
    core, apps, custom, operator, namespace
):
    """`processes: 2` under the pod's RuntimeDefault seccomp profile, non-root, with a
    read-only root: the supervisor forks both children (a pidfd watches each), the pod
    is Ready once both are, and each task runs once."""
    track, host_url = one_worker_on_managed_redis(
        core, apps, custom, namespace, "forked", {"concurrency": 2, "processes": 2}
    )
    [pod] = ready_pods(core, namespace, WORKERS)
    log = core.read_namespaced_pod_log(pod.metadata.name, namespace)
    assert log.count("start=forked") == 2 and "start=exec" not in log, log
    tasks = 40
    enqueue(host_url, tasks, 0.05)
    wait_for(lambda: track.hlen(RUNS) == tasks, 120, "every task done")
    twice = {task: n for task, n in counts(track).items() if n != 1}
    assert not twice, f"tasks run more than once: {twice}\n{runs_of(track, set(twice))}"
    log = core.read_namespaced_pod_log(pod.metadata.name, namespace)
    assert "worker process died" not in log, log


def test_a_worker_image_that_cannot_be_found_surfaces_in_the_conditions(
    core, apps, custom, operator, namespace
):
    body = taskqueue(
        "missing",
        {"type": "redis", "managed": {}},
        worker={"image": "docker.io/ebbtide/not-built:0.0.0"},
    )
    create_tq(custom, namespace, body)

    def waiting_reason() -> str | None:
        for pod in core.list_namespaced_pod(namespace, label_selector=WORKERS).items:
            for status in pod.status.container_statuses or []:
                if status.state.waiting and status.state.waiting.reason:
                    if status.state.waiting.reason.startswith("ErrImage"):
                        return status.state.waiting.reason
        return None

    assert wait_for(waiting_reason, 120, "the worker pod's image error") == "ErrImageNeverPull"

    def surfaced() -> dict | None:
        workers = condition(read_tq(custom, namespace, "missing"), "WorkersReady")
        return workers if workers.get("reason") == "ErrImageNeverPull" else None

    # The tick lists the pods on its next poll (pollSeconds 1) after the kubelet's report.
    found = wait_for(surfaced, 30, "ErrImageNeverPull in the TaskQueue's WorkersReady")
    assert found["status"] == "False", found
    assert '"docker.io/ebbtide/not-built:0.0.0"' in found["message"], found
    # Ready names the first failing part: the workers' reason once the broker is up.
    wait_for(
        lambda: (
            condition(read_tq(custom, namespace, "missing"), "Ready").get("reason")
            == "ErrImageNeverPull"
        ),
        120,
        "Ready=False with reason ErrImageNeverPull, the managed broker up",
    )
    degraded = condition(read_tq(custom, namespace, "missing"), "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ErrImageNeverPull", degraded


def test_rotating_the_worker_password_rolls_the_workers_and_loses_no_task(
    core, apps, custom, operator, namespace
):
    """docs/security.md's rotation, on real pods: a new password in the worker Secret is
    applied to the live Redis, the workers roll onto it, and every task still runs."""
    track_url, track = host_tracker(core, apps, namespace)
    body = taskqueue(
        "rotate",
        {"type": "redis", "managed": {}},
        track_url=track_url,
        scaling={"minReplicas": 1, "maxReplicas": 1},
    )
    create_tq(custom, namespace, body)
    wait_for(lambda: workers_ready(custom, namespace, "rotate"), 180, "the broker and a worker")
    producer = via_cluster_ip(
        core, namespace, secret_value(core, namespace, "rotate-broker-producer", "url")
    )
    old_worker = via_cluster_ip(
        core, namespace, secret_value(core, namespace, "rotate-broker-worker", "url")
    )

    def credentials_annotation() -> str:
        template = apps.read_namespaced_deployment("rotate-worker", namespace).spec.template
        return template.metadata.annotations["ebbtide.dev/credentials"]

    before = credentials_annotation()
    enqueue(producer, 40, 0.2)
    core.patch_namespaced_secret(
        "rotate-broker-worker", namespace, {"stringData": {"password": "a-rotated-password"}}
    )

    def old_password_refused() -> bool:
        try:
            broker_client(old_worker).ping()
        except redis.exceptions.AuthenticationError:
            return True
        return False

    # The operator reads the Secrets every EBBTIDE_SECRET_REFRESH_SECONDS (5 s here, 60 by
    # default): then the URL, the live ACL and the pods follow.
    wait_for(lambda: credentials_annotation() != before, 90, "the workers rolling")
    assert "a-rotated-password@" in secret_value(core, namespace, "rotate-broker-worker", "url")
    wait_for(old_password_refused, 30, "the old worker password refused by the live Redis")
    wait_for(lambda: track.hlen(RUNS) == 40, 120, "every task sent before the rotation run")
    enqueue(producer, 40, 0.05)  # the same task numbers again, on the rolled workers

    def all_twice() -> bool:
        runs = counts(track)
        return len(runs) == 40 and all(n >= 2 for n in runs.values())

    wait_for(all_twice, 120, "every task sent after the rotation run too")
