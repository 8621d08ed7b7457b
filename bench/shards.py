"""What sharding a queue costs on ONE Redis node: drain rate of one worker over K shards.

A sharded queue spreads over a Redis Cluster's nodes (one slot per shard); on a single
node it cannot go faster than that node's one thread, and each claim names every shard,
so this measures the price of the fair drain, not a gain. N one-INCR tasks
(bench/anchors/ebbtide_app.py) are sent round-robin over K shards, then ONE worker
process starts and the clock runs from its spawn until the counter reaches N (start-up
included), as bench/throughput.py does. Each K runs `--rounds` times, the Ks
interleaved; the median is shown.

    .venv/bin/python bench/shards.py --tasks 20000 --shards 1,4,16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH))

from measure import run_worker  # noqa: E402
from support.servers import redis_server  # noqa: E402

QUEUE, KEY = "bench", "bench:done"


def one_run(url: str, shards: int, tasks: int, concurrency: int, task: str) -> float:
    """Tasks/s of one worker draining `tasks` sent over `shards` shards."""
    import ebbtide

    redis.Redis.from_url(url).flushdb()
    app = ebbtide.App(broker_url=url, shards={QUEUE: shards})
    send = app.task(name=task, queue=QUEUE)(lambda: None)
    send.send_many(() for _ in range(tasks))
    app.close()
    env = {
        **os.environ,
        "BENCH_BROKER_URL": url,
        "BENCH_QUEUE": QUEUE,
        "EBBTIDE_SHARDS": f"{QUEUE}={shards}",
        "PYTHONPATH": str(BENCH) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    argv = [sys.executable, "-m", "ebbtide", "worker", "anchors.ebbtide_app:app"]
    argv += ["--queues", QUEUE, "--concurrency", str(concurrency)]
    with tempfile.NamedTemporaryFile(suffix=".log", delete=False) as log:
        run = run_worker(argv, env, url, KEY, tasks, 300, log.name)
    if run.error:
        raise SystemExit(f"K={shards}: {run.error} (log {log.name})")
    return tasks / run.seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=20000)
    p.add_argument("--shards", default="1,4,16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--task", default="bench.aincr", help="bench.incr (def) or bench.aincr")
    args = p.parse_args(argv)
    counts = [int(k) for k in args.shards.split(",")]
    rates: dict[int, list[float]] = {k: [] for k in counts}
    with redis_server() as url:
        for _ in range(args.rounds):  # interleaved: a busy spell hits every K alike
            for k in counts:
                rates[k].append(one_run(url, k, args.tasks, args.concurrency, args.task))
    rows = [(k, statistics.median(r), min(r), max(r)) for k, r in rates.items()]
    base = rows[0][1]
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.task}, "
        f"{args.tasks} tasks, --concurrency {args.concurrency}, one Redis node, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    print("| shards | tasks/s (median) | min | max | vs first |")
    print("|---:|---:|---:|---:|---:|")
    for k, median, low, high in rows:
        print(f"| {k} | {median:,.0f} | {low:,.0f} | {high:,.0f} | {median / base:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
