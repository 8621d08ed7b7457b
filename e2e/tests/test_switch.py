"""A TaskQueue that changes broker on the real cluster: managed Redis to managed RabbitMQ
and back, and managed to external. After each switch the old broker's objects are gone,
every worker pod is a new one (the runtime reads its URL once, at start: only a rollout
gives it the new one) holding the new broker's URL (read inside the pod), and tasks sent
afterwards run, each once.

Every wait polls with a deadline; none is a sleep used as synchronisation.
"""

from __future__ import annotations

import redis
from kubernetes import client

from e2e.tests.kit import (
    GROUP,
    PLURAL,
    RUNS,
    VERSION,
    condition,
    create_tq,
    enqueue,
    pod_broker_url,
    read_tq,
    ready_pods,
    secret_value,
    taskqueue,
    tracker,
    via_cluster_ip,
)
from e2e.tests.support import wait_for

NAME = "switch"
WORKERS = f"ebbtide.dev/taskqueue={NAME},app.kubernetes.io/component=worker"
BROKER_OBJECTS = {
    "redis": [("StatefulSet", "switch-redis"), ("Service", "switch-redis")],
    "rabbitmq": [
        ("StatefulSet", "switch-rabbitmq"),
        ("Service", "switch-rabbitmq"),
        ("ConfigMap", "switch-rabbitmq"),
    ],
}
NETWORK_POLICY = {"redis": "switch-redis", "rabbitmq": "switch-rabbitmq"}


def existing(core, apps, namespace: str, kind: str, name: str) -> bool:
    read = {
        "StatefulSet": apps.read_namespaced_stateful_set,
        "Deployment": apps.read_namespaced_deployment,
        "Service": core.read_namespaced_service,
        "ConfigMap": core.read_namespaced_config_map,
        "Secret": core.read_namespaced_secret,
        "NetworkPolicy": client.NetworkingV1Api(core.api_client).read_namespaced_network_policy,
    }[kind]
    try:
        read(name, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def objects_of(broker_type: str) -> list[tuple[str, str]]:
    return [*BROKER_OBJECTS[broker_type], ("NetworkPolicy", NETWORK_POLICY[broker_type])]


def healthy(custom, namespace: str) -> bool:
    tq = read_tq(custom, namespace, NAME)
    return all(condition(tq, kind).get("status") == "True" for kind in ("BrokerReady", "Ready"))


def switch(custom, namespace: str, broker: dict) -> None:
    """A merge patch of spec.broker, as `kubectl patch --type merge` sends it."""
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"broker": broker}}
    )


def worker_pod_names(core, namespace: str) -> set[str]:
    return {
        p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector=WORKERS).items
    }


def settled_on(
    kube_env, core, custom, namespace: str, url: str, what: str, old: frozenset[str] = frozenset()
) -> None:
    """The rollout is over: every live worker pod is new (none of `old`, the pods from
    before the switch: the runtime reads the URL once, at start), Ready, and has `url`
    (read inside the pod), and the TaskQueue is healthy."""

    def settled() -> bool:
        pods = core.list_namespaced_pod(namespace, label_selector=WORKERS).items
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        ready = ready_pods(core, namespace, WORKERS)
        if not ready or len(ready) != len(live) or not healthy(custom, namespace):
            return False
        if any(p.metadata.name in old for p in ready):
            return False
        return all(pod_broker_url(kube_env, namespace, p.metadata.name) == url for p in ready)

    wait_for(settled, 240, f"every worker pod new, on {what}, Ready; the TaskQueue healthy")


def runs_through(core, namespace: str, url: str, track: redis.Redis, first: int, n: int) -> None:
    """`n` tasks numbered from `first`, sent through `url` (from the host), each run once."""
    enqueue(via_cluster_ip(core, namespace, url), n, 0.01, first=first)
    wanted = set(range(first, first + n))
    wait_for(
        lambda: wanted <= {int(k) for k in track.hkeys(RUNS)},
        120,
        f"tasks {first}..{first + n - 1} run",
    )
    runs = {int(k): int(v) for k, v in track.hgetall(RUNS).items() if int(k) in wanted}
    assert set(runs.values()) == {1}, runs


REDIS_SCHEMES, AMQP_SCHEMES = ("redis://", "rediss://"), ("amqp://", "amqps://")


def worker_url(core, namespace: str, schemes: tuple[str, ...]) -> str | None:
    """The URL the worker pods get on a managed broker: the worker role's Secret (the
    admin Secret, `switch-broker`, holds the admin's), once it names the wanted broker."""
    url = secret_value(core, namespace, "switch-broker-worker", "url")
    return url if url and url.startswith(schemes) else None


def start(core, apps, custom, namespace: str) -> tuple[str, redis.Redis]:
    track_url = tracker(core, apps, namespace)
    track = redis.Redis.from_url(via_cluster_ip(core, namespace, track_url))
    body = taskqueue(
        NAME,
        {"type": "redis", "managed": {}},
        track_url=track_url,
        scaling={"minReplicas": 1, "maxReplicas": 1},
    )
    create_tq(custom, namespace, body)
    return track_url, track


def test_switching_managed_redis_to_rabbitmq_and_back(
    kube_env, core, apps, custom, operator, namespace
):
    _, track = start(core, apps, custom, namespace)
    redis_url = wait_for(
        lambda: secret_value(core, namespace, "switch-broker", "url"), 60, "the broker Secret"
    )
    assert redis_url.startswith("rediss://"), "TLS by default"
    pods_url = wait_for(lambda: worker_url(core, namespace, REDIS_SCHEMES), 60, "the worker Secret")
    settled_on(kube_env, core, custom, namespace, pods_url, "the managed Redis")
    runs_through(core, namespace, redis_url, track, 0, 20)

    before = frozenset(worker_pod_names(core, namespace))
    switch(custom, namespace, {"type": "rabbitmq"})

    def rabbit_url() -> str | None:
        url = secret_value(core, namespace, "switch-broker", "url")
        return url if url.startswith(AMQP_SCHEMES) else None

    amqp_url = wait_for(rabbit_url, 60, "the broker Secret replaced with a RabbitMQ URL")
    pods_url = wait_for(
        lambda: worker_url(core, namespace, AMQP_SCHEMES), 60, "the worker Secret replaced"
    )
    wait_for(
        lambda: not any(existing(core, apps, namespace, *o) for o in objects_of("redis")),
        60,
        "the managed Redis's StatefulSet, Service and NetworkPolicy deleted",
    )
    settled_on(kube_env, core, custom, namespace, pods_url, "the managed RabbitMQ", before)
    runs_through(core, namespace, amqp_url, track, 100, 20)

    before = frozenset(worker_pod_names(core, namespace))
    switch(custom, namespace, {"type": "redis"})
    back = wait_for(
        lambda: (
            (u := secret_value(core, namespace, "switch-broker", "url")).startswith(REDIS_SCHEMES)
            and u
        ),
        60,
        "the broker Secret replaced with a Redis URL",
    )
    assert back != redis_url, "a new Secret: fresh credentials for the new broker"
    wait_for(
        lambda: not any(existing(core, apps, namespace, *o) for o in objects_of("rabbitmq")),
        60,
        "the managed RabbitMQ's StatefulSet, Service, ConfigMap and NetworkPolicy deleted",
    )
    pods_url = wait_for(
        lambda: worker_url(core, namespace, REDIS_SCHEMES), 60, "the worker Secret replaced"
    )
    settled_on(kube_env, core, custom, namespace, pods_url, "the managed Redis again", before)
    runs_through(core, namespace, back, track, 200, 20)


def test_switching_a_managed_broker_to_an_external_one(
    kube_env, core, apps, custom, operator, namespace
):
    _, track = start(core, apps, custom, namespace)
    pods_url = wait_for(lambda: worker_url(core, namespace, REDIS_SCHEMES), 60, "the worker Secret")
    settled_on(kube_env, core, custom, namespace, pods_url, "the managed Redis")

    external_url = tracker(core, apps, namespace, "external")
    core.create_namespaced_secret(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "mine"},
            "stringData": {"url": external_url},
        },
    )
    before = frozenset(worker_pod_names(core, namespace))
    switch(custom, namespace, {"managed": None, "external": {"secretRef": {"name": "mine"}}})
    wait_for(
        lambda: (
            not any(
                existing(core, apps, namespace, *o)
                for o in [
                    *objects_of("redis"),
                    ("Secret", "switch-broker"),
                    ("Secret", "switch-broker-worker"),
                ]
            )
        ),
        60,
        "the managed Redis's objects and its Secret deleted",
    )
    settled_on(kube_env, core, custom, namespace, external_url, "the external broker", before)
    runs_through(core, namespace, external_url, track, 0, 20)
    assert existing(core, apps, namespace, "Secret", "mine"), "the user's Secret is kept"
