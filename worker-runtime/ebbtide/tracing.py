"""Trace context from `send()` to the worker's run of the task (OpenTelemetry).

With `pip install 'ebbtide[otel]'`, `send()` writes the current trace context into the
task's payload and the worker runs the task in a CONSUMER span that continues it: the
first attempt is a child of the sender's span; a retry starts a new trace whose span
links back to the sender's (a retry runs later, often much later, and would otherwise
stretch the request's trace over hours). Without opentelemetry installed nothing here
imports it and every function is a cheap no-op; with it installed but no TracerProvider
set, the worker skips its spans (they would record nothing).

The context travels in ONE payload field, `trace` (`{"traceparent": ..., "tracestate":
...}`, W3C Trace Context written by the global propagator), set only by `context_field()`
and read only by `carrier()`; retries copy the payload, so they keep it.

Span attributes follow the messaging semantic conventions where one fits
(`messaging.system`, `messaging.destination.name`, `messaging.operation.name` and
`.type`, `messaging.message.id`, `error.type`), plus `ebbtide.task.name`,
`ebbtide.task.attempt` (1 for the first run) and `ebbtide.task.outcome` (`success`,
`retry`, `dead`, like the worker's metrics, or `cancelled`).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

TRACE_FIELD = "trace"
OUTCOME_CANCELLED = "cancelled"


@functools.cache
def enabled() -> bool:
    """Whether opentelemetry (the `otel` extra) is installed; asked once."""
    try:
        import opentelemetry.propagate  # noqa: F401
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


def context_field() -> dict[str, dict[str, str]]:
    """`{"trace": carrier}` to put in the payload of a task sent now; `{}` when there is
    no current trace context or no opentelemetry. The one writer of the field."""
    if not enabled():
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {TRACE_FIELD: carrier} if carrier else {}


def carrier(body: dict[str, Any]) -> dict[str, str]:
    """The trace context a decoded payload carries (only its string entries: a payload is
    input, and a malformed field means no context, never a failure). The one reader."""
    field = body.get(TRACE_FIELD)
    if not isinstance(field, dict):
        return {}
    return {k: v for k, v in field.items() if isinstance(k, str) and isinstance(v, str)}


def attempt_number(body: dict[str, Any]) -> int:
    """1 for a task's first run, 2 for its first retry, ... (`attempt` counts failures)."""
    attempt = body.get("attempt", 0)
    return attempt + 1 if isinstance(attempt, int) and attempt >= 0 else 1


def messaging_system(url: str | None) -> str:
    """`messaging.system` of a broker URL."""
    scheme = urlsplit(url or "").scheme.lower()
    return "rabbitmq" if scheme in ("amqp", "amqps") else "redis"


class NullSpan:
    """What a task runs in without opentelemetry: records nothing."""

    def finish(self, outcome: str, error: BaseException | None = None) -> None: ...


NULL_SPAN = NullSpan()


class TaskSpan:
    """The span of one run of a task; `finish` records how it ended."""

    def __init__(self, span: Any) -> None:
        self.span = span
        self.finished = False

    def finish(self, outcome: str, error: BaseException | None = None) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.finished = True
        self.span.set_attribute("ebbtide.task.outcome", outcome)
        if error is not None:
            self.span.set_attribute("error.type", type(error).__qualname__)
            self.span.record_exception(error)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


RECHECK_S = 1.0  # how soon a TracerProvider set after the worker started is noticed


class _ProviderCheck:
    """Whether opentelemetry is installed and the app has set a TracerProvider (the
    SDK's, or any real one). Without one every span would be a no-op, yet building it
    costs tens of microseconds a task: skip it. Asked per task, so the answer is kept:
    a provider, once set, stays set (opentelemetry refuses a second one); "none yet" is
    asked again after RECHECK_S, so a provider set late still counts."""

    def __init__(self) -> None:
        self._set = False
        self._next = 0.0

    def __call__(self) -> bool:
        if self._set:
            return True
        now = time.monotonic()
        if now < self._next or not enabled():
            return False
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        self._set = not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
        self._next = now + RECHECK_S
        return self._set

    def forget(self) -> None:
        self._set, self._next = False, 0.0


_configured = _ProviderCheck()


def recheck_provider() -> None:
    """Ask again at the next task whether a TracerProvider is set: call it after
    `trace.set_tracer_provider()` for spans from the very next task, not within
    RECHECK_S (tests; an app sets its provider before its first task anyway)."""
    _configured.forget()


@functools.cache
def _tracer() -> Any:
    from opentelemetry import trace

    from .buildinfo import version

    # Only asked once the app has set its provider (_configured): that one for good.
    return trace.get_tracer("ebbtide", version())


class _NullRun:
    """`running()` without a provider: a plain object, not a generator, because the
    worker enters it for every task."""

    def __enter__(self) -> NullSpan:
        return NULL_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_NULL_RUN = _NullRun()


def running(
    body: dict[str, Any], queue: str, system: str
) -> contextlib.AbstractContextManager[NullSpan | TaskSpan]:
    """Run a task inside this: its span is current (spans the task starts nest under
    it, on the loop or on a task thread) and ends on exit. The caller `finish`es it
    with the outcome; an exception escaping unfinished (cancellation) ends it as
    `cancelled`."""
    if not _configured():
        return _NULL_RUN
    return _running(body, queue, system)


@contextlib.contextmanager
def _running(body: dict[str, Any], queue: str, system: str) -> Iterator[TaskSpan]:
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context

    sent = propagate.extract(carrier(body), context=Context())
    origin = trace.get_current_span(sent).get_span_context()
    attempt = attempt_number(body)
    if attempt == 1:
        parent, links = sent, []
    else:  # a new trace, linked to the one that sent the task
        parent, links = Context(), ([trace.Link(origin)] if origin.is_valid else [])
    task_id = body.get("id")
    attributes = {
        "messaging.system": system,
        "messaging.destination.name": queue,
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "ebbtide.task.name": str(body.get("task", "")),
        "ebbtide.task.attempt": attempt,
    }
    if isinstance(task_id, str):
        attributes["messaging.message.id"] = task_id
    span = _tracer().start_span(
        f"process {queue}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
    )
    handle = TaskSpan(span)
    with trace.use_span(
        span, end_on_exit=True, record_exception=False, set_status_on_exception=False
    ):
        try:
            yield handle
        except BaseException as exc:
            if not handle.finished:
                handle.finish(OUTCOME_CANCELLED, exc)
            raise
