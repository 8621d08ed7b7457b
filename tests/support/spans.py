"""The test process's OpenTelemetry SDK: one global TracerProvider exporting to an
InMemorySpanExporter (a provider can be set once per process, so every test shares it
and clears it first), and the reading of span JSON a worker subprocess wrote."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from ebbtide import tracing
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@functools.cache
def _exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracing.recheck_provider()
    return exporter


def memory_exporter() -> InMemorySpanExporter:
    """The process-wide exporter, emptied."""
    exporter = _exporter()
    exporter.clear()
    return exporter


def trace_id(ctx: trace.SpanContext) -> str:
    """As `ReadableSpan.to_json()` writes it."""
    return f"0x{ctx.trace_id:032x}"


def span_id(ctx: trace.SpanContext) -> str:
    return f"0x{ctx.span_id:016x}"


def read_span_file(path: Path) -> list[dict[str, Any]]:
    """The spans a worker wrote, one `to_json()` per line (traced_tasks.py); a line
    still being written is left for the next read."""
    if not path.exists():
        return []
    spans = []
    for line in path.read_text().splitlines():
        try:
            spans.append(json.loads(line))
        except ValueError:
            break
    return spans
