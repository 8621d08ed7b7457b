"""Pure RabbitMQ naming, queue arguments and URL options."""

from __future__ import annotations

import pytest
from ebbtide.brokers.rabbitmq import topology as topo


def test_delay_buckets_round_up_to_two_significant_digits():
    assert [topo.bucket_delay_ms(d) for d in (1, 99, 100, 101, 1234, 1300, 98_765)] == [
        1,
        99,
        100,
        110,
        1300,
        1300,
        99_000,
    ]
    for delay in range(1, 50_000, 37):
        bucket = topo.bucket_delay_ms(delay)
        assert delay <= bucket <= delay * 1.1  # never early, at most 10% late


def test_options_strip_ebbtide_parameters_and_default_the_management_url(monkeypatch):
    monkeypatch.delenv("EBBTIDE_RABBITMQ_MANAGEMENT_URL", raising=False)
    o = topo.parse_options("amqp://u:p@rmq:5672/v?heartbeat=30&management_port=8080")
    assert o.amqp_url == "amqp://u:p@rmq:5672/v?heartbeat=30"
    assert o.management_url == "http://u:p@rmq:8080" and o.max_redeliveries == 5
    assert topo.parse_options("amqp://rmq/").management_url == "http://rmq:15672"
    monkeypatch.setenv("EBBTIDE_RABBITMQ_MANAGEMENT_URL", "")
    assert topo.parse_options("amqp://rmq/").management_url is None
    with pytest.raises(ValueError, match="max_redeliveries"):
        topo.parse_options("amqp://rmq/?max_redeliveries=0")
    monkeypatch.delenv("EBBTIDE_RABBITMQ_MANAGEMENT_URL")
    with pytest.raises(ValueError, match="management_port"):
        topo.parse_options("amqp://rmq/?management_port=x")


def test_vhost_and_queue_names_round_trip():
    assert topo.vhost_of("amqp://h/") == "/" and topo.vhost_of("amqp://h/%2F") == "/"
    assert topo.vhost_of("amqp://h/team-a") == "team-a"
    p = "ebbtide"
    assert topo.classify(p, topo.ready_queue(p, "mail.out")) == topo.QueueName("ready", "mail.out")
    assert topo.classify(p, topo.dead_queue(p, "q")) == topo.QueueName("dead", "q")
    assert topo.classify(p, topo.delay_queue(p, "q", 1300)) == topo.QueueName("delay", "q")
    assert topo.classify(p, topo.worker_queue(p, "w-1")) == topo.QueueName("worker", "w-1")
    assert topo.classify(p, "celery") is None
    args = topo.delay_args(p, "q", 1300)
    assert args["x-dead-letter-routing-key"] == "ebbtide.q" and args["x-message-ttl"] == 1300


def test_heartbeat_queues_are_classic_and_expire():
    # Declared durable (RabbitMQ 4.x refuses shared non-durable queues); x-expires removes
    # a dead worker's queue; never an expiry below a second.
    assert topo.worker_args(5000) == {
        "x-queue-type": "classic",
        "x-max-length": 1,
        "x-expires": 5000,
    }
    assert topo.worker_args(10)["x-expires"] == 1000
