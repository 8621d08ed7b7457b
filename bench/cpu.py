"""CPU-bound tasks across processes: Ebbtide `--processes 1` vs `2`, beside Dramatiq
`-p 1` vs `-p 2`, in the same run, on the same private Redis.

Each task is pure Python (`anchors.common.burn_cpu`, `--loops` iterations: 100,000 by
default, about 5-7 ms on this machine) and then one INCR of the shared counter. Threads cannot run it in parallel
(the GIL), so the rate follows the process count, up to the machine's cores. N tasks are
enqueued, then one worker command starts; the clock runs from its spawn until the counter
reaches N (start-up included, as in throughput.py), and the steady rate (first task to
last) is printed beside it. Systems run round-robin, once per round.

    .venv/bin/python bench/cpu.py                     # 1,000 tasks, 3 rounds
    .venv/bin/python bench/cpu.py --tasks 1000 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import redis

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(BENCH))

from latency import Run  # noqa: E402
from measure import exit_on_sigterm, run_worker  # noqa: E402
from support.servers import redis_server  # noqa: E402

COUNTER_KEY = "bench:done"
SYSTEMS = ("ebbtide-p1", "ebbtide-p2", "dramatiq-p1", "dramatiq-p2")


def worker_argv(system: str) -> list[str]:
    py = sys.executable
    name, _, procs = system.partition("-p")
    if name == "dramatiq":
        return [py, "-m", "dramatiq", "anchors.dramatiq_app", "-p", procs, "-t", "8"]
    return [
        *(py, "-m", "ebbtide", "--log-level", "WARNING", "worker", "anchors.ebbtide_app:app"),
        *("--queues", "bench", "--concurrency", "8", "--processes", procs),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--loops", type=int, default=100_000, help="iterations of each task's body")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--log", dest="log_path", default=None)
    opts = p.parse_args(argv)
    exit_on_sigterm()
    opts.log_path = opts.log_path or os.path.join(
        tempfile.gettempdir(), f"ebbtide-cpu-{os.getpid()}.log"
    )
    rates: dict[str, list[tuple[float, float]]] = {s: [] for s in SYSTEMS}
    with redis_server() as url:
        run = Run(url, url, opts)
        run.fill_env["BENCH_CPU_LOOPS"] = str(opts.loops)
        client = redis.Redis.from_url(url)
        for round_ in range(opts.repeat):
            for system in SYSTEMS:
                client.flushall()
                sender = "ebbtide-cpu" if system.startswith("ebbtide") else "dramatiq-cpu"
                run.produce(sender, "bulk" if sender == "ebbtide-cpu" else "single", opts.tasks,
                            run.fill_env)  # fmt: skip
                done = run_worker(
                    worker_argv(system), run.fill_env, url, COUNTER_KEY, opts.tasks,
                    timeout=600, log_path=opts.log_path,
                )  # fmt: skip
                if done.error:
                    print(f"{system}: {done.error} (log {opts.log_path})", file=sys.stderr)
                    return 1
                steady = (opts.tasks - 1) / (done.seconds - (done.first_task_s or 0))
                rates[system].append((opts.tasks / done.seconds, steady))
                print(
                    f"round {round_ + 1} {system}: {opts.tasks / done.seconds:,.0f}/s "
                    f"(steady {steady:,.0f}/s)",
                    file=sys.stderr,
                    flush=True,
                )
    med = {s: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
           for s, v in rates.items()}  # fmt: skip
    print(f"\n{os.cpu_count()} cores · {opts.tasks:,} tasks · medians of {opts.repeat} rounds\n")
    print("| worker | processed/s (spawn to done) | steady /s | vs 1 process | vs Dramatiq |")
    print("|---|---|---|---|---|")
    for s in SYSTEMS:
        name, _, procs = s.partition("-p")
        base = med[f"{name}-p1"][0]
        other = med[f"dramatiq-p{procs}"][0]
        print(
            f"| {name} {'--processes' if name == 'ebbtide' else '-p'} {procs} | "
            f"{med[s][0]:,.0f} | {med[s][1]:,.0f} | {med[s][0] / base:.2f}x | "
            f"{med[s][0] / other:.2f}x |"
        )
    print("\nper round (spawn to done):")
    for s in SYSTEMS:
        print(f"  {s}: " + " · ".join(f"{r[0]:,.0f}" for r in rates[s]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
