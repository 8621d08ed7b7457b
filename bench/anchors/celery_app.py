"""Celery anchor: default settings (acks on receipt, prefetch x4), no result backend."""

from __future__ import annotations

from celery import Celery

from anchors.common import BROKER_URL, QUEUE, count_one

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
