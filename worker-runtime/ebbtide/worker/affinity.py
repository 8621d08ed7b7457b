"""`--cpu-affinity`: pin each worker process to one CPU, so its threads hand the GIL over
on one core instead of across two.

A sync task's thread drops the GIL at every socket call, and another thread takes it.
When that thread sleeps on another core, each hand-off wakes that core: on the 2-core
benchmark VM a one-process Redis worker spent 158-167 us of CPU per task unpinned and
85-100 us pinned, and ran 5,662-5,965 tasks/s against 8,794-10,215/s (docs/benchmarks.md,
"2026-12-06: pinned to a CPU"). What a process loses is running two things at once
outside the GIL (C extensions, the kernel's share of its I/O), and every subprocess a
task starts inherits the pin. So the default is `none`, and `auto` pins only where the
CPUs are the container's own.

Values:
- `none` (default): the kernel places the threads.
- `auto`: process i gets the i-th of the CPUs this process may use (round robin), but
  only when they are the container's own: fewer than the machine's online CPUs, and no
  more than its CPU limit (Kubernetes' static CPU manager policy gives a Guaranteed
  pod's integer CPUs such a cpuset). Otherwise nothing is pinned, and the log says why.
- a CPU list, `0-3,6`: process i gets the i-th CPU of the list (round robin). Every CPU
  must be one this process may use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import logs

MAX_CPU = 4095  # a CPU number past this is a typo, not a machine


@dataclass(frozen=True, slots=True)
class Affinity:
    """A parsed `--cpu-affinity`: mode 'none', 'auto' or 'list' (then `cpus`, sorted)."""

    mode: str
    cpus: tuple[int, ...] = ()


def parse_affinity(value: str) -> Affinity:
    """`--cpu-affinity`: 'none', 'auto' or a CPU list such as '0-3,6'; a bad value is a
    ValueError naming it (a usage error)."""
    text = value.strip().lower()
    if text in ("none", "auto"):
        return Affinity(text)
    cpus: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ValueError(
                f"--cpu-affinity must be 'none', 'auto' or a CPU list such as '0-3,6', "
                f"got {value!r}"
            ) from None
        if not 0 <= first <= last <= MAX_CPU:
            raise ValueError(f"--cpu-affinity: {part.strip()!r} is not a CPU range")
        cpus.update(range(first, last + 1))
    return Affinity("list", tuple(sorted(cpus)))


def cpu_list(cpus: set[int] | tuple[int, ...]) -> str:
    """{0, 1, 2, 5} -> '0-2,5', as the kernel writes Cpus_allowed_list."""
    out: list[str] = []
    ordered = sorted(cpus)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def choose_cpu(
    index: int, affinity: Affinity, allowed: set[int], online: int, cpu_limit: int
) -> tuple[int | None, str]:
    """The CPU for worker process `index` (None: leave it unpinned), and why (pure).

    allowed: the CPUs this process may run on; online: the machine's CPU count;
    cpu_limit: the container's CPU limit in whole CPUs (processes.read_cpu_limit)."""
    if affinity.mode == "none":
        return None, "--cpu-affinity none"
    if affinity.mode == "list":
        foreign = [c for c in affinity.cpus if c not in allowed]
        if foreign:
            raise ValueError(
                f"--cpu-affinity: CPU {cpu_list(tuple(foreign))} is not one this process "
                f"may run on (allowed: {cpu_list(allowed)})"
            )
        return affinity.cpus[index % len(affinity.cpus)], "--cpu-affinity list"
    ordered = sorted(allowed)
    if len(ordered) >= online:
        return None, (
            f"every CPU of the machine ({online}) is allowed: they are shared with other "
            "containers, so none is pinned (a Guaranteed pod under Kubernetes' static CPU "
            "manager policy gets CPUs of its own)"
        )
    if len(ordered) > cpu_limit:
        return None, (
            f"{len(ordered)} CPUs are allowed but the CPU limit is {cpu_limit}: they are "
            "shared, so none is pinned"
        )
    return ordered[index % len(ordered)], "the container's own CPUs"


def check_affinity(affinity: Affinity) -> None:
    """In the supervisor: a CPU list naming a CPU this pod may not use fails now."""
    if affinity.mode == "list" and hasattr(os, "sched_getaffinity"):
        choose_cpu(0, affinity, os.sched_getaffinity(0), os.cpu_count() or 1, 1)


def pin_process(index: int, affinity: Affinity) -> int | None:
    """Pin this process (and the threads it starts from now on) to its CPU; the CPU, or
    None when it is left unpinned. Call before any thread starts."""
    if affinity.mode == "none" or not hasattr(os, "sched_setaffinity"):
        return None
    from .processes import read_cpu_limit

    allowed = os.sched_getaffinity(0)
    cpu, why = choose_cpu(index, affinity, allowed, os.cpu_count() or 1, read_cpu_limit())
    if cpu is None:
        logs.log("not pinned to a CPU", process=index, reason=why)
        return None
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:  # an optimisation only: the worker runs unpinned, and says so
        logs.warn("cannot pin to a CPU", process=index, cpu=cpu, error=exc.strerror or str(exc))
        return None
    logs.log("pinned to a CPU", process=index, cpu=cpu, reason=why)
    return cpu
