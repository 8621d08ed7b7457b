"""Pure presentation: ratios, the issue's targets marked PASS/MISS, and the table.

No I/O here, so the verdict logic is unit-tested (tests/unit/bench/test_report.py).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, fields, replace
from typing import Any

MIB = 1024 * 1024


@dataclass
class SystemResult:
    """One row: a system on a broker. Rates are per second; None means not measured."""

    system: str
    broker: str
    tasks: int
    processed_per_s: float | None = None
    seconds: float | None = None
    first_task_s: float | None = None
    steady_per_s: float | None = None  # 10% to 90% done: the rate without start-up and tail
    enqueue_single_per_s: float | None = None
    enqueue_bulk_per_s: float | None = None
    bulk_how: str = ""
    peak_rss_bytes: int | None = None
    processes: int | None = None
    worker: str = ""
    note: str = ""  # e.g. "n/a (not yet supported)" or an error
    runs: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


MEASURED = (
    "processed_per_s",
    "seconds",
    "first_task_s",
    "steady_per_s",
    "enqueue_single_per_s",
    "enqueue_bulk_per_s",
    "peak_rss_bytes",
)


def median_of(runs: list[SystemResult]) -> SystemResult:
    """Repeated runs of one row folded into one: the median of every measured figure
    (noise on a shared 2-core machine is large), and any run's error kept."""
    assert runs and all(r.system == runs[0].system for r in runs)
    merged: dict[str, Any] = {}
    for f in fields(SystemResult):
        if f.name in MEASURED:
            values = [getattr(r, f.name) for r in runs if getattr(r, f.name) is not None]
            merged[f.name] = statistics.median(values) if values else None
    notes = list(dict.fromkeys(r.note for r in runs if r.note))
    return replace(runs[0], **merged, note="; ".join(notes), runs=len(runs))


@dataclass(frozen=True)
class Target:
    broker: str
    what: str
    goal: str
    value: float | None  # the measured ratio (or MiB for memory)
    passed: bool | None  # None: could not be measured

    @property
    def verdict(self) -> str:
        return "n/a" if self.passed is None else ("PASS" if self.passed else "MISS")


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def by_system(rows: list[SystemResult], broker: str) -> dict[str, SystemResult]:
    return {r.system: r for r in rows if r.broker == broker}


def targets(rows: list[SystemResult]) -> list[Target]:
    """The targets of issue 16 (Redis 3x, RabbitMQ 2.5x, two processes each 2.5x on Redis;
    issues 2 and 6 asked 2.5x and 2x), for the rows that ran."""
    out: list[Target] = []
    redis = by_system(rows, "redis")
    if redis:
        eb, dr, ce = (redis.get(s, SystemResult(s, "redis", 0)) for s in SYSTEMS)
        speed = ratio(eb.processed_per_s, dr.processed_per_s)
        out.append(_at_least("redis", "processed/s vs Dramatiq", REDIS_GOAL, speed))
        out += _async_speed(redis, "redis", REDIS_GOAL)
        if "ebbtide-p2" in redis or "dramatiq-p2" in redis:
            two = ratio(
                _rate_of(redis, "ebbtide-p2"),
                _rate_of(redis, "dramatiq-p2"),
            )
            out.append(_at_least("redis", "two processes each vs Dramatiq -p 2", TWO_GOAL, two))
        if "ebbtide-pinned-p2" in redis:
            two = ratio(_rate_of(redis, "ebbtide-pinned-p2"), _rate_of(redis, "dramatiq-p2"))
            what = "two processes each, --cpu-affinity, vs Dramatiq -p 2"
            out.append(_at_least("redis", what, TWO_GOAL, two))
            if "dramatiq-pinned-p2" in redis:
                both = ratio(
                    _rate_of(redis, "ebbtide-pinned-p2"), _rate_of(redis, "dramatiq-pinned-p2")
                )
                what = "two processes each, pinned, vs Dramatiq -p 2 pinned the same way"
                out.append(_at_least("redis", what, TWO_GOAL, both))
        out += _pinned(redis, "redis", REDIS_GOAL)
        bulk = ratio(eb.enqueue_bulk_per_s, dr.enqueue_single_per_s)
        out.append(_at_least("redis", "bulk enqueue vs Dramatiq single send", 10.0, bulk))
        rss = ratio(eb.peak_rss_bytes, ce.peak_rss_bytes)
        out.append(
            Target(
                "redis", "worker RSS vs Celery", "< 1.00x", rss, None if rss is None else rss < 1
            )
        )
    rabbit = by_system(rows, "rabbitmq")
    if rabbit:
        eb, dr = (rabbit.get(s, SystemResult(s, "rabbitmq", 0)) for s in SYSTEMS[:2])
        speed = ratio(eb.processed_per_s, dr.processed_per_s)
        out.append(_at_least("rabbitmq", "processed/s vs Dramatiq", RABBIT_GOAL, speed))
        out += _async_speed(rabbit, "rabbitmq", RABBIT_GOAL)
        out += _pinned(rabbit, "rabbitmq", RABBIT_GOAL)
    return out


REDIS_GOAL, RABBIT_GOAL, TWO_GOAL = 3.0, 2.5, 2.5  # issue 16, item 2


def _rate_of(rows: dict[str, SystemResult], system: str) -> float | None:
    row = rows.get(system)
    return row.processed_per_s if row is not None else None


def _pinned(rows: dict[str, SystemResult], broker: str, goal: float) -> list[Target]:
    """The one-process goal for the worker pinned to a CPU (`--cpu-affinity`), against
    Dramatiq as it runs by default and against Dramatiq pinned the same way."""
    if "ebbtide-pinned" not in rows:
        return []
    pinned = _rate_of(rows, "ebbtide-pinned")
    out = [
        _at_least(
            broker, "--cpu-affinity vs Dramatiq", goal, ratio(pinned, _rate_of(rows, "dramatiq"))
        )
    ]
    if "dramatiq-pinned" in rows:
        both = ratio(pinned, _rate_of(rows, "dramatiq-pinned"))
        out.append(_at_least(broker, "--cpu-affinity vs Dramatiq pinned the same way", goal, both))
    return out


def _async_speed(rows: dict[str, SystemResult], broker: str, goal: float) -> list[Target]:
    """The same target for the `async def` task row, when it ran (extra information:
    the like-for-like verdict is the `def` row's, as the anchors' tasks are sync)."""
    if "ebbtide-async" not in rows:
        return []
    dramatiq = rows.get("dramatiq")
    speed = ratio(rows["ebbtide-async"].processed_per_s, dramatiq and dramatiq.processed_per_s)
    return [_at_least(broker, "processed/s vs Dramatiq, async def task", goal, speed)]


def _at_least(broker: str, what: str, goal: float, value: float | None) -> Target:
    return Target(broker, what, f">= {goal:g}x", value, None if value is None else value >= goal)


SYSTEMS = ("ebbtide", "dramatiq", "celery")  # order of the rows that have a worker
COLUMNS = (
    "system",
    "broker",
    "tasks",
    "processed/s",
    "vs Dramatiq",
    "vs Celery",
    "start-up s",
    "steady/s (10-90%)",
    "enqueue/s single",
    "enqueue/s bulk",
    "bulk / raw",
    "worker peak RSS MiB",
)


def table_rows(rows: list[SystemResult]) -> list[list[str]]:
    """One line per row, in the order they ran, with the ratios filled in."""
    lines = []
    for broker in dict.fromkeys(r.broker for r in rows):
        peers = by_system(rows, broker)
        celery, raw = peers.get("celery"), peers.get("raw")
        for r in (r for r in rows if r.broker == broker):
            # a two-process row compares with Dramatiq's two-process row
            dramatiq = peers.get("dramatiq-p2" if r.system.endswith("-p2") else "dramatiq")
            lines.append(
                [
                    LABELS.get((r.system, broker), r.system),
                    broker,
                    f"{r.tasks:,}",
                    _rate(r.processed_per_s) if r.processed_per_s else (r.note or "—"),
                    _x(ratio(r.processed_per_s, dramatiq and dramatiq.processed_per_s)),
                    _x(ratio(r.processed_per_s, celery and celery.processed_per_s)),
                    f"{r.first_task_s:.2f}" if r.first_task_s is not None else "—",
                    _rate(r.steady_per_s),
                    _rate(r.enqueue_single_per_s),
                    _rate(r.enqueue_bulk_per_s) + (f" ({r.bulk_how})" if r.bulk_how else ""),
                    _x(ratio(r.enqueue_bulk_per_s, raw and raw.enqueue_bulk_per_s)),
                    f"{r.peak_rss_bytes / MIB:.0f}" if r.peak_rss_bytes else "—",
                ]
            )
    return lines


LABELS = {
    ("raw", "redis"): "raw pipelined RPUSH (limit)",
    ("raw", "rabbitmq"): "raw pika publish loop",
    ("bare", "redis"): "bare task body (INCR loop)",
    ("ebbtide", "redis"): "ebbtide (def task)",
    ("ebbtide", "rabbitmq"): "ebbtide (def task)",
    ("ebbtide-async", "redis"): "ebbtide (async def task)",
    ("ebbtide-async", "rabbitmq"): "ebbtide (async def task)",
    ("dramatiq-p2", "redis"): "dramatiq -p 2",
    ("ebbtide-p2", "redis"): "ebbtide (def task) --processes 2",
    ("ebbtide-all-threads", "redis"): "ebbtide (def task), every thread starts tasks",
    ("ebbtide-all-threads", "rabbitmq"): "ebbtide (def task), every thread starts tasks",
    ("ebbtide-metrics", "redis"): "ebbtide (def task), serving /metrics",
    ("ebbtide-metrics", "rabbitmq"): "ebbtide (def task), serving /metrics",
    ("ebbtide-metrics-p2", "redis"): "ebbtide (def task) --processes 2, serving /metrics",
    ("ebbtide-pinned", "redis"): "ebbtide (def task) --cpu-affinity",
    ("ebbtide-pinned", "rabbitmq"): "ebbtide (def task) --cpu-affinity",
    ("ebbtide-pinned-p2", "redis"): "ebbtide (def task) --processes 2 --cpu-affinity",
    ("ebbtide-exec-p2", "redis"): "ebbtide (def task) --processes 2 --start-children exec",
    ("ebbtide-pinned-exec-p2", "redis"): (
        "ebbtide (def task) --processes 2 --cpu-affinity --start-children exec"
    ),
    ("dramatiq-pinned", "redis"): "dramatiq, pinned to a CPU",
    ("dramatiq-pinned", "rabbitmq"): "dramatiq, pinned to a CPU",
    ("dramatiq-pinned-p2", "redis"): "dramatiq -p 2, each pinned to a CPU",
}


def render_table(rows: list[SystemResult]) -> str:
    return _markdown(list(COLUMNS), table_rows(rows))


def render_targets(found: list[Target]) -> str:
    lines = [[t.broker, t.what, t.goal, _x(t.value), t.verdict] for t in found]
    return _markdown(["broker", "target", "goal", "measured", "verdict"], lines)


def _markdown(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    fmt = "| " + " | ".join(f"{{:{w}}}" for w in widths) + " |"
    out = [fmt.format(*header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def _rate(value: float | None) -> str:
    return f"{value:,.0f}" if value else "—"


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value else "—"
