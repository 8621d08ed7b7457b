"""Trace context from `send()` to the worker's span, on both real brokers.

The test process is the sender: its spans go to the SDK's InMemorySpanExporter
(support/spans.py). The worker is a real subprocess (traced_tasks:app) whose SDK writes
each finished span as a JSON line to a file the test reads back."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from ebbtide import tracing
from opentelemetry import trace
from support.spans import memory_exporter, read_span_file, span_id, trace_id
from worker_testkit import HERE, wait_for

WORKER_FLAGS = ("--concurrency", "2")
NO_OTEL = Path(__file__).parent / "no_otel"  # its sitecustomize blocks opentelemetry


def consumer_spans(spans, task):
    return sorted(
        (s for s in spans if s["attributes"].get("ebbtide.task.name") == task),
        key=lambda s: s["attributes"]["ebbtide.task.attempt"],
    )


def test_the_worker_continues_the_senders_trace_and_retries_link_back(broker, tmp_path):
    exporter = memory_exporter()
    tasks = broker.tasks
    with trace.get_tracer("test").start_as_current_span("web request") as request:
        tasks.record.send("traced", 1)
        tasks.flaky.send("traced-flaky", 2)  # fails twice, then succeeds
        tasks.always_fails.send("traced-dead")  # max_retries=2: three runs, then the DLQ
        tasks.traced_child.send("traced-sync")
        tasks.atraced_child.send("traced-async")
    sent = request.get_span_context()
    assert [s.name for s in exporter.get_finished_spans()] == ["web request"]

    spans_file = tmp_path / "spans.jsonl"
    env = {"EBBTIDE_TEST_SPANS_FILE": str(spans_file)}
    with broker.worker(*WORKER_FLAGS, env=env, app="traced_tasks:app"):
        spans = wait_for(
            lambda: (s := read_span_file(spans_file)) and len(s) >= 1 + 3 + 3 + 2 * 2 and s,
            what=lambda: f"11 spans, got {[s['name'] for s in read_span_file(spans_file)]}",
        )
    system = "redis" if broker.is_redis else "rabbitmq"

    # The first run of a task is a child of the span that sent it.
    (run,) = consumer_spans(spans, "record")
    assert run["context"]["trace_id"] == trace_id(sent)
    assert run["parent_id"] == span_id(sent)
    assert run["kind"] == "SpanKind.CONSUMER" and run["name"] == "process default"
    assert run["links"] == []
    assert run["attributes"] == {
        "messaging.system": system,
        "messaging.destination.name": "default",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.message.id": run["attributes"]["messaging.message.id"],
        "ebbtide.task.name": "record",
        "ebbtide.task.attempt": 1,
        "ebbtide.task.outcome": "success",
    }
    assert run["status"]["status_code"] == "UNSET"

    # Each retry is a new trace, linked to the sender's span.
    first, *retries = flaky = consumer_spans(spans, "flaky")
    assert [s["attributes"]["ebbtide.task.attempt"] for s in flaky] == [1, 2, 3]
    assert [s["attributes"]["ebbtide.task.outcome"] for s in flaky] == ["retry", "retry", "success"]
    assert first["parent_id"] == span_id(sent) and first["context"]["trace_id"] == trace_id(sent)
    assert first["status"]["status_code"] == "ERROR"
    assert first["attributes"]["error.type"] == "ValueError"
    assert [e["name"] for e in first["events"]] == ["exception"]
    trace_ids = {s["context"]["trace_id"] for s in flaky}
    assert len(trace_ids) == 3, "every retry has a trace of its own"
    for retry in retries:
        assert retry["parent_id"] is None
        (link,) = retry["links"]
        assert link["context"]["trace_id"] == trace_id(sent)
        assert link["context"]["span_id"] == span_id(sent)
    ids = {s["attributes"]["messaging.message.id"] for s in flaky}
    assert len(ids) == 1, "the same task throughout"

    dead = consumer_spans(spans, "always_fails")
    assert [s["attributes"]["ebbtide.task.outcome"] for s in dead] == ["retry", "retry", "dead"]
    assert all(s["attributes"]["error.type"] == "RuntimeError" for s in dead)

    # A task's own spans nest under the worker's, on a task thread and on the loop alike.
    for task, tag in (("traced_child", "traced-sync"), ("atraced_child", "traced-async")):
        (outer,) = consumer_spans(spans, task)
        (inner,) = [s for s in spans if s["name"] == f"inner {tag}"]
        assert inner["parent_id"] == outer["context"]["span_id"], task
        assert inner["context"]["trace_id"] == outer["context"]["trace_id"] == trace_id(sent)


def test_a_task_sent_outside_any_trace_starts_one_in_the_worker(broker, tmp_path):
    memory_exporter()
    assert tracing.context_field() == {}
    broker.tasks.record.send("untraced", 1)
    spans_file = tmp_path / "spans.jsonl"
    env = {"EBBTIDE_TEST_SPANS_FILE": str(spans_file)}
    with broker.worker(*WORKER_FLAGS, env=env, app="traced_tasks:app"):
        (run,) = wait_for(lambda: read_span_file(spans_file), what="the worker's span")
    assert run["parent_id"] is None and run["links"] == []
    assert run["attributes"]["ebbtide.task.outcome"] == "success"


def test_without_opentelemetry_nothing_imports_it_and_tasks_still_run(
    broker, monkeypatch: pytest.MonkeyPatch
):
    # The worker: a process where opentelemetry cannot be imported (no_otel/), given a
    # task that was sent inside a trace.
    memory_exporter()
    with trace.get_tracer("test").start_as_current_span("web request"):
        broker.tasks.otel_modules.send("no-otel")
    # The sender: opentelemetry gone from this process too.
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    tracing.enabled.cache_clear()
    try:
        assert not tracing.enabled() and tracing.context_field() == {}
        broker.tasks.record.send("no-otel-sent", 1)
    finally:
        monkeypatch.undo()
        tracing.enabled.cache_clear()
    path = os.pathsep.join([str(NO_OTEL), str(HERE), os.environ.get("PYTHONPATH", "")])
    with broker.worker(*WORKER_FLAGS, env={"PYTHONPATH": path}):
        wait_for(lambda: broker.done("no-otel") and broker.done("no-otel-sent"), what="both run")
    assert broker.done("no-otel") == ["-"], "the worker loaded no opentelemetry module"
