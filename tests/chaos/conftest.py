"""Fixtures of the chaos suite: brokers of its own (a fault must never reach another
test's broker), the untouched recorder Redis, toxiproxy, and the ledger table.

Each broker fixture yields a `ChaosBroker`: the URL workers and producers use, plus the
handle that injects the fault (restart, alarm) into the real server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import chaos_tasks
import pytest
import redis
from ledger import RESULTS, Ledger
from support.rabbitmq_admin import create_vhost, delete_vhost
from support.servers import rabbitmq_server, redis_process
from support.toxiproxy import Toxiproxy, toxiproxy_server


@dataclass
class ChaosBroker:
    name: str  # "redis" or "rabbitmq"
    url: str  # what workers and producers use (through toxiproxy when `proxied`)
    server: Any  # RedisProcess, or the RabbitMQ handle (restart(), ctl())
    proxy: str = ""  # the toxiproxy proxy name in front of the broker, if any
    toxiproxy: Toxiproxy | None = None


@pytest.fixture(scope="session")
def toxiproxy() -> Iterator[Toxiproxy]:
    with toxiproxy_server() as proxy:
        yield proxy


@pytest.fixture(scope="session")
def chaos_rabbitmq() -> Iterator[dict]:
    """A RabbitMQ of the chaos suite's own: its scenarios restart it and raise alarms."""
    with rabbitmq_server() as started:
        yield started


@pytest.fixture
def ledger(request, redis_url) -> Iterator[Ledger]:
    """A fresh ledger for the test, in the session's recorder Redis under a unique tag."""
    rec = redis.Redis.from_url(redis_url, decode_responses=True)
    tag = f"{request.node.name}-{uuid.uuid4().hex[:6]}"
    yield Ledger(request.node.callspec.id if hasattr(request.node, "callspec") else "", rec, tag)
    rec.close()


def _redis_broker(toxiproxy: Toxiproxy, proxied: bool) -> Iterator[ChaosBroker]:
    # The durable configuration the operator's managed Redis runs: AOF, fsync every second.
    with redis_process("--appendonly", "yes", "--appendfsync", "everysec") as server:
        name = f"redis-{uuid.uuid4().hex[:6]}"
        port = toxiproxy.proxy(name, server.port) if proxied else server.port
        url = f"redis://127.0.0.1:{port}/0"
        chaos_tasks.app.use_broker_url(url)
        yield ChaosBroker("redis", url, server, name if proxied else "", toxiproxy)
        chaos_tasks.app.close()


def _rabbitmq_broker(toxiproxy: Toxiproxy, rabbit: dict, proxied: bool) -> Iterator[ChaosBroker]:
    vhost = f"chaos-{uuid.uuid4().hex[:8]}"
    create_vhost(rabbit["management_url"], vhost)
    amqp_port = int(rabbit["port"])
    name = f"amqp-{uuid.uuid4().hex[:6]}"
    port = toxiproxy.proxy(name, amqp_port) if proxied else amqp_port
    management_port = rabbit["management_url"].rsplit(":", 1)[1]
    url = f"amqp://guest:guest@127.0.0.1:{port}/{vhost}?management_port={management_port}"
    chaos_tasks.app.use_broker_url(url)
    yield ChaosBroker("rabbitmq", url, rabbit["server"], name if proxied else "", toxiproxy)
    chaos_tasks.app.close()
    delete_vhost(rabbit["management_url"], vhost)


BROKERS = [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
]


def _either(request, toxiproxy: Toxiproxy, proxied: bool) -> Iterator[ChaosBroker]:
    if request.param == "redis":
        yield from _redis_broker(toxiproxy, proxied)
    else:
        rabbit = request.getfixturevalue("chaos_rabbitmq")
        yield from _rabbitmq_broker(toxiproxy, rabbit, proxied)


@pytest.fixture(params=BROKERS)
def broker(request, toxiproxy) -> Iterator[ChaosBroker]:
    """The broker under test, reached directly."""
    yield from _either(request, toxiproxy, proxied=False)


@pytest.fixture(params=BROKERS)
def proxied_broker(request, toxiproxy) -> Iterator[ChaosBroker]:
    """The broker under test, reached through a toxiproxy link the test can cut."""
    yield from _either(request, toxiproxy, proxied=True)


@pytest.fixture
def rabbitmq_broker(toxiproxy, chaos_rabbitmq) -> Iterator[ChaosBroker]:
    """For the scenarios only RabbitMQ has (its memory alarm)."""
    yield from _rabbitmq_broker(toxiproxy, chaos_rabbitmq, proxied=False)


def pytest_terminal_summary(terminalreporter) -> None:
    """The ledger table (docs/runtime.md, "Chaos"): one row per scenario that ran."""
    if not RESULTS:
        return
    header = ("scenario", "tasks", "completed", "dead", "duplicates", "recovery s")
    rows = [header] + [
        (r.scenario, r.tasks, r.completed, r.dead, r.duplicates, f"{r.recovery_s:.1f}")
        for r in RESULTS
    ]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    terminalreporter.section("chaos ledger")
    for row in rows:
        terminalreporter.write_line(
            " | ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True))
        )
