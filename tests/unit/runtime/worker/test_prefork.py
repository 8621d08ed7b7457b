"""What the supervisor imports before it forks its children, and what it must not."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ebbtide.worker import prefork


@pytest.mark.parametrize(
    "url, broker",
    [
        ("redis://r:6379/0", "ebbtide.brokers.redis.broker"),
        ("rediss+cluster://a:1,b:2", "ebbtide.brokers.redis.broker"),
        ("unix:///run/redis.sock", "ebbtide.brokers.redis.broker"),
        ("amqps://mq:5671/", "ebbtide.brokers.rabbitmq.broker"),
        ("AMQP://mq/", "ebbtide.brokers.rabbitmq.broker"),
    ],
)
def test_the_urls_broker_client_is_preloaded_with_the_runtime(url, broker):
    modules = prefork.modules_for(url)
    assert modules[: len(prefork.RUNTIME_MODULES)] == prefork.RUNTIME_MODULES
    assert modules[len(prefork.RUNTIME_MODULES) :] == (broker,)


def test_an_app_that_names_its_own_broker_gets_the_default_redis_client():
    """No URL outside the app: Redis, the default broker, is the likelier guess; a
    RabbitMQ child imports pika after the fork, as an exec'd child does."""
    assert prefork.modules_for(None)[-1] == "ebbtide.brokers.redis.broker"


def test_a_module_that_cannot_be_imported_is_left_to_the_child():
    prefork.preload(("ebbtide.no_such_module", "json"))


def test_preloading_starts_no_thread_and_leaves_prometheus_client_to_the_child():
    """A fork copies only the calling thread, and prometheus_client picks its value class
    at import from PROMETHEUS_MULTIPROC_DIR, which only the child sets."""
    code = (
        "import sys, threading\n"
        "from ebbtide.worker import prefork\n"
        "for url in ('redis://r', 'amqp://mq', None):\n"
        "    prefork.preload(prefork.modules_for(url))\n"
        "print(threading.active_count(), 'prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "False"], out.stderr
