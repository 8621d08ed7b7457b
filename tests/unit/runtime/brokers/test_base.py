"""The broker contract: capabilities found by type, entries read by one parser, URLs."""

from __future__ import annotations

import pytest
from ebbtide.brokers import check_scheme, open_broker, redact
from ebbtide.brokers.base import Broker, Delivery, Exchanging, PushWindow
from ebbtide.errors import UnsupportedBroker


def test_each_broker_offers_exactly_its_capabilities():
    from ebbtide.brokers.rabbitmq.broker import RabbitMQBroker
    from ebbtide.brokers.redis.broker import RedisBroker

    redis_broker = open_broker("redis://127.0.0.1:1/0")
    rabbit = open_broker("amqp://guest:guest@127.0.0.1:1/")
    assert isinstance(redis_broker, RedisBroker) and isinstance(rabbit, RabbitMQBroker)
    assert isinstance(redis_broker, Broker) and isinstance(rabbit, Broker)
    assert isinstance(redis_broker, Exchanging) and not isinstance(redis_broker, PushWindow)
    assert isinstance(rabbit, PushWindow) and not isinstance(rabbit, Exchanging)


def test_a_delivery_knows_when_its_task_became_ready_from_either_broker():
    assert Delivery("q", "1700000000123|7|some-id", "").ready_ms == 1700000000123
    assert Delivery("q", "1700000000123|0|3.41", "").ready_ms == 1700000000123  # RabbitMQ
    assert Delivery("q", "garbage", "").ready_ms is None


def test_schemes_and_redaction():
    assert check_scheme("rediss://h") == "rediss" and check_scheme("AMQP://h") == "amqp"
    with pytest.raises(UnsupportedBroker, match=r"'http' in 'http://u:\*\*\*@h'"):
        check_scheme("http://u:secret@h")
    assert redact("amqp://u:p@h/") == "amqp://u:***@h/" and redact("redis://h") == "redis://h"
