"""Celery anchor: default settings (acks on receipt, prefetch x4), no result backend."""

from __future__ import annotations

import time

from celery import Celery

from anchors.common import BROKER_URL, HOLD_S, QUEUE, count_one

app = Celery("bench", broker=BROKER_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.incr")
def incr() -> None:
    count_one()


@app.task(name="bench.hold")
def hold() -> None:
    """Occupies a slot (bench/memory.py measures what the worker holds meanwhile)."""
    time.sleep(HOLD_S)
