"""The payload benchmark's worker app (bench/payloads.py): one task that takes a payload
and does the one INCR, so the figures are the payload's cost, not the work's."""

from __future__ import annotations

from typing import Any

import ebbtide

from anchors.common import BROKER_URL, QUEUE, count_one

app = ebbtide.App(broker_url=BROKER_URL)


@app.task(queue=QUEUE, name="bench.payload")
def payload(data: Any) -> None:
    count_one()
