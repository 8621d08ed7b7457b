"""Broker fixtures for the worker-runtime tests (the servers: tests/conftest.py).

`broker` runs a test once per broker, as `[redis]` and `[rabbitmq]` (marked `redis` /
`rabbitmq`); `redis_broker` and `rabbitmq_broker` are the same thing for the tests that
only make sense on one of them. `cluster` is a Redis Cluster for one test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.servers import RedisClusterInfo, redis_cluster
from worker_testkit import BrokerUnderTest, under_test


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def broker(request, redis_db) -> Iterator[BrokerUnderTest]:
    """The broker under test: a flushed Redis, or a fresh RabbitMQ vhost. Tasks record
    into the session Redis either way."""
    url = redis_db if request.param == "redis" else request.getfixturevalue("rabbitmq_url")
    with under_test(request.param, url, redis_db) as under:
        yield under


@pytest.fixture
def redis_broker(redis_db) -> Iterator[BrokerUnderTest]:
    with under_test("redis", redis_db, redis_db) as under:
        yield under


@pytest.fixture
def rabbitmq_broker(rabbitmq_url, redis_db) -> Iterator[BrokerUnderTest]:
    with under_test("rabbitmq", rabbitmq_url, redis_db) as under:
        yield under


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterInfo]:
    """Three masters with one replica each, shared by the tests of one module."""
    with redis_cluster(masters=3, replicas=1) as info:
        yield info
