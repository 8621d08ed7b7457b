"""tracing.py: the payload field, and the span each run of a task gets (the SDK's
InMemorySpanExporter reads them back; the brokers are in tests/integration)."""

from __future__ import annotations

import asyncio
import sys

import pytest
from ebbtide import tracing
from ebbtide.message import decode_payload, encode_payload
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from support.spans import memory_exporter


def sent_body(attempt: int = 0) -> tuple[dict, trace.SpanContext]:
    """A decoded payload sent inside a span, as the worker reads it."""
    with trace.get_tracer("test").start_as_current_span("request") as span:
        raw = encode_payload("id1", "t", [], {}, 1 << 20, **tracing.context_field())
    body = decode_payload(raw)
    body["attempt"] = attempt
    return body, span.get_span_context()


def test_send_writes_the_w3c_traceparent_into_one_field():
    memory_exporter()
    body, ctx = sent_body()
    assert set(body["trace"]) >= {"traceparent"}
    flags = f"{int(ctx.trace_flags):02x}"
    assert body["trace"]["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags}"
    assert tracing.context_field() == {}, "no current span, no field"


def test_a_first_run_is_a_child_of_the_sender():
    exporter = memory_exporter()
    body, ctx = sent_body()
    with tracing.running(body, "emails", "redis") as span:
        span.finish("success")
    run = exporter.get_finished_spans()[-1]
    assert run.parent is not None and run.parent.span_id == ctx.span_id
    assert run.context.trace_id == ctx.trace_id
    assert run.kind is SpanKind.CONSUMER and run.name == "process emails"
    assert dict(run.attributes) == {
        "messaging.system": "redis",
        "messaging.destination.name": "emails",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.message.id": "id1",
        "ebbtide.task.name": "t",
        "ebbtide.task.attempt": 1,
        "ebbtide.task.outcome": "success",
    }


def test_a_retry_is_a_new_trace_linked_to_the_sender():
    exporter = memory_exporter()
    body, ctx = sent_body(attempt=2)
    with tracing.running(body, "q", "rabbitmq") as span:
        span.finish("dead", ValueError("boom"))
    run = exporter.get_finished_spans()[-1]
    assert run.parent is None and run.context.trace_id != ctx.trace_id
    (link,) = run.links
    assert (link.context.trace_id, link.context.span_id) == (ctx.trace_id, ctx.span_id)
    assert run.attributes["ebbtide.task.attempt"] == 3
    assert run.attributes["ebbtide.task.outcome"] == "dead"
    assert run.attributes["error.type"] == "ValueError"
    assert run.status.status_code is StatusCode.ERROR
    assert [e.name for e in run.events] == ["exception"]


def test_a_cancelled_run_ends_its_span_as_cancelled():
    exporter = memory_exporter()

    async def cancelled() -> None:
        with tracing.running({"task": "t"}, "q", "redis"):
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled())
    run = exporter.get_finished_spans()[-1]
    assert run.attributes["ebbtide.task.outcome"] == "cancelled"
    assert run.parent is None and not run.links


@pytest.mark.parametrize(
    "field", [None, "00-abc", {"traceparent": 7}, {"traceparent": "garbage"}, [1, 2]]
)
def test_a_malformed_trace_field_means_no_context_never_a_failure(field):
    exporter = memory_exporter()
    body = {"task": "t", "trace": field, "attempt": 1}
    with tracing.running(body, "q", "redis") as span:
        span.finish("success")
    run = exporter.get_finished_spans()[-1]
    assert run.parent is None and not run.links


def test_attempt_numbers_and_systems():
    assert tracing.attempt_number({}) == 1
    assert tracing.attempt_number({"attempt": 4}) == 5
    assert tracing.attempt_number({"attempt": "x"}) == 1
    assert tracing.messaging_system("amqps://mq") == "rabbitmq"
    assert tracing.messaging_system("rediss://r") == "redis"


def test_without_opentelemetry_every_function_is_a_no_op(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    tracing.enabled.cache_clear()
    tracing.recheck_provider()
    try:
        assert not tracing.enabled()
        assert tracing.context_field() == {}
        with tracing.running({"task": "t"}, "q", "redis") as span:
            assert span is tracing.NULL_SPAN
            span.finish("success")
    finally:
        monkeypatch.undo()
        tracing.enabled.cache_clear()
        tracing.recheck_provider()
    assert tracing.enabled()


def test_the_provider_check_is_kept_once_set_and_asked_again_later_when_not(monkeypatch):
    memory_exporter()  # the process's provider: set, and the check told so
    assert tracing._configured()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: pytest.fail("asked again"))
    assert tracing._configured(), "a provider once set stays set: not asked per task"

    check, clock = tracing._ProviderCheck(), [100.0]
    monkeypatch.setattr(tracing.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    assert not check()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: pytest.fail("asked within 1 s"))
    clock[0] += tracing.RECHECK_S / 2
    assert not check()
    clock[0] += tracing.RECHECK_S
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: object())  # set late: counts
    assert check()
