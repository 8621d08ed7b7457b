"""Payload validation on each broker (runs as `[redis]` and `[rabbitmq]`): bad arguments
raise at the producer naming the argument, and a foreign producer's bad or oversized
payloads go to the DLQ with the reason, while good ones run with their type hints
applied (docs/runtime.md, "Payload validation")."""

from __future__ import annotations

import base64
import json
import os

import ebbtide
import pytest
import validation_tasks as vt
from ebbtide.errors import InvalidArguments, PayloadTooLarge
from worker_testkit import wait_for, worker


@pytest.fixture
def tasks(broker):
    vt.app.use_broker_url(broker.url)
    yield vt
    vt.app.close()


def foreign(task_id: str, task: str, args: list, kwargs: dict | None = None) -> bytes:
    """A payload as a producer in another language writes it."""
    body = {"id": task_id, "task": task, "args": args, "kwargs": kwargs or {}}
    return json.dumps(body).encode()


def test_bad_arguments_raise_at_send_naming_the_argument(broker, tasks):
    with pytest.raises(InvalidArguments, match="argument 'order_id': Input should be a valid"):
        tasks.charge.send("v", "seven")
    with pytest.raises(InvalidArguments, match="missing a required argument: 'order_id'"):
        tasks.charge.send_many([("v", 1), ("v",)])
    with pytest.raises(InvalidArguments, match="argument 'n'.*(schema)"):
        tasks.ingest.send(tag="v", n=-1)
    with pytest.raises(PayloadTooLarge, match=f"over the limit of {vt.MAX_PAYLOAD} bytes"):
        tasks.charge.send("x" * vt.MAX_PAYLOAD, 1)
    assert "default" not in broker.stats().queues or broker.queue().ready == 0
    tasks.charge.send("v", "7", 2)  # lax, as pydantic: "7" is an int
    broker.queue_shows(lambda q: q.ready == 1, "only the good task stored")


def test_the_worker_checks_again_and_buries_bad_payloads_with_the_reason(broker, tasks):
    tasks.charge.send("v", "7", 2)  # declares the queue; runs as charge("v", 7, 2.0)
    # 40,000 characters, stored compressed under the limit: the worker measures what the
    # producer stored, as send() did, not the decoded arguments.
    tasks.blob.send("v", "ab" * 20_000)
    broker.inject("bad-type", foreign("bad-type", "charge", ["v", "seven"]))
    broker.inject("bad-arity", foreign("bad-arity", "charge", ["v", 1], {"colour": "red"}))
    broker.inject("bad-schema", foreign("bad-schema", "ingest", [], {"tag": "v", "n": "x"}))
    broker.inject("big", foreign("big", "charge", ["v" * vt.MAX_PAYLOAD, 1]))
    huge = foreign("huge", "charge", ["v" * (3 * vt.MAX_PAYLOAD + (64 << 10)), 1])
    broker.inject("huge", huge)
    broker.inject("ok-schema", foreign("ok-schema", "ingest", [], {"tag": "v", "n": 3}))
    broker.inject("ok-loose", foreign("ok-loose", "loose", ["v", "not an int"]))
    with worker(broker.url, app="validation_tasks:app", record_url=broker.record_url) as proc:
        wait_for(lambda: len(broker.done("v")) == 4, what="the 4 good tasks run")
        wait_for(lambda: len(broker.dlq()) == 5, what="the 5 bad ones in the DLQ")
        assert proc.poll() is None
        assert "task rejected unrun, moved to the DLQ" in proc.log()
    assert sorted(broker.done("v")) == sorted(
        ['{"order_id": 7, "amount": 2.0}', "blob 40000", "ingest 3", "loose 'not an int'"]
    )
    dead = {d.get("id") or d["raw"][:20]: d for d in broker.dlq()}
    errors = {k: d["error"] for k, d in dead.items()}
    assert "argument 'order_id': Input should be a valid integer" in errors["bad-type"]
    assert "got an unexpected keyword argument 'colour'" in errors["bad-arity"]
    assert "argument 'n'" in errors["bad-schema"] and "(schema)" in errors["bad-schema"]
    assert f"over the limit of {vt.MAX_PAYLOAD} bytes" in errors["big"]
    (huge_key,) = [k for k in errors if k not in ("bad-type", "bad-arity", "bad-schema", "big")]
    assert "not decoded" in errors[huge_key]
    assert dead["bad-type"]["args"] == ["v", "seven"]  # kept as sent, for a replay after a fix
    assert dead["bad-type"].get("attempt", 0) == 0  # buried unrun, never retried


def test_an_encrypted_task_with_bad_arguments_is_buried_without_quoting_them(broker, tmp_path):
    """The reason is stored and logged in plain text: for an encrypted task it names the
    argument and the rule, never the value."""
    key = base64.b64encode(os.urandom(32)).decode()
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "k1").write_text(key)
    secret = "card-4242-4242-4242"
    # A producer whose `charge` has no type hints (an older or foreign deploy).
    producer = ebbtide.App(broker_url=broker.url, encryption_keys={"k1": key})

    @producer.task(name="charge")
    def charge(*args, **kwargs): ...

    @producer.task(name="ingest")
    def ingest(**fields): ...

    try:
        charge.send("v", secret)
        ingest.send(tag="v", n=secret)
    finally:
        producer.close()
    env = {"EBBTIDE_ENCRYPTION_KEYS_DIR": str(keys)}
    with worker(
        broker.url, app="validation_tasks:app", record_url=broker.record_url, env=env
    ) as proc:
        wait_for(lambda: len(broker.dlq()) == 2, what="both tasks in the DLQ")
        log = proc.log()
    dead = broker.dlq()
    errors = sorted(d["error"] for d in dead)
    assert "argument 'order_id': Input should be a valid integer" in errors[0]
    assert "argument 'n': fails the schema's 'type' rule: 'integer' (schema)" in errors[1]
    assert secret not in json.dumps(dead) and secret not in log
