"""Cap one process's CPU with the cgroup v1 `cpu` controller (CFS bandwidth).

bench/cluster.py runs every Redis node on the same 2 cores as the workers, so an
uncapped node never saturates before the Python clients do. Capping each node to a
fraction of a core emulates nodes that are the bottleneck, which is what a scale-out
benchmark has to show. Only the PIDs named here are moved, each into its own child
cgroup (`<mount>/ebbtide-bench-<name>`), and moved back and the cgroup removed on exit,
whatever happened in between. The parsing and quota arithmetic are pure functions.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PREFIX = "ebbtide-bench-"
PERIOD_US = 10_000  # short periods: a capped node runs in 1 ms slices, not 10 ms bursts
MIN_QUOTA_US = 1_000  # the kernel's floor for cfs_quota_us
MAX_PERIOD_US = 1_000_000  # and its ceiling for cfs_period_us


class CpuCapError(RuntimeError):
    """The cap cannot be set up (no controller, not root, a stale busy cgroup)."""


def cfs_settings(cores: float) -> tuple[int, int]:
    """(cfs_period_us, cfs_quota_us) giving `cores` of CPU per period. The period is
    PERIOD_US unless the quota would fall below the kernel's 1 ms floor: then it grows."""
    if not cores > 0 or math.isinf(cores):
        raise ValueError(f"a CPU cap must be a positive number of cores, got {cores!r}")
    period = max(PERIOD_US, math.ceil(MIN_QUOTA_US / cores))
    if period > MAX_PERIOD_US:
        raise ValueError(f"a CPU cap of {cores} cores is below the kernel's 0.001-core floor")
    return period, round(cores * period)


def cpu_mount(mounts: str) -> str | None:
    """The mount point of the cgroup v1 hierarchy holding the `cpu` controller, from
    /proc/mounts text (`cpu` may be co-mounted, e.g. `cpu,cpuacct`)."""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "cgroup" and "cpu" in fields[3].split(","):
            return fields[1]
    return None


def cpu_cgroup(proc_cgroup: str) -> str | None:
    """A process's cgroup path in the `cpu` hierarchy, from /proc/<pid>/cgroup text."""
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    return None


def find_controller() -> Path:
    """The writable cpu hierarchy's mount, or a CpuCapError saying what is missing."""
    mount = cpu_mount(Path("/proc/mounts").read_text())
    if mount is None:
        raise CpuCapError(
            "--node-cpu needs the cgroup v1 cpu controller, and no cgroup hierarchy with "
            "`cpu` is mounted (see /proc/mounts); run with --node-cpu 0 for uncapped nodes"
        )
    root = Path(mount)
    if not (root / "cpu.cfs_quota_us").exists():
        raise CpuCapError(f"{root} has no cpu.cfs_quota_us: the kernel lacks CFS bandwidth")
    if not os.access(root, os.W_OK):
        raise CpuCapError(f"--node-cpu must run as root: {root} is not writable")
    return root


@dataclass(frozen=True)
class Throttling:
    """cpu.stat counters: the periods in which the group ran, and those in which it
    used up its quota and was made to wait for the next period."""

    periods: int
    throttled: int

    def __sub__(self, other: Throttling) -> Throttling:
        return Throttling(self.periods - other.periods, self.throttled - other.throttled)


@dataclass(frozen=True)
class CpuCap:
    path: Path
    cores: float
    period_us: int

    def throttling(self) -> Throttling:
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return Throttling(int(stat["nr_periods"]), int(stat["nr_throttled"]))


def _write(path: Path, value: object) -> None:
    path.write_text(f"{value}\n")


def _members(group: Path) -> list[int]:
    return [int(p) for p in (group / "cgroup.procs").read_text().split()]


def _make_group(root: Path, name: str) -> Path:
    """A fresh child cgroup; a stale empty one (a killed run's) is removed first, a
    stale busy one is an error rather than a cgroup shared with unknown processes."""
    group = root / f"{PREFIX}{name}"
    if group.exists():
        if _members(group):
            raise CpuCapError(
                f"{group} exists and holds processes {_members(group)} (a killed run's "
                "redis-server?): stop them, then rmdir it"
            )
        group.rmdir()
    group.mkdir()
    return group


def _check_moved(pid: int, root: Path, group: Path) -> None:
    """Every thread of `pid` must now be in `group` (cgroup.procs moves the whole
    thread group in v1; this guards against a thread that raced the move)."""
    want = "/" + str(group.relative_to(root))
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just exited
            got = cpu_cgroup((task / "cgroup").read_text())
            if got != want:
                raise CpuCapError(f"thread {task.name} of {pid} is in {got}, not {want}")


def _release(root: Path, group: Path, home: str) -> None:
    """Move what is left in `group` (the PID and any child it forked) back to `home`
    and remove the cgroup; a process that exits meanwhile leaves on its own."""
    target = root / home.lstrip("/") / "cgroup.procs"
    for pid in _members(group):
        with contextlib.suppress(ProcessLookupError):
            _write(target, pid)
    group.rmdir()


@contextlib.contextmanager
def cpu_capped(pid: int, cores: float, name: str, root: Path | None = None) -> Iterator[CpuCap]:
    """Run `pid` (its threads and future children) under a `cores` CPU cap while inside."""
    period, quota = cfs_settings(cores)
    root = root or find_controller()
    home = cpu_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
    if home is None:
        raise CpuCapError(f"process {pid} is in no cpu cgroup (/proc/{pid}/cgroup)")
    group = _make_group(root, name)
    try:
        _write(group / "cpu.cfs_period_us", period)
        _write(group / "cpu.cfs_quota_us", quota)
        if (group / "cpu.cfs_burst_us").exists():
            _write(group / "cpu.cfs_burst_us", 0)  # no saved-up slack: the cap is the cap
        _write(group / "cgroup.procs", pid)
        _check_moved(pid, root, group)
        yield CpuCap(group, cores, period)
    finally:
        _release(root, group, home)
