"""CPU per task, in steady state: where a worker's time goes, beside the broker's.

throughput.py counts tasks per second from spawn to done; this one asks why a rate is what
it is. The same filled queue and the same one-INCR task as throughput.py; the worker's
process tree and the broker's server process are read (psutil: user and kernel time)
between 10% and 90% of the tasks done, so start-up and the tail are left out. A worker
whose CPU is ~100% of one core is bound by its own per-task cost (the GIL), and then the
ratio of two systems' rates is the ratio of their CPU per task. Kernel time is printed on
its own: with 8 task threads it is mostly futex calls, threads handing the GIL over.

    .venv/bin/python bench/cpu_per_task.py                       # RabbitMQ, 2 rounds
    .venv/bin/python bench/cpu_per_task.py --broker redis --systems dramatiq,ebbtide
    .venv/bin/python bench/cpu_per_task.py --pin 0     # and each worker pinned to CPU 0
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import redis

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH))

import throughput  # noqa: E402
from measure import compile_sources, exit_on_sigterm, stop_group  # noqa: E402

WINDOW = (0.1, 0.9)  # the share of tasks done between which CPU is read
POLL_S = 0.005


@dataclass(frozen=True)
class CpuSample:
    at: float  # perf_counter
    done: int  # tasks counted so far
    worker_user: float  # seconds, summed over the worker's process tree
    worker_system: float
    broker: float  # the broker server's user + system seconds


@dataclass(frozen=True)
class PerTask:
    rate: float  # tasks/s in the window
    worker_us: float  # worker CPU per task, microseconds
    worker_system_us: float  # of which kernel time
    broker_us: float
    worker_share: float  # the worker's CPU as a share of one core


def per_task(before: CpuSample, after: CpuSample) -> PerTask:
    """What one window of a run cost per task."""
    tasks, seconds = after.done - before.done, after.at - before.at
    if tasks <= 0 or seconds <= 0:
        raise ValueError(f"no tasks done in the window ({tasks} in {seconds:.3f} s)")
    user = after.worker_user - before.worker_user
    system = after.worker_system - before.worker_system
    return PerTask(
        rate=tasks / seconds,
        worker_us=1e6 * (user + system) / tasks,
        worker_system_us=1e6 * system / tasks,
        broker_us=1e6 * (after.broker - before.broker) / tasks,
        worker_share=(user + system) / seconds,
    )


def listener(port: int) -> psutil.Process:
    """The process listening on a loopback TCP port: the broker's server."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    raise RuntimeError(f"no process listens on port {port} (is this run as root?)")


def tree_times(root: psutil.Process, seen: dict[int, psutil.Process]) -> tuple[float, float]:
    """(user, system) seconds of a process and its children, children included."""
    with contextlib.suppress(psutil.Error):
        for p in [root, *root.children(recursive=True)]:
            seen.setdefault(p.pid, p)
    user = system = 0.0
    for p in seen.values():
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            user, system = user + t.user, system + t.system
    return user, system


def sample(counter: redis.Redis, key: str, worker, seen, broker: psutil.Process) -> CpuSample:
    user, system = tree_times(worker, seen)
    b = broker.cpu_times()
    return CpuSample(
        time.perf_counter(), int(counter.get(key) or 0), user, system, b.user + b.system
    )


def wait_for(counter: redis.Redis, key: str, n: int, deadline: float, proc) -> None:
    while int(counter.get(key) or 0) < n:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode} before {n} tasks")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"fewer than {n} tasks done by the deadline")
        time.sleep(POLL_S)


def measure(
    bench: throughput.Bench, system: str, broker: psutil.Process, log, pin: int | None = None
) -> PerTask:
    """Fill the queue, run one worker, and read its CPU over the window; the worker is
    killed at the window's end."""
    bench.reset()
    bench.produce(system, "bulk", bench.tasks)
    counter, key, n = bench.counter, throughput.COUNTER_KEY, bench.tasks
    argv = throughput.worker_argv(system, 64 if system == "ebbtide-async" else 8)
    if pin is not None:  # what-if: all of the worker's threads on one CPU
        argv = ["taskset", "-c", str(pin), *argv]
    compile_sources()
    proc = subprocess.Popen(
        argv,
        env=bench.env,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.perf_counter() + max(60.0, n / 100)
        worker, seen = psutil.Process(proc.pid), {}
        wait_for(counter, key, int(n * WINDOW[0]), deadline, proc)
        before = sample(counter, key, worker, seen, broker)
        wait_for(counter, key, int(n * WINDOW[1]), deadline, proc)
        after = sample(counter, key, worker, seen, broker)
        return per_task(before, after)  # the next row's reset() purges the rest
    finally:
        stop_group(proc, grace=0)


def runs(systems: list[str], pin: int | None) -> list[tuple[str, int | None]]:
    """Each system's row, and with `pin` its pinned row right after it (neighbours in
    time, so a shift in the machine's load hits both alike)."""
    return [(s, p) for s in systems for p in ([None] if pin is None else [None, pin])]


def render(rows: Iterable[tuple[int, str, PerTask]]) -> str:
    lines = [
        "| round | system | tasks/s (10-90%) | worker CPU us/task | of which kernel | "
        "broker CPU us/task | worker CPU, share of a core |",
        "|---|---|---|---|---|---|---|",
    ]
    for rnd, system, r in rows:
        lines.append(
            f"| {rnd} | {system} | {r.rate:,.0f} | {r.worker_us:.0f} | {r.worker_system_us:.0f} "
            f"| {r.broker_us:.0f} | {100 * r.worker_share:.0f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", choices=("redis", "rabbitmq"), default="rabbitmq")
    ap.add_argument("--systems", default="dramatiq,ebbtide")
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument(
        "--pin",
        type=int,
        default=None,
        metavar="CPU",
        help="after each system's row, the same worker pinned to CPU (taskset -c CPU)",
    )
    opts = ap.parse_args(argv)
    exit_on_sigterm()
    systems = [s for s in opts.systems.split(",") if s]
    for s in systems:
        throughput.worker_argv(s, 8)  # a clear error for an unknown system, before any server
    log_path = os.path.join(tempfile.gettempdir(), f"ebbtide-cpu-per-task-{os.getpid()}.log")
    rows: list[tuple[int, str, PerTask]] = []
    with open(log_path, "ab") as log:
        for broker, broker_url, counter_url in throughput.broker_runs(opts.broker):
            bench = throughput.Bench(broker, broker_url, counter_url, opts.tasks, opts)
            server = listener(urlsplit(broker_url).port or 0)
            for rnd in range(1, opts.repeat + 1):
                for system, pin in runs(systems, opts.pin):
                    r = measure(bench, system, server, log, pin)
                    system = system if pin is None else f"{system} pinned to CPU {pin}"
                    throughput.log(
                        f"  round {rnd} {system}: {r.rate:,.0f}/s, {r.worker_us:.0f} us/task"
                    )
                    rows.append((rnd, system, r))
    print(f"{throughput.machine()} · {opts.broker} · {opts.tasks:,} tasks per row")
    print()
    print(render(rows))
    print(f"\nworker output: {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
