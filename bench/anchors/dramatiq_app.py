"""Dramatiq anchor: its default middleware, Redis or RabbitMQ broker from the URL."""

from __future__ import annotations

import dramatiq

from anchors.common import BROKER_URL, QUEUE, count_one

if BROKER_URL.startswith("amqp"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=BROKER_URL)
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=BROKER_URL)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def incr() -> None:
    count_one()
