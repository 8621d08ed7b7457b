"""The operator on the one-node cluster: the chart installed by helm, the operator running
from its image as the chart's ServiceAccount, worker pods from the e2e worker image, and
brokers as pods (managed by the operator, or plain Redis pods standing in for external
ones). Tests reach brokers through their Services' ClusterIPs, routed by kube-proxy.

Every wait polls the API with a generous deadline; reaction times are measured in
bench/, not asserted tightly here.
"""

from __future__ import annotations

import base64
import time

import pytest
import redis
from kubernetes.client import ApiException

from e2e.tests.kit import (
    GROUP,
    PLURAL,
    RUNS,
    VERSION,
    condition,
    create_tq,
    enqueue,
    external,
    kubectl,
    put_secret,
    read_tq,
    runs_of,
    secret_value,
    taskqueue,
    tracker,
    via_cluster_ip,
)
from e2e.tests.support import holds_for, wait_for

BURST = 3000
TASK_SECONDS = 0.05
MIN_REPLICAS = 1


def assert_controlled_by(uid: str, *objects) -> None:
    """Each object has exactly one owner, the TaskQueue, as its controller: deleting the
    TaskQueue garbage-collects it."""
    for obj in objects:
        owners = [(o.kind, o.uid, o.controller) for o in obj.metadata.owner_references or []]
        assert owners == [("TaskQueue", uid, True)], obj.metadata.name


def worker_replicas(apps, namespace: str, name: str) -> int:
    return apps.read_namespaced_deployment(f"{name}-worker", namespace).spec.replicas or 0


def kubectl_get_tq(kube_env, namespace: str, *extra: str) -> list[dict[str, str]]:
    """`kubectl get tq` as rows keyed by column header, as a user sees it."""
    out = kubectl(kube_env, "get", "tq", "-n", namespace, *extra).stdout
    lines = out.strip().splitlines()
    header = lines[0].split()
    return [dict(zip(header, line.split(), strict=False)) for line in lines[1:]]


# -- the CRD: invalid manifests are refused by the API server, naming the field ----------

INVALID = [
    ({"scaling": {"minReplicas": 5, "maxReplicas": 2}}, "spec.scaling.minReplicas"),
    ({"scaling": {"pollSeconds": 0}}, "spec.scaling.pollSeconds"),
    (
        {"broker": {"type": "redis", "managed": {}, "external": {"secretRef": {"name": "x"}}}},
        "spec.broker",
    ),
    ({"broker": {"type": "kafka", "external": {"secretRef": {"name": "x"}}}}, "spec.broker.type"),
    ({"worker": {"image": "x", "app": "not a module path"}}, "spec.worker.app"),
    ({"queues": []}, "spec.queues"),
]


@pytest.mark.parametrize(("patch", "field"), INVALID, ids=[f for _, f in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(custom, chart, namespace, patch, field):
    body = taskqueue("bad", external("broker"))
    for key, value in patch.items():
        if key == "scaling":
            body["spec"]["scaling"].update(value)
        else:
            body["spec"][key] = value
    with pytest.raises(ApiException) as raised:
        create_tq(custom, namespace, body)
    assert raised.value.status == 422, raised.value.body
    assert field in raised.value.body, raised.value.body


# -- managed Redis: the objects, their owners, their security; garbage collection --------


def test_managed_redis_objects_and_garbage_collection(
    kube_env, core, apps, custom, operator, namespace
):
    from kubernetes import client

    body = taskqueue("managed", {"type": "redis", "managed": {}})
    tq = create_tq(custom, namespace, body)
    uid = tq["metadata"]["uid"]
    net = client.NetworkingV1Api(core.api_client)

    secret = wait_for(
        lambda: core.read_namespaced_secret("managed-broker", namespace), 60, "the broker Secret"
    )
    broker = wait_for(
        lambda: apps.read_namespaced_stateful_set("managed-redis", namespace),
        60,
        "the Redis StatefulSet (durable by default)",
    )
    service = wait_for(
        lambda: core.read_namespaced_service("managed-redis", namespace), 60, "the Redis Service"
    )
    policy = wait_for(
        lambda: net.read_namespaced_network_policy("managed-redis", namespace),
        60,
        "the Redis NetworkPolicy",
    )
    worker = wait_for(
        lambda: apps.read_namespaced_deployment("managed-worker", namespace),
        60,
        "the worker Deployment",
    )

    assert_controlled_by(uid, secret, broker, service, policy, worker)

    redis_args = broker.spec.template.spec.containers[0].args
    # TLS by default: no plain port, the certificate from <name>-broker-tls.
    assert redis_args[redis_args.index("--port") + 1] == "0"
    assert redis_args[redis_args.index("--tls-port") + 1] == "6379"
    assert base64.b64decode(secret.data["url"]).decode().startswith("rediss://")
    ca = wait_for(
        lambda: core.read_namespaced_secret("managed-broker-ca", namespace), 60, "the CA Secret"
    )
    server_tls = core.read_namespaced_secret("managed-broker-tls", namespace)
    assert set(ca.data) == {"ca.crt"} and server_tls.type == "kubernetes.io/tls"
    assert_controlled_by(uid, ca, server_tls)
    assert redis_args[redis_args.index("--appendonly") + 1] == "yes"
    assert redis_args[redis_args.index("--maxmemory-policy") + 1] == "noeviction"
    assert broker.spec.volume_claim_templates[0].spec.resources.requests["storage"]

    password = base64.b64decode(secret.data["password"]).decode()
    assert len(password) >= 24, "a generated password, not a default"
    assert password in base64.b64decode(secret.data["url"]).decode()

    # Only workers and labelled producers (and the operator, from its own namespace) may
    # reach the broker; no peer admits every namespace.
    froms = [peer for rule in policy.spec.ingress for peer in rule._from]
    peers = [peer.pod_selector.match_labels for peer in froms if peer.pod_selector]
    assert {"ebbtide.dev/taskqueue": "managed", "app.kubernetes.io/component": "worker"} in peers
    assert {"ebbtide.dev/producer": "managed"} in peers
    for peer in froms:
        if peer.namespace_selector is not None:
            assert peer.namespace_selector.match_labels, "never namespaceSelector: {}"

    pod = worker.spec.template.spec
    container = pod.containers[0]
    assert pod.security_context.run_as_non_root is True
    assert container.security_context.read_only_root_filesystem is True
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.capabilities.drop == ["ALL"]
    url_env = next(e for e in container.env if e.name == "EBBTIDE_BROKER_URL_FILE")
    assert not [e for e in container.env if e.name == "EBBTIDE_BROKER_URL"]
    (url_volume,) = [v for v in pod.volumes if v.name == "broker-url"]
    assert url_volume.secret.secret_name == "managed-broker-worker"
    assert url_env.value == "/etc/ebbtide/broker/url"
    for role in ("producer", "worker", "operator"):
        role_secret = core.read_namespaced_secret(f"managed-broker-{role}", namespace)
        assert_controlled_by(uid, role_secret)
        role_url = base64.b64decode(role_secret.data["url"]).decode()
        assert role_url.startswith(f"rediss://ebbtide-{role}:"), "each role its own ACL user"
    status = wait_for(
        lambda: read_tq(custom, namespace, "managed").get("status", {}).get("broker"),
        60,
        "status.broker",
    )
    assert status["producerSecret"] == "managed-broker-producer"
    ca_env = next(e for e in container.env if e.name == "EBBTIDE_BROKER_CA_FILE")
    assert ca_env.value == "/etc/ebbtide/broker-ca/ca.crt"
    assert any(v.secret and v.secret.secret_name == "managed-broker-ca" for v in pod.volumes)
    wait_for(
        lambda: (
            condition(read_tq(custom, namespace, "managed"), "Encrypted").get("reason")
            == "GeneratedCA"
        ),
        60,
        "the Encrypted condition",
    )
    pod_name = next(e for e in container.env if e.name == "POD_NAME")
    assert pod_name.value_from.field_ref.field_path == "metadata.name"

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "managed")

    def collected() -> bool:
        left = [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items]
        left += [d.metadata.name for d in apps.list_namespaced_stateful_set(namespace).items]
        left += [
            s.metadata.name
            for s in core.list_namespaced_secret(namespace).items
            if s.metadata.name.startswith("managed-broker")
        ]
        left += [s.metadata.name for s in core.list_namespaced_service(namespace).items]
        left += [p.metadata.name for p in net.list_namespaced_network_policy(namespace).items]
        return not left

    wait_for(collected, 90, "garbage collection of the TaskQueue's objects")


# -- burst, scale-up, drain, scale-down: no task lost, none run twice --------------------


def drained(custom, namespace: str, name: str, track: redis.Redis) -> bool:
    status = read_tq(custom, namespace, name).get("status", {})
    return status.get("backlog") == 0 and status.get("inFlight") == 0 and track.hlen(RUNS) == BURST


def columns_show_backlog(kube_env, namespace: str) -> dict[str, str] | None:
    rows = kubectl_get_tq(kube_env, namespace)
    row = rows[0] if rows else {}
    busy = row.get("BACKLOG", "0") not in ("0", "<none>") and "/" in row.get("REPLICAS", "")
    return row if busy else None


@pytest.mark.parametrize("broker_type", ["redis", "rabbitmq"])
def test_burst_scales_up_drains_and_scales_down(
    kube_env, core, apps, custom, operator, namespace, broker_type
):
    # Runs are counted in a Redis pod of the test's own; on Redis, an "external" broker
    # (the same kind of pod, its URL in a Secret), on RabbitMQ a managed one.
    track_url = tracker(core, apps, namespace)
    track = redis.Redis.from_url(via_cluster_ip(core, namespace, track_url))
    if broker_type == "rabbitmq":
        broker = {"type": "rabbitmq", "managed": {}}
    else:
        put_secret(core, namespace, "broker", tracker(core, apps, namespace, "external"))
        broker = external("broker")
    create_tq(custom, namespace, taskqueue("burst", broker, track_url=track_url))

    def one_worker_ready() -> bool:
        workers = condition(read_tq(custom, namespace, "burst"), "WorkersReady")
        return (
            workers.get("status") == "True"
            and worker_replicas(apps, namespace, "burst") == MIN_REPLICAS
        )

    wait_for(one_worker_ready, 240, "the first worker ready")
    # The managed RabbitMQ's producer identity: it only checks the pre-declared queues.
    url_secret = "burst-broker-producer" if broker_type == "rabbitmq" else "broker"
    enqueue(
        via_cluster_ip(core, namespace, secret_value(core, namespace, url_secret, "url")),
        BURST,
        TASK_SECONDS,
    )
    landed = time.monotonic()

    wait_for(
        lambda: worker_replicas(apps, namespace, "burst") > MIN_REPLICAS,
        30,
        "a scale-up after the burst",
    )
    print(f"scale-up seen {time.monotonic() - landed:.1f}s after the burst landed")

    row = wait_for(
        lambda: columns_show_backlog(kube_env, namespace),
        30,
        "`kubectl get tq` showing the backlog",
    )
    assert set(row) >= {
        "NAME",
        "BROKER",
        "BACKLOG",
        "OLDEST",
        "DRAIN",
        "REPLICAS",
        "READY",
        "AGE",
    }, row
    assert row["BROKER"] == broker_type

    wait_for(lambda: drained(custom, namespace, "burst", track), 240, "the backlog to drain")
    wait_for(
        lambda: (
            worker_replicas(apps, namespace, "burst") == MIN_REPLICAS
            and len(live_pods(core, namespace)) == MIN_REPLICAS
        ),
        120,
        "replicas back to min after the stabilization window",
    )

    runs = {int(k): int(v) for k, v in track.hgetall(RUNS).items()}
    assert len(runs) == BURST, f"{BURST - len(runs)} tasks lost"
    twice = {k: v for k, v in runs.items() if v != 1}
    assert not twice, (
        f"tasks run more than once: {sorted(twice.items())[:10]}\n{runs_of(track, set(twice))}"
    )

    def scale_events() -> list:
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=burst"
        ).items
        return events if {"ScaledUp", "ScaledDown"} <= {e.reason for e in events} else []

    events = wait_for(scale_events, 60, "ScaledUp and ScaledDown Events")
    scaled_up = next(e.message for e in events if e.reason == "ScaledUp")
    # The policy names its reason: the backlog, or (when the burst trickles in through the
    # broker's Service more slowly than it is drained) the arrival rate.
    assert "→" in scaled_up and ("backlog" in scaled_up or "arrivals" in scaled_up), scaled_up


def live_pods(core, namespace: str) -> list[str]:
    pods = core.list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/component=worker"
    ).items
    return [p.metadata.name for p in pods if p.metadata.deletion_timestamp is None]


# -- an unreachable broker: Degraded, replicas held ---------------------------------------


def test_broker_down_holds_replicas_and_reports_degraded(core, apps, custom, operator, namespace):
    """minReplicas 0, replicas raised by a backlog, then the broker vanishes: the operator
    must hold what it has (an unreadable queue is not an empty one), although the policy
    would scale an empty queue to zero within a poll."""
    url = tracker(core, apps, namespace, "external")
    put_secret(core, namespace, "broker", url)
    scaling = {"minReplicas": 0, "initialTaskSeconds": 2.0, "scaleToZeroIdleSeconds": 0}
    track_url = f"redis://external.{namespace}.svc:6379/1"
    body = taskqueue("fragile", external("broker"), track_url=track_url, scaling=scaling)
    create_tq(custom, namespace, body)
    wait_for(
        lambda: (
            condition(read_tq(custom, namespace, "fragile"), "BrokerReady").get("status") == "True"
        ),
        180,
        "the broker pod reachable",
    )
    enqueue(via_cluster_ip(core, namespace, url), 400, 2.0)
    wait_for(lambda: worker_replicas(apps, namespace, "fragile") >= 2, 120, "a scale-up to 2+")
    apps.delete_namespaced_deployment("external", namespace)
    wait_for(
        lambda: not core.list_namespaced_pod(namespace, label_selector="app=external").items,
        60,
        "the broker pod gone",
    )

    # The server is gone now.
    def degraded_condition() -> dict | None:
        found = condition(read_tq(custom, namespace, "fragile"), "Degraded")
        return found if found.get("status") == "True" else None

    degraded = wait_for(degraded_condition, 60, "the Degraded condition")
    assert degraded["reason"] == "BrokerUnreachable", degraded
    assert degraded["message"], degraded
    tq = read_tq(custom, namespace, "fragile")
    assert condition(tq, "ScalingActive")["reason"] == "BrokerUnreachable"
    held = worker_replicas(apps, namespace, "fragile")
    assert held >= 2
    # Longer than the 5 s scale-down window plus several 1 s polls.
    holds_for(
        lambda: worker_replicas(apps, namespace, "fragile") == held,
        12,
        f"{held} replicas held while the broker is unreachable",
    )


# -- managed RabbitMQ: a StatefulSet with a PVC, credentials, the management plugin ------


def test_managed_rabbitmq_objects(core, apps, custom, operator, namespace):
    from kubernetes import client

    tq = create_tq(custom, namespace, taskqueue("rabbit", {"type": "rabbitmq", "managed": {}}))
    uid = tq["metadata"]["uid"]
    net = client.NetworkingV1Api(core.api_client)

    secret = wait_for(
        lambda: core.read_namespaced_secret("rabbit-broker", namespace), 60, "the broker Secret"
    )
    broker = wait_for(
        lambda: apps.read_namespaced_stateful_set("rabbit-rabbitmq", namespace),
        60,
        "the RabbitMQ StatefulSet",
    )
    service = wait_for(
        lambda: core.read_namespaced_service("rabbit-rabbitmq", namespace),
        60,
        "the RabbitMQ Service",
    )
    config = wait_for(
        lambda: core.read_namespaced_config_map("rabbit-rabbitmq", namespace),
        60,
        "the RabbitMQ ConfigMap",
    )
    policy = wait_for(
        lambda: net.read_namespaced_network_policy("rabbit-rabbitmq", namespace),
        60,
        "the RabbitMQ NetworkPolicy",
    )
    assert_controlled_by(uid, secret, broker, service, config, policy)

    data = {k: base64.b64decode(v).decode() for k, v in secret.data.items()}
    assert data["username"] != "guest" and len(data["password"]) >= 24
    # TLS by default: AMQPS and the management API on https only.
    assert data["url"].startswith(f"amqps://{data['username']}:")
    assert "management_port=15671" in data["url"]
    assert "rabbitmq_management" in config.data["enabled_plugins"]
    assert "listeners.tcp = none" in config.data["rabbitmq.conf"]
    assert "management.ssl.port = 15671" in config.data["rabbitmq.conf"]
    assert {p.port for p in service.spec.ports} == {5671, 15671}

    claim = broker.spec.volume_claim_templates[0]
    assert claim.spec.resources.requests["storage"]
    assert broker.spec.persistent_volume_claim_retention_policy.when_deleted == "Retain"
    container = broker.spec.template.spec.containers[0]
    assert broker.spec.template.spec.security_context.run_as_non_root is True
    assert container.security_context.read_only_root_filesystem is True
    assert container.security_context.capabilities.drop == ["ALL"]


# -- no adoption: a user's same-named objects are never touched nor garbage-collected -----


def users_objects(core, apps, namespace: str, prefix: str):
    """A Deployment `<prefix>-worker` and a Service `<prefix>-redis` someone else made."""
    from kubernetes import client

    labels = {"app": "mine"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name=f"{prefix}-worker", labels={"team": "mine"}),
        spec=client.V1DeploymentSpec(
            replicas=0,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="mine:1")]),
            ),
        ),
    )
    service = client.V1Service(
        metadata=client.V1ObjectMeta(name=f"{prefix}-redis", labels={"team": "mine"}),
        spec=client.V1ServiceSpec(selector=labels, ports=[client.V1ServicePort(port=80)]),
    )
    apps.create_namespaced_deployment(namespace, deployment)
    core.create_namespaced_service(namespace, service)


def assert_untouched(core, apps, namespace: str, prefix: str) -> None:
    deployment = apps.read_namespaced_deployment(f"{prefix}-worker", namespace)
    assert not deployment.metadata.owner_references, deployment.metadata.owner_references
    assert deployment.metadata.labels == {"team": "mine"}
    assert deployment.spec.replicas == 0, "never scaled"
    assert deployment.spec.template.spec.containers[0].image == "mine:1", "never repaired"
    service = core.read_namespaced_service(f"{prefix}-redis", namespace)
    assert not service.metadata.owner_references
    assert service.spec.selector == {"app": "mine"}
    assert [p.port for p in service.spec.ports] == [80]


def test_foreign_objects_are_not_adopted_and_survive_the_taskqueue(
    core, apps, custom, operator, namespace
):
    users_objects(core, apps, namespace, "squat")
    tq = create_tq(custom, namespace, taskqueue("squat", {"type": "redis", "managed": {}}))
    uid = tq["metadata"]["uid"]

    def conflict() -> dict | None:
        ready = condition(read_tq(custom, namespace, "squat"), "Ready")
        message = ready.get("message", "")
        named = "Deployment/squat-worker" in message and "Service/squat-redis" in message
        return ready if ready.get("reason") == "NameConflict" and named else None

    ready = wait_for(conflict, 60, "Ready=False, reason NameConflict, naming both objects")
    assert ready["status"] == "False"

    def warning() -> list:
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=squat"
        ).items
        return [e for e in events if e.reason == "NameConflict" and e.type == "Warning"]

    wait_for(warning, 30, "a NameConflict Warning Event")
    # What is not in the way is still provisioned, and ours.
    broker = wait_for(
        lambda: apps.read_namespaced_stateful_set("squat-redis", namespace), 30, "the StatefulSet"
    )
    assert_controlled_by(uid, broker)
    time.sleep(3)  # a few polls (pollSeconds 1) with a backlog-free queue at minReplicas 1
    assert_untouched(core, apps, namespace, "squat")

    # The user removes their Service: the operator's retry creates its own.
    core.delete_namespaced_service("squat-redis", namespace)
    service = wait_for(
        lambda: core.read_namespaced_service("squat-redis", namespace), 90, "our Service"
    )
    assert_controlled_by(uid, service)

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "squat")

    def ours_collected() -> bool:
        names = [s.metadata.name for s in apps.list_namespaced_stateful_set(namespace).items]
        names += [s.metadata.name for s in core.list_namespaced_service(namespace).items]
        return "squat-redis" not in names

    wait_for(ours_collected, 90, "garbage collection of the TaskQueue's own objects")
    deployment = apps.read_namespaced_deployment("squat-worker", namespace)
    assert not deployment.metadata.owner_references and deployment.spec.replicas == 0
