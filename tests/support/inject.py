"""Raw messages put on a queue behind the producer's back: the bad input a worker must
survive. Written in each broker's wire format (docs/runtime.md, docs/rabbitmq.md)."""

from __future__ import annotations

from urllib.parse import urlsplit

import redis


def inject(url: str, task_id: str, payload: bytes, queue: str = "default") -> None:
    """Store `payload` as task `task_id` on `queue`'s ready list (priority 0)."""
    if urlsplit(url).scheme in ("redis", "rediss", "unix"):
        raw = redis.Redis.from_url(url)  # bytes: the payload may not be UTF-8
        try:
            now_ms = int(float(raw.time()[0]) * 1000)
            raw.hset(f"ebbtide:q:{{{queue}}}:msgs", task_id, payload)
            raw.rpush(f"ebbtide:q:{{{queue}}}:ready:0", f"{now_ms}|0|{task_id}")
        finally:
            raw.close()
        return
    import pika
    from ebbtide.brokers.rabbitmq.publish import queue_declarations

    with pika.BlockingConnection(pika.URLParameters(url.split("?")[0])) as conn:
        channel = conn.channel()
        # Declared first, as a producer would: a publish to a missing queue is dropped.
        for name, arguments in queue_declarations("ebbtide", queue):
            channel.queue_declare(name, durable=True, arguments=arguments)
        channel.confirm_delivery()
        properties = pika.BasicProperties(message_id=task_id, delivery_mode=2)
        channel.basic_publish("", f"ebbtide.{queue}", payload, properties, mandatory=True)
