"""Trace files: one CSV row per task, `arrival_s,service_s[,queue]`, with a header."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

DEFAULT_QUEUE = "default"


class TraceError(ValueError):
    """A malformed trace; the message names the file, the row and the field."""


@dataclass(frozen=True)
class Task:
    arrival_s: float
    service_s: float
    queue: str = DEFAULT_QUEUE


def _number(value: str | None, field: str, where: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TraceError(f"{where}: {field} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise TraceError(f"{where}: {field} must be a finite number >= 0, got {value!r}")
    return number


def read_trace(path: str | Path) -> list[Task]:
    """Tasks sorted by arrival (stable, so equal arrivals keep file order)."""
    path = Path(path)
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        missing = [f for f in ("arrival_s", "service_s") if f not in fields]
        if missing:
            raise TraceError(f"{path}: header must name arrival_s and service_s, got {fields}")
        tasks = []
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            queue = (row.get("queue") or DEFAULT_QUEUE).strip() or DEFAULT_QUEUE
            tasks.append(
                Task(
                    _number(row.get("arrival_s"), "arrival_s", where),
                    _number(row.get("service_s"), "service_s", where),
                    queue,
                )
            )
    tasks.sort(key=lambda t: t.arrival_s)
    return tasks


def write_trace(path: str | Path, tasks: list[Task]) -> None:
    with_queue = any(t.queue != DEFAULT_QUEUE for t in tasks)
    with Path(path).open("w", newline="") as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(
            ["arrival_s", "service_s", "queue"] if with_queue else ["arrival_s", "service_s"]
        )
        for t in tasks:
            row = [f"{t.arrival_s:.3f}", f"{t.service_s:.3f}"]
            out.writerow([*row, t.queue] if with_queue else row)
