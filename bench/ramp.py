"""The first half second of a worker's run: tasks done per 100 ms from its spawn, and
the thread limit's and the prefetch window's moves, for A/B runs of revisions.

throughput.py times a run from spawn to done, and its steady column leaves out the first
and last 10 %. This one shows what lies between the two at the start: each round fills
the queue, spawns one Ebbtide worker (`--log-level DEBUG`), polls the counter every 5 ms
and prints the first task's time, the tasks done in the 0.5 s after it, the steady rate
(10-90 %) and the 100 ms buckets, and, from the worker's log, when the thread limit and
the prefetch window moved. Variants alternate in every round, so a shift in the
machine's load hits each alike.

    .venv/bin/python bench/ramp.py                                   # this checkout, RabbitMQ
    .venv/bin/python bench/ramp.py --broker redis --tasks 20000
    git worktree add /tmp/wt-old <rev>
    .venv/bin/python bench/ramp.py --rounds 6 --variant old=/tmp/wt-old/worker-runtime \\
        --variant new=worker-runtime                      # A/B: NAME=a worker-runtime folder

A variant's folder goes first on PYTHONPATH and is byte-compiled like this checkout
(measure.compile_sources), so neither side pays compiling at its start.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH))

import throughput  # noqa: E402
from measure import compile_sources, exit_on_sigterm, stop_group  # noqa: E402

POLL_S = 0.005
BUCKET_S = 0.1
RAMP_S = 0.5  # "the first half second": tasks done this long after the first one
MOVES = re.compile(
    r'T\d\d:(\d\d):(\d\d\.\d+)Z.*event="(thread limit|prefetch window)".*?(?:limit|window)=(\d+)'
)
STARTED = re.compile(r'T\d\d:(\d\d):(\d\d\.\d+)Z.*event="worker started"')


@dataclass(frozen=True)
class Round:
    total_s: float  # spawn to the last task
    first_s: float  # spawn to the first task
    ramp: int  # tasks done in RAMP_S after the first
    steady: float  # tasks/s between 10 % and 90 % done
    buckets: list[int]  # tasks done per BUCKET_S from the spawn
    moves: list[str]  # "+0.33 s thread limit 2", from "worker started"


def counted(points: list[tuple[float, int]], tasks: int) -> Round:
    """Pure: a round's figures from its (seconds since spawn, tasks done) polls."""

    def at(n: float) -> float:
        return next(t for t, d in points if d >= n)

    def done_by(t: float) -> int:
        return max((d for s, d in points if s <= t), default=0)

    first = at(1)
    total = points[-1][0]
    buckets = [
        done_by((k + 1) * BUCKET_S) - done_by(k * BUCKET_S)
        for k in range(int(total / BUCKET_S) + 1)
    ]
    steady = 0.8 * tasks / max(1e-9, at(0.9 * tasks) - at(0.1 * tasks))
    return Round(total, first, done_by(first + RAMP_S), steady, buckets, [])


def moves(log_text: str) -> list[str]:
    """The thread limit's and the window's changes, in seconds from "worker started"."""
    start = STARTED.search(log_text)
    if start is None:
        return []
    t0 = int(start.group(1)) * 60 + float(start.group(2))
    out = []
    for m in MOVES.finditer(log_text):
        t = (int(m.group(1)) * 60 + float(m.group(2)) - t0) % 3600
        out.append(f"+{t:.2f} s {m.group(3)} {m.group(4)}")
    return out


def one_round(bench: throughput.Bench, tasks: int, folder: str | None, log_path: str) -> Round:
    bench.reset()
    bench.produce("ebbtide", "bulk", tasks)
    argv = throughput.worker_argv("ebbtide", 8)
    argv[argv.index("WARNING")] = "DEBUG"
    env = dict(bench.env)
    if folder:
        env["PYTHONPATH"] = os.pathsep.join([folder, env.get("PYTHONPATH", "")])
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            points: list[tuple[float, int]] = []
            deadline = started + max(60.0, tasks / 100)
            while True:
                done = int(bench.counter.get(throughput.COUNTER_KEY) or 0)
                now = time.perf_counter()
                points.append((now - started, done))
                if done >= tasks:
                    break
                if proc.poll() is not None or now > deadline:
                    raise RuntimeError(f"the worker stopped at {done} of {tasks} (log: {log_path})")
                time.sleep(POLL_S)
        finally:
            stop_group(proc, grace=5)
    r = counted(points, tasks)
    return Round(
        r.total_s, r.first_s, r.ramp, r.steady, r.buckets, moves(Path(log_path).read_text())
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", choices=("redis", "rabbitmq"), default="rabbitmq")
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--variant",
        action="append",
        metavar="NAME=FOLDER",
        help="a worker-runtime folder to run (repeatable); default: this checkout",
    )
    opts = ap.parse_args(argv)
    exit_on_sigterm()
    variants = [v.partition("=")[::2] for v in opts.variant or ["this="]]
    for name, folder in variants:
        if folder and not (Path(folder) / "ebbtide").is_dir():
            ap.error(f"--variant {name}={folder}: no ebbtide package in {folder!r}")
    compile_sources(os.pathsep.join(f for _, f in variants if f))  # and this checkout

    class Sizes:  # what throughput.Bench reads of its options
        quick, rabbitmq_tasks, ebbtide_concurrency = False, opts.tasks, 8

    rows: dict[str, list[Round]] = {name: [] for name, _ in variants}
    logs = tempfile.mkdtemp(prefix="ebbtide-ramp-")
    for broker, broker_url, counter_url in throughput.broker_runs(opts.broker):
        bench = throughput.Bench(broker, broker_url, counter_url, opts.tasks, Sizes())
        for rnd in range(opts.rounds):
            for name, folder in variants:
                folder = str(Path(folder).resolve()) if folder else None
                r = one_round(bench, opts.tasks, folder, f"{logs}/{name}-{rnd}.log")
                rows[name].append(r)
                print(
                    f"{name} round {rnd + 1}: spawn to done {r.total_s:.2f} s, first task "
                    f"{r.first_s:.2f} s, {r.ramp:,} done in the next {RAMP_S} s, steady "
                    f"{r.steady:,.0f}/s",
                    flush=True,
                )
                print(f"  per {BUCKET_S * 1000:.0f} ms: {' '.join(map(str, r.buckets))}")
                print(f"  moves: {'; '.join(r.moves) or 'none'}")
    print(
        f"\n{throughput.machine()} · {opts.broker} · {opts.tasks:,} tasks a round · logs {logs}\n"
    )
    print(
        f"| variant | done in the first {RAMP_S} s after the first task, per round | median | "
        "median spawn to done | median steady |"
    )
    print("|---|---|---|---|---|")
    for name, rs in rows.items():
        ramps = " · ".join(f"{r.ramp:,}" for r in rs)
        print(
            f"| {name} | {ramps} | {statistics.median(r.ramp for r in rs):,.0f} | "
            f"{statistics.median(r.total_s for r in rs):.2f} s | "
            f"{statistics.median(r.steady for r in rs):,.0f}/s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
