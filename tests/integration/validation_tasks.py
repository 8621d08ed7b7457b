"""Tasks of the payload-validation tests (test_validation.py): type hints, a JSON
Schema, an opt-out, and a small payload limit. Worker subprocesses import it as
`validation_tasks:app`; tasks record into the Redis of worker_tasks.r()."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ebbtide
from worker_tasks import r

MAX_PAYLOAD = 4096
app = ebbtide.App(max_payload_bytes=MAX_PAYLOAD)


@app.task(name="charge")
def charge(tag: str, order_id: int, amount: float = 0.0) -> None:
    """Records the values as the worker passed them: type hints applied."""
    r().rpush(f"done:{tag}", json.dumps({"order_id": order_id, "amount": amount}))


INGEST_SCHEMA = {
    "type": "object",
    "properties": {"tag": {"type": "string"}, "n": {"type": "integer", "minimum": 0}},
    "required": ["tag", "n"],
}


@app.task(name="ingest", schema=INGEST_SCHEMA, validate=False)
def ingest(**fields) -> None:
    """What a producer in another language sends: checked against the schema only."""
    r().rpush(f"done:{fields['tag']}", f"ingest {fields['n']}")


@app.task(name="blob")
def blob(tag: str, data: str) -> None:
    r().rpush(f"done:{tag}", f"blob {len(data)}")


@app.task(name="loose", validate=False)
def loose(tag: str, i: int) -> None:
    r().rpush(f"done:{tag}", f"loose {i!r}")


@app.task(name="child_env")
def child_env(tag: str) -> None:
    """What a subprocess of a task inherits of the broker URL."""
    probe = "import os; print(os.environ.get('EBBTIDE_BROKER_URL', '<unset>'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    r().rpush(f"done:{tag}", out.stdout.strip())
    r().rpush(f"done:{tag}", os.environ.get("EBBTIDE_BROKER_URL_FILE", "<unset>"))
