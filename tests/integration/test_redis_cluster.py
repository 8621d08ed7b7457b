"""Ebbtide on a real Redis Cluster: six redis-server processes (three masters, one
replica each) made with `redis-cli --cluster create`, started once for the module.
Queues land on different slots and nodes; the worker drains them all through its
per-slot calls."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import ebbtide
import pytest
import redis
import worker_tasks
from ebbtide.brokers import read_stats
from ebbtide.brokers.redis.broker import RedisBroker
from ebbtide.brokers.redis.keys import Layout
from support.servers import redis_cluster
from worker_testkit import BrokerUnderTest, recorder, wait_for

pytestmark = pytest.mark.redis

# Three queues whose slots sit on three different masters (checked below).
QUEUES = ("default", "emails", "q2")


@pytest.fixture
def on_cluster(cluster, redis_db) -> Iterator[BrokerUnderTest]:
    """The shared tasks sending to the cluster (flushed), recording into the session Redis."""
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        if client.info("replication")["role"] == "master":
            client.flushall()
        client.close()
    worker_tasks.app.use_broker_url(cluster.url)
    rec = recorder(redis_db)
    yield BrokerUnderTest("redis", cluster.url, redis_db, rec, worker_tasks)
    rec.close()
    worker_tasks.app.close()


def masters_of(url: str, queues: tuple[str, ...]) -> set[str]:
    from redis.cluster import RedisCluster

    client = RedisCluster.from_url(url.replace("redis+cluster", "redis").split(",")[0] + "/0")
    layout = Layout("ebbtide", clustered=True)
    try:
        return {client.get_node_from_key(layout.queue_base(q)).name for q in queues}
    finally:
        client.close()


def test_tasks_on_three_masters_are_sent_retried_delayed_dead_lettered_and_counted(on_cluster):
    broker = on_cluster
    assert len(masters_of(broker.url, QUEUES)) == 3
    record = broker.tasks.record
    for q in QUEUES:
        record.options(queue=q).send_many([(q, i) for i in range(20)])
    record.options(queue="emails", delay=0.5).send("delayed", 0)
    broker.tasks.flaky.options(queue="q2").send("flaky", 2)
    broker.tasks.always_fails.options(queue="default").send("doomed")
    stats = read_stats(broker.url, list(QUEUES))
    assert sum(s.ready for s in stats.queues.values()) == 62 and stats.queues["emails"].delayed == 1
    with broker.worker("--queues", ",".join(QUEUES), "--concurrency", "4"):
        wait_for(lambda: all(len(broker.done(q)) == 20 for q in QUEUES), what="all sent tasks")
        wait_for(lambda: broker.done("delayed") and broker.done("flaky"), what="delayed, retried")
        wait_for(lambda: read_stats(broker.url, ["default"]).queues["default"].dead == 1,
                 what="the doomed task in the DLQ")  # fmt: skip
        wait_for(lambda: read_stats(broker.url, list(QUEUES)).workers, what="the worker's info")
    stats = read_stats(broker.url, list(QUEUES))
    assert {q: s.completed_total for q, s in stats.queues.items()} == {
        "default": 21, "emails": 21, "q2": 21}  # fmt: skip
    assert all(s.in_flight == 0 and s.ready == 0 for s in stats.queues.values())
    assert broker.rec.hget("attempts", "doomed") == "3"
    (dead,) = broker.dlq()
    assert dead["queue"] == "default" and "always fails" in str(dead)


def test_a_killed_workers_claims_come_back_on_its_liveness_not_its_lease(on_cluster):
    broker = on_cluster
    broker.tasks.gated.options(queue="emails").send_many(("lost", i) for i in range(3))
    args = ("--queues", "emails", "--lease-seconds", "30", "--concurrency", "1", "--prefetch", "2")
    with broker.worker(*args) as victim:
        wait_for(lambda: broker.queue("emails").in_flight == 3, what="all three claimed")
        wait_for(lambda: broker.started("lost") == ["0"], what="the first one running")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    probe = RedisBroker(broker.url)

    async def claim_nothing() -> None:
        await probe.aconnect()
        try:
            await probe.claim([("emails", 0)], 0, 1000)
        finally:
            await probe.aclose()

    def back() -> bool:
        asyncio.run(claim_nothing())
        return broker.queue("emails").ready == 3

    # Within 20 s, well before the 30 s lease: the liveness brought them back.
    wait_for(back, 20, what="the three back, ready")
    broker.open_gate("lost")
    with broker.worker("--queues", "emails"):
        wait_for(lambda: len(broker.done("lost")) == 3, what="all three done")
    assert broker.queue("emails").completed_total == 3


def test_the_old_key_layout_is_refused_with_how_to_migrate(on_cluster):
    client = redis.Redis(port=int(on_cluster.url.split(":")[2].split(",")[0]))
    from redis.cluster import RedisCluster

    rc = RedisCluster(host="127.0.0.1", port=client.connection_pool.connection_kwargs["port"])
    rc.sadd("ebbtide:queues", "default")
    try:
        with pytest.raises(Exception, match="ebbtide migrate"):
            on_cluster.tasks.record.send("x", 1)
    finally:
        rc.delete("ebbtide:queues")
        rc.close()
        client.close()


def test_the_operator_reads_a_cluster_and_checks_every_primarys_policy(on_cluster, cluster):
    from ebbtide.errors import BrokerEvicts
    from ebbtide_operator.broker_io import BrokerReader, open_link

    on_cluster.tasks.record.options(queue="q2").send_many([("op", i) for i in range(5)])
    reader = BrokerReader(max_threads=1)
    try:
        stats = asyncio.run(reader.read("ns/tq", on_cluster.url, ["q2", "emails"], 10))
    finally:
        reader.close()
    assert stats.queues["q2"].ready == 5 and stats.queues["emails"].ready == 0
    link = open_link(on_cluster.url, 4)
    masters = [redis.Redis(port=n.port) for n in cluster.nodes]
    masters = [m for m in masters if m.info("replication")["role"] == "master"]
    try:
        assert link.eviction_policy() is None
        masters[-1].config_set("maxmemory-policy", "allkeys-lru")  # one node of three
        assert link.eviction_policy() == "allkeys-lru"
        with pytest.raises(BrokerEvicts, match="allkeys-lru"):
            RedisBroker(on_cluster.url).enqueue("q2", [], 0, 0)
    finally:
        masters[-1].config_set("maxmemory-policy", "noeviction")
        link.close()
        for m in masters:
            m.close()


def test_a_tls_cluster_over_rediss_cluster_urls(redis_db, tmp_path, monkeypatch):
    """Every port TLS only (clients, bus, replication): the producer and a worker reach
    it with rediss+cluster:// and the CA from EBBTIDE_BROKER_CA_FILE."""
    from support.servers import make_node_tls_files

    files = make_node_tls_files(str(tmp_path))
    monkeypatch.setenv("EBBTIDE_BROKER_CA_FILE", files.ca_file)
    with redis_cluster(masters=3, replicas=0, tls=files) as tls_cluster:
        worker_tasks.app.use_broker_url(tls_cluster.url)
        rec = recorder(redis_db)
        broker = BrokerUnderTest("redis", tls_cluster.url, redis_db, rec, worker_tasks)
        try:
            for q in ("emails", "q2"):
                broker.tasks.record.options(queue=q).send_many([("tls", i) for i in range(5)])
            env = {"EBBTIDE_BROKER_CA_FILE": files.ca_file}
            with broker.worker("--queues", "emails,q2", env=env):
                wait_for(lambda: len(broker.done("tls")) == 10, what="both queues drained")
            assert read_stats(tls_cluster.url, ["emails", "q2"]).queues["q2"].completed_total == 5
        finally:
            rec.close()
            worker_tasks.app.close()


def test_the_role_acl_users_work_on_every_node(on_cluster, cluster):
    """The managed broker's per-role ACL rules, set on each node, serve a cluster: the
    producer sends, the worker claims, the operator reads and hears the producer's wake-up;
    the producer cannot claim."""
    from ebbtide.errors import PermissionDenied
    from ebbtide_operator import naming
    from ebbtide_operator.build import roles
    from ebbtide_operator.wake import WakeHub

    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        for role in naming.ROLES:
            cred = roles.Credential(naming.role_username(role), f"pw-{role}")
            client.execute_command("ACL", "SETUSER", cred.username,
                                   *roles.redis_user_rules(role, cred, "ebbtide"))  # fmt: skip
        client.close()
    seeds = cluster.url.split("://", 1)[1]

    def url(role: str) -> str:
        return f"redis+cluster://{naming.role_username(role)}:pw-{role}@{seeds}"

    def send() -> None:
        app = ebbtide.App(broker_url=url("producer"))
        app.task(name="x")(lambda: None).options(queue="emails").send_many([()] * 3)
        app.close()

    async def the_operator_hears_the_send() -> None:  # its wake-up: CLUSTER SHARDS, SUBSCRIBE
        hub, woken = WakeHub(), asyncio.Event()
        hub.watch("ns/tq", url("operator"), "ebbtide", ["emails"], woken.set)
        try:
            await asyncio.wait_for(hub.listener(url("operator"), "ebbtide").subscribed.wait(), 20)
            await asyncio.to_thread(send)
            await asyncio.wait_for(woken.wait(), 20)
        finally:
            hub.close()

    asyncio.run(the_operator_hears_the_send())
    assert read_stats(url("operator"), ["emails"]).queues["emails"].ready == 3

    async def claim(role: str) -> int:
        broker = RedisBroker(url(role))
        await broker.aconnect()
        try:
            return len(await broker.claim([("emails", 3)], 3, 1000))
        finally:
            await broker.aclose()

    with pytest.raises(PermissionDenied, match="'ebbtide-producer' lacks the right to claim"):
        asyncio.run(claim("producer"))
    assert asyncio.run(claim("worker")) == 3
    assert read_stats(url("operator"), ["emails"]).queues["emails"].in_flight == 3


def test_a_sharded_queue_spreads_over_the_masters_and_drains(on_cluster):
    """Each shard is its own queue, so its own slot: 8 shards land on all three masters,
    and one worker drains them all (the statistics summed over the shards)."""
    from ebbtide.shards import shard_names, sum_shards

    names = shard_names("sq", 8)
    assert len(masters_of(on_cluster.url, tuple(names))) == 3
    app = ebbtide.App(broker_url=on_cluster.url)

    @app.task(name="shard.record", queue="sq", shards=8)
    def record(tag, i): ...

    record.send_many(("sharded", i) for i in range(80))
    app.close()
    ready = {n: q.ready for n, q in read_stats(on_cluster.url, names).queues.items()}
    assert sorted(ready.values()) == [10] * 8  # round-robin

    def drained() -> bool:
        q = sum_shards(read_stats(on_cluster.url, names)).stats.queues["sq"]
        return q.ready == q.in_flight == 0 and q.completed_total == 80

    env = {"EBBTIDE_SHARDS": "sq=8"}
    with on_cluster.worker("--concurrency", "4", env=env, app="shard_tasks:app"):
        wait_for(lambda: len(on_cluster.done("sharded")) == 80, what="80 tasks done")
        wait_for(drained, what="the summed shards: empty, 80 completed")
    assert sorted(map(int, on_cluster.done("sharded"))) == list(range(80))
