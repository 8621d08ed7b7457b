"""What every benchmark app shares: where the broker is and the one-INCR task body."""

from __future__ import annotations

import multiprocessing
import os
import re

import redis

QUEUE = os.environ.get("BENCH_QUEUE", "bench")
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
COUNTER_URL = os.environ.get("BENCH_COUNTER_URL", BROKER_URL)
COUNTER_KEY = os.environ.get("BENCH_COUNTER_KEY", "bench:done")

# One client per process; redis-py's pool makes it safe for the worker's threads.
_counter = redis.Redis.from_url(COUNTER_URL)


def count_one() -> None:
    """The whole task: one INCR, so the benchmark measures the queue, not the work."""
    _counter.incr(COUNTER_KEY)


HOLD_S = float(os.environ.get("BENCH_HOLD_S", "120"))  # bench/memory.py's running tasks
CPU_LOOPS = int(os.environ.get("BENCH_CPU_LOOPS", "20000"))


def burn_cpu() -> int:
    """The CPU-bound body (bench/cpu.py): pure Python, holding the GIL throughout."""
    total = 0
    for i in range(CPU_LOOPS):
        total += i * i % 7
    return total


def pin_worker_process() -> None:
    """BENCH_PIN_CPUS (a CPU list such as 0-1): pin this Dramatiq worker process to one of
    them, in turn by its number (Dramatiq names its children Process-1, Process-2, ...),
    as Ebbtide's `--cpu-affinity 0-1` pins its processes. Bench only: Dramatiq has no
    such option, and this makes its pinned rows the like-for-like ones."""
    listed = os.environ.get("BENCH_PIN_CPUS")
    number = re.fullmatch(r"Process-(\d+)", multiprocessing.current_process().name)
    if not listed or number is None:
        return
    from ebbtide.worker.affinity import parse_affinity

    cpus = parse_affinity(listed).cpus
    os.sched_setaffinity(0, {cpus[(int(number.group(1)) - 1) % len(cpus)]})
