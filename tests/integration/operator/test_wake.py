"""Push activation against real brokers: the enqueue script and the RabbitMQ producer
publish wake-ups, the operator's listeners hear them, and a TaskQueue at zero replicas
is scaled up by the woken tick, long before its next poll (600 s away here). The
TaskQueue and its worker Deployment live on the real kube-apiserver
(tests/support/apiserver.py)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import urllib.error

import ebbtide
import pytest
import redis
from ebbtide_operator import naming, provision
from ebbtide_operator.broker_io import BrokerReader
from ebbtide_operator.metrics import OperatorMetrics
from ebbtide_operator.spec import parse_spec
from ebbtide_operator.tick import TaskQueueTicker, run_periodically
from ebbtide_operator.wake import RabbitMQListener, WakeHub, redis_channel
from worker_testkit import wait_for

DEADLINE = 20.0  # generous: a wake-up takes milliseconds, the next poll 600 s


def send(url: str, queue: str, count: int = 1) -> None:
    app = ebbtide.App(broker_url=url)
    try:
        app.task(name="noop", queue=queue)(lambda: None).send_many([()] * count)
    finally:
        app.close()


@pytest.mark.redis
def test_the_enqueue_script_wakes_only_idle_queues_or_a_broker_without_workers(redis_db):
    client = redis.Redis.from_url(redis_db, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(redis_channel("ebbtide"))

    def next_wake() -> str | None:
        """The next message (the subscription's own confirmation reads as None)."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
            if message is not None:
                return message["data"]
        return None

    try:
        send(redis_db, "jobs")
        assert next_wake() == "jobs"  # no live worker claims from this queue
        client.zadd("ebbtide:q:{jobs}:alive", {"w1": (time.time() + 600) * 1000})
        send(redis_db, "jobs")  # a worker exists and the queue is not idle: silent
        send(redis_db, "other")  # idle: woken (and proves the previous send said nothing)
        assert next_wake() == "other"
        send(redis_db, "later", 0)  # nothing accepted, nothing published
        app = ebbtide.App(broker_url=redis_db)
        app.task(name="noop", queue="delayed")(lambda: None).options(delay=60).send()
        app.close()
        send(redis_db, "marker")
        assert next_wake() == "marker"  # the delayed task woke nobody
    finally:
        pubsub.close()
        client.close()


async def heard(hub: WakeHub, url: str, queue: str, producer) -> None:
    woken = asyncio.Event()
    hub.watch("ns/a", url, "ebbtide", [queue], woken.set)
    hub.watch("ns/b", url, "ebbtide", ["unrelated"], lambda: pytest.fail("wrong TaskQueue woken"))
    listener = hub.listener(url, "ebbtide")
    subscribed = listener.subscribed
    if isinstance(subscribed, threading.Event):
        assert await asyncio.to_thread(subscribed.wait, DEADLINE)
    else:
        await asyncio.wait_for(subscribed.wait(), DEADLINE)
    await asyncio.to_thread(producer)
    await asyncio.wait_for(woken.wait(), DEADLINE)


@pytest.mark.redis
def test_the_redis_listener_hears_a_send(redis_db):
    async def scenario() -> None:
        hub = WakeHub()
        try:
            await heard(hub, redis_db, "jobs", lambda: send(redis_db, "jobs"))
        finally:
            hub.close()

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_the_rabbitmq_listener_hears_a_send(rabbitmq_url):
    async def scenario() -> None:
        hub = WakeHub()
        try:
            await heard(hub, rabbitmq_url, "jobs", lambda: send(rabbitmq_url, "jobs"))
        finally:
            listener = hub.listener(rabbitmq_url, "ebbtide")
            hub.close()
            await asyncio.to_thread(listener.join, 10)

    asyncio.run(scenario())


async def until(condition, timeout: float, what: str) -> None:
    """Wait on the event loop for `condition()` (the listener's state), with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def send_until_sent(url: str, queue: str) -> None:
    """One send, tried again while the broker refuses it (a cluster or Sentinel failing
    over), within the deadline."""

    def sent() -> bool:
        try:
            send(url, queue)
        except (ConnectionError, OSError, redis.exceptions.RedisError, ebbtide.EbbtideError):
            return False
        return True

    wait_for(sent, DEADLINE, f"a send to {queue!r} accepted")


def flush_masters(cluster) -> None:
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        with contextlib.suppress(redis.exceptions.ReadOnlyError):
            if client.info("replication")["role"] == "master":
                client.flushall()
        client.close()


def replica_of(cluster):
    """A node of `cluster` that is a replica in sync with its master."""

    def synced():
        for node in cluster.nodes:
            client = redis.Redis(port=node.port, decode_responses=True)
            try:
                info = client.info("replication")
            finally:
                client.close()
            if info["role"] == "slave" and info.get("master_link_status") == "up":
                return node
        return None

    return wait_for(synced, DEADLINE, "a replica in sync")


@pytest.mark.redis
def test_a_cluster_listener_on_one_node_hears_queues_on_every_master(cluster):
    """Classic PUBLISH on a Redis Cluster reaches every node over the cluster bus: one
    subscription, here on the first seed, hears the enqueue script on all three masters
    (the queues' slots sit on three different masters)."""
    flush_masters(cluster)
    queues = ("default", "emails", "q2")  # one per master (test_redis_cluster.py)

    async def scenario() -> None:
        hub, heard_queues = WakeHub(), asyncio.Queue()
        for q in queues:
            hub.watch(
                f"ns/{q}", cluster.url, "ebbtide", [q], lambda q=q: heard_queues.put_nowait(q)
            )
        try:
            listener = hub.listener(cluster.url, "ebbtide")
            await asyncio.wait_for(listener.subscribed.wait(), DEADLINE)
            for q in queues:
                await asyncio.to_thread(send, cluster.url, q)
                assert await asyncio.wait_for(heard_queues.get(), DEADLINE) == q
        finally:
            hub.close()

    asyncio.run(scenario())


@pytest.mark.redis
def test_a_cluster_listener_moves_to_another_node_when_its_node_dies(cluster):
    """The listener subscribes on a replica (the URL's only seed), hears a send there,
    then that replica is killed: the listener moves to a node it learned from CLUSTER
    SHARDS (the seed is gone) and hears the next send."""
    flush_masters(cluster)
    replica = replica_of(cluster)
    url = f"redis+cluster://127.0.0.1:{replica.port}/0"

    async def scenario() -> None:
        hub, heard_queues = WakeHub(), asyncio.Queue()
        hub.watch("ns/a", url, "ebbtide", ["before", "after"], lambda: heard_queues.put_nowait(1))
        try:
            listener = hub.listener(url, "ebbtide")
            await asyncio.wait_for(listener.subscribed.wait(), DEADLINE)
            assert listener.node == ("127.0.0.1", replica.port)
            await asyncio.to_thread(send, cluster.url, "before")
            await asyncio.wait_for(heard_queues.get(), DEADLINE)
            replica.proc.kill()
            replica.proc.wait()
            await until(
                lambda: listener.subscribed.is_set() and listener.node[1] != replica.port,
                DEADLINE,
                "the listener on another node",
            )
            await asyncio.to_thread(send_until_sent, cluster.url, "after")
            await asyncio.wait_for(heard_queues.get(), DEADLINE)
        finally:
            hub.close()

    try:
        asyncio.run(scenario())
    finally:
        replica.start()  # back into the module's cluster (its nodes.conf is kept)


@pytest.mark.redis
def test_a_tls_cluster_listener_verifies_with_the_operators_ca(tmp_path, monkeypatch):
    """rediss+cluster://: the listener connects to the node with the CA the statistics
    reads use (the BrokerTLS passed to watch), not the system's."""
    from ebbtide.brokers.tls import BrokerTLS
    from support.servers import make_node_tls_files, redis_cluster

    files = make_node_tls_files(str(tmp_path))
    monkeypatch.setenv("EBBTIDE_BROKER_CA_FILE", files.ca_file)  # the producer's
    tls = BrokerTLS(ca_file=files.ca_file)
    with redis_cluster(masters=3, replicas=0, tls=files) as tls_cluster:

        async def scenario() -> None:
            hub, woken = WakeHub(), asyncio.Event()
            hub.watch("ns/a", tls_cluster.url, "ebbtide", ["emails"], woken.set, tls)
            try:
                listener = hub.listener(tls_cluster.url, "ebbtide", tls)
                await asyncio.wait_for(listener.subscribed.wait(), DEADLINE)
                await asyncio.to_thread(send, tls_cluster.url, "emails")
                await asyncio.wait_for(woken.wait(), DEADLINE)
            finally:
                hub.close()

        asyncio.run(scenario())


@pytest.mark.redis
def test_a_sentinel_listener_follows_the_master_across_a_failover():
    """The listener subscribes on the master Sentinel names; after SENTINEL FAILOVER it
    is on the new master and hears a send made there."""
    from support.servers import redis_sentinel, sentinel_failover

    with redis_sentinel() as info:
        url, service = info["url"], info["service"]
        producer = f"{url}?min_replicas=0"  # the old master turns replica: no WAIT on it
        sentinel = redis.Redis(port=info["sentinel_port"], decode_responses=True)

        def master() -> tuple[str, int]:
            host, port = sentinel.sentinel_get_master_addr_by_name(service)
            return host, int(port)

        async def scenario() -> None:
            hub, heard_queues = WakeHub(), asyncio.Queue()
            hub.watch(
                "ns/a", url, "ebbtide", ["before", "after"], lambda: heard_queues.put_nowait(1)
            )
            try:
                listener = hub.listener(url, "ebbtide")
                await asyncio.wait_for(listener.subscribed.wait(), DEADLINE)
                old = master()
                assert listener.node == old
                await asyncio.to_thread(send, producer, "before")
                await asyncio.wait_for(heard_queues.get(), DEADLINE)
                await asyncio.to_thread(
                    wait_for, lambda: sentinel_failover(sentinel, service), DEADLINE, "FAILOVER"
                )
                await asyncio.to_thread(wait_for, lambda: master() != old, DEADLINE, "a new master")
                new = master()
                await until(
                    lambda: listener.subscribed.is_set() and listener.node == new,
                    DEADLINE,
                    "the listener on the new master",
                )
                await asyncio.to_thread(send_until_sent, producer, "after")
                await asyncio.wait_for(heard_queues.get(), DEADLINE)
            finally:
                hub.close()

        try:
            asyncio.run(scenario())
        finally:
            sentinel.close()


def taskqueue(poll: int) -> dict:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": "tq1"},
        "spec": {
            "broker": {"type": "redis", "external": {"secretRef": {"name": "tq1-url"}}},
            "queues": [{"name": "jobs"}],
            "worker": {"image": "w:1", "app": "m:app", "concurrency": 1},
            "scaling": {"minReplicas": 0, "maxReplicas": 4, "pollSeconds": poll},
        },
    }


@pytest.mark.parametrize(
    "broker",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ],
)
def test_a_send_to_a_taskqueue_at_zero_scales_it_up_before_the_next_poll(broker, request, kube):
    """The operator's loop as main.poll wires it: tick, then watch the broker; a wake-up
    sets the loop's event; the woken tick reads the backlog and scales up."""
    url = request.getfixturevalue("redis_db" if broker == "redis" else "rabbitmq_url")
    cluster, ns = kube
    body = ns.create_taskqueue(taskqueue(poll=300))  # the CRD's longest poll
    ns.add_secret("tq1-url", {"url": url})
    reader = BrokerReader(max_threads=4)

    async def scenario() -> None:
        await provision.reconcile(cluster, body, parse_spec(body["spec"]))
        ticker = TaskQueueTicker(cluster, reader, OperatorMetrics(), cluster.record_event)
        hub = WakeHub()
        wake, stop, ticks = asyncio.Event(), asyncio.Event(), []

        async def step() -> None:
            outcome = await ticker.tick(body)
            ticks.append(outcome)
            hub.watch(f"{ns.name}/tq1", url, "ebbtide", ["jobs"], wake.set)
            if outcome.replicas_after > 0:
                stop.set()

        async def sleep(seconds: float) -> None:
            await asyncio.wait([asyncio.ensure_future(stop.wait())], timeout=seconds)

        loop = asyncio.ensure_future(
            run_periodically(step, lambda: 600.0, sleep, stopped=stop.is_set, wake=wake)
        )
        try:
            while not ticks:
                await asyncio.sleep(0.01)
            assert ticks[0].replicas_after == 0
            listener = hub.listener(url, "ebbtide")
            subscribed = listener.subscribed
            if isinstance(subscribed, threading.Event):
                assert await asyncio.to_thread(subscribed.wait, DEADLINE)
            else:
                await asyncio.wait_for(subscribed.wait(), DEADLINE)
            await asyncio.to_thread(send, url, "jobs", 50)
            await asyncio.wait_for(stop.wait(), DEADLINE)
        finally:
            stop.set()
            await loop
            hub.close()
            if isinstance(listener, RabbitMQListener):
                await asyncio.to_thread(listener.join, 10)

    try:
        asyncio.run(scenario())
    finally:
        reader.close(wait=True)
    assert ns.deployment(naming.worker_name("tq1"))["spec"]["replicas"] > 0


@pytest.mark.rabbitmq
def test_a_user_refused_the_wake_exchange_still_sends(rabbitmq, rabbitmq_url):
    """Wake-ups are best effort: a user whose permissions refuse `ebbtide.wake` still
    sends (the operator then sees the tasks at its next poll)."""
    from urllib.parse import quote

    from ebbtide.stats import read_stats
    from support.rabbitmq_admin import _request

    admin = rabbitmq["management_url"]
    vhost = rabbitmq_url.split("/")[-1].split("?")[0]
    _request(admin, "PUT", "/api/users/narrow", {"password": "pw", "tags": ""})
    _request(
        admin,
        "PUT",
        f"/api/permissions/{quote(vhost, safe='')}/narrow",
        {"configure": "^ebbtide\\.(?!wake$).*", "write": ".*", "read": ".*"},
    )
    narrow = rabbitmq_url.replace("guest:guest@", "narrow:pw@")
    try:
        send(narrow, "jobs", 3)
        send(narrow, "jobs", 2)
        wait_for(
            lambda: read_stats(rabbitmq_url, ["jobs"]).queues["jobs"].ready == 5,
            DEADLINE,
            "all five tasks ready",
        )
        with pytest.raises(urllib.error.HTTPError) as missing:  # it was refused, never made
            _request(admin, "GET", f"/api/exchanges/{quote(vhost, safe='')}/ebbtide.wake")
        assert missing.value.code == 404
    finally:
        _request(admin, "DELETE", "/api/users/narrow")


@pytest.mark.redis
def test_a_redis_user_without_channel_permissions_still_sends(redis_db):
    """Redis 7 ACL users get no pub/sub channels by default: the enqueue script's wake-up
    is best effort (pcall), never a failed send."""
    client = redis.Redis.from_url(redis_db)
    client.acl_setuser("narrow", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all"],
                       reset_channels=True)  # fmt: skip
    narrow = redis_db.replace("redis://", "redis://narrow:pw@")
    try:
        send(narrow, "jobs", 3)
        assert client.llen("ebbtide:q:{jobs}:ready:0") == 3
    finally:
        client.acl_deluser("narrow")
        client.close()
