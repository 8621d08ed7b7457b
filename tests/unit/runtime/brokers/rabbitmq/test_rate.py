"""Pure parts of RabbitMQ's global rate limit: token-queue names, arguments, waits, and
how the statistics tell token queues from app queues."""

from __future__ import annotations

from ebbtide.brokers.rabbitmq import topology as topo
from ebbtide.brokers.rabbitmq.rate import (
    EXPIRES_SLACK_MS,
    MAX_QUEUE_NAME_BYTES,
    denied_wait_ms,
    token_queue,
    token_queue_args,
)
from ebbtide.brokers.rabbitmq.stats import build_stats


def test_token_queue_names_carry_the_limit_and_window():
    assert token_queue("ebbtide", "mail.send", 100, 1000) == "ebbtide.rate.mail.send.100.1000"
    # A changed limit or window is another queue (no PRECONDITION_FAILED on redeclare).
    names = {token_queue("ebbtide", "t", n, w) for n in (1, 10, 100) for w in (1000, 60_000)}
    assert len(names) == 6


def test_long_task_names_are_cut_to_amqp_limits_and_stay_distinct():
    long_a, long_b = "a" * 300, "a" * 299 + "b"
    a, b = token_queue("ebbtide", long_a, 5, 1000), token_queue("ebbtide", long_b, 5, 1000)
    assert a != b
    for name in (a, b, token_queue("ebbtide", "é" * 200, 5, 1000)):
        assert len(name.encode()) <= MAX_QUEUE_NAME_BYTES
        assert name.startswith("ebbtide.rate.") and name.endswith(".5.1000")
        name.encode().decode("utf-8")  # never cut inside a character
    exact = "x" * (MAX_QUEUE_NAME_BYTES - len("ebbtide.rate..5.1000"))
    assert token_queue("ebbtide", exact, 5, 1000) == f"ebbtide.rate.{exact}.5.1000"


def test_token_queue_arguments():
    assert token_queue_args(100, 1000) == {
        "x-queue-type": "classic",
        "x-max-length": 100,
        "x-overflow": "reject-publish",
        "x-message-ttl": 1000,
        "x-expires": 1000 + EXPIRES_SLACK_MS,  # never gone while a token still counts
    }
    assert token_queue_args(5, 0)["x-message-ttl"] == 1  # a TTL of 0 would allow anything


def test_denied_wait_is_the_gap_between_tokens_at_least_1_ms():
    assert denied_wait_ms(100, 1000) == 10
    assert denied_wait_ms(4, 1000) == 250
    assert denied_wait_ms(3, 1000) == 333
    assert denied_wait_ms(5000, 1000) == 1
    assert denied_wait_ms(10, 60_000) == 6000


def test_token_queues_are_classified_and_left_out_of_the_stats():
    p = "ebbtide"
    name = token_queue(p, "mail.send", 100, 1000)
    assert topo.classify(p, name) == topo.QueueName("rate", "mail.send")
    # App queues named like part of one are still app queues.
    assert topo.classify(p, "ebbtide.rate") == topo.QueueName("ready", "rate")
    assert topo.classify(p, "ebbtide.rate.dead") == topo.QueueName("dead", "rate")
    assert topo.classify(p, "ebbtide.rate.delay.1300") == topo.QueueName("delay", "rate")
    assert topo.classify(p, "ebbtide.rate.x.5") == topo.QueueName("ready", "rate.x.5")
    listing = [
        {"name": "ebbtide.q", "messages_ready": 2, "message_stats": {"ack": 7}},
        {"name": name, "messages_ready": 100},
    ]
    stats = build_stats(p, 1000.0, listing, [], None)
    assert list(stats.queues) == ["q"] and stats.queues["q"].ready == 2
