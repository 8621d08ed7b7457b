"""Threads against the GIL, with no task queue at all: why `--thread-limit auto` exists.

N threads of one process loop on the benchmark's task body (one INCR on a private
loopback redis-server) for a few seconds, for each N. Every INCR lets go of the GIL
twice; with many threads waiting, each release hands it over, often to another CPU, and
those hand-offs (futex calls: the kernel column) grow faster than the work. On 2 cores,
8 threads do about half of what 3 do. The worker's thread limit (worker/thread_limit.py)
finds the better number while it runs.

    .venv/bin/python bench/gil_threads.py
    .venv/bin/python bench/gil_threads.py --threads 1,2,3,4,6,8 --seconds 3 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.servers import redis_server  # noqa: E402


@dataclass(frozen=True)
class Row:
    threads: int
    ops_per_s: float
    cpu_us: float  # process CPU per INCR, user + kernel
    kernel_us: float


def run(url: str, threads: int, seconds: float) -> Row:
    """`threads` threads sharing one redis-py client (its pool), INCR in a loop."""
    client = redis.Redis.from_url(url)
    client.delete("gil:n")
    stop = time.perf_counter() + seconds

    def loop() -> None:
        while time.perf_counter() < stop:
            client.incr("gil:n")

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    started, before = time.perf_counter(), os.times()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed, after = time.perf_counter() - started, os.times()
    n = int(client.get("gil:n") or 0)
    client.close()
    user, kernel = after.user - before.user, after.system - before.system
    return Row(threads, n / elapsed, 1e6 * (user + kernel) / n, 1e6 * kernel / n)


def table(rows: list[Row]) -> str:
    best = max(r.ops_per_s for r in rows)
    lines = [
        "| threads | INCR/s | of the best | CPU us/INCR | of which kernel |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.threads} | {r.ops_per_s:,.0f} | {r.ops_per_s / best:.0%} | "
            f"{r.cpu_us:.0f} | {r.kernel_us:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2,3,4,8", help="comma-separated thread counts")
    p.add_argument("--seconds", type=float, default=3.0, help="per row")
    p.add_argument("--repeat", type=int, default=1, help="rounds over all the thread counts")
    opts = p.parse_args(argv)
    counts = [int(x) for x in opts.threads.split(",")]
    rows: list[Row] = []
    with redis_server() as url:
        for _ in range(opts.repeat):
            for n in counts:
                rows.append(run(url, n, opts.seconds))
                r = rows[-1]
                print(f"  {n} threads: {r.ops_per_s:,.0f}/s", file=sys.stderr, flush=True)
    print(
        f"\n{time.strftime('%Y-%m-%d')} · {os.cpu_count()} cores · Python {sys.version.split()[0]}"
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
