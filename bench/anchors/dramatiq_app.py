"""Dramatiq anchor: its default middleware, Redis or RabbitMQ broker from the URL."""

from __future__ import annotations

import time

import dramatiq

from anchors.common import BROKER_URL, HOLD_S, QUEUE, burn_cpu, count_one, pin_worker_process

pin_worker_process()  # before the worker's threads start (only with BENCH_PIN_CPUS)

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


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def burn() -> None:
    burn_cpu()
    count_one()


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def hold() -> None:
    """Occupies a slot (bench/memory.py measures what the worker holds meanwhile)."""
    time.sleep(HOLD_S)
