"""Enqueue N tasks with one system's own client and print how long it took, as JSON.

Run as a child process by throughput.py, one per (system, mode), so each library is
imported and configured in isolation and its import time is not counted:

    BENCH_BROKER_URL=redis://... python bench/produce.py ebbtide bulk 20000
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

RAW_CHUNK = 1000  # commands per pipeline round trip, as Ebbtide's send_many uses
# Same shape and size as an Ebbtide payload, so the raw limit moves the same bytes.
RAW_PAYLOAD = json.dumps(
    {"id": "0" * 32, "task": "bench.incr", "args": [], "kwargs": {}}, separators=(",", ":")
)


def ebbtide_sender(mode: str, task_name: str = "incr") -> Callable[[int], None]:
    from anchors import ebbtide_app

    incr = getattr(ebbtide_app, task_name)

    if mode == "bulk":
        return lambda n: incr.send_many(() for _ in range(n))
    if mode == "batch":  # one send() at a time, in `with app.batch():` blocks of BATCH_BLOCK
        return lambda n: _batched(ebbtide_app.app, incr, n)

    def single(n: int) -> None:
        for _ in range(n):
            incr.send()

    return single


BATCH_BLOCK = 100


def _batched(app, task, n: int) -> None:
    for start in range(0, n, BATCH_BLOCK):
        with app.batch():
            for _ in range(min(BATCH_BLOCK, n - start)):
                task.send()


def celery_sender(mode: str) -> Callable[[int], None]:
    from anchors.celery_app import incr
    from celery import group

    if mode == "bulk":
        return lambda n: group(incr.si() for _ in range(n)).apply_async()

    def single(n: int) -> None:
        for _ in range(n):
            incr.delay()

    return single


def dramatiq_sender(mode: str, actor_name: str = "incr") -> Callable[[int], None]:
    from anchors import dramatiq_app
    from dramatiq import group

    incr = getattr(dramatiq_app, actor_name)

    if mode == "bulk":
        return lambda n: group(incr.message() for _ in range(n)).run()

    def single(n: int) -> None:
        for _ in range(n):
            incr.send()

    return single


def raw_sender(mode: str) -> Callable[[int], None]:
    """The limit: the broker's own cheapest enqueue, with no task framework at all."""
    url = os.environ["BENCH_BROKER_URL"]
    queue = os.environ.get("BENCH_QUEUE", "bench") + "-raw"
    if url.startswith("amqp"):
        return _raw_amqp(url, queue)
    import redis

    client = redis.Redis.from_url(url)

    def pipelined_rpush(n: int) -> None:
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            pipe.rpush(queue, RAW_PAYLOAD)
            if (i + 1) % RAW_CHUNK == 0:
                pipe.execute()
        pipe.execute()

    return pipelined_rpush


def _raw_amqp(url: str, queue: str) -> Callable[[int], None]:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    persistent = pika.BasicProperties(delivery_mode=2, content_type="application/json")

    def publish(n: int) -> None:
        body = RAW_PAYLOAD.encode()
        for _ in range(n):
            channel.basic_publish("", queue, body, persistent)
        connection.process_data_events(0)
        connection.close()

    return publish


def bare_sender(mode: str) -> Callable[[int], None]:
    """No queue at all: the task body N times in a loop, the ceiling for processed/s.
    Mode `threadsK` runs it on K threads of one process sharing one client, as a worker's
    K task slots do (bench/latency.py: the body's own ceiling through the proxy)."""
    import threading

    import redis

    client = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])
    key = os.environ.get("BENCH_COUNTER_KEY", "bench:done") + ":bare"
    threads = int(mode.removeprefix("threads")) if mode.startswith("threads") else 1
    if threads < 1:
        raise ValueError(f"bare mode {mode!r}: threads must be >= 1")

    def loop(n: int) -> None:
        for _ in range(n):
            client.incr(key)

    def on_threads(n: int) -> None:
        workers = [
            threading.Thread(target=loop, args=(n // threads + (i < n % threads),))
            for i in range(threads)
        ]
        for t in workers:
            t.start()
        for t in workers:
            t.join()

    return loop if threads == 1 else on_threads


SENDERS = {
    "ebbtide": ebbtide_sender,
    "ebbtide-async": lambda mode: ebbtide_sender(mode, "aincr"),
    "celery": celery_sender,
    "dramatiq": dramatiq_sender,
    "ebbtide-cpu": lambda mode: ebbtide_sender(mode, "burn"),
    "dramatiq-cpu": lambda mode: dramatiq_sender(mode, "burn"),
    "raw": raw_sender,
    "bare": bare_sender,
}


def main(argv: list[str]) -> int:
    system, mode, n = argv[0], argv[1], int(argv[2])
    send = SENDERS[system](mode)
    started = time.perf_counter()
    send(n)
    seconds = time.perf_counter() - started
    print(json.dumps({"system": system, "mode": mode, "tasks": n, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
