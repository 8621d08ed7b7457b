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
    assert topo.classify(p, "ebbtide.q.delay.1300") == topo.QueueName("delay", "q")  # older ones
    assert topo.classify(p, topo.lost_queue(p, "q")) == topo.QueueName("lost", "q")
    args = topo.delay_args(p, "q", 1300)
    assert args["x-dead-letter-routing-key"] == "ebbtide.q" and args["x-message-ttl"] == 1300


def test_delays_wait_in_quorum_queues_that_dead_letter_at_least_once():
    args = topo.delay_args("ebbtide", "q", 1300)
    assert args["x-queue-type"] == "quorum"
    assert args["x-dead-letter-strategy"] == "at-least-once"
    assert args["x-overflow"] == "reject-publish"  # RabbitMQ's condition for at-least-once
    assert topo.lost_args()["x-queue-type"] == "quorum"


@pytest.mark.parametrize(
    ("lease_ms", "heartbeat"), [(500, 1), (2000, 1), (12_000, 2), (30_000, 5), (600_000, 5)]
)
def test_the_links_heartbeat_follows_the_lease(lease_ms, heartbeat):
    tuning = topo.link_tuning(lease_ms)
    assert tuning.heartbeat_s == heartbeat and tuning.ping_s == heartbeat
    # a silent link is dropped after two unanswered ping periods, within the lease
    assert 2 * tuning.ping_s <= max(2.0, lease_ms / 1000)
    assert tuning.tcp_options["TCP_KEEPIDLE"] == heartbeat
    assert "TCP_USER_TIMEOUT" not in tuning.tcp_options  # an alarm's zero window is not dead


def test_the_url_keeps_the_timeouts_it_sets():
    import pika

    url = "amqp://u:p@h:5672/%2F?heartbeat=30&socket_timeout=1"
    params = topo.tuned(pika.URLParameters(url), topo.link_tuning(30_000), url)
    assert (params.heartbeat, params.socket_timeout) == (30, 1)
    assert params.stack_timeout == 15 and params.connection_attempts == 1
    plain = "amqp://u:p@h:5672/%2F"
    params = topo.tuned(pika.URLParameters(plain), topo.link_tuning(2_000), plain)
    assert params.heartbeat == 1 and params.tcp_options["TCP_KEEPCNT"] == 3


def test_heartbeat_queues_are_classic_and_expire():
    # Declared durable (RabbitMQ 4.x refuses shared non-durable queues); x-expires removes
    # a dead worker's queue; never an expiry below a second.
    assert topo.worker_args(5000) == {
        "x-queue-type": "classic",
        "x-max-length": 1,
        "x-expires": 5000,
    }
    assert topo.worker_args(10)["x-expires"] == 1000


def test_declare_passive_is_ebbtides_own_url_option():
    options = topo.parse_options("amqp://u:p@h:5672/v?declare=passive&heartbeat=5")
    assert options.passive_declare is True
    assert "declare" not in options.amqp_url and "heartbeat=5" in options.amqp_url
    assert topo.parse_options("amqp://u:p@h:5672/v").passive_declare is False
    with pytest.raises(ValueError, match="bad declare 'lazy'"):
        topo.parse_options("amqp://u:p@h/v?declare=lazy")
