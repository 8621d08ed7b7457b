"""How many worker processes to run, and how long to wait before restarting one (pure).

`--processes auto` is the container's CPU limit: cgroup v2 `cpu.max` ("<quota> <period>"
or "max <period>"), else cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (quota -1 =
no limit), else the machine's CPU count. A fractional limit rounds up (1.5 CPUs -> 2
processes that share 1.5 CPUs of quota), and never past the CPU count.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .decisions import auto_or_count

MAX_PROCESSES = 256
RESTART_MIN_S, RESTART_MAX_S = 0.5, 30.0
STABLE_S = 60.0  # a child that lived this long starts its backoff afresh


def parse_processes(value: str) -> int | None:
    """`--processes`: an integer >= 1, or 'auto' (None: read the cgroup)."""
    return auto_or_count("--processes", value, MAX_PROCESSES, str(MAX_PROCESSES))


def cpu_limit(
    cpu_max: str | None, cfs_quota_us: str | None, cfs_period_us: str | None, cpu_count: int
) -> int:
    """Processes for `auto` from the cgroup files' contents (None = file absent)."""
    cpus = max(1, cpu_count)
    quota = period = None
    if cpu_max is not None:
        fields = cpu_max.split()
        if len(fields) == 2 and fields[0] != "max":
            quota, period = _number(fields[0]), _number(fields[1])
    elif cfs_quota_us is not None and cfs_period_us is not None:
        quota, period = _number(cfs_quota_us), _number(cfs_period_us)
    if quota is None or period is None or quota <= 0 or period <= 0:
        return cpus
    return max(1, min(cpus, math.ceil(quota / period - 1e-9)))


def _number(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def read_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int:
    """`cpu_limit` from this container's cgroup files."""

    def read(*names: str) -> str | None:
        for name in names:
            path = root / name
            try:
                return path.read_text()
            except OSError:
                continue
        return None

    return cpu_limit(
        read("cpu.max"),
        read("cpu.cfs_quota_us", "cpu,cpuacct/cpu.cfs_quota_us", "cpu/cpu.cfs_quota_us"),
        read("cpu.cfs_period_us", "cpu,cpuacct/cpu.cfs_period_us", "cpu/cpu.cfs_period_us"),
        os.cpu_count() or 1,
    )


def restart_delay(failures: int) -> float:
    """Backoff before restarting a child that died: 0.5 s doubling to 30 s per failure in
    a row (`failures` >= 1); a child that had run STABLE_S resets the count."""
    return min(RESTART_MAX_S, RESTART_MIN_S * 2 ** max(0, failures - 1))


def readiness(stopping: bool, children: list[tuple[int, bool, str]]) -> tuple[bool, str]:
    """The supervisor's /readyz: ready only when every child (index, ready, why) is."""
    if stopping:
        return False, "stopping"
    waiting = [f"process {index}: {why or 'not ready'}" for index, ok, why in children if not ok]
    if waiting:
        return False, "; ".join(waiting)
    return True, f"ready ({len(children)} processes)"
