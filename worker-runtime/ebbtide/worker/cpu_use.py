"""The process's CpuUse for the thread limit: CPU used, and CPU its threads waited for.

`waited` is the kernel's run delay: the time a thread was ready to run and sat on a
run queue, the second field of /proc/self/task/<tid>/schedstat, in nanoseconds. Summed
over the process's threads it is the CPU the process asked for and did not get. A thread
blocked on a socket or on the GIL is not ready, so I/O waits do not count. Where
schedstat is missing (not Linux, a kernel without it), `waited` is 0 and the thread
limit reads CPU used alone, as it did before.
"""

from __future__ import annotations

import os
import time

from .thread_limit import CpuUse

TASKS = "/proc/self/task"


def read_cpu_use() -> CpuUse:
    return CpuUse(time.process_time(), run_delay_s())


def run_delay_s(tasks: str = TASKS) -> float:
    """Seconds this process's live threads have waited for a CPU."""
    try:
        tids = os.listdir(tasks)
    except OSError:
        return 0.0
    total = 0
    for tid in tids:
        try:
            with open(f"{tasks}/{tid}/schedstat", "rb") as stat:
                total += int(stat.read().split()[1])
        except (OSError, ValueError, IndexError):  # the thread ended, or no schedstat
            continue
    return total / 1e9
