"""worker_tasks' app, in a worker whose OpenTelemetry SDK writes every finished span as
one JSON line (`ReadableSpan.to_json`, through the SDK's ConsoleSpanExporter) to the file
named by EBBTIDE_TEST_SPANS_FILE, so a test reads back what the worker traced. This is
what an app does to trace its workers: configure the SDK where its tasks are defined."""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from worker_tasks import app

__all__ = ["app"]

_out = open(os.environ["EBBTIDE_TEST_SPANS_FILE"], "a", buffering=1)  # noqa: SIM115 - the process's
_provider = TracerProvider()
_provider.add_span_processor(
    SimpleSpanProcessor(
        ConsoleSpanExporter(out=_out, formatter=lambda span: span.to_json(indent=None) + "\n")
    )
)
trace.set_tracer_provider(_provider)
