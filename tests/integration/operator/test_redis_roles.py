"""The managed Redis's per-role identities on a real `redis-server` with the ACL file.

The Secrets come from a real reconcile (on the in-memory cluster); the broker is started
with exactly the admin Secret's `users.acl` as its `--aclfile`, and each role's URL is
its Secret's, pointed at the loopback server. Checks: the producer can send but not
claim; the worker can claim and settle but gets NOPERM on FLUSHALL, CONFIG and KEYS; the
operator reads the statistics (EVALSHA_RO) but cannot write; and a rotation (a role
Secret's password edited) is applied live without losing a task or a connection.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
import redis
from ebbtide import App, PermissionDenied, read_stats
from ebbtide.brokers.base import Settlement
from ebbtide.brokers.redis.broker import RedisBroker
from ebbtide_operator import broker_admin, credentials, provision
from ebbtide_operator.broker_io import BrokerReader
from ebbtide_operator.spec import parse_spec
from ebbtide_operator.wake import RedisListener
from support.memory_cluster import MemoryCluster
from support.servers import redis_process

pytestmark = pytest.mark.redis

BODY = {
    "apiVersion": "ebbtide.dev/v1alpha1",
    "kind": "TaskQueue",
    "metadata": {"name": "tq", "namespace": "ns", "uid": "u1", "generation": 1},
    "spec": {
        # Plain text here: this file is about the ACLs; TLS on the same managed Redis
        # (ACL file and certificates together) is test_managed_tls.py's.
        "broker": {"type": "redis", "managed": {}, "keyPrefix": "jobs", "tls": {"enabled": False}},
        "queues": [{"name": "q"}],
        "worker": {"image": "w:1", "app": "m:app"},
    },
}
SPEC = parse_spec(BODY["spec"])
IN_CLUSTER = "tq-redis.ns.svc:6379"


def secret(cluster: MemoryCluster, name: str) -> dict[str, str]:
    data = cluster.objects[("Secret", "ns", name)]["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


class Managed:
    """A reconciled TaskQueue's Secrets and a redis-server running their ACL file."""

    def __init__(self, cluster: MemoryCluster, server, acl: Path) -> None:
        self.cluster, self.server, self.acl = cluster, server, acl

    def url(self, role: str | None = None) -> str:
        name = "tq-broker" if role is None else f"tq-broker-{role}"
        return secret(self.cluster, name)["url"].replace(
            IN_CLUSTER, f"127.0.0.1:{self.server.port}"
        )


@pytest.fixture
def managed(tmp_path):
    cluster = MemoryCluster()
    asyncio.run(provision.reconcile(cluster, BODY, SPEC))
    acl = tmp_path / "users.acl"
    acl.write_text(secret(cluster, "tq-broker")["users.acl"])
    with redis_process("--aclfile", str(acl)) as server:
        yield Managed(cluster, server, acl)


def app_for(url: str) -> tuple[App, Any]:
    app = App(broker_url=url, key_prefix="jobs")

    @app.task(queue="q")
    def job(n: int) -> None: ...

    return app, job


async def connect(url: str) -> RedisBroker:
    broker = RedisBroker(url, prefix="jobs")
    await broker.aconnect()
    return broker


async def claim(url: str, n: int = 10) -> list:
    broker = await connect(url)
    try:
        return await broker.claim([("q", n)], n, lease_ms=30_000, run_now=n)
    finally:
        await broker.aclose()


def test_the_default_user_is_the_admin_and_nobody_else_gets_in(managed):
    admin = redis.Redis.from_url(managed.url())
    assert admin.ping() and admin.acl_whoami() == "default"
    assert set(admin.acl_users()) == {
        "default",
        "ebbtide-producer",
        "ebbtide-worker",
        "ebbtide-operator",
    }
    anonymous = redis.Redis(port=managed.server.port, retry=None)  # no retry backoff
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()


def test_the_producer_can_send_but_not_claim(managed):
    app, job = app_for(managed.url("producer"))
    job.send_many([(i,) for i in range(5)])
    job.options(delay=60).send(99)
    app.close()
    assert read_stats(managed.url(), ["q"], prefix="jobs").queues["q"].ready == 5

    with pytest.raises(PermissionDenied) as refused:
        asyncio.run(claim(managed.url("producer")))
    message = str(refused.value)
    assert "'ebbtide-producer'" in message and "claim tasks" in message
    assert read_stats(managed.url(), ["q"], prefix="jobs").queues["q"].ready == 5  # untouched
    producer = redis.Redis.from_url(managed.url("producer"))
    for command in (
        ("FLUSHALL",),
        ("KEYS", "*"),
        ("CONFIG", "GET", "*"),
        ("LPOP", "jobs:q:{q}:ready:0"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            producer.execute_command(*command)


def test_the_worker_claims_and_settles_but_cannot_flush_configure_or_scan(managed):
    app, job = app_for(managed.url("producer"))
    job.send_many([(i,) for i in range(3)])
    app.close()

    async def work() -> int:
        broker = await connect(managed.url("worker"))
        try:
            deliveries = await broker.claim([("q", 10)], 10, lease_ms=30_000, run_now=10)
            settled = await broker.settle([Settlement("ack", d) for d in deliveries], 60_000)
            await broker.heartbeat("w1", '{"worker_id": "w1"}', [], 30_000, 60_000)
            return settled
        finally:
            await broker.aclose()

    assert asyncio.run(work()) == 3
    assert read_stats(managed.url(), ["q"], prefix="jobs").queues["q"].completed_total == 3
    worker = redis.Redis.from_url(managed.url("worker"))
    for command in (
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "SET", "maxmemory-policy", "allkeys-lru"),
        ("KEYS", "*"),
        ("ACL", "LIST"),
        ("SHUTDOWN",),
    ):
        # NOPERM, naming the command (redis-py keeps the text after the error code)
        with pytest.raises(redis.exceptions.NoPermissionError, match=command[0].lower()):
            worker.execute_command(*command)
    # DEBUG is off on this server anyway; the ACL would refuse it too.
    admin = redis.Redis.from_url(managed.url())
    dry = admin.execute_command("ACL", "DRYRUN", "ebbtide-worker", "DEBUG", "SLEEP", "0")
    assert b"no permissions to run the 'debug' command" in dry
    with pytest.raises(redis.exceptions.NoPermissionError):
        worker.set("not-ours", "x")  # outside the key prefix
    worker.set("jobs:scratch", "x")  # inside it


def test_the_operator_reads_the_statistics_but_cannot_write(managed):
    app, job = app_for(managed.url("producer"))
    job.send_many([(i,) for i in range(4)])
    app.close()
    reader = BrokerReader(max_threads=1)
    try:
        stats = asyncio.run(reader.read("ns/tq", managed.url("operator"), ["q"], 10, prefix="jobs"))
    finally:
        reader.close()
    assert stats.queues["q"].ready == 4
    operator = redis.Redis.from_url(managed.url("operator"))
    with pytest.raises(redis.exceptions.NoPermissionError):
        operator.set("jobs:x", "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        operator.eval("return 1", 0)  # only the read-only EVAL_RO / EVALSHA_RO
    with pytest.raises(redis.exceptions.ResponseError, match="can't run this command"):
        operator.eval_ro("return redis.call('DEL', 'jobs:q:{q}:msgs')", 0)
    with pytest.raises(PermissionDenied, match="'ebbtide-operator' lacks the right to claim"):
        asyncio.run(claim(managed.url("operator")))
    assert read_stats(managed.url(), ["q"], prefix="jobs").queues["q"].ready == 4


def test_a_rotated_password_is_applied_live_and_loses_no_task(managed):
    app, job = app_for(managed.url("producer"))
    job.send_many([(i,) for i in range(6)])
    old_worker_url = managed.url("worker")
    before = redis.Redis.from_url(old_worker_url)
    assert before.ping()  # a connection authenticated before the rotation

    # The rotation: the user writes a new password into the worker Secret.
    key = ("Secret", "ns", "tq-broker-worker")
    data = managed.cluster.objects[key]["data"]
    data["password"] = base64.b64encode(b"a-new-worker-password").decode()
    synced = asyncio.run(credentials.sync(managed.cluster, BODY, SPEC))
    assert synced.report["Secret/tq-broker-worker"] == "rotated"
    assert synced.report["Secret/tq-broker"] == "updated"  # the ACL file re-rendered
    assert synced.rendered_changed and synced.rotated == ("worker",)
    new_worker_url = managed.url("worker")
    assert "a-new-worker-password" in new_worker_url
    admin_url = synced.admin_url.replace(IN_CLUSTER, f"127.0.0.1:{managed.server.port}")
    broker_admin.apply("redis", admin_url, synced.roles, "jobs", "tq")

    assert before.ping()  # still authenticated: in-flight work is not cut off
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(old_worker_url).ping()  # a new connection needs the new one
    assert (
        len(asyncio.run(claim(new_worker_url, 6))) == 6
    )  # every task sent before the rotation is still there
    job.send(7)  # the producer's connection and password were not touched
    app.close()

    # A restarted broker loads the re-rendered ACL file: the new password, not the old.
    managed.acl.write_text(secret(managed.cluster, "tq-broker")["users.acl"])
    managed.server.restart()
    assert redis.Redis.from_url(new_worker_url).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(old_worker_url).ping()


def test_the_operators_wake_listener_hears_the_producer_on_the_wake_channel_only(managed):
    """wake.py's listener, with the operator's identity: SUBSCRIBE on `<prefix>:wake`
    works and hears the producer's enqueue; any other channel is refused."""

    async def main() -> list[str]:
        heard: list[str] = []
        got = asyncio.Event()

        def deliver(queue: str) -> None:
            heard.append(queue)
            got.set()

        listener = RedisListener(managed.url("operator"), "jobs", deliver)
        try:
            await asyncio.wait_for(listener.subscribed.wait(), 10)
            app, job = app_for(managed.url("producer"))
            await asyncio.to_thread(job.send, 1)  # an idle queue: enqueue.lua publishes
            app.close()
            await asyncio.wait_for(got.wait(), 10)
        finally:
            listener.stop()
        return heard

    assert asyncio.run(main()) == ["q"]
    operator = redis.Redis.from_url(managed.url("operator"))
    pubsub = operator.pubsub()
    with pytest.raises(redis.exceptions.NoPermissionError):
        pubsub.subscribe("other:channel")
        pubsub.get_message(timeout=2)
    with pytest.raises(redis.exceptions.NoPermissionError):
        operator.publish("jobs:wake", "q")  # it listens, never publishes
