"""Shared fixtures: real brokers on loopback (see tests/support/servers.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support.ci import pytest_runtest_makereport  # noqa: E402, F401 - the hook
from support.servers import rabbitmq_server, redis_server  # noqa: E402


@pytest.fixture(scope="session")
def redis_url():
    """A real Redis for the session: EBBTIDE_TEST_REDIS_URL if set, else a private server."""
    url = os.environ.get("EBBTIDE_TEST_REDIS_URL")
    if url:
        yield url
        return
    with redis_server() as started:
        yield started


@pytest.fixture
def redis_db(redis_url):
    """The session Redis, flushed before each test so tests never see each other's keys."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield redis_url
    client.close()


# RabbitMQ's channel checks consumer_timeout every channel_tick_interval (60 s by default);
# a short tick lets the consumer-timeout test see it within a second. The management API
# keeps its queue figures in samples 5 s apart by default, so a test that reads `ebbtide
# stats` would wait up to 5 s for a change: 1 s samples (the finest) make that ~1 s.
# Channels and consumers report to it every collect_statistics_interval (5 s by default);
# every 500 ms keeps its consumer listing within about a second of the truth.
RABBITMQ_TEST_CONFIG = (
    "[{rabbit, [{channel_tick_interval, 500}, {collect_statistics_interval, 500}]},\n"
    " {rabbitmq_management_agent, [{sample_retention_policies,\n"
    "   [{global, [{605, 1}]}, {basic, [{605, 1}]}, {detailed, [{10, 1}]}]}]}].\n"
)


@pytest.fixture(scope="session")
def rabbitmq():
    """A private rabbitmq-server (management plugin on) for the session: a dict with
    url, management_url, node and `server` (restart()/ctl()). EBBTIDE_TEST_RABBITMQ may
    name a JSON file with the same keys (minus `server`) to reuse a running one."""
    reuse = os.environ.get("EBBTIDE_TEST_RABBITMQ")
    if reuse:
        with open(reuse) as f:
            yield json.load(f)
        return
    with rabbitmq_server(advanced_config=RABBITMQ_TEST_CONFIG) as started:
        yield started


@pytest.fixture
def rabbitmq_url(rabbitmq):
    """A fresh vhost per test (so tests never see each other's queues), as an amqp:// URL
    that also names the management port."""
    import uuid

    from support.rabbitmq_admin import create_vhost, delete_vhost

    vhost = f"t-{uuid.uuid4().hex[:10]}"
    create_vhost(rabbitmq["management_url"], vhost)
    port = rabbitmq["management_url"].rsplit(":", 1)[1]
    yield f"amqp://guest:guest@127.0.0.1:{rabbitmq['port']}/{vhost}?management_port={port}"
    delete_vhost(rabbitmq["management_url"], vhost)
