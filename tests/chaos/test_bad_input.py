"""Bad input stored on the broker: every such task ends dead with a reason, and the good
tasks queued behind it still run (the worker never stalls on input)."""

from __future__ import annotations

import json

import chaos_tasks
from ledger import worker
from support.inject import inject

MALFORMED = {
    "not-json": b"{not json",
    "not-utf8": b"\xff\xfe\x00",
    "not-an-object": b"[1, 2, 3]",
    # json.loads accepts NaN; json.dumps(allow_nan=False) does not: it cannot be re-encoded.
    "nan-unknown-task": b'{"id": "nan-unknown-task", "task": "nope", "args": [NaN]}',
    "args-not-a-list": json.dumps({"id": "args-not-a-list", "task": "work", "args": 7}).encode(),
    "kwargs-not-an-object": json.dumps(
        {"id": "kwargs-not-an-object", "task": "work", "args": ["t", 1], "kwargs": [1]}
    ).encode(),
    # The failure path reads the attempt: a string there must not crash it.
    "attempt-not-a-number": json.dumps(
        {"id": "attempt-not-a-number", "task": "flaky", "args": ["bad", 1], "attempt": "three"}
    ).encode(),
    "task-not-a-string": json.dumps({"id": "task-not-a-string", "task": 5, "args": []}).encode(),
}


def test_malformed_stored_payloads(broker, ledger, redis_url):
    ledger.scenario = f"malformed stored payloads ({broker.name})"
    for task_id, payload in MALFORMED.items():
        inject(broker.url, task_id, payload)
        ledger.expect_dead(task_id)
    ledger.send(chaos_tasks.work, 200)
    with worker(broker.url, redis_url, "--concurrency", "4", "--unknown-task-grace-seconds", "0"):
        row = ledger.check(broker.url, since=ledger.started, timeout=60, dead_ok=True)
    assert row.completed == 200
    assert row.dead == len(MALFORMED)
