"""The operator's broker links against real brokers: polls reuse one connection per URL
(AMQP connections counted by RabbitMQ's own /api/connections), a dropped one is reopened
within the next read, and an unused URL's connection is closed."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import quote

import pika
import pytest
import redis
from ebbtide.brokers.rabbitmq import topology as topo
from ebbtide_operator.broker_io import BrokerReader
from support.rabbitmq_admin import _request
from worker_testkit import wait_for

POLLS = 12


def amqp_connections(management_url: str, vhost: str) -> list[dict]:
    """The vhost's AMQP connections as RabbitMQ lists them."""
    return _request(management_url, "GET", f"/api/vhosts/{quote(vhost, safe='')}/connections") or []


def heartbeat_queue(url: str, prefix: str = "ebbtide") -> None:
    """A worker heartbeat queue, so each statistics read peeks it over AMQP."""
    options = topo.parse_options(url)
    conn = pika.BlockingConnection(pika.URLParameters(options.amqp_url))
    try:
        channel = conn.channel()
        name = topo.worker_queue(prefix, "w1")
        channel.queue_declare(name, durable=True, arguments=topo.worker_args(600_000))
        body = {"worker_id": "w1", "at": time.time(), "pod": "p1", "queues": ["jobs"]}
        channel.basic_publish("", name, json.dumps(body).encode())
    finally:
        conn.close()


@pytest.mark.rabbitmq
def test_rabbitmq_polls_reuse_one_amqp_connection_and_one_http_session(rabbitmq, rabbitmq_url):
    vhost = rabbitmq_url.split("/")[-1].split("?")[0]
    admin = rabbitmq["management_url"]
    heartbeat_queue(rabbitmq_url)
    wait_for(lambda: not amqp_connections(admin, vhost), 30, "the setup connection gone")
    reader = BrokerReader(max_threads=4)

    async def polls(keys: list[str]) -> None:
        for _ in range(POLLS):
            for key in keys:
                stats = await reader.read(key, rabbitmq_url, ["jobs"], timeout=10)
                assert [w.worker_id for w in stats.workers] == ["w1"]

    try:
        asyncio.run(polls(["ns/a", "ns/b"]))
        (first,) = wait_for(lambda: amqp_connections(admin, vhost), 30, "the reader's connection")
        asyncio.run(polls(["ns/a", "ns/b"]))
        assert [c["name"] for c in amqp_connections(admin, vhost)] == [first["name"]]
        link = reader.link(rabbitmq_url)
        assert link is not None and link.broker.management.opened == 1  # keep-alive HTTP

        # RabbitMQ drops the connection: the next read reopens it, and does not fail.
        _request(admin, "DELETE", f"/api/connections/{quote(first['name'], safe='')}")
        # (pika hears the close only when next used: that read reopens and retries.)
        asyncio.run(polls(["ns/a"]))

        def replaced() -> bool:
            names = [c["name"] for c in amqp_connections(admin, vhost)]
            return len(names) == 1 and names != [first["name"]]

        wait_for(replaced, 30, "one new connection in place of the dropped one")

        reader.release("ns/a")
        reader.release("ns/b")  # nobody reads this broker any more: its connection closes
        wait_for(lambda: not amqp_connections(admin, vhost), 30, "the unused connection closed")
    finally:
        reader.close(wait=True)


@pytest.mark.redis
def test_redis_polls_reuse_one_connection(redis_db):
    admin = redis.Redis.from_url(redis_db)

    def clients() -> set[int]:
        return {c["id"] for c in admin.client_list() if c["name"] == ""} - {admin.client_id()}

    before = clients()
    reader = BrokerReader(max_threads=4)

    async def polls() -> None:
        for _ in range(POLLS):
            for key in ("ns/a", "ns/b", "ns/c"):
                await reader.read(key, redis_db, ["jobs"], timeout=10)

    try:
        asyncio.run(polls())
        opened = clients() - before
        assert len(opened) == 1  # 36 sequential reads by three TaskQueues, one connection
        asyncio.run(polls())
        assert clients() - before == opened
        for key in ("ns/a", "ns/b", "ns/c"):
            reader.release(key)
        wait_for(lambda: not clients() - before, 10, "the unused pool disconnected")
    finally:
        reader.close(wait=True)
        admin.close()


@pytest.mark.rabbitmq
def test_the_management_session_reopens_a_connection_the_server_dropped(rabbitmq):
    """The kept HTTP connection is cut (toxiproxy drops every connection through it, as
    RabbitMQ does with an idle keep-alive one): the next request is retried on a fresh
    connection instead of failing the poll."""
    from ebbtide.brokers.rabbitmq.management import ManagementSession
    from support.toxiproxy import toxiproxy_server

    port = int(rabbitmq["management_url"].rsplit(":", 1)[1])
    with toxiproxy_server() as toxi:
        proxied = toxi.proxy("management", port)
        session = ManagementSession(f"http://guest:guest@127.0.0.1:{proxied}")
        try:
            assert isinstance(session.queues("/"), list)
            assert isinstance(session.queues("/"), list) and session.opened == 1
            toxi.heal("management")  # disable + enable: every open connection is cut
            assert isinstance(session.queues("/"), list)
            assert session.opened == 2
        finally:
            session.close()
